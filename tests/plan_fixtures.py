"""Shared by the calibration tests (bias compensation, least-squares refit): calibration batches, partly pruned
plans and models, and what the unpruned model feeds a sublayer's output projection."""
import torch
from tiny_models import build, inputs, random_plan

from vtrans_kernels import CompactionPlan
from vtrans_kernels.hf import adapter_for
from vtrans_kernels.hf.adapters.base import get_module
from vtrans_kernels.hf.slicing import weight_dims


def calibration(model, count=3, seed=100):
    return [inputs(model, seed + i, batch=3) for i in range(count)]


def assert_close(actual, expected, rtol=1e-5):
    scale = expected.abs().max().clamp_min(1e-6)
    err = (actual - expected).abs().max()
    assert err <= rtol * scale, f"max error {err:.3g} against output scale {scale:.3g}"


def partial_plan(model, seed):
    """A random plan in which every layer keeps some but not all heads and FFN neurons (so every sublayer gets
    a shift), plus layer 1's attention removed."""
    plan = random_plan(model, seed)
    units = adapter_for(model).units()
    heads = {i: sorted(set(plan.heads[i]) - {units.heads[i] - 1}) or [0] for i in range(len(units.heads))}
    ffn = {i: sorted(set(plan.ffn[i] or [0, 1]) - {units.ffn[i] - 1}) for i in range(len(units.ffn))}
    heads[1] = []
    return CompactionPlan(hidden=plan.hidden, heads=heads, ffn=ffn, hidden_scale=plan.hidden_scale,
                          head_scale=plan.head_scale, ffn_scale=plan.ffn_scale)


def mean_heavy(name):
    """A tiny model whose FFN neurons have a large mean activation (positive producer biases), so that the
    removed neurons' mean is most of what pruning loses."""
    model = build(name, 0)
    adapter = adapter_for(model)
    with torch.no_grad():
        for i in range(adapter.num_layers()):
            for path in adapter.layer_roles(i).ffn_producers:
                get_module(model, path).bias.fill_(2.0)
    return model


def unpruned_inputs(model, kind, layer, batches):
    """``(inputs, weight)``: the input of one sublayer's output projection (``kind`` "heads" or "ffn") in the
    unpruned ``model``, per batch of ``batches``, and the projection's weight as float64 [out, in]."""
    roles = adapter_for(model).layer_roles(layer)
    consumer = get_module(model, roles.head_consumer if kind == "heads" else roles.ffn_consumer)
    seen = []
    hook = consumer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        hook.remove()
    weight = consumer.weight.detach().double()
    return seen, weight.T if weight_dims(consumer)[0] == 1 else weight  # GPT-2's Conv1D stores (in, out)
