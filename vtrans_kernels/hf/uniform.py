"""Uniform decisions: the same kept heads (KV groups) and FFN neurons in every layer, shapes a plain config holds.

Serving engines that build a model from its config alone (transformers ``from_pretrained``, vLLM, TGI) need
one head count and one FFN width for all layers, no removed sublayers, and widths the config class accepts:
BERT and GPT-2 derive the head size from ``hidden_size / num_attention_heads``, so the kept hidden size must
be exactly ``heads x head_dim``; the LLaMA family stores ``head_dim`` but its config validation asks
``hidden_size % num_attention_heads == 0``.

The counts come from the masks' scores across layers: one threshold on every score gives, per structure, the
mean kept count over the layers (and the kept hidden dims); that triple is moved to the nearest expressible
one (``round_to`` multiples included, so that compaction's rounding leaves it as it is), and the threshold
whose triple's sparsity is closest to the target wins. Each layer then keeps its own best-scored units.
"""
from __future__ import annotations

import math

import torch

from ..masks.mask_set import Decision
from ..masks.size_model import SizeMeasure
from .rounding import rounded_count

# Sparsity within this of the closest reachable counts as on target (the threshold decision's tolerance).
TOLERANCE = 0.005


def uniform_decision(masks, measure: SizeMeasure, target_sparsity: float, round_to: int = 1) -> Decision:
    """The uniform :class:`Decision` of ``masks`` (a :class:`~vtrans_kernels.hf.attach.ModelMasks`) whose
    sparsity under ``measure`` is closest to ``target_sparsity``; widths are multiples of ``round_to``
    where the structure is pruned."""
    shapes = _Shapes(masks, int(round_to))
    scores = {name: _scores(masks, name) for name in ("hidden", "heads", "ffn")}
    present = [s for group in scores.values() if group for s in group]
    thresholds = torch.cat(present).unique(sorted=True).flip(0)
    raw = {name: _mean_kept(group, thresholds) for name, group in scores.items() if group}
    seen = {}  # (hidden, units) -> the FFN widths the scores pair with them
    for i in range(len(thresholds)):
        candidate = shapes.snap(**{name: float(counts[i]) for name, counts in raw.items()})
        if candidate is not None:
            seen.setdefault(candidate[:2], set()).add(candidate[2])
    if not seen:
        raise ValueError("uniform: no uniform shape of this model is expressible with these masks and round_to="
                         f"{round_to}")

    def sparsity(hidden, units, ffn):
        return float(measure.sparsity(hidden, [units] * shapes.layers, [ffn] * shapes.layers))

    # Heads and the hidden size move in coarse steps; the FFN width, the finest knob, is refit per (hidden,
    # units) to land on the target. Among the shapes that land within the tolerance of the best, take the one
    # whose width the scores themselves pair with it most closely.
    fitted = []
    for (hidden, units), widths in seen.items():
        ffn = shapes.closest_ffn(lambda f: sparsity(hidden, units, f), target_sparsity) if scores["ffn"] \
            else next(iter(widths))
        error = abs(sparsity(hidden, units, ffn) - target_sparsity)
        fitted.append((error, min(abs(ffn - w) for w in widths), -sparsity(hidden, units, ffn), (hidden, units, ffn)))
    best = min(f[0] for f in fitted)
    hidden, units, ffn = min((f for f in fitted if f[0] <= best + TOLERANCE), key=lambda f: f[1:3])[3]
    return Decision(
        hidden=None if masks.hidden is None else _top(masks.hidden.score(), hidden),
        heads=None if masks.heads is None else [_top(m.score(), units) for m in masks.heads],
        ffn=None if masks.ffn is None else [_top(m.score(), ffn) for m in masks.ffn],
    )


def _scores(masks, structure: str) -> list[torch.Tensor]:
    if structure == "hidden":
        return [] if masks.hidden is None else [masks.hidden.score().detach().float().cpu()]
    group = getattr(masks, structure)
    return [] if group is None else [m.score().detach().float().cpu() for m in group]


def _mean_kept(group: list[torch.Tensor], thresholds: torch.Tensor) -> torch.Tensor:
    """Mean over the tensors of ``group`` of how many of their scores are >= each threshold."""
    counts = [len(s) - torch.searchsorted(s.sort().values, thresholds, right=False) for s in group]
    return torch.stack(counts).double().mean(0)


def _top(score: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.zeros(score.numel(), dtype=torch.bool)
    keep[torch.argsort(score.detach().float().cpu(), descending=True, stable=True)[:count]] = True
    return keep


class _Shapes:
    """Which (hidden, units per layer, FFN per layer) triples the model's config can express."""

    def __init__(self, masks, round_to: int):
        spec, adapter = masks.spec, masks.adapter
        self.layers = spec.num_layers
        self.hidden_total, self.units_total = spec.hidden_size, min(spec.units_per_layer)
        self.ffn_total = min(spec.ffn_per_layer)
        self.round_to, self.q_per_unit, self.head_dim = round_to, spec.q_heads_per_unit, spec.head_dim
        self.tied = adapter.head_size_from_hidden  # hidden_size == heads x head_dim
        self.masked = {"hidden": masks.hidden is not None, "heads": masks.heads is not None,
                       "ffn": masks.ffn is not None}
        if self.tied and self.masked["hidden"] != self.masked["heads"]:
            raise ValueError(
                f"uniform: {type(adapter.model).__name__} sizes its heads as hidden_size / num_attention_heads, so "
                "a uniform plan prunes the hidden size and the heads together: pass structures with both 'hidden' "
                "and 'heads', or neither")
        if len(set(spec.units_per_layer)) > 1 or len(set(spec.ffn_per_layer)) > 1:
            raise ValueError("uniform: the model's layers already differ in shape (heads "
                             f"{list(spec.units_per_layer)}, FFN {list(spec.ffn_per_layer)}); a uniform plan needs a "
                             "model whose layers are alike")

    def snap(self, hidden: float | None = None, heads: float | None = None, ffn: float | None = None):
        """The expressible triple nearest to these mean kept counts (None: that structure is unmasked), or
        None when there is none."""
        units = self._units(heads)
        ffn = self.ffn_total if ffn is None else \
            rounded_count(min(max(round(ffn), 1), self.ffn_total), self.round_to, self.ffn_total)
        width = self._hidden(hidden, units)
        return None if width is None else (width, units, ffn)

    def closest_ffn(self, sparsity_of, target: float) -> int:
        """The expressible FFN width whose sparsity (``sparsity_of(width)``, falling as width grows) is closest
        to ``target``."""
        widths = sorted({self.ffn_total, *range(self.round_to, self.ffn_total + 1, self.round_to)})
        low, high = 0, len(widths) - 1
        while low < high:  # first width at or below the target sparsity
            mid = (low + high) // 2
            if sparsity_of(widths[mid]) <= target:
                high = mid
            else:
                low = mid + 1
        near = {widths[max(low - 1, 0)], widths[low]}
        return min(near, key=lambda w: (abs(sparsity_of(w) - target), -w))

    def _units(self, heads: float | None) -> int:
        if heads is None:
            return self.units_total
        wanted = min(max(round(heads), 1), self.units_total)
        valid = [k for k in range(1, self.units_total + 1) if self._hidden_fits(k)]
        return min(valid, key=lambda k: (abs(k - wanted), -k)) if valid else wanted

    def _hidden_fits(self, units: int) -> bool:
        """Whether some hidden size goes with ``units`` kept units per layer."""
        if self.tied:
            return (units * self.head_dim) % self.round_to == 0 or units == self.units_total
        if self.masked["hidden"]:
            return True
        return self.hidden_total % (units * self.q_per_unit) == 0

    def _hidden(self, hidden: float | None, units: int) -> int | None:
        if self.tied:
            return units * self.head_dim
        if hidden is None:
            return self.hidden_total if self.hidden_total % (units * self.q_per_unit) == 0 else None
        step = math.lcm(self.round_to, units * self.q_per_unit)
        below = min(max(math.floor(hidden / step), 1), self.hidden_total // step) * step
        options = [w for w in (below, below + step) if 0 < w <= self.hidden_total]
        if self.hidden_total % (units * self.q_per_unit) == 0:
            options.append(self.hidden_total)  # everything kept needs no rounding
        return min(options, key=lambda w: (abs(w - hidden), -w)) if options else None
