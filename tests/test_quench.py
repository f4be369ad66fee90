"""The quenched last steps of mask training (PruneConfig.quench_fraction): the gates drop their noise, so the weights
train in the model the plan compacts to."""
import pytest
import torch

from tiny_models import build
from tiny_text import classification_features
from vtrans_kernels.prune import PruneConfig, Pruner
from vtrans_kernels.prune.data import Batches


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return classification_features(tmp_path_factory.mktemp("tok"), 48)


def _logits(model, inputs: dict, training: bool) -> torch.Tensor:
    model.train(training)
    with torch.no_grad():
        out = model(**inputs).logits
    model.train()
    return out


@pytest.mark.parametrize("method", ["vib", "hard_concrete"])
def test_quenched_steps_train_the_deterministic_masked_model(features, method):
    batches = Batches(features, 8)
    config = PruneConfig(method=method, variant="vtrans", target_sparsity=0.5, steps=10, batch_size=8, seq_len=16,
                         subset_fraction=1.0, settle_fraction=0.4, quench_fraction=0.3)
    model = build("bert")
    for module in model.modules():  # dropout would make two training forwards differ for another reason
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    pruner = Pruner(model, config)
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    for step in range(config.steps):
        batch = batches.batch(step)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        training, deterministic = _logits(model, inputs, True), _logits(model, inputs, False)
        same = torch.allclose(training, deterministic, rtol=0, atol=1e-6)
        assert same == (step >= 7), f"step {step}: training forward {'equals' if same else 'differs from'} eval's"
        before = weight.detach().clone()
        metrics = pruner.train_step(batch)
        assert pruner.masks.noise == (step + 1 < 7)  # off from the step the quench begins at
        assert torch.isfinite(torch.tensor(metrics["loss"]))
        assert not torch.equal(before, weight.detach())  # the weights keep training while quenched
    assert abs(pruner.masks.sparsity(pruner.measure) - 0.5) <= 0.02


def test_quench_fraction_is_checked():
    with pytest.raises(ValueError, match="quench_fraction: expected at most settle_fraction"):
        PruneConfig(settle_fraction=0.2, quench_fraction=0.3)
    with pytest.raises(ValueError, match="quench_fraction: expected a value in"):
        PruneConfig(quench_fraction=-0.1)
    assert PruneConfig(steps=150, settle_fraction=0.2, quench_fraction=0.2).quench_steps == 30


def test_a_checkpoint_from_before_the_setting_resumes_at_its_default():
    """Records written before quench_fraction existed lack it: they ran as its default does, and only that resumes."""
    from vtrans_kernels.prune.identity import check_same_run, mask_settings

    older = {k: v for k, v in mask_settings(PruneConfig()).items() if k != "settings.quench_fraction"}
    check_same_run(older, mask_settings(PruneConfig()), "old.pt")
    with pytest.raises(ValueError, match=r"settings.quench_fraction: 0.0 \(checkpoint\) vs 0.2 \(this run\)"):
        check_same_run(older, mask_settings(PruneConfig(quench_fraction=0.2)), "old.pt")
