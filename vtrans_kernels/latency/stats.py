"""The latency estimate of repeated timings on a machine that other jobs share.

Which statistic depends on the clock. With the wall clock, a timing is either undisturbed or stretched about 2x
while another process holds the core, in bursts: :func:`settled_ms`. With the thread's CPU time (and CUDA
events) time spent descheduled does not count; what a busy machine still adds (caches cooled by the other
jobs) stretches every timing a little, and the plain median of blocks, fixed cost and totals stays additive,
where low quantiles would not (the fastest totals are slower than the sum of the fastest parts).
"""
from __future__ import annotations

import statistics
from typing import Sequence

# Samples slower than the fastest by more than this fraction count as disturbed (another job held the core).
SETTLED_TOLERANCE = 0.2


def settled_ms(samples: Sequence[float], tolerance: float = SETTLED_TOLERANCE) -> float:
    """The median of the samples within ``tolerance`` of the fastest one.

    On a shared machine a timing is either undisturbed or stretched while another process holds the core (on
    the project's 2-core machines about 2x, in bursts); the plain median follows whichever kind is the majority.
    Extra time is never negative, so the fastest runs bound the undisturbed latency, and the median of those near
    them is less optimistic than the minimum alone. When every sample lies within ``tolerance`` of the fastest
    (a quiet machine) it is the plain median."""
    values = sorted(float(s) for s in samples)
    if not values:
        raise ValueError("settled_ms: no samples")
    if values[0] <= 0:
        return statistics.median(values)
    return statistics.median([v for v in values if v <= values[0] * (1 + tolerance)])


def statistic_for(clock: str) -> str:
    """"settled" for the wall clock, "median" for the thread's CPU time and CUDA events (module docstring)."""
    return "settled" if clock == "wall" else "median"


def estimate_ms(samples: Sequence[float], statistic: str) -> float:
    """The latency estimate of ``samples`` by ``statistic`` ("median" or "settled")."""
    if statistic == "settled":
        return settled_ms(samples)
    if statistic != "median":
        raise ValueError(f"statistic: expected 'median' or 'settled', got {statistic!r}")
    if not samples:
        raise ValueError("estimate_ms: no samples")
    return statistics.median(float(v) for v in samples)
