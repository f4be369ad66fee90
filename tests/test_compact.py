"""compact(): the compacted model equals the masked model, an independent zeroing oracle, and the size model."""
import copy

import pytest
import torch
from tiny_models import BUILDERS, DECODERS, build, greedy, inputs, output, random_plan
from torch.utils.flop_counter import FlopCounterMode
from transformers.pytorch_utils import Conv1D

from vtrans_kernels import CompactionPlan, compact, masked_by_plan
from vtrans_kernels.hf import adapter_for
from vtrans_kernels.hf.adapters.base import get_module
from vtrans_kernels.masks import count_flops, count_parameters


def assert_same(actual, expected, rtol=1e-5):
    scale = expected.abs().max().clamp_min(1e-6)
    err = (actual - expected).abs().max()
    assert err <= rtol * scale, f"max error {err:.3g} against output scale {scale:.3g}"


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scales", [False, True])
def test_compacted_equals_masked_model(name, seed, scales):
    model = build(name, seed)
    plan = random_plan(model, seed, scales=scales)
    batch = inputs(model, seed)
    with masked_by_plan(model, plan):
        expected = output(model, batch)
    compacted = compact(model, plan)
    assert type(compacted) is type(model)
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        if expected.shape[-1] == adapter_for(model).units().hidden:  # a backbone: hidden states out
            expected = expected[..., plan.hidden]
    assert_same(output(compacted, batch), expected)


@pytest.mark.parametrize("name", ["bert", "llama-gqa"])
def test_plan_without_scales_compacts_the_kept_units_unscaled(name):
    model = build(name, 0)
    plan = random_plan(model, 0, scales=True)
    unscaled = plan.without_scales()
    units_only = CompactionPlan(hidden=plan.hidden, heads=plan.heads, ffn=plan.ffn)
    assert (unscaled.hidden, unscaled.heads, unscaled.ffn) == (plan.hidden, plan.heads, plan.ffn)
    assert unscaled.hidden_scale is None and not unscaled.head_scale and not unscaled.ffn_scale
    assert plan.hidden_scale is not None and plan.ffn_scale  # the original keeps its scales
    batch = inputs(model, 0)
    expected = output(compact(model, units_only), batch)
    assert torch.equal(output(compact(model, unscaled), batch), expected)
    assert not torch.allclose(output(compact(model, plan), batch), expected)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama-gqa"])
def test_input_model_untouched(name):
    model = build(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    compact(model, random_plan(model, 0))
    assert model.config.to_dict() == config
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def _zero_inputs(module, columns):
    """Zero the weights that read input features ``columns`` (Linear or GPT-2 Conv1D)."""
    with torch.no_grad():
        if isinstance(module, Conv1D):
            module.weight[columns, :] = 0
        else:
            module.weight[:, columns] = 0


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_pruning_equals_zeroing_output_projection_columns(name):
    """Oracle that does not use the masks: a pruned head/neuron is a zeroed input column of the output
    projection; a removed sublayer also has a zeroed bias."""
    model = build(name, 3)
    plan = random_plan(model, 3, hidden=False, scales=False)
    adapter = adapter_for(model)
    zeroed = copy.deepcopy(model)
    width = adapter.q_heads_per_unit() * adapter.head_dim()
    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        units = adapter.units()
        for kept, path, unit_width, total in ((plan.heads[i], roles.head_consumer, width, units.heads[i]),
                                              (plan.ffn[i], roles.ffn_consumer, 1, units.ffn[i])):
            module = get_module(zeroed, path)
            pruned = [u for u in range(total) if u not in kept]
            _zero_inputs(module, [u * unit_width + k for u in pruned for k in range(unit_width)])
            if not kept and module.bias is not None:
                with torch.no_grad():
                    module.bias.zero_()
    batch = inputs(model, 3)
    assert_same(output(compact(model, plan), batch), output(zeroed, batch))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_parameter_count_matches_size_model(name):
    model = build(name, 4)
    plan = random_plan(model, 4)
    spec = adapter_for(model).spec()
    assert sum(p.numel() for p in model.parameters()) == count_parameters(spec)
    compacted = compact(model, plan)
    units = adapter_for(compacted).units()
    heads = [len(plan.heads.get(i, range(spec.units_per_layer[i]))) for i in range(spec.num_layers)]
    ffn = [len(plan.ffn.get(i, range(spec.ffn_per_layer[i]))) for i in range(spec.num_layers)]
    predicted = count_parameters(spec, hidden=len(plan.hidden), units=heads, ffn=ffn)
    assert sum(p.numel() for p in compacted.parameters()) == predicted
    assert units.hidden == len(plan.hidden)


def test_soft_counts_give_a_differentiable_size():
    spec = adapter_for(build("llama-gqa")).spec()
    hidden = torch.tensor(20.0, requires_grad=True)
    units = [torch.tensor(1.5, requires_grad=True) for _ in range(spec.num_layers)]
    size = count_parameters(spec, hidden, units, [torch.tensor(30.0)] * spec.num_layers)
    size.backward()
    assert hidden.grad > 0 and all(u.grad > 0 for u in units)
    exact = count_parameters(spec, 20, [2] * spec.num_layers, [30] * spec.num_layers)
    assert abs(count_parameters(spec, torch.tensor(20.0), [torch.tensor(2.0)] * 3, [torch.tensor(30.0)] * 3)
               .item() - exact) < 1e-3


@pytest.mark.parametrize("name", ["bert", "roberta", "gpt2", "gpt2-cls", "llama-gqa", "qwen2"])
def test_flops_match_the_flop_counter(name):
    model = build(name, 5)
    plan = random_plan(model, 5)
    spec = adapter_for(model).spec()
    compacted = compact(model, plan)
    batch, seq = 2, 9
    ids = {"input_ids": torch.randint(2, 50, (batch, seq))}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        compacted(**ids)
    heads = [len(plan.heads.get(i, [])) for i in range(spec.num_layers)]
    ffn = [len(plan.ffn.get(i, [])) for i in range(spec.num_layers)]
    predicted = batch * count_flops(spec, seq, hidden=len(plan.hidden), units=heads, ffn=ffn)
    assert counter.get_total_flops() == predicted


def test_unpruned_plan_keeps_the_model():
    model = build("qwen2")
    batch = inputs(model)
    compacted = compact(model, CompactionPlan())
    assert_same(output(compacted, batch), output(model, batch), rtol=0)


@pytest.mark.parametrize("name", DECODERS)
def test_generate_with_kv_cache_matches_masked_model(name):
    model = build(name, 6)
    plan = random_plan(model, 6)
    prompt = torch.randint(2, 50, (2, 5), generator=torch.Generator().manual_seed(6))
    assert torch.equal(greedy(compact(model, plan), prompt, 8), greedy(model, prompt, 8, plan))


@pytest.mark.parametrize("name", DECODERS)
def test_generate_when_only_the_first_attention_is_removed(name):
    """Layer 0 keeps its FFN but loses its attention: the stand-in must keep the KV cache length right."""
    model = build(name, 9)
    plan = CompactionPlan(heads={0: []}, ffn={0: [1, 4, 9]})
    prompt = torch.randint(2, 50, (2, 4), generator=torch.Generator().manual_seed(9))
    compacted = compact(model, plan)
    assert adapter_for(compacted).units().heads[0] == 0
    assert torch.equal(greedy(compacted, prompt, 7), greedy(model, prompt, 7, plan))
    with torch.no_grad():
        # Code that reads the cache length (from layer 0 by default) must see the prompt.
        assert compacted(prompt, use_cache=True).past_key_values.get_seq_length() == prompt.shape[1]


def test_compacted_model_compiles_fullgraph():
    model = build("llama-gqa", 7)
    compacted = compact(model, random_plan(model, 7))
    batch = inputs(compacted)
    compiled = torch.compile(compacted, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert_same(compiled(**batch).logits, output(compacted, batch))


def test_double_compaction_composes():
    model = build("gpt2", 8)
    first = random_plan(model, 8)
    once = compact(model, first)
    units = adapter_for(once).units()
    second = CompactionPlan(hidden=list(range(0, units.hidden, 2)), ffn={0: [0]})
    twice = compact(once, second)
    batch = inputs(model)
    with masked_by_plan(once, second):
        expected = output(once, batch)
    assert_same(output(twice, batch), expected)
    assert twice.config.vtrans_compaction["sources"] == once.config.vtrans_compaction["sources"]


def test_ranked_at_counts_keeps_one_plans_counts_and_anothers_best_scored_units():
    model = build("llama-gqa", 0)
    units = adapter_for(model).units()
    counts = random_plan(model, 0, scales=False)  # random counts per layer, removed sublayers included
    gen = torch.Generator().manual_seed(1)
    rand = lambda n: torch.rand(n, generator=gen)  # noqa: E731
    scores = {"hidden": rand(units.hidden), "heads": {i: rand(n) for i, n in enumerate(units.heads)},
              "ffn": {i: rand(n) for i, n in enumerate(units.ffn)}}
    ranking = CompactionPlan(hidden=list(range(units.hidden)), scores=scores, hidden_scale=rand(units.hidden) + 0.5,
                             ffn_scale={0: rand(units.ffn[0]) + 0.5}, ffn_bias_shift={0: rand(units.hidden)})
    recut = ranking.ranked_at_counts(counts)
    best = lambda score, k: sorted(torch.topk(score, k).indices.tolist())  # noqa: E731
    assert recut.hidden == best(scores["hidden"], len(counts.hidden))
    for kind in ("heads", "ffn"):
        assert getattr(recut, kind) == {i: best(scores[kind][i], len(kept)) for i, kept in getattr(counts, kind).items()}
    assert recut.ffn[len(units.ffn) - 1] == [] and recut.heads[1] == []  # a removed sublayer stays removed
    assert torch.equal(recut.hidden_scale, ranking.hidden_scale) and not recut.ffn_bias_shift
    batch = inputs(model, 0)
    with masked_by_plan(model, recut):
        expected = output(model, batch)
    assert_same(output(compact(model, recut), batch), expected)  # logits: the vocabulary is not pruned
    ffn_only = ranking.ranked_at_counts(counts, structures=("ffn",))  # the other structures keep counts' units
    assert ffn_only.ffn == recut.ffn and ffn_only.heads == counts.heads and ffn_only.hidden == counts.hidden


def test_ranked_at_counts_refuses_what_it_cannot_recut():
    model = build("llama-gqa", 0)
    counts = random_plan(model, 0, scales=False)
    with pytest.raises(ValueError, match="no scores for the hidden dims"):
        CompactionPlan().ranked_at_counts(counts)
    units = adapter_for(model).units()
    scores = {"hidden": torch.rand(units.hidden), "heads": {}, "ffn": {}}
    with pytest.raises(ValueError, match="hidden_scale lists 2 values, not one per unit"):
        CompactionPlan(hidden=[0, 1], hidden_scale=[1.0, 1.0], scores=scores).ranked_at_counts(counts)
    with pytest.raises(ValueError, match="more than the 3 this plan scores"):
        CompactionPlan(scores={"hidden": torch.rand(3)}).ranked_at_counts(CompactionPlan(hidden=[0, 1, 2, 3]))
    for bad in ("ffn", ("ffn", "layers"), ()):
        with pytest.raises(ValueError, match="structures=.*expected a non-empty sequence of names among"):
            CompactionPlan(scores=scores).ranked_at_counts(counts, structures=bad)
