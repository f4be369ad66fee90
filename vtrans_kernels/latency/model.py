"""`LatencyMeasure`: a model's latency predicted from its table, as a function of the kept units, usable by the
Lagrangian in place of the parameter or FLOPs measure (``sparsity = 1 - latency(kept) / latency(unpruned)``).

The prediction is additive: ``fixed(H) + sum over layers of attention(H, heads_l) + ffn(H, neurons_l)``, each
term read from the table's fitted curves (`curves.Curve`) at hidden size ``H``. Between measured hidden sizes
it interpolates linearly; between fast widths it interpolates linearly too (`Curve.smooth`), so the expected
latency of soft counts is differentiable and every unit has a price. At the widths a final plan uses (measured
hidden sizes, fast widths) the prediction is the table's value exactly.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import torch

from ..masks.size_model import ArchitectureSpec
from .table import LatencyTable


class LatencyMeasure:
    """The latency of a model with ``spec``'s shapes, predicted by ``table`` (milliseconds of one forward of the
    table's batch and sequence length). Same interface as :class:`~vtrans_kernels.masks.SizeMeasure`:
    ``size(hidden, units, ffn)`` (ints or soft-count tensors; ``None`` = unpruned) and ``sparsity(...)``."""

    kind = "latency"

    def __init__(self, table: LatencyTable, spec: ArchitectureSpec):
        self.table, self.spec = table, spec
        self.hidden_sizes = list(table.hidden_sizes)
        self._fixed = table.fixed_ms()
        self._dense = float(self.size())

    # ---- prediction -------------------------------------------------------------------------------------
    def _at_hidden(self, hidden: int, units: Sequence, ffn: Sequence):
        """Predicted latency at a measured hidden size (differentiable in the per-layer counts)."""
        total = self._fixed[hidden]
        attention, mlp = self.table.curve("attention", hidden), self.table.curve("ffn", hidden)
        for layer, (u, f) in enumerate(zip(units, ffn)):
            total = total + attention.smooth(u, self.spec.units_per_layer[layer])
            total = total + mlp.smooth(f, self.spec.ffn_per_layer[layer])
        return total

    def size(self, hidden=None, units=None, ffn=None):
        """Predicted milliseconds with ``hidden`` kept dims and the given kept units/neurons per layer (a float for
        numbers, a differentiable 0-d tensor when any count is a tensor)."""
        hidden = self.spec.hidden_size if hidden is None else hidden
        units = self.spec.units_per_layer if units is None else units
        ffn = self.spec.ffn_per_layer if ffn is None else ffn
        if len(units) != self.spec.num_layers or len(ffn) != self.spec.num_layers:
            raise ValueError(f"latency model: expected {self.spec.num_layers} per-layer counts, got "
                             f"units={len(units)}, ffn={len(ffn)}")
        sizes = self.hidden_sizes
        h = hidden.detach().double().item() if isinstance(hidden, torch.Tensor) else float(hidden)
        h = min(max(h, sizes[0]), sizes[-1])  # below the smallest measured size the table knows nothing
        upper = min(max(bisect.bisect_left(sizes, h), 0), len(sizes) - 1)
        if sizes[upper] == h or upper == 0:
            return self._at_hidden(sizes[upper], units, ffn)
        low, high = sizes[upper - 1], sizes[upper]
        weight = (hidden.clamp(sizes[0], sizes[-1]) if isinstance(hidden, torch.Tensor) else h) - low
        weight = weight / (high - low)
        return (1 - weight) * self._at_hidden(low, units, ffn) + weight * self._at_hidden(high, units, ffn)

    def sparsity(self, hidden=None, units=None, ffn=None):
        """``1 - size(...) / size()``: the fraction of the unpruned model's predicted latency saved."""
        return 1 - self.size(hidden, units, ffn) / self._dense

    def speedup(self, hidden=None, units=None, ffn=None) -> float:
        """Predicted ``latency(unpruned) / latency(kept)``."""
        return self._dense / float(self.size(hidden, units, ffn))

    @property
    def dense_ms(self) -> float:
        """Predicted latency of the unpruned model."""
        return self._dense

    def min_ms(self, structures: Sequence[str]) -> float:
        """The least latency a plan pruning ``structures`` reaches: every prunable head and neuron removed and the
        hidden size at the smallest measured one (if ``"hidden"`` is pruned)."""
        spec = self.spec
        hidden = self.hidden_sizes[0] if "hidden" in structures else spec.hidden_size
        units = [0] * spec.num_layers if "heads" in structures else spec.units_per_layer
        ffn = [0] * spec.num_layers if "ffn" in structures else spec.ffn_per_layer
        return float(self.size(hidden, units, ffn))

    def max_speedup(self, structures: Sequence[str]) -> float:
        """The speedup of :meth:`min_ms`: no plan over ``structures`` goes faster by this table."""
        return self._dense / self.min_ms(structures)

    # ---- plans ------------------------------------------------------------------------------------------
    def decide(self, masks, target_sparsity: float | None, tolerance: float = 0.005):
        """The plan's decision for ``masks`` (a :class:`~vtrans_kernels.masks.MaskSet`): widths the table shows
        are fast, and the loosest score threshold whose predicted latency meets ``target_sparsity`` (see
        :func:`.decide.latency_decision`)."""
        from .decide import latency_decision
        return latency_decision(masks, self, target_sparsity)
