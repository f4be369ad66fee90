"""Synthetic latency tables for tests: known curves (FFN latency in steps of ``step`` neurons), for a model."""
from __future__ import annotations

import torch

from vtrans_kernels.latency.environment import architecture_record, device_record, versions
from vtrans_kernels.latency.table import LatencyTable


def _points(widths, latency):
    values = [0.0 if w == 0 else latency(w) for w in widths]
    return {"widths": list(widths), "median_ms": values, "estimate_ms": values, "samples_ms": [[] for _ in widths]}


def synthetic_table(model, *, step: int = 8, grid: int = 4, hidden_sizes=None, fixed: float = 0.2,
                    device: str = "cpu", dtype: str = "float32") -> LatencyTable:
    """A table for ``model`` measured "on" this machine: attention ``0.1 * (1 + heads)``, FFN
    ``0.3 * ceil(neurons / step)`` (flat steps: only multiples of ``step`` and full widths are fast), FFN widths
    measured every ``grid`` neurons; everything scales with the hidden size; fixed cost ``fixed`` at full size."""
    arch = architecture_record(model)
    hidden = arch["hidden"]
    sizes = sorted(hidden_sizes or {hidden, hidden * 2 // 3, hidden // 3})
    widest = max(arch["ffn"])
    ffn_widths = sorted({0, *range(grid, widest + 1, grid), *arch["ffn"]})
    scale = lambda h: h / hidden  # noqa: E731
    attention = {h: _points(range(max(arch["heads"]) + 1), lambda u, h=h: 0.1 * scale(h) * (1 + u)) for h in sizes}
    ffn = {h: _points(ffn_widths, lambda n, h=h: 0.3 * scale(h) * -(-n // step)) for h in sizes}
    fixed_cost = {h: {"median_ms": fixed * scale(h), "estimate_ms": fixed * scale(h), "samples_ms": []}
                  for h in sizes}
    table = LatencyTable(device=device_record(torch.device(device), 1), dtype=dtype, batch_size=1, seq_len=8,
                         versions=versions(), model=arch, settings={"synthetic": True}, hidden_sizes=sizes,
                         attention=attention, ffn=ffn, fixed=fixed_cost, total=fixed_cost)
    return table
