"""The closed loop of a latency target: time the plan against the unpruned model, re-plan until the measured
speedup meets the request.

A table predicts each block in isolation, on the machine as it was while profiling; the deployed models run on
the machine as it is now, and the error is not the same for every plan (on the project's shared 2-core CPU the
unpruned MiniLM ran 1-18% slower than its table from one timing run to the next, and a 3x plan's error differed
from the unpruned model's by up to 16 points). So after the plan, the compacted model is timed against the
unpruned one on the table's device, batch, sequence length, dtype and threads (:func:`measure_speedup`), and
when the measured speedup misses the request by more than ``tolerance`` the table-level speedup asked for is
rescaled and the plan made again from the same trained masks (:func:`closed_loop`; planning from mask scores
takes milliseconds).

The estimate (:func:`paired_speedup`): every round runs both models back to back in a random order, and the
speedup is the median of the per-round ratios ``reference_ms / candidate_ms``. Disturbances that last longer than
a round (another job's burst, a cooled cache, a frequency change) stretch both members of a pair and cancel in
their ratio, which a ratio of two medians taken over different moments does not do; rounds go on until the
median's 95% order-statistic interval is within ``precision`` of it (fast models need more rounds).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

import torch
from torch import nn

from .stats import settled_ms

log = logging.getLogger(__name__)


# ---- timing -------------------------------------------------------------------------------------------------
def time_interleaved(forwards: Mapping[str, Callable[[], object]], stopwatches: Sequence, rounds: int, *,
                     warmup: int = 2, rng: random.Random | None = None) -> dict[str, dict[str, list[float]]]:
    """``{clock: {name: [ms per round]}}``: ``rounds`` rounds, each calling every forward once in a new random
    order (after ``warmup`` untimed calls of each), read on every stopwatch (:class:`~.timer.Stopwatch`, or any
    object with ``clock``, ``mark``, ``sync`` and ``ms``). Sample ``i`` of every name comes from round ``i``."""
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    rng = rng or random.Random(0)
    samples = {w.clock: {name: [] for name in forwards} for w in stopwatches}
    for forward in forwards.values():
        for _ in range(warmup):
            forward()
    for w in stopwatches:
        w.sync()
    for _ in range(rounds):
        names = list(forwards)
        rng.shuffle(names)
        for name in names:
            starts = [w.mark() for w in stopwatches]
            forwards[name]()
            ends = [w.mark() for w in reversed(stopwatches)][::-1]
            for w, start, end in zip(stopwatches, starts, ends):
                w.sync()
                samples[w.clock][name].append(w.ms(start, end))
    return samples


def median_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """(low, median, high): the median and its distribution-free ~95% interval, the order statistics
    ``n/2 -+ z*sqrt(n)/2`` of the sorted values."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("median_interval: no values")
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = ordered[max(0, math.floor(n / 2 - half))]
    high = ordered[min(n - 1, math.ceil(n / 2 + half) - 1)]
    return low, statistics.median(ordered), high


@dataclass
class SpeedupEstimate:
    """A measured speedup: the median of the paired per-round ratios and its ~95% interval, the rounds, and each
    model's settled latency over the same rounds (:func:`~.stats.settled_ms`)."""

    speedup: float
    low: float
    high: float
    rounds: int
    reference_ms: float
    candidate_ms: float

    @property
    def precision(self) -> float:
        """Half the interval's width relative to the speedup."""
        return (self.high - self.low) / (2 * self.speedup)


def paired_speedup(reference: Sequence[float], candidate: Sequence[float]) -> SpeedupEstimate:
    """The speedup of ``candidate`` over ``reference`` from samples taken in the same rounds (sample ``i`` of
    both in round ``i``): the median of ``reference[i] / candidate[i]``."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"paired_speedup: expected paired samples, got {len(reference)} and {len(candidate)}")
    ratios = [r / c for r, c in zip(reference, candidate) if c > 0]
    if not ratios:
        raise ValueError("paired_speedup: the candidate's samples are all zero")
    low, mid, high = median_interval(ratios)
    return SpeedupEstimate(mid, low, high, len(ratios), settled_ms(reference), settled_ms(candidate))


def measure_speedup(reference: Callable[[], object], candidate: Callable[[], object], stopwatch, *,
                    min_rounds: int = 20, max_rounds: int = 200, precision: float = 0.02, warmup: int = 2,
                    seed: int = 0) -> SpeedupEstimate:
    """:func:`paired_speedup` of two forwards timed in interleaved rounds on ``stopwatch``: ``min_rounds`` first,
    then ten more at a time until the estimate's interval is within ``precision`` (relative half-width) or
    ``max_rounds`` ran."""
    if not 1 <= min_rounds <= max_rounds:
        raise ValueError(f"min_rounds, max_rounds: expected 1 <= min_rounds <= max_rounds, got {min_rounds}, "
                         f"{max_rounds}")
    rng = random.Random(seed)
    forwards = {"reference": reference, "candidate": candidate}
    got = time_interleaved(forwards, [stopwatch], min_rounds, warmup=warmup, rng=rng)[stopwatch.clock]
    while True:
        estimate = paired_speedup(got["reference"], got["candidate"])
        if estimate.precision <= precision or estimate.rounds >= max_rounds:
            return estimate
        more = time_interleaved(forwards, [stopwatch], min(10, max_rounds - estimate.rounds), warmup=0,
                                rng=rng)[stopwatch.clock]
        for name in got:
            got[name] += more[name]


# ---- the loop -----------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    """One plan of the loop: the speedup asked of the table, the table's speedup of the plan it gave, the
    measured speedup and its interval, the rounds timed, and the plan's widths (``key``)."""

    asked: float
    table_speedup: float
    measured: float
    low: float
    high: float
    rounds: int
    key: Hashable = None


@dataclass
class Calibration:
    """The loop's record: the requested speedup, the tolerance, every attempt, the chosen one (measured nearest
    to the request), whether it is within the tolerance, and why the loop stopped."""

    target: float
    tolerance: float
    attempts: list[Attempt] = field(default_factory=list)
    chosen: int = 0
    met: bool = False
    stopped: str = ""

    @property
    def best(self) -> Attempt:
        return self.attempts[self.chosen]

    def to_dict(self) -> dict:
        """JSON-ready: the attempts without their keys, and the chosen attempt's measured speedup."""
        attempts = [{k: v for k, v in asdict(a).items() if k != "key"} for a in self.attempts]
        return {"target_speedup": self.target, "tolerance": self.tolerance, "attempts": attempts,
                "chosen": self.chosen, "measured_speedup": self.best.measured, "met": self.met,
                "stopped": self.stopped}


def _miss(measured: float, target: float) -> float:
    return abs(math.log(measured / target))


def _next_ask(attempts: list[Attempt], target: float) -> float:
    """The table speedup to ask for next: between the nearest plans measured below and above the target,
    interpolated in log-log (measured against the table's speedup); with plans on one side only, the nearest
    plan's table speedup scaled by how far it missed (the table's error taken as a constant factor)."""
    below = [a for a in attempts if a.measured < target]
    above = [a for a in attempts if a.measured > target]
    if below and above:
        lo = max(below, key=lambda a: a.measured)
        hi = min(above, key=lambda a: a.measured)
        if hi.table_speedup != lo.table_speedup and hi.measured != lo.measured:
            slope = math.log(hi.table_speedup / lo.table_speedup) / math.log(hi.measured / lo.measured)
            if slope > 0:  # more table speedup measured faster, as it should
                return lo.table_speedup * math.exp(slope * math.log(target / lo.measured))
    nearest = min(attempts, key=lambda a: _miss(a.measured, target))
    return nearest.table_speedup * target / nearest.measured


def closed_loop(plan_for: Callable[[float], tuple[object, float, Hashable]],
                measure: Callable[[object], SpeedupEstimate], target: float, *, max_speedup: float,
                tolerance: float = 0.03, max_plans: int = 4) -> tuple[object, Calibration]:
    """Meet a measured speedup of ``target`` within ``tolerance`` (between ``target / (1 + tolerance)`` and
    ``target * (1 + tolerance)``): ``plan_for(s)`` returns the plan
    the table gives for speedup ``s`` as ``(plan, the table's speedup of that plan, a key of its widths)``;
    ``measure(plan)`` times it (:class:`SpeedupEstimate`). The first plan asks the table for ``target``; each
    further one asks for a rescaled speedup (:func:`_next_ask`, kept within ``(1, max_speedup]``), until a plan
    lands within ``tolerance``, ``max_plans`` plans were timed, or the table gives a plan already timed. Returns
    the plan measured nearest to ``target`` and the :class:`Calibration` record."""
    if not (isinstance(max_plans, int) and max_plans >= 1):
        raise ValueError(f"max_plans: expected an int >= 1, got {max_plans!r}")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ValueError(f"tolerance: expected a fraction in (0, 1), got {tolerance!r}")
    record = Calibration(float(target), float(tolerance))
    plans, asked = [], float(target)
    while True:
        plan, table_speedup, key = plan_for(asked)
        if any(a.key == key for a in record.attempts):
            record.stopped = f"the table gives an already timed plan for {asked:.3f}x"
            break
        estimate = measure(plan)
        attempt = Attempt(asked, float(table_speedup), estimate.speedup, estimate.low, estimate.high,
                          estimate.rounds, key)
        record.attempts.append(attempt)
        plans.append(plan)
        log.info("latency target %.3gx: plan %d asked the table for %.3fx (table %.3fx), measured %.3fx [%.3f, %.3f] "
                 "in %d rounds", target, len(plans), asked, table_speedup, estimate.speedup, estimate.low,
                 estimate.high, estimate.rounds)
        if _miss(estimate.speedup, target) <= math.log1p(tolerance):
            record.stopped = "within the tolerance"
            break
        if len(plans) >= max_plans:
            record.stopped = f"{max_plans} plans timed"
            break
        asked = min(max(_next_ask(record.attempts, target), 1 + 1e-6), max_speedup * (1 - 1e-9))
    record.chosen = min(range(len(plans)), key=lambda i: _miss(record.attempts[i].measured, target))
    record.met = _miss(record.best.measured, target) <= math.log1p(tolerance)
    return plans[record.chosen], record


# ---- a pruning run's plan -----------------------------------------------------------------------------------
def calibrate_plan(model: nn.Module, pruner, *, tolerance: float = 0.03, max_plans: int = 4, min_rounds: int = 20,
                   max_rounds: int = 120, precision: float = 0.02, seed: int = 0, fingerprint: str | None = None,
                   timer: Callable[[nn.Module, nn.Module], SpeedupEstimate] | None = None,
                   target_speedup: float | None = None) -> tuple[object, Calibration]:
    """The closed loop (:func:`closed_loop`) for a latency-target ``pruner`` (after :meth:`Pruner.finish`) on
    ``model``, the unpruned model its masks were trained on: each plan is ``pruner.plan`` at the latency sparsity
    of the speedup asked, compacted and timed against ``model`` on random token ids of the table's batch and
    sequence length, in the table's dtype, with the table's CPU threads and clock. ``fingerprint`` is recorded
    in every plan's model record (as ``run_pruning`` records it). ``timer(reference, compacted)``, if given,
    replaces the timing (tests give one that needs no clock). ``target_speedup`` (default the pruner's) plans
    the same masks for another speedup."""
    from ..hf.compact import compact
    from ..prune.run import kept_summary
    from .environment import DTYPES
    from .profile import _forward, _threads
    from .target import check_speedup, speedup_to_sparsity
    from .timer import Stopwatch, default_clock

    measure = getattr(pruner, "measure", None)
    if getattr(measure, "kind", None) != "latency":
        raise ValueError("pruner: the closed loop needs a latency-target pruner (PruneConfig(target='latency'))")
    table = measure.table
    parameter = next(model.parameters())
    device, dtype = parameter.device, DTYPES[table.dtype]
    threads = table.device.get("threads") if device.type == "cpu" else None
    reference = model if parameter.dtype == dtype else copy.deepcopy(model).to(dtype)
    training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 0) or 2)
    ids = torch.randint(0, vocab, (table.batch_size, table.seq_len), generator=gen).to(device)

    def plan_for(speedup: float):
        plan = pruner.plan(speedup_to_sparsity(speedup))
        if fingerprint is not None:
            plan.model["fingerprint"] = fingerprint
        kept = kept_summary(plan, pruner)
        counts = (kept["hidden"][0], tuple(k for k, _ in kept["heads"]), tuple(k for k, _ in kept["ffn"]))
        return plan, measure.speedup(counts[0], list(counts[1]), list(counts[2])), counts

    def timed(reference: nn.Module, small: nn.Module) -> SpeedupEstimate:
        with torch.inference_mode():
            return measure_speedup(_forward(reference, ids), _forward(small, ids), stopwatch, min_rounds=min_rounds,
                                   max_rounds=max_rounds, precision=precision, seed=seed)

    def time_plan(plan) -> SpeedupEstimate:
        return (timer or timed)(reference, compact(model, plan).to(dtype).eval())

    try:
        with _threads(device, threads):
            stopwatch = Stopwatch(default_clock(device, torch.get_num_threads()))
            target = pruner.config.target_speedup if target_speedup is None else check_speedup(target_speedup)
            return closed_loop(plan_for, time_plan, target,
                               max_speedup=measure.max_speedup(pruner.config.structures), tolerance=tolerance,
                               max_plans=max_plans)
    finally:
        model.train(training)


def calibrate_run(result, model: nn.Module, out_dir, **settings):
    """:func:`calibrate_plan` for a :func:`~vtrans_kernels.prune.run.run_pruning` result: returns the result
    with the chosen plan (rewritten to ``out_dir/plan.json``) and its kept units and table sparsity in the
    summary, and the loop's record as a dict (:meth:`Calibration.to_dict`)."""
    import dataclasses
    from pathlib import Path

    from ..prune.run import PLAN, kept_summary

    pruner = result.pruner
    plan, record = calibrate_plan(model, pruner, fingerprint=result.plan.model.get("fingerprint"), **settings)
    summary = dict(result.summary, **kept_summary(plan, pruner))
    summary["sparsity"] = float(pruner.measure.sparsity(summary["hidden"][0], [k for k, _ in summary["heads"]],
                                                        [k for k, _ in summary["ffn"]]))
    plan.save(Path(out_dir) / PLAN)
    return dataclasses.replace(result, plan=plan, summary=summary), record.to_dict()
