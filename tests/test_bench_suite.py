"""The benchmark suite (`python -m bench` / `vtrans bench`) runs end to end as a CPU smoke test: every section
gives its rows with the required columns, the plots and the summary are written, and a per-op script that is
missing or broken is reported in the results instead of stopping the suite."""
import csv
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where bench/ lives

from bench import __main__ as suite  # noqa: E402
from bench import kernel_suite  # noqa: E402

REQUIRED = ["device", "torch", "triton", "cuda", "sha", "section", "shape", "dtype", "mode", "impl", "median_ms",
            "p20_ms", "p80_ms"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run on CPU; the kernel step sees bench_masks, a script not written yet and a broken one."""
    out = tmp_path_factory.mktemp("suite")
    broken = types.ModuleType("bench.bench_broken")
    broken.run = lambda device, smoke: 1 / 0
    scripts = {"bench_masks": "mask ops", "bench_not_written_yet": "absent", "bench_broken": "fails"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "bench.bench_broken", broken)
        patch.setattr(kernel_suite, "SCRIPTS", scripts)
        assert suite.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    with (out / "suite.csv").open(newline="") as f:
        return out, list(csv.DictReader(f))


def test_csv_has_the_required_columns_and_every_section(smoke_run):
    out, rows = smoke_run
    assert set(REQUIRED) <= set(rows[0])
    assert [s for s in suite.SECTIONS if any(r["section"] == s for r in rows)] == list(suite.SECTIONS)
    assert all(r["device"] == "cpu" and r["sha"] and r["torch"] for r in rows)
    timed = [r for r in rows if r["impl"] not in ("missing", "failed")]
    assert all(float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"]) for r in timed)


def test_ceilings_and_kernel_fractions(smoke_run):
    _, rows = smoke_run
    ceilings = {r["op"]: r for r in rows if r["section"] == "ceilings"}
    assert float(ceilings["copy"]["gb_per_s"]) > 0 and float(ceilings["gemm"]["tflops"]) > 0
    assert ceilings["gemm"]["dtype"] == "float32" and "not a GPU one" in ceilings["gemm"]["note"]
    masks = [r for r in rows if r["section"] == "kernels" and r["op"] == "vib_gate"]
    assert {r["mode"] for r in masks} == {"forward", "backward", "full"}
    assert {"composition", "torch"} - {r["impl"] for r in masks} == {"torch"}  # the baseline ran in the same run
    copy = float(ceilings["copy"]["gb_per_s"])
    for r in masks:
        assert r["ceiling"] == "copy"
        assert float(r["frac_ceiling"]) == pytest.approx(float(r["gb_per_s"]) / copy, abs=2e-3)


def test_missing_and_broken_scripts_are_reported(smoke_run):
    out, rows = smoke_run
    problems = {r["op"]: r for r in rows if r["impl"] in ("missing", "failed")}
    assert problems["bench_not_written_yet"]["impl"] == "missing"
    assert "bench.bench_not_written_yet" in problems["bench_not_written_yet"]["note"]
    assert problems["bench_broken"]["impl"] == "failed"
    assert "ZeroDivisionError" in problems["bench_broken"]["note"]
    assert "| bench_not_written_yet |" in (out / "summary.md").read_text()


def test_train_rows_compare_vtrans_with_eager_and_plain(smoke_run):
    _, rows = smoke_run
    train = [r for r in rows if r["section"] == "train"]
    for model in ("bert-base", "llama"):
        impls = {(r["variant"], r["impl"]) for r in train if r["op"] == model}
        assert impls == {("none", "plain")} | {(v, i) for v in ("faster", "vtrans")
                                                for i in ("vtrans", "eager-torch-backend", "eager")}
    for r in train:
        assert float(r["tokens_per_s"]) > 0 and r["mode"] == "step"
        if r["impl"] == "vtrans":
            assert float(r["speedup_vs_eager"]) > 0 and float(r["plain_vs_vtrans"]) > 0


def test_compaction_rows_cover_the_sparsities(smoke_run):
    _, rows = smoke_run
    compaction = [r for r in rows if r["section"] == "compaction"]
    assert {r["op"] for r in compaction} == {"bert", "llama"}
    assert {float(r["sparsity"]) for r in compaction if r["impl"] != "dense"} == {0.5, 0.75, 0.9}
    assert all(float(r["speedup"]) > 0 and float(r["flops_reduction"]) >= 1 for r in compaction)


def test_plots_and_summary(smoke_run, capsys):
    out, _ = smoke_run
    for section in suite.SECTIONS:
        assert (out / f"{section}.png").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "GPU figures need a GPU" in summary
    assert all(f"## {section}" in summary for section in suite.SECTIONS)
    assert "speedup" in summary and "(peak memory needs a GPU)" in summary


def test_vtrans_bench_runs_the_suite(tmp_path, capsys):
    from vtrans_kernels import cli

    assert cli.main(["bench", "--smoke", "--device", "cpu", "--only", "ceilings", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "GPU figures need a GPU" in printed and "## ceilings" in printed
    assert (tmp_path / "suite.csv").is_file() and (tmp_path / "ceilings.png").is_file()
    with pytest.raises(SystemExit):
        cli.main(["bench", "--only", "nonsense"])


@pytest.mark.parametrize("arch", ["bert", "llama-gqa"])
def test_eager_baseline_masks_the_units_attach_masks(arch):
    """With noise switched off, the CoFi-style eager masks compute the masked model of the same kept units."""
    import torch
    from tiny_models import build, inputs, output

    from bench.eager_masks import EagerMasks
    from vtrans_kernels import CompactionPlan, masked_by_plan

    model = build(arch)
    batch = inputs(model)
    with masked_by_plan(model, CompactionPlan(heads={0: [1]}, ffn={1: list(range(10, 37))})):
        expected = output(model, batch)
    masks = EagerMasks(model)
    with torch.no_grad():
        for gate in [masks.hidden, *masks.heads, *masks.ffn]:
            gate.mu.fill_(1.0)
            gate.log_sigma2.fill_(-80.0)  # sigma ~ 4e-18: deterministic gates
        masks.heads[0].mu[0] = 0.0
        masks.heads[0].mu[2:] = 0.0
        masks.ffn[1].mu[:10] = 0.0
    assert torch.allclose(output(model, batch), expected, atol=1e-5)
    assert float(masks.kl().detach()) > 0


def test_append_rows_keeps_columns_aligned_when_a_column_is_added(tmp_path):
    from bench.common import append_rows
    path = tmp_path / "rows.csv"
    append_rows(path, [{"a": 1, "b": 2}])
    append_rows(path, [{"b": 4, "a": 3}])                # same columns, other order: plain append
    append_rows(path, [{"a": 5, "b": 6, "c": 7}])        # a new column: the file is rewritten with it
    append_rows(path, [{"a": 8}])                        # a missing column stays empty
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [tuple(r.values()) for r in rows] == [("1", "2", ""), ("3", "4", ""), ("5", "6", "7"), ("8", "", "")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gets")
def test_gpu_check_needs_a_gpu_and_says_so():
    from bench import gpu_check
    with pytest.raises(SystemExit, match="no CUDA device is visible"):
        gpu_check.main(["--budget", "1"])
