"""PruneConfig.rank_by_calibration: the masks say how many units each layer keeps, the one-shot calibration scores
of the weights before mask training say which."""
import copy
import json

import pytest
import torch

from interrupted_runs import interrupt_then_resume
from tiny_models import build
from tiny_text import classification_features, model_folder, write_data
from vtrans_kernels.hf.plan import CompactionPlan
from vtrans_kernels.prune import PruneConfig, Pruner, run_pruning
from vtrans_kernels.prune.run import CHECKPOINT
from vtrans_kernels.prune.checkpoint import load_checkpoint
from vtrans_kernels.prune.data import Batches
from vtrans_kernels.prune.oneshot import unit_scores


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return classification_features(tmp_path_factory.mktemp("tok"), 32)


def _best(score: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(score, k).indices.tolist())


@pytest.mark.parametrize("name,variant", [("llama-gqa", "faster"), ("bert", "vtrans")])
def test_the_plan_keeps_the_masks_counts_and_the_calibration_scores_units(features, name, variant):
    model = build(name)
    batches = Batches({k: v for k, v in features.items() if k != "labels" or name == "bert"}, 8)
    before = copy.deepcopy(model)
    config = PruneConfig(variant=variant, target_sparsity=0.5, steps=3, batch_size=8, seq_len=16,
                         fold_scales=False, rank_by_calibration=("ffn",), calibration_batches=2)
    pruner = Pruner(model, config)
    scores = pruner.score_units(batches)
    for step in range(3):
        pruner.train_step(batches.batch(step))
    plan = pruner.plan()
    masks_plan = pruner.masks.plan(0.5, pruner.measure)
    expected = unit_scores(before, batches, 2)  # the weights before mask training, masks off
    for layer, score in expected["ffn"].items():
        torch.testing.assert_close(scores["ffn"][layer], score)
        assert plan.ffn[layer] == _best(score, len(masks_plan.ffn[layer]))
    assert plan.heads == masks_plan.heads and plan.hidden == masks_plan.hidden  # not re-ranked: the masks' own
    assert plan.model == pruner.model_record and plan.hidden_scale is None


def test_what_the_ranking_needs_is_checked(features):
    batches = Batches(features, 8)
    pruner = Pruner(build("bert"), PruneConfig(steps=2, seq_len=16, batch_size=8, fold_scales=False,
                                               rank_by_calibration=("heads", "ffn")))
    with pytest.raises(ValueError, match=r"no calibration scores; call pruner.score_units\(batches\)"):
        pruner.plan()
    pruner.train_step(batches.batch(0))
    with pytest.raises(ValueError, match="score_units: the pruner has taken 1 steps"):
        pruner.score_units(batches)
    for settings, message in [(dict(rank_by_calibration="ffn", fold_scales=False), "rank_by_calibration: expected"),
                              (dict(rank_by_calibration=("layers",), fold_scales=False), "among"),
                              (dict(rank_by_calibration=("ffn",)), "fold_scales: expected False")]:
        with pytest.raises(ValueError, match=message):
            PruneConfig(**settings)


def test_a_run_keeps_its_scores_through_a_resume(tmp_path, features, monkeypatch):
    config = PruneConfig(steps=6, batch_size=8, seq_len=16, checkpoint_every=3, calibration_batches=2,
                         subset_fraction=1.0, fold_scales=False, rank_by_calibration=("heads", "ffn"))
    whole = run_pruning(build("bert"), Batches(features, 8), config, tmp_path / "whole", progress=False)
    resumed = interrupt_then_resume(lambda: build("bert"), lambda: Batches(features, 8), config, tmp_path / "cut",
                                    4, monkeypatch)
    assert resumed.pruner.plan().to_dict() == whole.pruner.plan().to_dict()
    other = PruneConfig(**{**config.to_dict(), "rank_by_calibration": ("ffn",)})
    with pytest.raises(ValueError, match="rank_by_calibration"):  # it shapes the plan: a resume must keep it
        run_pruning(build("bert"), Batches(features, 8), other, tmp_path / "cut", resume=True, progress=False)


def test_cli_ranks_the_named_structures_by_the_calibration_scores(tmp_path):
    from vtrans_kernels.cli import main

    out = tmp_path / "out"
    argv = ["prune", "--model", str(model_folder(tmp_path / "bert")), "--data", str(write_data(tmp_path / "train.csv")),
            "--out", str(out), "--steps", "4", "--batch-size", "8", "--max-length", "16", "--no-progress",
            "--seq-len", "16", "--target-sparsity", "0.4", "--finetune-steps", "0", "--rank-by-calibration", "ffn"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["rank_by_calibration"] == ["ffn"] and config["fold_scales"] is False  # implied
    plan = CompactionPlan.load(out / "plan.json")
    calibration = load_checkpoint(out / CHECKPOINT)["calibration_scores"]  # scored before the first step
    assert plan.ffn and all(units == _best(calibration["ffn"][layer], len(units)) for layer, units in plan.ffn.items())
    for layer, score in calibration["ffn"].items():
        torch.testing.assert_close(plan.scores["ffn"][layer], score.double())  # read back from plan.json as float64
