"""The final plan under a latency target: widths the table shows are fast, at the table's target latency.

Units are ranked by one score threshold across every mask (as :meth:`MaskSet.decide` does for size targets).
Each threshold keeps some count per mask; the count is moved to the nearest fast width of its block (the hidden
size to the nearest measured one), and the table predicts the latency of those widths exactly. A plan starts
from the loosest threshold (the most units) whose predicted latency is at most ``(1 - target_sparsity)`` of the
unpruned model's, then goes on lowering the threshold mask by mask where the next fast width still fits the
budget (a step of one mask, such as the hidden size's jump to the next measured one, may not fit while smaller
ones do). Measured hidden sizes are far apart, so the same is done with the hidden size held at each of the two
measured sizes around the masks' count, and the plan that uses the budget best (predicted latency nearest to
it) is kept. Each mask keeps its top-scoring units up to its width.
"""
from __future__ import annotations

import numpy as np
import torch

from ..masks.mask_set import Decision


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[:count]] = True
    return keep


def _counts_by_threshold(scores: list[torch.Tensor]) -> np.ndarray:
    """[masks, thresholds]: units each mask keeps when the k highest scores overall are kept (k = 0..N; ties
    at the threshold are all kept)."""
    order = torch.sort(torch.cat(scores), descending=True).values
    thresholds = torch.cat([torch.tensor([float("inf")], dtype=order.dtype), order])
    rows = [(s.numel() - torch.searchsorted(torch.sort(s).values, thresholds, right=False)).numpy() for s in scores]
    return np.stack(rows)


class _Plans:
    """Widths and predicted latency of plans over the masks ``entries`` ((structure, layer, mask) rows)."""

    BLOCKS = {"heads": "attention", "ffn": "ffn"}

    def __init__(self, table, spec, entries):
        self.table, self.entries = table, entries
        self.limits = [spec.hidden_size if s == "hidden" else
                       (spec.units_per_layer if s == "heads" else spec.ffn_per_layer)[layer] for s, layer, _ in entries]
        self.hidden_row = next((r for r, (s, _, _) in enumerate(entries) if s == "hidden"), None)
        self.full_hidden = spec.hidden_size
        masked = {(s, layer) for s, layer, _ in entries}
        # blocks without masks stay whole: their latency only depends on the hidden size
        self._whole = {h: sum(table.curve(self.BLOCKS[s], h).at(limit)
                              for s, limits in (("heads", spec.units_per_layer), ("ffn", spec.ffn_per_layer))
                              for layer, limit in enumerate(limits) if (s, layer) not in masked)
                       for h in table.hidden_sizes}
        self._snaps: dict = {}

    def snap(self, hidden: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """For every count 0..limit of ``row`` at ``hidden``: the nearest fast width (ties go wider), its ms."""
        key = (hidden, row)
        if key not in self._snaps:
            curve = self.table.curve(self.BLOCKS[self.entries[row][0]], hidden)
            fast = np.array(curve.fast_widths(self.limits[row]))
            counts = np.arange(self.limits[row] + 1)
            distance = np.abs(counts[:, None] - fast[None, :]) - fast[None, :] * 1e-9
            widths = fast[distance.argmin(axis=1)]
            self._snaps[key] = (widths, np.array([curve.at(int(w)) for w in widths]))
        return self._snaps[key]

    def hidden_for(self, counts):
        """The measured hidden size nearest to each hidden count (the model's when hidden has no mask)."""
        sizes = np.array(self.table.hidden_sizes)
        if self.hidden_row is None:
            return np.full(np.shape(counts)[-1], self.full_hidden)
        return sizes[np.abs(np.asarray(counts)[self.hidden_row][:, None] - sizes[None, :]).argmin(axis=1)]

    def scan(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Snapped widths [rows, plans] and predicted ms [plans] for each column of kept ``counts``."""
        hidden = self.hidden_for(counts)
        widths, latency = np.zeros_like(counts), np.zeros(counts.shape[1])
        for h in np.unique(hidden):
            cols = hidden == h
            total = np.full(int(cols.sum()), self.table.fixed_ms()[int(h)] + self._whole[int(h)])
            for row in range(len(self.entries)):
                if row == self.hidden_row:
                    widths[row, cols] = h
                    continue
                snapped, ms = self.snap(int(h), row)
                widths[row, cols] = snapped[counts[row, cols]]
                total = total + ms[counts[row, cols]]
            latency[cols] = total
        return widths, latency

    def latency(self, widths: np.ndarray) -> tuple[np.ndarray, float]:
        """One plan's ``widths`` (a hidden width must be a measured size) moved to fast widths at its hidden size,
        and their predicted ms."""
        snapped, latency = self.scan(np.minimum(widths, self.limits).reshape(-1, 1))
        return snapped[:, 0], float(latency[0])

    def upgrade(self, widths: np.ndarray, row: int) -> np.ndarray | None:
        """``widths`` with ``row`` at its next wider fast width (the next measured hidden size), or None."""
        current = int(widths[row])
        if row == self.hidden_row:
            wider = [h for h in self.table.hidden_sizes if h > current]
        else:
            hidden = self.full_hidden if self.hidden_row is None else int(widths[self.hidden_row])
            wider = [int(w) for w in np.unique(self.snap(hidden, row)[0]) if w > current]
        if not wider:
            return None
        trial = widths.copy()
        trial[row] = min(wider)
        return trial


def latency_decision(masks, measure, target_sparsity: float | None) -> Decision:
    """See the module docstring. ``masks``: a :class:`~vtrans_kernels.masks.MaskSet`; ``measure``: its
    :class:`~.model.LatencyMeasure`. ``target_sparsity`` ``None`` keeps the masks' own kept counts, moved to
    fast widths."""
    entries = list(masks.masks())
    scores = [m.score().detach().float().cpu() for _, _, m in entries]
    plans = _Plans(measure.table, measure.spec, entries)
    if target_sparsity is None:
        own = masks.decision()
        kept = {"hidden": [own.hidden], "heads": own.heads, "ffn": own.ffn}
        counts = np.array([[int(kept[s][0 if layer is None else layer].sum())] for s, layer, _ in entries])
        widths = plans.scan(counts)[0][:, 0]
    else:
        budget = measure.dense_ms * (1 - float(target_sparsity)) * (1 + 1e-9)
        counts = _counts_by_threshold(scores)
        pick = _loosest(plans, counts, budget, measure)
        candidates = [pick]
        if plans.hidden_row is not None:  # the measured hidden sizes around the masks' count, each tried whole
            count = counts[plans.hidden_row, pick[1]]
            sizes = plans.table.hidden_sizes
            for size in {max([h for h in sizes if h <= count] or sizes[:1]), min([h for h in sizes if h >= count]
                                                                                  or sizes[-1:])}:
                fixed = counts.copy()
                fixed[plans.hidden_row] = size
                candidates.append(_loosest(plans, fixed, budget, measure, required=False))
        filled = [_fill(plans, c[0], scores, budget) for c in candidates if c is not None]
        widths = max(filled, key=lambda w: plans.latency(w)[1])  # the plan using the budget best
    keep = {"hidden": [], "heads": [], "ffn": []}
    for row, (structure, _, _) in enumerate(entries):
        keep[structure].append(_top(scores[row], int(widths[row])))
    return Decision(keep["hidden"][0] if keep["hidden"] else None, keep["heads"] or None, keep["ffn"] or None)


def _loosest(plans: _Plans, counts: np.ndarray, budget: float, measure, required: bool = True):
    """(widths, column) of the loosest threshold whose plan fits ``budget`` ms; None (or, when ``required``, an
    error naming the reachable speedup) when none does."""
    widths, latency = plans.scan(counts)
    meeting = np.nonzero(latency <= budget)[0]
    if meeting.size == 0:
        if not required:
            return None
        raise ValueError(f"target: no plan over the masks' structures reaches {measure.dense_ms / budget:.2f}x "
                         f"by the latency table (at most {measure.dense_ms / latency.min():.2f}x)")
    column = int(meeting.max())
    return widths[:, column], column


def _fill(plans: _Plans, widths: np.ndarray, scores: list[torch.Tensor], budget: float) -> np.ndarray:
    """Widen masks, best next unit first, while the plan stays within ``budget`` ms."""
    ranked = [torch.sort(s, descending=True).values for s in scores]
    while True:
        candidates = sorted((float(ranked[r][int(widths[r])]), r) for r in range(len(widths))
                            if int(widths[r]) < ranked[r].numel())
        for _, row in reversed(candidates):
            trial = plans.upgrade(widths, row)
            if trial is None:
                continue
            trial, latency = plans.latency(trial)
            if latency <= budget:  # the hidden size only grows, each other width only grows at one: it ends
                widths = trial
                break
        else:
            return widths
