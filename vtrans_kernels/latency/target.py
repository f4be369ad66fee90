"""A latency target for a pruning run: the table checked against the model, the device and the speedup asked."""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import nn

from ..masks.size_model import ArchitectureSpec
from .environment import architecture_record, device_record, dtype_name
from .model import LatencyMeasure
from .table import LatencyTable


def speedup_to_sparsity(speedup: float) -> float:
    """The latency sparsity a speedup means: ``1 - 1 / speedup`` (2x: half the latency saved)."""
    return 1.0 - 1.0 / float(speedup)


def check_speedup(speedup, what: str = "target_speedup") -> float:
    """``speedup`` as a float, or ``ValueError`` naming ``what`` unless it is a finite number above 1."""
    if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not math.isfinite(speedup) \
            or speedup <= 1:
        raise ValueError(f"{what}: expected a number > 1 (the pruned model's speedup over the unpruned one, "
                         f"e.g. 2.0), got {speedup!r}")
    return float(speedup)


def latency_target(model: nn.Module, spec: ArchitectureSpec, structures: Sequence[str],
                   table: LatencyTable | str | os.PathLike, target_speedup: float, *,
                   dtype: torch.dtype | str | None = None, what: str = "latency_table",
                   record: dict | None = None) -> LatencyMeasure:
    """The :class:`LatencyMeasure` of a run pruning ``structures`` of ``model`` (shapes ``spec``) to
    ``target_speedup`` by ``table`` (or the table file at that path).

    Raises ``ValueError`` naming ``what`` when the table was measured on another device (the model's: its CPU
    model or GPU name), in another dtype (``dtype``, default the model's), or for another architecture
    (``record``, default :func:`~.environment.architecture_record` of ``model``); when it lacks widths a plan
    may need; and naming ``target_speedup`` when the speedup is not above 1 or beyond what removing every
    prunable unit reaches by the table.
    """
    speedup = check_speedup(target_speedup)
    if not isinstance(table, LatencyTable):
        table = LatencyTable.load(table, what)
    parameter = next(model.parameters())
    table.check_matches(what, model=record or architecture_record(model),
                        device=device_record(parameter.device), dtype=dtype_name(dtype or parameter.dtype))
    table.check_covers(what, spec.units_per_layer, spec.ffn_per_layer, spec.hidden_size, "hidden" in structures)
    measure = LatencyMeasure(table, spec)
    reachable = measure.max_speedup(structures)
    if speedup > reachable:
        raise ValueError(f"target_speedup: {speedup:g}x is beyond what removing every prunable unit of "
                         f"{'/'.join(structures)} reaches by this table ({reachable:.2f}x: "
                         f"{measure.min_ms(structures):.3f} ms of {measure.dense_ms:.3f} ms are fixed or unpruned)")
    return measure
