"""The latency estimate of repeated timings on a machine that other jobs share.

A table predicts the latency of a model on a core of its own, and other jobs only ever add time: with the wall
clock a timing is stretched about 2x while another process holds the core; with the thread's CPU time the
descheduled time does not count, but the caches the other jobs cooled still do, and they stretch the short,
scattered work outside the big GEMMs (norms, residual adds, a 1-head attention, Python) more than the GEMMs. So
every point is estimated from its fastest samples (:func:`settled_ms`), the same way for every clock. Measured on
the shared 2-core machine (bench/results/latency/): the plain median of the same samples predicted a 3x plan of
MiniLM-L6 at 3.00x where it ran 3.63x, the settled estimate at 3.44x.
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


# The statistic every table point is estimated with (see the module docstring).
STATISTIC = "settled"


def estimate_ms(samples: Sequence[float], statistic: str = STATISTIC) -> float:
    """The latency estimate of ``samples`` by ``statistic`` ("settled", or "median" for a table that asks)."""
    if statistic == "settled":
        return settled_ms(samples)
    if statistic != "median":
        raise ValueError(f"statistic: expected 'median' or 'settled', got {statistic!r}")
    if not samples:
        raise ValueError("estimate_ms: no samples")
    return statistics.median(float(v) for v in samples)
