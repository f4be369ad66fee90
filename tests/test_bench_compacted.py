"""bench/bench_compacted.py: the interleaved timing that makes its speedups hold on a shared machine (checked with a
simulated clock, so the tests are exact and fast), and one CPU run through both engines at a tiny shape."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where bench/ lives

from bench import bench_compacted  # noqa: E402
from bench.bench_compacted import compare  # noqa: E402


class FakeMachine:
    """A clock that advances only when a model runs: ``work`` ms of CPU each call, stretched in wall time by
    ``load(call_index)`` (a neighbour's job), so speedups are known exactly."""

    def __init__(self, load=lambda call: 1.0):
        self.wall = self.cpu = 0.0
        self.calls = []
        self.load = load

    def clock(self):
        return self.wall, self.cpu

    def model(self, name, work_ms):
        def run():
            stretch = self.load(len(self.calls))
            self.calls.append(name)
            self.wall += work_ms * stretch / 1e3
            self.cpu += work_ms / 1e3
        return run


def test_alternating_calls_cancel_a_neighbours_burst():
    """A burst that triples every call for a long stretch: timed one model after the other, it would land on one
    model only; alternating, both medians see the same machine and the speedup stays 2."""
    machine = FakeMachine(load=lambda call: 3.0 if 10 <= call < 40 else 1.0)
    result = compare(machine.model("dense", 4.0), machine.model("compact", 2.0), clock=machine.clock,
                     min_repeats=20, round_s=0.0)
    assert result["speedup"] == pytest.approx(2.0) and result["cpu_speedup"] == pytest.approx(2.0)
    assert result["converged"] and result["rounds"] == 2 and result["repeats"] == 20
    timed = machine.calls[6:]  # after the warm-up (4 calls) and the call-time estimate (2)
    assert timed[:8] == ["dense", "compact", "compact", "dense"] * 2  # ABBA: drift within a pair hits both
    assert timed.count("dense") == timed.count("compact") == 40


def test_rounds_that_never_agree_are_reported():
    """The compacted model's time flips between rounds (a neighbour's job coming and going): rounds run out and
    the result says it did not converge, with how far the last two rounds were apart."""
    machine = FakeMachine()
    per_round = 2 * 5  # calls in one round at min_repeats=5

    def flipping():
        rnd = (len(machine.calls) - 6) // per_round
        machine.model("compact", 1.0 if rnd % 2 == 0 else 2.0)()

    result = compare(machine.model("dense", 4.0), flipping, clock=machine.clock, min_repeats=5, round_s=0.0,
                     max_rounds=4)
    assert result["rounds"] == 4 and not result["converged"]
    assert result["agreement"] == pytest.approx(0.5)  # speedups 4, 2, 4, 2: the last two differ by 50%
    assert 2.0 <= result["speedup"] <= 4.0


def test_a_cpu_run_through_both_engines(monkeypatch, tmp_path, capsys):
    """Tiny shapes, both engines: rows per engine with the interleaved-timing columns, and the markdown table."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    monkeypatch.setitem(bench_compacted.SHAPES, "bert", (tiny, tiny))
    rows = bench_compacted.run("cpu", True, archs=("bert",), sparsities=(0.5,), engines=("pytorch", "onnxruntime"))
    assert {(r["engine"], r["impl"]) for r in rows} == {
        ("pytorch", "dense"), ("pytorch", "compact"), ("pytorch", "compact-round8"),
        ("onnxruntime", "onnxruntime-dense"), ("onnxruntime", "onnxruntime-compact"),
        ("onnxruntime", "onnxruntime-compact-round8")}
    for r in rows:
        assert r["threads"] == 1 and "cores" in r["cpu"]
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        if not r["impl"].endswith("dense"):
            assert float(r["speedup_p20"]) <= float(r["speedup_p80"]) and r["converged"] in ("yes", "no")
            assert float(r["flops_reduction"]) > 1.5 and int(r["rounds"]) == 2
    table = bench_compacted.markdown(rows)
    assert "| pytorch forward speedup | onnxruntime forward speedup |" in table
    assert "| 0.5 | compact | " in table and "| 0.5 | compact-round8 | " in table
