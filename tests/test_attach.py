"""attach/detach on every supported architecture: open masks, eval = plan = compaction, gradients, errors."""
import pytest
import torch
from torch import nn

import vtrans_kernels as vk
from tiny_models import BUILDERS, build, inputs, output
from vtrans_kernels.hf import compact, masked_by_plan

METHODS = ["vib", "hard_concrete"]


def _randomize(masks, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, mask in masks.masks():
            if mask.method == "vib":
                mask.mu.copy_(torch.rand(mask.units, generator=gen) * 2.5 - 1)
                mask.log_sigma2.copy_(torch.rand(mask.units, generator=gen) * 4 - 3)
            else:
                mask.log_alpha.copy_(torch.rand(mask.units, generator=gen) * 6 - 3)


def _open(masks):
    with torch.no_grad():
        for _, _, mask in masks.masks():
            if mask.method == "vib":
                mask.mu.fill_(1.0)
                mask.log_sigma2.fill_(-30.0)
            else:
                mask.log_alpha.fill_(30.0)


def _no_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@pytest.mark.parametrize("name", list(BUILDERS))
def test_attach_detach_restores_the_model(name):
    model = build(name)
    x = inputs(model)
    ref = output(model, x)
    masks = vk.attach(model, "vib")
    _randomize(masks)
    assert not torch.allclose(output(model, x), ref)
    vk.detach(model)
    assert torch.equal(output(model, x), ref)
    assert vk.masks_of(model) is None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_open_masks_equal_the_original(name, method):
    model = build(name)
    _no_dropout(model)
    x = inputs(model)
    ref = output(model, x)
    masks = vk.attach(model, method)
    _open(masks)
    model.train()  # sampled gates: exactly 1 (hard-concrete) or 1 + 3e-7 eps (VIB)
    torch.testing.assert_close(output(model, x), ref, atol=1e-5, rtol=1e-5)
    if method == "vib":  # deterministic gates mu * keep = 1; norms over all kept dims (own rounding)
        model.eval()
        torch.testing.assert_close(output(model, x), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_eval_masked_model_equals_plan_and_compaction(name, method):
    model = build(name)
    x = inputs(model)
    masks = vk.attach(model, method, seed=3)
    _randomize(masks, seed=len(name))
    plan = masks.plan()
    got = output(model, x)
    vk.detach(model)
    with masked_by_plan(model, plan):
        want = output(model, x)
    small = output(compact(model, plan), x)
    if small.shape != got.shape:  # base encoders return the hidden states: compare the kept dims
        got, want = got[..., plan.hidden], want[..., plan.hidden]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(small, got, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama-gqa", "qwen2"])
def test_training_forward_is_seeded_and_reaches_every_mask(name, method):
    model = build(name)
    _no_dropout(model)
    x = inputs(model)
    masks = vk.attach(model, method, seed=11)
    model.train()
    first = output(model, x)
    second = output(model, x)
    assert not torch.equal(first, second)          # a new step draws new noise
    masks.load_state_dict({**masks.state_dict(), "steps_drawn": torch.tensor(0)})
    assert torch.equal(output(model, x), first)    # the same step counter gives the same noise
    out = model(**x)
    logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
    logits.square().mean().backward()
    for structure, layer, mask in masks.masks():
        grads = [p.grad for p in mask.parameters()]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), (structure, layer)


@pytest.mark.parametrize("name", ["bert", "llama-gqa"])
def test_compact_with_masks_attached_leaves_them_out_of_the_copy(name):
    model = build(name)
    x = inputs(model)
    masks = vk.attach(model, "vib")
    _randomize(masks)
    plan = masks.plan()
    masked = output(model, x)
    small = compact(model, plan)
    assert vk.masks_of(small) is None
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in small.modules()) == 0
    got = output(small, x)
    if got.shape != masked.shape:
        masked = masked[..., plan.hidden]
    torch.testing.assert_close(got, masked, atol=2e-5, rtol=1e-4)
    assert torch.equal(output(model, x), output(model, x)) and vk.masks_of(model) is masks  # still masked
    torch.testing.assert_close(output(model, x), output(model, x))


def test_disabled_masks_and_structure_subsets():
    model = build("llama-gqa")
    x = inputs(model)
    ref = output(model, x)
    masks = vk.attach(model, "hard_concrete", structures=("heads",))
    assert masks.hidden is None and masks.ffn is None and len(masks.heads) == 3
    _randomize(masks)
    with masks.disabled():
        assert torch.equal(output(model, x), ref)
    plan = masks.plan()
    assert plan.hidden is None and plan.ffn == {} and set(plan.heads) == {0, 1, 2}


def test_attach_errors():
    model = build("bert")
    vk.attach(model)
    with pytest.raises(ValueError, match="already has masks"):
        vk.attach(model)
    vk.detach(model)
    with pytest.raises(ValueError, match="no masks"):
        vk.detach(model)
    with pytest.raises(ValueError, match="method"):
        vk.attach(model, "magnitude")
    with pytest.raises(ValueError, match="structures"):
        vk.attach(model, structures=("hidden", "experts"))
    with pytest.raises(TypeError, match="PreTrainedModel"):
        vk.attach(nn.Linear(3, 3))
    small = compact(model, vk.CompactionPlan(ffn={0: [1, 2]}))
    with pytest.raises(ValueError, match="already compacted"):
        vk.attach(small)


def _fused_modules(model):
    return sum("forward" in module.__dict__ for module in model.modules())


def test_default_wiring_is_fused_on_cuda_only():
    model = build("llama-gqa")
    masks = vk.attach(model)
    assert masks.fused is False and _fused_modules(model) == 0  # CPU: hooks (the C++ gate op is faster there)
    vk.detach(model)
    if torch.cuda.is_available():
        masks = vk.attach(model.cuda())
        assert masks.fused is True and _fused_modules(model) > 0


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_fused_wiring_equals_the_hooks(name, method, device):
    """attach routes the masks through the fused ops; the hook wiring is the oracle: same noise, same outputs
    and the same gradients for every mask parameter and weight, in training and in evaluation (one fused
    mask-training step per architecture family; on CUDA too when there is a GPU: the GPU check runs it)."""
    results = {}
    for fused in (True, False):
        model = build(name).to(device)
        _no_dropout(model)
        x = {k: v.to(device) for k, v in inputs(model).items()}
        torch.manual_seed(0)
        masks = vk.attach(model, method, seed=5, fused=fused)
        _randomize(masks, seed=2)
        if fused and name != "gpt2":  # GPT-2's Conv1D projections keep their hooks
            assert _fused_modules(model) > 0
        model.train()
        train_out = output(model, x)
        out = model(**x)
        (out.logits if hasattr(out, "logits") else out.last_hidden_state).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in [*masks.named_parameters(), *model.named_parameters()]
                 if p.grad is not None}
        model.eval()
        results[fused] = (train_out, output(model, x), grads)
        vk.detach(model)
        assert _fused_modules(model) == 0
    (fused_train, fused_eval, fused_grads), (hook_train, hook_eval, hook_grads) = results[True], results[False]
    torch.testing.assert_close(fused_train, hook_train, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fused_eval, hook_eval, atol=2e-5, rtol=1e-4)
    assert fused_grads.keys() == hook_grads.keys()
    for key in hook_grads:
        torch.testing.assert_close(fused_grads[key], hook_grads[key], atol=1e-5, rtol=1e-3, msg=key)
