"""Uniform plans: the same heads and FFN width in every layer, loadable with plain from_pretrained, on target."""
import json

import pytest
import torch
import transformers
from test_compact import assert_same
from tiny_models import BUILDERS, build, inputs, output

from vtrans_kernels import attach, compact, detach, save_compacted
from vtrans_kernels.hf import adapter_for


def _masks_with_random_scores(model, seed: int, structures=("hidden", "heads", "ffn"), method="vib"):
    masks = attach(model, method=method, structures=structures)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, mask in masks.masks():
            for p in mask.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 2)
    return masks


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("target", [0.3, 0.6])
def test_uniform_plan_loads_with_from_pretrained_and_matches(name, target, tmp_path):
    model = build(name, 21)
    masks = _masks_with_random_scores(model, 21)
    measure = masks.measure()
    plan = masks.plan(target, measure, uniform=True)
    detach(model)
    compacted = compact(model, plan)
    units = adapter_for(compacted).units()
    assert len(set(units.heads)) == 1 and len(set(units.ffn)) == 1 and min(units.heads + units.ffn) > 0
    save_compacted(compacted, tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["vtrans_compaction"]
    assert record["plain_loadable"], record
    plain = getattr(transformers, type(model).__name__).from_pretrained(tmp_path, attn_implementation="eager").eval()
    batch = inputs(model, 21)
    assert_same(output(plain, batch), output(compacted, batch), rtol=0)


def _uniform_sparsities(masks, measure, round_to=1):
    """Every sparsity a uniform plan of this model can have (brute force over expressible shapes)."""
    from vtrans_kernels.hf.uniform import _Shapes

    shapes = _Shapes(masks, round_to)
    spec = masks.spec
    out = set()
    for units in range(1, shapes.units_total + 1):
        for ffn in range(1, shapes.ffn_total + 1):
            for hidden in range(1, spec.hidden_size + 1):
                snapped = shapes.snap(hidden=float(hidden), heads=float(units), ffn=float(ffn))
                if snapped is not None:
                    h, k, f = snapped
                    out.add(float(measure.sparsity(h, [k] * spec.num_layers, [f] * spec.num_layers)))
    return sorted(out)


@pytest.mark.parametrize("name", ["bert", "llama-gqa"])
def test_uniform_plan_is_the_closest_expressible_to_the_target(name):
    model = build(name, 22)
    masks = _masks_with_random_scores(model, 22)
    measure = masks.measure()
    reachable = _uniform_sparsities(masks, measure)
    for target in (0.2, 0.45, 0.7):
        plan = masks.plan(target, measure, uniform=True)
        hidden = len(plan.hidden) if plan.hidden is not None else masks.spec.hidden_size
        units = [len(plan.heads[i]) for i in range(masks.spec.num_layers)]
        ffn = [len(plan.ffn[i]) for i in range(masks.spec.num_layers)]
        got = float(measure.sparsity(hidden, units, ffn))
        best = min(abs(s - target) for s in reachable)
        # only (hidden, heads) pairs on the score-threshold path are tried, the FFN width is refit to the target
        assert abs(got - target) <= best + 0.01, (target, got, best)


def test_uniform_keeps_each_layers_best_units():
    model = build("llama-gqa", 23)
    masks = _masks_with_random_scores(model, 23)
    plan = masks.plan(0.5, masks.measure(), uniform=True)
    for i, mask in enumerate(masks.ffn):
        kept = plan.ffn[i]
        dropped = sorted(set(range(mask.units)) - set(kept))
        if dropped:
            assert mask.score()[kept].min() >= mask.score()[dropped].max()


@pytest.mark.parametrize("round_to", [4, 8])
def test_uniform_widths_are_round_to_multiples_and_compaction_keeps_them(round_to, tmp_path):
    model = build("llama-gqa", 24)
    masks = _masks_with_random_scores(model, 24)
    plan = masks.plan(0.5, masks.measure(), uniform=True, round_to=round_to)
    detach(model)
    compacted = compact(model, plan, round_to=round_to)
    assert compacted.config.vtrans_compaction["rounding"] == []  # already expressible: rounding changes nothing
    units = adapter_for(compacted).units()
    assert units.hidden % round_to == 0 and units.ffn[0] % round_to == 0
    assert units.hidden % (units.heads[0] * adapter_for(compacted).q_heads_per_unit()) == 0


def test_uniform_bert_needs_hidden_and_heads_together():
    model = build("bert", 25)
    masks = _masks_with_random_scores(model, 25, structures=("heads", "ffn"))
    with pytest.raises(ValueError, match="hidden_size / num_attention_heads"):
        masks.plan(0.5, masks.measure(), uniform=True)


def test_uniform_with_hard_concrete_masks(tmp_path):
    model = build("qwen2", 26)
    masks = _masks_with_random_scores(model, 26, method="hard_concrete")
    plan = masks.plan(0.4, masks.measure(), uniform=True)
    detach(model)
    save_compacted(compact(model, plan), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vtrans_compaction"]["plain_loadable"]
