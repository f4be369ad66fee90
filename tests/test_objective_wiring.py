"""How the pruner wires the objective together: which dims, step, teacher and weights each term sees."""
import pytest
import torch
from tiny_text import classification_features

import vtrans_kernels.prune.pruner as pruner_module
from tiny_models import build
from vtrans_kernels.prune import PruneConfig, Pruner
from vtrans_kernels.prune.data import Batches


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return Batches(classification_features(tmp_path_factory.mktemp("tok"), 16), 8).batch(0)


def _pruner(variant="faster", **settings):
    model = build("bert", 41)
    model.config.num_labels = 2
    torch.manual_seed(41)
    return Pruner(type(model)(model.config), PruneConfig(variant=variant, steps=20, batch_size=8, **settings))


def _prune_half_the_hidden_dims(pruner):
    with torch.no_grad():
        pruner.masks.hidden.mu[::2] = 1e-3  # log SNR far below 0: pruned by the decision
    assert 0 < int(pruner.masks.hidden.keep().sum()) < pruner.masks.hidden.units


def test_hidden_distillation_covers_the_kept_dims_only(batch, monkeypatch):
    pruner = _pruner()
    _prune_half_the_hidden_dims(pruner)
    seen = []

    def spy(student, teacher, keep=None, attention_mask=None, relative=False):
        seen.append(keep)
        return original(student, teacher, keep, attention_mask, relative)

    original = pruner_module.hidden_distillation
    monkeypatch.setattr(pruner_module, "hidden_distillation", spy)
    pruner.compute_loss(batch)
    assert len(seen) == 1 and seen[0] is not None
    assert torch.equal(seen[0], pruner.masks.hidden.keep())


def test_the_lagrangian_sees_the_current_steps_target(batch):
    pruner = _pruner(warmup_fraction=0.5)  # target ramps over 10 of the 20 steps
    with torch.no_grad():
        pruner.lagrangian.lambda1.fill_(1.0)
    for _ in range(3):
        pruner.train_step(batch)
        with torch.no_grad():
            pruner.lagrangian.lambda1.fill_(1.0)
            pruner.lagrangian.lambda2.zero_()
        penalty, metrics = pruner.penalty()
        kl = sum(pruner.config.kl_multipliers.get(s, 1.0) * v for s, v in pruner.masks.kl_terms().items())
        lagrangian = float((penalty - pruner.config.kl_weight * kl).detach())
        # lambda1 * (expected - target now): the target of this step, still ramping
        assert metrics["target_now"] < pruner.config.target_sparsity
        assert lagrangian == pytest.approx(metrics["expected_sparsity"] - metrics["target_now"], abs=1e-5)


def test_the_frozen_teacher_runs_without_masks(batch, monkeypatch):
    pruner = _pruner("faster")
    _prune_half_the_hidden_dims(pruner)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        masked = pruner.model.eval()(**inputs).logits
        with pruner.masks.disabled():
            unmasked = pruner.model(**inputs).logits
    assert not torch.allclose(masked, unmasked)  # the masks change the output, so the test can tell
    seen = []

    def spy(student, teacher, temperature, attention_mask=None):
        seen.append(teacher.detach())
        return original(student, teacher, temperature, attention_mask)

    original = pruner_module.logit_distillation
    monkeypatch.setattr(pruner_module, "logit_distillation", spy)
    pruner.compute_loss(batch)
    torch.testing.assert_close(seen[0], unmasked)
