"""`MaskSet`: every mask of one model (hidden, heads per layer, FFN per layer), its size and its decision."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .allocation import RankedGroup, check_allocation, closest_fraction
from .gates import UnitMask, make_mask
from .size_model import ArchitectureSpec, SizeMeasure

STRUCTURES = ("hidden", "heads", "ffn")
_MASK64 = (1 << 64) - 1


def structure_names(value, what: str, *, empty_ok: bool = False) -> tuple[str, ...]:
    """``value`` as a tuple of structure names, or a ``ValueError`` naming ``what`` unless it is a sequence (not a
    string) of names among :data:`STRUCTURES`, non-empty unless ``empty_ok``."""
    names = () if isinstance(value, str) else tuple(value)
    if isinstance(value, str) or not set(names) <= set(STRUCTURES) or not (names or empty_ok):
        kind = "a sequence" if empty_ok else "a non-empty sequence"
        raise ValueError(f"{what}: expected {kind} of names among {list(STRUCTURES)}, got {value!r}")
    return names


def mix_seed(seed: int, salt: int) -> int:
    """A well-spread 62-bit seed from (seed, salt) (splitmix64), so per-step and per-site streams never overlap."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(salt) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 2


@dataclass
class Decision:
    """Kept units per structure (bool vectors; ``None`` for a structure without masks)."""

    hidden: torch.Tensor | None
    heads: list[torch.Tensor] | None
    ffn: list[torch.Tensor] | None

    def counts(self, spec: ArchitectureSpec):
        hidden = spec.hidden_size if self.hidden is None else int(self.hidden.sum())
        units = spec.units_per_layer if self.heads is None else [int(k.sum()) for k in self.heads]
        ffn = spec.ffn_per_layer if self.ffn is None else [int(k.sum()) for k in self.ffn]
        return hidden, units, ffn


class MaskSet(nn.Module):
    """The masks of one model: ``hidden`` (one mask over the residual stream, shared by all layers), ``heads``
    (one mask per layer over its attention units: heads, or KV groups under GQA/MQA) and ``ffn`` (one per layer
    over its neurons), for the structures asked for.

    Noise: each training forward calls :meth:`new_step`, which derives a step seed from ``seed`` and a counter
    kept in the state dict; every place a mask acts derives its own seed from it (:meth:`site_seed`), the
    hidden mask the same one everywhere so that all its sites see the same gates. A resumed run therefore
    draws the same noise as an uninterrupted one.
    """

    def __init__(self, spec: ArchitectureSpec, method: str = "vib", structures: Sequence[str] = STRUCTURES,
                 *, seed: int = 0, mask_init: dict | None = None):
        super().__init__()
        structures = structure_names(structures, "structures")
        make_mask(method, 1, mask_init)  # validates the method and the init
        self.spec, self.method, self.structures, self.seed = spec, method, structures, int(seed)
        make = lambda units: make_mask(method, units, mask_init)  # noqa: E731
        self.hidden = make(spec.hidden_size) if "hidden" in structures else None
        self.heads = nn.ModuleList(make(u) for u in spec.units_per_layer) if "heads" in structures else None
        self.ffn = nn.ModuleList(make(f) for f in spec.ffn_per_layer) if "ffn" in structures else None
        self.register_buffer("steps_drawn", torch.zeros((), dtype=torch.int64))
        self.enabled = True
        self.noise = True  # False: training forwards use the deterministic gates too (PruneConfig.quench_fraction)
        # The gradient of those quenched gates (PruneConfig.quench_gradient): "straight_through" or "exact".
        self.quench_gradient = "straight_through"
        self.step_seed = mix_seed(self.seed, 0)

    # ---- noise ------------------------------------------------------------------------------------------
    def new_step(self) -> None:
        """Advance to the next training forward's noise."""
        self.steps_drawn += 1
        self.step_seed = mix_seed(self.seed, int(self.steps_drawn))

    def reseed(self, seed: int) -> None:
        """Draw future noise from ``seed`` (e.g. offset by rank) at the same step counter."""
        self.seed = int(seed)
        self.step_seed = mix_seed(self.seed, int(self.steps_drawn))

    def site_seed(self, site: int) -> int:
        return mix_seed(self.step_seed, site)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.step_seed = mix_seed(self.seed, int(self.steps_drawn))

    @contextmanager
    def disabled(self):
        """Within the block the model runs unmasked (a teacher forward in Faster-VTrans)."""
        previous, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = previous

    # ---- views ------------------------------------------------------------------------------------------
    def masks(self) -> Iterator[tuple[str, int | None, UnitMask]]:
        """(structure, layer or None, mask) for every mask."""
        if self.hidden is not None:
            yield "hidden", None, self.hidden
        for structure in ("heads", "ffn"):
            for layer, mask in enumerate(getattr(self, structure) or ()):
                yield structure, layer, mask

    def layer_mask(self, structure: str, layer: int) -> UnitMask | None:
        masks = getattr(self, structure)
        return None if masks is None else masks[layer]

    def mask_parameters(self) -> list[nn.Parameter]:
        return [p for _, _, m in self.masks() for p in m.parameters()]

    def constrain(self) -> None:
        """Project every mask's parameters into their valid range (call after each optimizer step)."""
        for _, _, mask in self.masks():
            mask.constrain()

    # ---- size -------------------------------------------------------------------------------------------
    def soft_counts(self):
        """Differentiable kept counts (hidden, [units per layer], [neurons per layer]); unmasked = full."""
        spec = self.spec
        hidden = spec.hidden_size if self.hidden is None else self.hidden.soft_count()
        units = spec.units_per_layer if self.heads is None else [m.soft_count() for m in self.heads]
        ffn = spec.ffn_per_layer if self.ffn is None else [m.soft_count() for m in self.ffn]
        return hidden, units, ffn

    def expected_sparsity(self, measure: SizeMeasure) -> torch.Tensor:
        """Differentiable expected sparsity under ``measure`` (0-d tensor)."""
        value = measure.sparsity(*self.soft_counts())
        return value if isinstance(value, torch.Tensor) else torch.tensor(float(value))

    def kl_terms(self) -> dict[str, torch.Tensor]:
        """Information penalty per structure (sums over layers); zeros for hard-concrete masks."""
        terms = {}
        for structure, _, mask in self.masks():
            terms[structure] = terms.get(structure, 0) + mask.kl()
        return terms

    # ---- decision ---------------------------------------------------------------------------------------
    def decision(self) -> Decision:
        """The deterministic keep decision of every mask (DESIGN 2.1 / 2.2)."""
        return Decision(
            hidden=None if self.hidden is None else self.hidden.keep(),
            heads=None if self.heads is None else [m.keep() for m in self.heads],
            ffn=None if self.ffn is None else [m.keep() for m in self.ffn],
        )

    def decide(self, measure: SizeMeasure, target_sparsity: float | None = None,
               tolerance: float = 0.005, allocation: str = "scores") -> Decision:
        """The decision, or, when it misses ``target_sparsity`` by more than ``tolerance``, the one threshold on
        the mask scores (applied to every mask) whose sparsity is closest to the target. The hidden mask always
        keeps at least one dim. With ``allocation`` "structure" or "layer" (see
        :data:`~vtrans_kernels.masks.allocation.ALLOCATIONS`) and a target, the decision keeps the same fraction
        of each structure's (or each layer's) units, ranked by the scores, whatever the masks' own decision. A
        measure with its own ``decide`` (a latency table, which admits only the widths it shows are fast) makes
        the decision instead."""
        shared_fraction = check_allocation(allocation) != "scores"
        if hasattr(measure, "decide"):
            if shared_fraction:
                raise ValueError(f"allocation: {allocation!r} needs a size measure; a latency table chooses the "
                                 "widths itself (use 'scores')")
            return measure.decide(self, target_sparsity, tolerance)
        if shared_fraction and target_sparsity is not None:
            return self._shared_fraction_decision(measure, target_sparsity, allocation)
        decision = self.decision()
        if target_sparsity is None or abs(measure.sparsity(*decision.counts(self.spec)) - target_sparsity) \
                <= tolerance:
            return decision
        scores = torch.cat([m.score().float().cpu() for _, _, m in self.masks()])
        order = torch.sort(scores, descending=True).values

        def keep_top(k: int) -> Decision:
            threshold = order[k - 1] if k > 0 else float("inf")
            keep = {s: [] for s in STRUCTURES}
            for structure, _, mask in self.masks():
                keep[structure].append(mask.score().float().cpu() >= threshold)
            if keep["hidden"] and not keep["hidden"][0].any():
                keep["hidden"][0][int(self.hidden.score().argmax())] = True
            return Decision(keep["hidden"][0] if keep["hidden"] else None,
                            keep["heads"] or None, keep["ffn"] or None)

        def sparsity(k: int) -> float:
            return measure.sparsity(*keep_top(k).counts(self.spec))

        low, high = 0, len(order)      # sparsity(k) falls as k grows; find the first k at or below the target
        while low < high:
            mid = (low + high) // 2
            if sparsity(mid) <= target_sparsity:
                high = mid
            else:
                low = mid + 1
        candidates = [k for k in (low - 1, low) if 0 <= k <= len(order)]
        best = min(candidates, key=lambda k: abs(sparsity(k) - target_sparsity))
        return keep_top(best)

    def hold(self, measure: SizeMeasure, target_sparsity: float, allocation: str = "scores") -> None:
        """Project the masks onto the target: shift each mask's parameters (its ranking unchanged) so that its
        decision keeps as many units as :meth:`decide` at ``target_sparsity`` under ``allocation`` does. A run
        ends with a few steps of training under this projection, so the masks' own decision is on the target and
        the last steps train the model the final plan makes."""
        decision = self.decide(measure, target_sparsity, tolerance=0.0, allocation=allocation)

        def keep_of(structure: str, layer: int | None) -> torch.Tensor:
            return decision.hidden if layer is None else getattr(decision, structure)[layer]

        if self.method == "vib":
            # One shift for the masks that share a threshold on the scores (all of them under "scores", the size
            # measures' decision; a structure's or a layer's under the other allocations), so scores stay
            # comparable within it: the plans made from them later (another target, a latency re-plan) rank units
            # as before. Masks left off their count (the latency table's widths, the hidden dim kept against the
            # threshold) shift on their own below.
            for group in self._allocation_groups(allocation):
                keeps = [(mask, keep_of(structure, layer).to(mask.score().device))
                         for structure, layer, mask in group]
                kept = torch.cat([mask.score()[keep].cpu() for mask, keep in keeps])
                dropped = torch.cat([mask.score()[~keep].cpu() for mask, keep in keeps])
                if kept.numel() and dropped.numel() and kept.min() > dropped.max():
                    for mask, _ in keeps:
                        mask.shift_boundary(float(kept.min() + dropped.max()) / 2)
        for structure, layer, mask in self.masks():
            mask.keep_top(int(keep_of(structure, layer).sum()))

    def _allocation_groups(self, allocation: str) -> list[list[tuple[str, int | None, UnitMask]]]:
        """The masks that keep one fraction together (and share a threshold on their scores) under
        ``allocation``: all of them, those of each structure, or each mask alone (one layer's heads or neurons)."""
        masks = list(self.masks())
        if check_allocation(allocation) == "scores":
            return [masks]
        if allocation == "layer":
            return [[entry] for entry in masks]
        return [[entry for entry in masks if entry[0] == s] for s in STRUCTURES if getattr(self, s) is not None]

    def _shared_fraction_decision(self, measure: SizeMeasure, target_sparsity: float, allocation: str) -> Decision:
        """The decision keeping the same fraction of every group's units (:meth:`_allocation_groups`), the top
        scores of each group, the fraction closest to the target; then the FFN neurons' fraction alone re-chosen
        the same way, since heads come in a few coarse units a layer."""
        groups = [(group[0][0], [layer for _, layer, _ in group], RankedGroup([m.score() for _, _, m in group]))
                  for group in self._allocation_groups(allocation)]

        def decision(fraction: float, ffn_fraction: float) -> Decision:
            keep: dict = {"hidden": None, "heads": {}, "ffn": {}}
            for structure, layers, ranked in groups:
                kept = ranked.keeps(ffn_fraction if structure == "ffn" else fraction)
                if structure == "hidden":
                    keep["hidden"] = kept[0]
                else:
                    keep[structure].update(zip(layers, kept))
            ordered = lambda s: [keep[s][i] for i in sorted(keep[s])] if keep[s] else None  # noqa: E731
            return Decision(keep["hidden"], ordered("heads"), ordered("ffn"))

        sparsity = lambda d: measure.sparsity(*d.counts(self.spec))  # noqa: E731
        fraction = closest_fraction(lambda r: sparsity(decision(r, r)), target_sparsity)
        ffn_fraction = fraction if self.ffn is None else closest_fraction(
            lambda f: sparsity(decision(fraction, f)), target_sparsity)
        return decision(fraction, ffn_fraction)

    def sparsity(self, measure: SizeMeasure, decision: Decision | None = None) -> float:
        """Exact sparsity of ``decision`` (default: the deterministic decision) under ``measure``."""
        decision = self.decision() if decision is None else decision
        return float(measure.sparsity(*decision.counts(self.spec)))
