"""Least-squares refit of the kept units' scales (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for
Transformers": mask tuning), with the bias shift as the fit's intercept.

A sublayer's output projection computes ``W_out (g * a) + bias`` where ``a`` is its input (heads' outputs or FFN
neurons) and ``g`` the plan's per-unit gate (the unit's scale when kept, 0 when removed). Unit ``j`` contributes
``c_j = W_out[:, cols_j] a[cols_j]``. The unpruned sublayer outputs ``y = sum_j c_j`` (every unit at gate 1, on the
same input); the pruned one ``sum_{j kept} s_j c_j + b``. :func:`refit_plan` chooses the kept scales ``s`` and the
shift ``b`` minimising, over calibration tokens and the kept hidden dims,

    sum_t || sum_{j kept} s_j c_j(t) + b - y(t) ||^2 + lambda || s - s0 ||^2,    lambda = ridge * trace(G) / k

(``s0`` the plan's scales, ``G`` the centred Gram matrix of the kept contributions, ``k`` their count). It is a
linear least-squares problem: ``b`` is the intercept, ``s`` solves ``(G + lambda I) s = r + lambda s0`` on centred
statistics. With ``s = s0 = 1`` the intercept is exactly the mean removed contribution, i.e. FLAP's bias
compensation (:func:`vtrans_kernels.hf.compensate_plan`); the refit can only fit the calibration tokens better.
The scales go into the plan's ``head_scale``/``ffn_scale`` and the intercept into its bias shifts, so
``compact(model, plan)`` folds them exactly as for any plan.
"""
from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import replace
from typing import Iterable, Mapping

import torch
from torch import nn

from .adapters.base import Adapter
from .compensation import (bias_compensation_support, consumer_inputs, measuring, out_in_weight, partial_sublayers,
                           prepared, sublayer_consumer)
from .plan import CompactionPlan, Kept

log = logging.getLogger(__name__)


@torch.no_grad()
def refit_plan(model: nn.Module, plan: CompactionPlan, batches: Iterable[Mapping[str, torch.Tensor]], *,
               ridge: float = 1e-3, round_to: int = 1, readout: str = "auto") -> CompactionPlan:
    """``plan`` with each partly pruned sublayer's kept-unit scales re-fitted by ridge-regularised least squares
    to reconstruct the unpruned sublayer's output on calibration tokens, and the fit's intercept as the sublayer's
    bias shift (see the module docstring for the objective).

    Sublayers are fitted in forward order, each measured in the masked model of the plan with the sublayers before
    already refitted (so later fits see the inputs the refitted model produces), over the non-padding tokens of
    ``batches``, in the last layer over the tokens the head reads (``readout``, as in
    :func:`vtrans_kernels.hf.compensate_plan`). Only the kept hidden dims enter the fit (the others are removed).
    ``ridge`` >= 0 pulls the scales towards the plan's (relative to the Gram matrix's mean diagonal; a very large
    value gives back the plan's scales and FLAP's shifts). Where the config cannot express an output bias (Qwen2,
    Mistral), the fit has no intercept and the shift is not set. Kept units, removed sublayers and the hidden plan
    are unchanged; ``round_to`` rounds first as in ``compensate_plan``. ``model`` is left unchanged.
    """
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0 or ridge == float("inf"):
        raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
    adapter, resolved, plan, batches, readout = prepared(model, plan, batches, round_to, readout)
    support = bias_compensation_support(model)
    for kind, reason in support.items():
        if reason:
            log.warning("refit of %s without an intercept: %s", "attention" if kind == "heads" else "the FFN", reason)
    hidden = resolved.hidden.mask().bool()
    scales = {"heads": dict(plan.head_scale), "ffn": dict(plan.ffn_scale)}
    shifts = {"heads": {}, "ffn": {}}

    def current():
        return replace(plan, head_scale=scales["heads"], ffn_scale=scales["ffn"], head_bias_shift=shifts["heads"],
                       ffn_bias_shift=shifts["ffn"])

    with measuring(model):
        for layer, kind, kept, tokens in partial_sublayers(adapter, resolved, readout):
            stats = _statistics(model, adapter, current(), kind, layer, kept, hidden, batches, tokens)
            s0 = kept.gate()[kept.index]
            scale, shift = solve(stats, s0, ridge, intercept=support[kind] is None)
            full = torch.zeros(kept.total, dtype=torch.float64)
            full[kept.index] = scale
            scales[kind][layer] = full
            if shift is not None:
                shifts[kind][layer] = torch.zeros(hidden.numel(), dtype=torch.float64).masked_scatter(hidden, shift)
    return current()


def _statistics(model: nn.Module, adapter: Adapter, plan: CompactionPlan, kind: str, layer: int, kept: Kept,
                hidden: torch.Tensor, batches: list[dict], readout: str) -> dict:
    """Sufficient statistics of one sublayer's fit over the calibration tokens: ``n``; ``gram`` (k x k, the
    uncentred Gram matrix of the kept units' contributions at scale 1); ``cross`` (k, their inner products with the
    unpruned output ``y``); ``mean_c`` (k x kept hidden dims) and ``mean_y`` (kept hidden dims)."""
    consumer, width = sublayer_consumer(model, adapter, kind, layer)
    weight = out_in_weight(consumer)[hidden]  # [kept hidden dims, units * width]
    k, d = kept.count, int(hidden.sum())
    blocks = weight.view(d, kept.total, width)[:, kept.index]  # [d, k, width]
    n, gram, cross = 0, torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    sum_c, sum_y = torch.zeros(k, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    with closing(consumer_inputs(model, consumer, plan, batches, readout)) as inputs:
        for a, tokens in inputs:  # every unit's output at scale 1
            a = a.reshape(-1, a.shape[-1])
            if tokens is not None:
                a = a[tokens.reshape(-1)]
            a = a.double().cpu()
            y = a @ weight.T  # [n, d]: the unpruned sublayer's output, bias left out (it is the same on both sides)
            a_kept = a.view(a.shape[0], kept.total, width)[:, kept.index]  # [n, k, width]
            if width == 1:  # FFN neurons: the Gram matrix factorises, (A^T A) * (W^T W), without [n, k, d] tensors
                a_kept = a_kept[..., 0]
                w = blocks[..., 0]  # [d, k]
                gram += (a_kept.T @ a_kept) * (w.T @ w)
                cross += (a_kept * (y @ w)).sum(0)
                sum_c += a_kept.sum(0)[:, None] * w.T
            else:  # heads / KV groups: few units, their contributions explicitly
                c = torch.einsum("nkw,dkw->nkd", a_kept, blocks)
                gram += torch.einsum("nkd,njd->kj", c, c)
                cross += torch.einsum("nkd,nd->k", c, y)
                sum_c += c.sum(0)
            sum_y += y.sum(0)
            n += a.shape[0]
    return {"n": n, "gram": gram, "cross": cross, "mean_c": sum_c / n, "mean_y": sum_y / n}


def solve(stats: dict, s0: torch.Tensor, ridge: float, *, intercept: bool = True):
    """``(scales, shift)`` minimising ``sum_t ||sum_j s_j c_j(t) + b - y(t)||^2 + lambda ||s - s0||^2`` from the
    statistics of :func:`_statistics` (``lambda = ridge * trace(G) / k`` on the Gram matrix ``G`` the fit uses);
    without ``intercept``, ``b = 0`` and the shift is ``None``."""
    n, gram, cross = stats["n"], stats["gram"], stats["cross"]
    mean_c, mean_y = stats["mean_c"], stats["mean_y"]
    if intercept:  # centre: the intercept absorbs the means, b = mean_y - s @ mean_c
        gram = gram - n * mean_c @ mean_c.T
        cross = cross - n * mean_c @ mean_y
    k = gram.shape[0]
    lam = ridge * gram.diagonal().sum().clamp_min(1e-30) / k
    system = gram + lam * torch.eye(k, dtype=gram.dtype)
    rhs = cross + lam * s0.to(gram.dtype)
    # lstsq tolerates a singular system (ridge 0 with units that never fire or duplicate contributions)
    scales = torch.linalg.lstsq(system, rhs[:, None], driver="gelsd").solution[:, 0]
    return scales, (mean_y - scales @ mean_c) if intercept else None


__all__ = ["refit_plan"]
