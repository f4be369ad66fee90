"""Least-squares refit of the kept units' scales (vtrans_kernels.hf.refit_plan): the solve is the least-squares
solution, the refit plan compacts exactly, and it reconstructs held-out inputs better than the plan with or without
bias compensation."""
import pytest
import torch
from plan_fixtures import assert_close, calibration, mean_heavy, partial_plan, unpruned_inputs
from tiny_models import build, inputs, output

from vtrans_kernels import CompactionPlan, compact, masked_by_plan
from vtrans_kernels.hf import adapter_for, compensate_plan, refit_plan
from vtrans_kernels.hf.adapters.base import get_module
from vtrans_kernels.hf.slicing import weight_dims

FAMILIES = ["bert", "roberta", "gpt2", "gpt2-cls", "llama-gqa", "llama-bias", "llama-cls"]


@pytest.mark.parametrize("name", FAMILIES)
def test_refit_plan_compacts_exactly(name):
    """Hidden pruning, plan scales, a removed attention: the compacted refit plan computes its masked model."""
    model = build(name, 3)
    plan = partial_plan(model, 3)
    refit = refit_plan(model, plan, calibration(model))
    assert set(refit.ffn_scale) == set(range(adapter_for(model).num_layers()))
    batch = inputs(model, 9)
    with masked_by_plan(model, refit):
        expected = output(model, batch)
    actual = output(compact(model, refit), batch)
    if actual.shape[-1] != expected.shape[-1]:  # a backbone: hidden states out
        expected = expected[..., refit.hidden]
    assert_close(actual, expected)
    # the refit changed the model: the plan's own compaction differs
    assert (output(compact(model, plan), batch) - actual).abs().max() > 1e-3 * actual.abs().max()


def _contributions(model, kind, layer, kept, batches):
    """Explicit per-token contributions of one sublayer of the unpruned model: ``(c [n, k, hidden] of the kept
    units at scale 1, y [n, hidden] of every unit)``, over the non-padding tokens."""
    width = adapter_for(model).head_dim() if kind == "heads" else 1
    seen, weight = unpruned_inputs(model, kind, layer, batches)
    a = torch.cat([x[b["attention_mask"].bool()] for x, b in zip(seen, batches)]).double()
    units = a.shape[-1] // width
    c = torch.einsum("nuw,duw->nud", a.view(-1, units, width), weight.view(-1, units, width))
    return c[:, kept], c.sum(1)


@pytest.mark.parametrize("kind, kept", [("ffn", list(range(0, 37, 2))), ("heads", [0, 2])])
def test_unregularised_refit_is_the_least_squares_solution(kind, kept):
    """Layer 0 of a BERT (nothing before it pruned, so its input is the unpruned model's): with ridge 0 the scales
    and shift solve min ||sum_j s_j c_j + b - y|| over the calibration tokens, as lstsq finds it on the explicit
    design matrix (one column per kept unit, one intercept column per hidden dim)."""
    model = mean_heavy("bert")
    batches = calibration(model, 4)
    plan = CompactionPlan(**{kind: {0: kept}})
    refit = refit_plan(model, plan, batches, ridge=0.0)
    c, y = _contributions(model, kind, 0, kept, batches)
    n, k, d = c.shape
    design = torch.cat([c.permute(0, 2, 1).reshape(n * d, k), torch.eye(d, dtype=c.dtype).repeat(n, 1)], 1)
    solution = torch.linalg.lstsq(design, y.reshape(-1, 1), driver="gelsd").solution[:, 0]
    scales = (refit.head_scale if kind == "heads" else refit.ffn_scale)[0]
    shift = (refit.head_bias_shift if kind == "heads" else refit.ffn_bias_shift)[0]
    assert torch.allclose(scales[kept], solution[:k], rtol=1e-6, atol=1e-8)
    assert torch.allclose(shift, solution[k:], rtol=1e-6, atol=1e-7)
    removed = [j for j in range(scales.numel()) if j not in kept]
    assert torch.all(scales[removed] == 0)
    # the least-squares fit is no worse on the calibration tokens than FLAP's shift at the plan's scales
    flap = compensate_plan(model, plan, batches)
    flap_shift = (flap.head_bias_shift if kind == "heads" else flap.ffn_bias_shift)[0]
    fitted = ((c * scales[kept][None, :, None]).sum(1) + shift - y).square().sum()
    assert fitted < (c.sum(1) + flap_shift - y).square().sum()


def test_a_very_large_ridge_gives_back_the_plan_scales_and_flap_shifts():
    model = mean_heavy("gpt2")
    plan = partial_plan(model, 4)
    plan = CompactionPlan(hidden=None, heads=plan.heads, ffn=plan.ffn)  # scales 1, so FLAP is the limit
    batches = calibration(model)
    refit = refit_plan(model, plan, batches, ridge=1e12)
    flap = compensate_plan(model, plan, batches)
    for layer, shift in flap.ffn_bias_shift.items():
        kept = plan.ffn[layer]
        assert torch.allclose(refit.ffn_scale[layer][kept], torch.ones(len(kept), dtype=torch.float64), atol=1e-6)
        assert torch.allclose(refit.ffn_bias_shift[layer], shift, rtol=1e-4, atol=1e-6)
    assert set(refit.head_bias_shift) == set(flap.head_bias_shift)


def _redundant(name):
    """A tiny model whose layer-0 FFN neuron 2i+1 fires exactly like neuron 2i (same producer rows and biases)
    and writes half of 2i's output column plus a little of its own: the odd neurons' contribution is mostly
    explained by the even ones' (at scale ~1.5), which a mean shift alone cannot capture."""
    model = build(name, 0)
    adapter = adapter_for(model)
    roles = adapter.layer_roles(0)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for path in roles.ffn_producers:
            module = get_module(model, path)
            out_dim = weight_dims(module)[0]
            weight = module.weight if out_dim == 0 else module.weight.T
            weight[1::2] = weight[0::2][: weight[1::2].shape[0]]
            if module.bias is not None:
                module.bias[1::2] = module.bias[0::2][: module.bias[1::2].shape[0]]
        consumer = get_module(model, roles.ffn_consumer)
        weight = consumer.weight if weight_dims(consumer)[1] == 1 else consumer.weight.T  # [out, neurons]
        odd = weight[:, 1::2]
        noise = 0.05 * weight.std() * torch.randn(odd.shape, generator=gen)
        odd.copy_(0.5 * weight[:, 0::2][:, : odd.shape[1]] + noise)
    return model


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama-bias"])
def test_refit_lowers_the_reconstruction_error_on_held_out_inputs(name):
    """Layer 0's FFN loses its odd neurons, which duplicate the even ones' activations: on held-out tokens the
    refit sublayer reconstructs the unpruned one's output far better than the plan with FLAP's shift, itself
    better than the plan alone (sum_j s_j c_j + b against y, from the explicit contributions), and the refit
    scales find the redundancy (about 1.5)."""
    model = _redundant(name)
    width = adapter_for(model).units().ffn[0]
    kept = list(range(0, width, 2))
    plan = CompactionPlan(ffn={0: kept})
    batches = calibration(model, 8)
    refit, flap = refit_plan(model, plan, batches), compensate_plan(model, plan, batches)
    c, y = _contributions(model, "ffn", 0, kept, [inputs(model, 55 + i, batch=4) for i in range(3)])

    def error(scales, shift):
        return ((c * scales[:, None]).sum(1) + shift - y).square().mean().item()

    ones = torch.ones(len(kept), dtype=torch.float64)
    plain, flapped = error(ones, 0.0), error(ones, flap.ffn_bias_shift[0])
    refitted = error(refit.ffn_scale[0][kept], refit.ffn_bias_shift[0])
    assert refitted < 0.2 * flapped and flapped < plain, (refitted, flapped, plain)
    paired = [j for j in kept if j + 1 < width]  # an even neuron with an odd twin
    assert (refit.ffn_scale[0][paired] - 1.5).abs().median() < 0.2


def test_arguments_are_checked():
    model = build("bert", 0)
    plan = CompactionPlan(ffn={0: [1, 2]})
    for bad in (-1.0, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="ridge: expected a finite number >= 0"):
            refit_plan(model, plan, calibration(model, 1), ridge=bad)
    with pytest.raises(ValueError, match="batches: calibration needs at least one batch"):
        refit_plan(model, plan, [])
    with pytest.raises(ValueError, match="readout: expected one of"):
        refit_plan(model, plan, calibration(model, 1), readout="cls")
