"""Latency as a function of one width (heads or FFN neurons): a monotone fit of measured medians, the widths
that are fast (no wider width costs as little), and a differentiable interpolation through them."""
from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Sequence

import torch


def isotonic(values: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (pool adjacent violators).

    Measured latencies are noisy; a wider block never runs faster for real, so a dip is noise and is pooled
    with its neighbours. Equal fitted values mark a flat step (the extra units are free there)."""
    weights = [1.0] * len(values) if weights is None else list(weights)
    if len(weights) != len(values):
        raise ValueError(f"isotonic: {len(values)} values but {len(weights)} weights")
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(values, weights):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean2, w2, n2 = blocks.pop()
            mean1, w1, n1 = blocks.pop()
            blocks.append([(mean1 * w1 + mean2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    fitted: list[float] = []
    for mean, _, count in blocks:
        fitted.extend([mean] * count)
    return fitted


@dataclass(frozen=True)
class Curve:
    """Latency (ms) over a grid of widths, fitted non-decreasing.

    ``widths``: ascending ints starting at 0 (a removed sublayer, 0 ms); ``values``: the fitted latency at each.
    A width is *fast* when every wider grid width costs strictly more: the last width of each flat step.
    """

    widths: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def fit(cls, widths: Sequence[int], medians: Sequence[float]) -> "Curve":
        """The curve through measured ``medians`` at ``widths`` (ascending, 0 included with 0 ms, kept exact)."""
        widths = [int(w) for w in widths]
        if not widths or widths[0] != 0 or any(b <= a for a, b in zip(widths, widths[1:])):
            raise ValueError(f"latency curve: widths must ascend strictly from 0, got {widths[:8]}...")
        if len(medians) != len(widths):
            raise ValueError(f"latency curve: {len(widths)} widths but {len(medians)} values")
        weights = [1e9] + [1.0] * (len(widths) - 1)  # width 0 is exact (nothing runs), never pooled upwards
        return cls(tuple(widths), tuple(isotonic([0.0, *medians[1:]], weights)))

    def fast_widths(self, limit: int | None = None) -> list[int]:
        """Fast widths up to ``limit`` (default: the widest grid width, which is always fast); ``limit`` must be
        a grid width (a layer's full width is measured) and is included."""
        return list(self._fast(self.widths[-1] if limit is None else int(limit)))

    @functools.lru_cache(maxsize=64)
    def _fast(self, limit: int) -> tuple[int, ...]:
        self.at(limit)  # a KeyError names a width the table did not measure
        return tuple(w for i, w in enumerate(self.widths)
                     if w < limit and self.values[i] < self.values[i + 1]) + (limit,)

    def at(self, width: int) -> float:
        """Fitted latency at a grid width; a width off the grid raises ``KeyError``."""
        index = bisect.bisect_left(self.widths, int(width))
        if index == len(self.widths) or self.widths[index] != int(width):
            raise KeyError(width)
        return self.values[index]

    def snap(self, count: float, limit: int) -> int:
        """The fast width (at most ``limit``) nearest to ``count``; ties go to the wider one."""
        fast = self.fast_widths(limit)
        return min(fast, key=lambda w: (abs(w - count), -w))

    def smooth(self, count, limit: int | None = None):
        """Piecewise-linear interpolation through the fast widths, evaluated at ``count`` (a float, or a tensor
        of soft counts, differentiable). Exact at fast widths; between them it rises from one step's latency to
        the next, so every unit has a price and the gradient is never zero inside a flat step."""
        fast = self.fast_widths(limit)
        xs = [float(w) for w in fast]
        ys = [self.at(w) for w in fast]
        if len(xs) == 1:
            return count * 0.0 + ys[0]
        if isinstance(count, torch.Tensor):
            x = count.clamp(xs[0], xs[-1])
            grid = torch.tensor(xs, dtype=torch.float64)
            index = int(torch.searchsorted(grid, x.detach().double().cpu().reshape(1), right=True))
            index = min(max(index, 1), len(xs) - 1)
        else:
            x = min(max(float(count), xs[0]), xs[-1])
            index = min(max(bisect.bisect_right(xs, x), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[index - 1], xs[index], ys[index - 1], ys[index]
        return y0 + (x - x0) * ((y1 - y0) / (x1 - x0))
