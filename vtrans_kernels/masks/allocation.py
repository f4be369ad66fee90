"""How a plan shares its sparsity among the pruned units: one threshold on every mask's scores, or the same kept
fraction of each structure or of every layer's units (the one-shot baseline's rule)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

# "scores": one threshold on the scores of every mask, so the masks decide how much each structure and layer
# keeps. "structure": every structure (hidden dims, heads, FFN neurons) keeps the same fraction of its units, the
# masks' scores ranking them across layers. "layer": every layer keeps that fraction of its heads and of its
# neurons. With a target, the FFN neurons' fraction is re-chosen alone to land on it (as the one-shot baseline).
ALLOCATIONS = ("scores", "structure", "layer")


def check_allocation(allocation: str) -> str:
    """``allocation`` itself if it is one of :data:`ALLOCATIONS`, else a ValueError naming the choices."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation: expected one of {ALLOCATIONS}, got {allocation!r}")
    return allocation


def closest_fraction(sparsity_at: Callable[[float], float], target_sparsity: float) -> float:
    """The kept fraction in [0, 1] whose sparsity (``sparsity_at``, falling as the fraction grows) is closest to
    ``target_sparsity``, by bisection."""
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if sparsity_at(mid) > target_sparsity:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda r: abs(sparsity_at(r) - target_sparsity))


def kept_count(units: int, fraction: float) -> int:
    """Units kept of ``units`` at ``fraction``: rounded up, at least one."""
    return max(1, math.ceil(fraction * units))


class RankedGroup:
    """Masks that keep one fraction of their units together, the highest scores across them first."""

    def __init__(self, scores: Sequence[torch.Tensor]):
        self.sizes = [int(s.numel()) for s in scores]
        joined = torch.cat([s.float().cpu().flatten() for s in scores])
        self.rank = torch.empty(joined.numel(), dtype=torch.long)
        self.rank[torch.argsort(joined, descending=True, stable=True)] = torch.arange(joined.numel())

    def keeps(self, fraction: float) -> list[torch.Tensor]:
        """Each mask's keep vector when the group keeps ``fraction`` of its units."""
        return list(torch.split(self.rank < kept_count(len(self.rank), fraction), self.sizes))
