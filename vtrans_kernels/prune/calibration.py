"""Mask training that starts from the one-shot plan (issue 18 item 2): the masks' decision at step 0 is the
activation-norm x weight-norm plan at the target, and units sit nearer the decision boundary the closer their
calibration score is to the plan's cut, so training swaps the doubtful units first instead of starting from
"keep everything"."""
from __future__ import annotations

import torch

from ..hf.plan import CompactionPlan
from .data import Batches
from .oneshot import oneshot_plan

# |log odds| limit: a unit scored e^3 (20x) above or below its mask's cut starts as far from the boundary as any.
LOG_ODDS_LIMIT = 3.0
# The doubtful units' distance from the boundary: a unit right at the cut starts this far on its side.
LOG_ODDS_MARGIN = 0.1


def plan_log_odds(score: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Per-unit log odds of one mask whose sign is the plan (``kept`` positive) and whose size is the log ratio
    of the unit's score to the cut (the geometric mean of the lowest kept and the highest removed score), pushed
    at least ``LOG_ODDS_MARGIN`` to the unit's side of it and clamped to ``LOG_ODDS_LIMIT``."""
    score = score.detach().float().cpu().clamp_min(1e-30)
    keep = torch.zeros(score.numel(), dtype=torch.bool)
    keep[list(kept)] = True
    if keep.all() or not keep.any():
        cut = score.min() / 2 if keep.all() else score.max() * 2
    else:
        cut = (score[keep].min() * score[~keep].max()).sqrt()
    ratio = torch.log(score / cut).abs().clamp(LOG_ODDS_MARGIN, LOG_ODDS_LIMIT)
    return torch.where(keep, ratio, -ratio)


@torch.no_grad()
def start_from_calibration(pruner, batches: Batches, calibration_steps: int = 4) -> CompactionPlan:
    """Set ``pruner``'s masks (before its first step) to the one-shot plan at its target, scored on
    ``calibration_steps`` batches of ``batches`` with the masks disabled, and restart the target ramp from that
    plan's sparsity, keeping its scores as the pruner's calibration scores (:meth:`Pruner.score_units`). Returns
    the one-shot plan."""
    if pruner.step != 0:
        raise ValueError(f"start_from_calibration: the pruner has taken {pruner.step} steps; the masks can only "
                         "start from a plan before the first one")
    cfg, masks = pruner.config, pruner.masks
    with masks.disabled():
        plan = oneshot_plan(pruner.model, batches, cfg.target_sparsity, structures=cfg.structures,
                            calibration_steps=calibration_steps, measure=pruner.measure)
    for structure, layer, mask in masks.masks():
        scores = plan.scores[structure] if layer is None else plan.scores[structure][layer]
        kept = plan.hidden if layer is None else getattr(plan, structure).get(layer, range(mask.units))
        mask.start_from(plan_log_odds(scores, kept))
    pruner.restart_ramp()
    pruner.calibration_scores = plan.scores
    return plan
