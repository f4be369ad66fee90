"""The closed loop of latency targets: the paired-ratio speedup estimate and its stopping rule (on a fake clock),
the re-planning loop against a synthetic reality the table mis-prices, and a pruning run's plan re-made from its
masks (a tiny BERT, a synthetic table, a timer that reads the compacted widths instead of a clock)."""
import json
import math
import random
import warnings

import pytest
from latency_tables import synthetic_table
from test_latency_target import STEP, _classifier, _features

from vtrans_kernels.latency.calibrate import (SpeedupEstimate, calibrate_run, closed_loop, measure_speedup,
                                              median_interval, paired_speedup, time_interleaved)


class FakeClock:
    """A stopwatch whose time only moves when a fake forward says so."""

    clock = "fake"

    def __init__(self):
        self.now = 0.0

    def mark(self):
        return self.now

    def sync(self):
        pass

    def ms(self, start, end):
        return end - start


def _forward(clock, cost, calls=None, name=None):
    def run():
        clock.now += cost()
        if calls is not None:
            calls.append(name)
    return run


def test_interleaved_rounds_time_every_forward_once_in_a_shuffled_order():
    clock, calls = FakeClock(), []
    forwards = {n: _forward(clock, lambda c=c: c, calls, n) for n, c in (("a", 3.0), ("b", 1.0), ("c", 2.0))}
    samples = time_interleaved(forwards, [clock], 12, warmup=2, rng=random.Random(1))["fake"]
    assert samples == {"a": [3.0] * 12, "b": [1.0] * 12, "c": [2.0] * 12}
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # the warm-up
    rounds = [tuple(calls[6 + 3 * i: 9 + 3 * i]) for i in range(12)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds) and len(set(rounds)) > 1
    with pytest.raises(ValueError, match="rounds: expected at least 1"):
        time_interleaved(forwards, [clock], 0)


def test_median_interval_brackets_the_median_and_narrows_with_more_values():
    values = list(range(1, 101))
    low, mid, high = median_interval(values)
    assert low < mid == 50.5 < high and high - low < 25
    wide = median_interval(values[::10])
    assert wide[2] - wide[0] > high - low
    with pytest.raises(ValueError, match="no values"):
        median_interval([])


def test_paired_ratios_cancel_what_both_models_of_a_round_share():
    # the machine drifts 1x..2x slower over the rounds, and the candidate's rounds come from a slower spell than the
    # reference's when the samples are not paired (sorted apart): the paired ratio still sees 2.5x exactly
    drift = [1 + i / 40 for i in range(40)]
    reference, candidate = [10 * d for d in drift], [4 * d for d in drift]
    estimate = paired_speedup(reference, candidate)
    assert estimate.speedup == pytest.approx(2.5) and estimate.low == pytest.approx(2.5) == estimate.high
    assert estimate.rounds == 40 and estimate.precision == pytest.approx(0)
    assert estimate.reference_ms == pytest.approx(10 * 1.1, rel=0.05)  # settled: the fastest spell
    unpaired = paired_speedup(reference[:20], candidate[20:])
    assert unpaired.speedup < 2.0  # what pairing removes
    with pytest.raises(ValueError, match="expected paired samples"):
        paired_speedup([1.0, 2.0], [1.0])


def test_measure_speedup_runs_more_rounds_only_while_the_estimate_is_loose():
    clock = FakeClock()
    quiet = measure_speedup(_forward(clock, lambda: 6.0), _forward(clock, lambda: 2.0), clock, min_rounds=20,
                            max_rounds=200, precision=0.02)
    assert quiet.speedup == pytest.approx(3.0) and quiet.rounds == 20
    rng = random.Random(0)
    noisy = measure_speedup(_forward(clock, lambda: 6.0 * rng.uniform(0.8, 1.25)), _forward(clock, lambda: 2.0),
                            clock, min_rounds=20, max_rounds=400, precision=0.02)
    assert 20 < noisy.rounds < 400 and noisy.precision <= 0.02
    assert noisy.low <= noisy.speedup <= noisy.high and abs(noisy.speedup - 3.0) < 0.15
    capped = measure_speedup(_forward(clock, lambda: 6.0 * rng.uniform(0.5, 2.0)), _forward(clock, lambda: 2.0),
                             clock, min_rounds=10, max_rounds=30, precision=0.001)
    assert capped.rounds == 30
    with pytest.raises(ValueError, match="min_rounds, max_rounds"):
        measure_speedup(lambda: None, lambda: None, clock, min_rounds=0)


def _reality(exponent, grid=0.05):
    """A table whose plans come in steps of ``grid`` speedup, and a machine on which a plan the table prices at
    speedup s runs at s ** exponent (exponent > 1: the table under-prices the unpruned model against deep cuts)."""
    def plan_for(asked):
        table = math.floor(asked / grid + 1e-9) * grid + grid  # the first step at or beyond the ask
        return f"plan {table:.2f}", table, round(table, 6)

    def measure(plan):
        s = float(plan.split()[1]) ** exponent
        return SpeedupEstimate(s, s * 0.99, s * 1.01, 20, 10.0, 10.0 / s)
    return plan_for, measure


@pytest.mark.parametrize("target, exponent", [(1.5, 1.15), (2.0, 1.15), (3.0, 1.15), (3.0, 0.9), (2.0, 1.0)])
def test_the_loop_replans_until_the_measured_speedup_meets_the_target(target, exponent):
    plan_for, measure = _reality(exponent)
    plan, record = closed_loop(plan_for, measure, target, max_speedup=10.0, tolerance=0.03, max_plans=4)
    first = record.attempts[0]
    assert first.asked == target
    if abs(math.log(first.measured / target)) > math.log(1.03):  # the table's own plan misses: re-planned
        assert len(record.attempts) > 1
    assert record.met and record.stopped == "within the tolerance"
    assert abs(record.best.measured / target - 1) <= 0.03
    assert plan == f"plan {record.best.table_speedup:.2f}"
    assert record.to_dict()["measured_speedup"] == record.best.measured
    if exponent > 1:  # the machine runs deep cuts faster than the table says: the chosen plan asks the table for less
        assert record.best.table_speedup < target


def test_the_loop_stops_at_a_repeated_plan_or_after_max_plans_and_keeps_the_nearest():
    def same_plan(asked):
        return "only plan", 2.0, "only"
    plan, record = closed_loop(same_plan, lambda p: SpeedupEstimate(2.4, 2.3, 2.5, 20, 1, 1), 2.0,
                               max_speedup=5.0, max_plans=4)
    assert len(record.attempts) == 1 and "already timed" in record.stopped and not record.met

    measured = iter([2.6, 1.7, 2.3, 2.25])  # a machine too noisy to settle: four plans, the nearest kept
    plan_for, _ = _reality(1.0)
    plan, record = closed_loop(plan_for, lambda p: SpeedupEstimate(next(measured), 0, 0, 20, 1, 1), 2.0,
                               max_speedup=5.0, tolerance=0.03, max_plans=4)
    assert [a.measured for a in record.attempts] == [2.6, 1.7, 2.3, 2.25]
    assert record.stopped == "4 plans timed" and record.chosen == 3 and not record.met
    assert all(1 < a.asked <= 5.0 for a in record.attempts)
    with pytest.raises(ValueError, match="max_plans"):
        closed_loop(plan_for, measure_speedup, 2.0, max_speedup=5.0, max_plans=0)
    with pytest.raises(ValueError, match="tolerance"):
        closed_loop(plan_for, measure_speedup, 2.0, max_speedup=5.0, tolerance=0)


def test_a_pruning_runs_plan_is_remade_from_its_masks_until_it_measures_the_target(tmp_path):
    from vtrans_kernels.hf import adapter_for, compact
    from vtrans_kernels.hf.plan import CompactionPlan
    from vtrans_kernels.prune import PruneConfig, run_pruning
    from vtrans_kernels.prune.data import Batches

    model = _classifier()
    table = synthetic_table(model, step=STEP)
    table.save(tmp_path / "table.json")
    config = PruneConfig(target="latency", target_speedup=2.0, latency_table=str(tmp_path / "table.json"),
                         steps=10, batch_size=8, log_every=5, checkpoint_every=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 10 steps do not converge; the plan ranks by score
        result = run_pruning(model, Batches(_features(), 8), config, tmp_path / "run", progress=False, plots=False)
    result.pruner.finish()
    measure = result.pruner.measure

    def table_speedup(small):
        units = adapter_for(small).units()
        return measure.speedup(units.hidden, list(units.heads), list(units.ffn))

    seen = []

    def timer(reference, small):  # this "machine" runs every plan 15% faster than the table predicts
        assert reference is model and not small.training
        seen.append(table_speedup(small))
        s = seen[-1] * 1.15
        return SpeedupEstimate(s, s, s, 20, 1.0, 1.0 / s)

    calibrated, record = calibrate_run(result, model, tmp_path / "run", timer=timer, tolerance=0.03)
    assert seen[0] >= 2.0 and len(record["attempts"]) == len(seen) >= 2  # the table's plan ran 2.3x: re-planned
    chosen = record["attempts"][record["chosen"]]
    assert abs(chosen["measured"] / 2.0 - 1) <= 0.08
    assert chosen["table_speedup"] < 2.0 and chosen["table_speedup"] == pytest.approx(seen[record["chosen"]])
    kept = calibrated.summary
    widths = (kept["hidden"][0], [k for k, _ in kept["heads"]], [k for k, _ in kept["ffn"]])
    assert measure.speedup(*widths) == pytest.approx(chosen["table_speedup"])
    assert kept["sparsity"] == pytest.approx(1 - 1 / chosen["table_speedup"])
    units = adapter_for(compact(model, calibrated.plan)).units()
    assert (units.hidden, list(units.heads), list(units.ffn)) == widths
    saved = CompactionPlan.load(tmp_path / "run" / "plan.json")
    assert saved.model == calibrated.plan.model and saved.model.get("fingerprint") == result.plan.model["fingerprint"]
    assert json.dumps(record)  # the summary's record is plain JSON
    assert model.training == result.pruner.model.training

    from vtrans_kernels.latency.calibrate import calibrate_plan
    seen.clear()
    plan, other = calibrate_plan(model, result.pruner, timer=timer, target_speedup=1.5)  # the same masks, 1.5x
    assert other.target == 1.5 and seen[0] >= 1.5 and abs(other.best.measured / 1.5 - 1) <= 0.08
    with pytest.raises(ValueError, match="target_speedup: expected a number > 1"):
        calibrate_plan(model, result.pruner, timer=timer, target_speedup=0.5)
