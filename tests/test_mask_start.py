"""Masks that start from the one-shot plan (PruneConfig.mask_start="oneshot", issue 18 item 2)."""
import pytest
import torch

from interrupted_runs import interrupt_then_resume
from tiny_models import build
from tiny_text import classification_features
from vtrans_kernels.masks import HardConcreteMask, VIBMask
from vtrans_kernels.prune import PruneConfig, Pruner, run_pruning
from vtrans_kernels.prune.calibration import LOG_ODDS_LIMIT, LOG_ODDS_MARGIN, plan_log_odds, start_from_calibration
from vtrans_kernels.prune.data import Batches
from vtrans_kernels.prune.oneshot import oneshot_plan


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return classification_features(tmp_path_factory.mktemp("tok"), 64)


def _kept(keep: torch.Tensor) -> list[int]:
    return torch.nonzero(keep).flatten().tolist()


@pytest.mark.parametrize("mask_type", [VIBMask, HardConcreteMask])
def test_a_mask_starts_at_the_given_decision_and_ranking(mask_type):
    log_odds = torch.tensor([2.0, -0.1, 0.1, -3.0, 0.7, -0.5, 3.0])
    mask = mask_type(7)
    mask.start_from(log_odds)
    assert _kept(mask.keep()) == [0, 2, 4, 6]
    assert torch.equal(torch.argsort(mask.score(), descending=True), torch.argsort(log_odds, descending=True))
    if mask_type is VIBMask:  # kept units keep their weights (mu 1); removed ones start near a zero gate
        assert torch.allclose(mask.mu[mask.keep()], torch.ones(4))
        assert (mask.mu[~mask.keep()] < 1).all()
    with pytest.raises(ValueError, match="log_odds"):
        mask.start_from(torch.tensor([1.0, 0.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="log_odds"):
        mask.start_from(torch.ones(6))


def test_log_odds_follow_the_scores_around_the_cut():
    score = torch.tensor([1.0, 4.0, 2.0, 1000.0, 1e-9, 2.1])
    odds = plan_log_odds(score, [1, 3, 5])
    assert (odds[[1, 3, 5]] > 0).all() and (odds[[0, 2, 4]] < 0).all()
    assert odds[3] == LOG_ODDS_LIMIT and odds[4] == -LOG_ODDS_LIMIT
    assert odds[5] == LOG_ODDS_MARGIN and odds[2] == -LOG_ODDS_MARGIN  # 2.1 and 2.0 sit at the cut
    assert odds[1] > odds[5] and odds[0] < odds[2]


@pytest.mark.parametrize("name,method", [("bert", "vib"), ("llama-gqa", "hard_concrete"), ("gpt2", "vib")])
def test_the_first_decision_is_the_oneshot_plan(features, name, method):
    model = build(name)
    batches = Batches({k: v for k, v in features.items() if k != "labels"}, 8)
    expected = oneshot_plan(model, batches, 0.5, calibration_steps=3)  # before any mask is attached
    pruner = Pruner(model, PruneConfig(method=method, target_sparsity=0.5, seq_len=16, steps=10,
                                       warmup_fraction=0.5))
    plan = start_from_calibration(pruner, batches, calibration_steps=3)
    decision = pruner.masks.decision()
    assert _kept(decision.hidden) == plan.hidden == expected.hidden
    for layer in range(len(decision.ffn)):
        assert _kept(decision.ffn[layer]) == plan.ffn[layer] == expected.ffn[layer]
        assert _kept(decision.heads[layer]) == plan.heads[layer] == expected.heads[layer]
    sparsity = pruner.masks.sparsity(pruner.measure)
    assert abs(sparsity - 0.5) < 0.06
    # the target ramp starts where the masks are (the expected sparsity), not at "keep everything"
    assert pruner.lagrangian.target_at(0) == pytest.approx(min(0.5, float(pruner.masks.expected_sparsity(
        pruner.measure).detach())), abs=1e-6)
    assert pruner.lagrangian.target_at(0) > 0.3


def test_a_started_run_cannot_restart(features):
    batches = Batches(features, 8)
    pruner = Pruner(build("bert"), PruneConfig(steps=3, seq_len=16, batch_size=8))
    pruner.train_step(batches.batch(0))
    with pytest.raises(ValueError, match="before the first"):
        start_from_calibration(pruner, batches)


def test_a_run_from_the_oneshot_plan_resumes_exactly(tmp_path, features, monkeypatch):
    config = PruneConfig(mask_start="oneshot", steps=6, batch_size=8, seq_len=16, checkpoint_every=3,
                         calibration_batches=2, subset_fraction=1.0)
    whole = run_pruning(build("bert"), Batches(features, 8), config, tmp_path / "whole", progress=False)
    resumed = interrupt_then_resume(lambda: build("bert"), lambda: Batches(features, 8), config, tmp_path / "cut",
                                    4, monkeypatch)
    for (_, _, a), (_, _, b) in zip(whole.pruner.masks.masks(), resumed.pruner.masks.masks()):
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mask_start"):
        PruneConfig(mask_start="calibration")


@pytest.mark.parametrize("method,target", [("vib", 0.3), ("vib", 0.7), ("hard_concrete", 0.5)])
def test_the_masks_own_decision_ends_on_the_target(features, method, target):
    """The last settle_fraction of the steps hold the decision on the target; without them this tiny model's
    masks swing far around it (they have almost no data loss to balance the size term)."""
    batches = Batches(features, 8)
    config = PruneConfig(method=method, target_sparsity=target, steps=40, batch_size=8, seq_len=16,
                         subset_fraction=1.0, settle_fraction=0.2)
    pruner = Pruner(build("bert"), config)
    for step in range(config.steps):
        metrics = pruner.train_step(batches.batch(step))
        assert ("sparsity_before_hold" in metrics) == (step >= 32)
    assert abs(pruner.masks.sparsity(pruner.measure) - target) <= 0.02
    assert abs(metrics["expected_sparsity"] - target) <= 0.03 or method == "hard_concrete"
    with pytest.raises(ValueError, match="settle_fraction"):
        PruneConfig(warmup_fraction=0.9, settle_fraction=0.2)


def test_from_the_oneshot_plan_every_step_can_end_on_the_target(features):
    """settle_fraction 1 with the default warmup is allowed only from the one-shot start (the masks begin on the
    target); then every step ends holding the decision there."""
    with pytest.raises(ValueError, match="settle_fraction"):
        PruneConfig(settle_fraction=1.0)
    batches = Batches(features, 8)
    config = PruneConfig(target_sparsity=0.5, steps=6, batch_size=8, seq_len=16, subset_fraction=1.0,
                         mask_start="oneshot", settle_fraction=1.0, calibration_batches=2)
    pruner = Pruner(build("bert"), config)
    start_from_calibration(pruner, batches, config.calibration_batches)
    for step in range(config.steps):
        metrics = pruner.train_step(batches.batch(step))
        assert "sparsity_before_hold" in metrics
        assert abs(pruner.masks.sparsity(pruner.measure) - 0.5) <= 0.02


def test_the_size_count_of_a_command_line_init():
    """``--soft-count`` gives VIB masks DESIGN's soft count (straight_through None); hard-concrete masks take none."""
    from vtrans_kernels.prune.config import vib_mask_init

    assert vib_mask_init("vib", None) == {} and vib_mask_init("hard_concrete", -2.0, True) == {}
    assert vib_mask_init("vib", -2.0, True) == {"log_sigma2": -2.0, "straight_through": None}
    soft = Pruner(build("bert"), PruneConfig(seq_len=16, mask_init=vib_mask_init("vib", None, True)))
    default = Pruner(build("bert"), PruneConfig(seq_len=16))
    assert {m.straight_through for _, _, m in soft.masks.masks()} == {None}
    assert {m.straight_through for _, _, m in default.masks.masks()} == {1.0}
