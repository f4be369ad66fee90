"""Hardware-friendly rounding of kept counts (``compact(..., round_to=k)``).

Tensor cores and vector units work in tiles, so an FFN of 1021 neurons runs no faster than one of 1024. Each
kept FFN width and the kept hidden size is moved to the nearest multiple of ``k`` (halfway rounds up; a
non-empty structure never rounds to zero, and never above its current size; a structure kept whole stays
as it is). Units are dropped lowest score
first and added highest score first. Scores come from ``CompactionPlan.scores`` when given, else from the
plan's full-length scales (``|scale|``), else from the weights: the norm of each unit's column in the
projection that reads it. Heads are whole units and are not rounded.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .adapters.base import Adapter, get_module
from .plan import Kept, ResolvedPlan
from .slicing import weight_dims


def rounded_count(count: int, multiple: int, total: int) -> int:
    """``count`` moved to the nearest multiple of ``multiple``, within ``[multiple, total]`` when possible;
    0 and ``total`` (nothing or everything kept) stay."""
    if count == 0 or count == total or multiple == 1:
        return count
    target = ((count + multiple // 2) // multiple) * multiple
    target = max(target, multiple)
    if target > total:
        target = (total // multiple) * multiple or total
    return target


def _column_norms(adapter: Adapter, path: str) -> torch.Tensor:
    """Norm of each input feature's weights in the projection at ``path``."""
    module = get_module(adapter.model, path)
    return module.weight.detach().float().norm(dim=weight_dims(module)[0]).double().cpu()


def _rounded(kept: Kept, multiple: int, scores: torch.Tensor | None, weight_scores) -> tuple[Kept, bool]:
    target = rounded_count(kept.count, multiple, kept.total)
    if target == kept.count:
        return kept, False
    if scores is None:
        scores = kept.all_scales.abs() if kept.all_scales is not None else weight_scores()
    if scores.numel() != kept.total:
        raise ValueError(f"CompactionPlan.scores: expected {kept.total} scores for this structure, "
                         f"got {scores.numel()}")
    if target < kept.count:
        order = kept.index[torch.argsort(scores[kept.index], descending=True, stable=True)]
        index = order[:target].sort().values
    else:
        pruned = torch.nonzero(kept.mask() == 0).view(-1)
        added = pruned[torch.argsort(scores[pruned], descending=True, stable=True)][: target - kept.count]
        index = torch.cat([kept.index, added]).sort().values
    scale = None
    if kept.scale is not None:
        full = kept.all_scales
        if full is None:  # scales only for the kept units: added units get 1 (an ungated unit)
            full = torch.ones(kept.total, dtype=torch.float64)
            full[kept.index] = kept.scale
        scale = full[index]
    return Kept(index, scale, kept.total, kept.all_scales), True


def round_plan(adapter: Adapter, plan: ResolvedPlan, multiple: int, scores: dict) -> tuple[ResolvedPlan, list]:
    """``plan`` with FFN widths and the hidden size rounded to multiples of ``multiple``, and the list of
    changes (``{"structure", "layer", "from", "to"}``)."""
    changes = []
    word = adapter.embedding_tables()[0]
    hidden, changed = _rounded(plan.hidden, multiple, scores.get("hidden"),
                               lambda: get_module(adapter.model, word).weight.detach().float().norm(dim=0).double())
    if changed:
        changes.append({"structure": "hidden", "layer": None, "from": plan.hidden.count, "to": hidden.count})
    ffn = []
    for i, kept in enumerate(plan.ffn):
        consumer = adapter.layer_roles(i).ffn_consumer
        new, changed = _rounded(kept, multiple, scores.get("ffn", {}).get(i),
                                lambda: _column_norms(adapter, consumer))
        if changed:
            changes.append({"structure": "ffn", "layer": i, "from": kept.count, "to": new.count})
        ffn.append(new)
    return replace(plan, hidden=hidden, ffn=tuple(ffn)), changes
