"""The quenched last steps of mask training (PruneConfig.quench_fraction): the gates drop their noise, so the weights
train in the model the plan compacts to."""
import pytest
import torch

import vtrans_kernels as vk
from test_attach import _no_dropout, _randomize
from tiny_models import build, inputs, output
from vtrans_kernels.masks.gates import make_mask
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


def test_the_schedule_defaults_by_variant():
    """The variants that train weights settle and quench the last half of the run (straight-through); "faster",
    whose weights stay frozen, holds the last 20% without a quench. A quench left unset follows the settling."""
    for variant in ("vtrans", "fast"):
        config = PruneConfig(variant=variant)
        assert (config.settle_fraction, config.quench_fraction, config.quench_gradient) == (
            0.5, 0.5, "straight_through")
        assert PruneConfig(variant=variant, settle_fraction=0.3).quench_fraction == 0.3
        assert PruneConfig(variant=variant, quench_fraction=0.0).settle_fraction == 0.5
    assert (PruneConfig(variant="faster").settle_fraction, PruneConfig(variant="faster").quench_fraction) == (0.2, 0.0)
    assert PruneConfig.from_dict(PruneConfig(variant="vtrans").to_dict()) == PruneConfig(variant="vtrans")


def test_a_checkpoint_from_before_the_settings_resumes_as_it_ran():
    """Records written before quench_fraction (or settle_fraction) existed lack it: they ran without a quench (or
    a settling), whatever the default now is, and only that resumes."""
    from vtrans_kernels.prune.identity import check_same_run, mask_settings

    older = {k: v for k, v in mask_settings(PruneConfig()).items() if k != "settings.quench_fraction"}
    check_same_run(older, mask_settings(PruneConfig()), "old.pt")
    with pytest.raises(ValueError, match=r"settings.quench_fraction: 0.0 \(checkpoint\) vs 0.2 \(this run\)"):
        check_same_run(older, mask_settings(PruneConfig(quench_fraction=0.2)), "old.pt")
    unquenched = PruneConfig(variant="vtrans", settle_fraction=0.2, quench_fraction=0.0)
    older = {k: v for k, v in mask_settings(unquenched).items() if k != "settings.quench_fraction"}
    check_same_run(older, mask_settings(unquenched), "old.pt")
    unsettled = PruneConfig(variant="vtrans", settle_fraction=0.0)
    older = {k: v for k, v in mask_settings(unsettled).items() if k not in ("settings.settle_fraction",
                                                                             "settings.quench_fraction")}
    check_same_run(older, mask_settings(unsettled), "old.pt")
    with pytest.raises(ValueError, match=r"settings.settle_fraction: 0.0 \(checkpoint\) vs 0.5 \(this run\)") as error:
        check_same_run(older, mask_settings(PruneConfig(variant="vtrans")), "old.pt")
    assert "quench_gradient" not in str(error.value)  # the quench fractions already say it


@pytest.mark.parametrize("method", ["vib", "hard_concrete"])
def test_quench_gate_is_the_eval_gate_with_every_unit_learning(method):
    torch.manual_seed(0)
    mask = make_mask(method, 7)
    _randomize_one(mask)
    keep = mask.keep()
    assert 0 < int(keep.sum()) < 7
    weights = torch.linspace(-1, 2, 7)
    gate = mask.quench_gate()
    torch.testing.assert_close(gate, mask.eval_gate().detach(), rtol=0, atol=0)
    (gate * weights).sum().backward()
    st = [p.grad.clone() for p in mask.parameters() if p.grad is not None]
    mask.zero_grad()
    (mask.open_gate() * weights).sum().backward()
    expected = [p.grad.clone() for p in mask.parameters() if p.grad is not None]
    assert len(st) == len(expected) == 1
    torch.testing.assert_close(st[0], expected[0])
    assert (st[0][~keep] != 0).all()  # the removed units learn too


def _randomize_one(mask):
    with torch.no_grad():
        if mask.method == "vib":
            mask.mu.copy_(torch.tensor([1.2, 0.1, -0.8, 0.05, 0.9, 0.3, -0.02]))
            mask.log_sigma2.copy_(torch.full((7,), -1.0))
        else:
            mask.log_alpha.copy_(torch.tensor([3.0, -2.0, 1.5, -3.0, 0.5, 2.5, -1.0]))


def _quenched_step(name, method, fused, gradient):
    """(training output, eval output, {mask parameter: grad}, {mask parameter: keep}) of one quenched forward and
    backward of the tiny ``name`` with random masks."""
    model = build(name)
    _no_dropout(model)
    x = inputs(model)
    torch.manual_seed(0)
    masks = vk.attach(model, method, seed=5, fused=fused)
    _randomize(masks, seed=2)
    masks.noise, masks.quench_gradient = False, gradient
    model.train()
    train_out = output(model, x)
    out = model(**x)
    (out.logits if hasattr(out, "logits") else out.last_hidden_state).square().mean().backward()
    grads, keeps = {}, {}
    for structure, layer, mask in masks.masks():
        for pname, param in mask.named_parameters():
            if param.grad is not None:
                grads[(structure, layer, pname)] = param.grad.clone()
                keeps[(structure, layer, pname)] = mask.keep()
    model.eval()
    return train_out, output(model, x), grads, keeps


@pytest.mark.parametrize("method", ["vib", "hard_concrete"])
@pytest.mark.parametrize("name", ["bert", "llama-gqa", "gpt2"])
def test_a_straight_through_quench_runs_the_eval_model_and_trains_every_gate(name, method):
    """Quenched training forwards compute the eval-mode (compacted) model; with the straight-through gradient the
    removed units' gates learn too, the kept units' exactly as with the exact gradient; both wirings agree."""
    runs = {(fused, gradient): _quenched_step(name, method, fused, gradient)
            for fused in (False, True) for gradient in ("straight_through", "exact")}
    for train_out, eval_out, _, _ in runs.values():
        torch.testing.assert_close(train_out, eval_out, atol=2e-5, rtol=1e-4)
    for gradient in ("straight_through", "exact"):
        hooks, fused = runs[(False, gradient)][2], runs[(True, gradient)][2]
        for key in hooks:
            torch.testing.assert_close(fused.get(key, torch.zeros_like(hooks[key])), hooks[key], atol=1e-5,
                                       rtol=1e-3, msg=str(key))
    _, _, st, keeps = runs[(False, "straight_through")]
    exact = runs[(False, "exact")][2]
    removed_learning = 0
    for key, grad in st.items():
        keep = keeps[key]
        exact_grad = exact.get(key, torch.zeros_like(grad))
        torch.testing.assert_close(grad[keep], exact_grad[keep], atol=1e-6, rtol=1e-5, msg=str(key))
        assert (exact_grad[~keep] == 0).all(), key
        removed_learning += int((grad[~keep] != 0).sum())
    assert removed_learning > 0


def test_the_pruner_sets_the_quench_gradient(features):
    config = PruneConfig(method="vib", variant="vtrans", steps=4, batch_size=8, seq_len=16, subset_fraction=1.0,
                         settle_fraction=0.5, quench_fraction=0.5, quench_gradient="exact")
    pruner = Pruner(build("bert"), config)
    assert pruner.masks.quench_gradient == "exact"
    with pytest.raises(ValueError, match="quench_gradient: expected one of"):
        PruneConfig(quench_gradient="none")


def test_a_quenched_checkpoint_from_before_the_gradient_setting_ran_the_exact_gradient():
    from vtrans_kernels.prune.identity import check_same_run, mask_settings

    def older(config):
        return {k: v for k, v in mask_settings(config).items() if k != "settings.quench_gradient"}

    quenched = dict(settle_fraction=0.2, quench_fraction=0.2)
    check_same_run(older(PruneConfig(**quenched)), mask_settings(PruneConfig(**quenched, quench_gradient="exact")),
                   "old.pt")
    with pytest.raises(ValueError, match="settings.quench_gradient: 'exact' \\(checkpoint\\) vs 'straight_through'"):
        check_same_run(older(PruneConfig(**quenched)), mask_settings(PruneConfig(**quenched)), "old.pt")
    # without quenched steps the setting changes nothing, so it never stops a resume
    check_same_run(older(PruneConfig()), mask_settings(PruneConfig(quench_gradient="exact")), "old.pt")
