"""save_compacted/load_compacted round trips, plain from_pretrained, rounding, and clear errors."""
import json
import os

import pytest
import torch
import transformers
from test_compact import assert_same
from tiny_models import BUILDERS, DECODERS, build, greedy, inputs, output, random_plan

from vtrans_kernels import CompactionPlan, compact, load_compacted, save_compacted
from vtrans_kernels.hf import adapter_for
from vtrans_kernels.hf.rounding import rounded_count


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_save_load_round_trip_is_exact(name, tmp_path):
    model = build(name, 11)
    compacted = compact(model, random_plan(model, 11))
    save_compacted(compacted, tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".bin", ".pt", ".pkl"))]
    reloaded = load_compacted(tmp_path)  # the saved model's attention implementation by default
    assert type(reloaded) is type(model)
    batch = inputs(model, 11)
    assert torch.equal(output(reloaded, batch), output(compacted, batch))
    assert adapter_for(reloaded).units() == adapter_for(compacted).units()


@pytest.mark.parametrize("name", DECODERS)
def test_reloaded_decoder_generates_like_the_masked_model(name, tmp_path):
    model = build(name, 12)
    plan = random_plan(model, 12)
    prompt = torch.randint(2, 50, (1, 4), generator=torch.Generator().manual_seed(12))
    save_compacted(compact(model, plan), tmp_path)
    reloaded = load_compacted(tmp_path, attn_implementation="eager")
    assert torch.equal(greedy(reloaded, prompt, 6), greedy(model, prompt, 6, plan))


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama-gqa", "qwen2"])
def test_uniform_shapes_load_with_plain_from_pretrained(name, tmp_path):
    model = build(name, 13)
    units = adapter_for(model).units()
    kept_units = [0, units.heads[0] - 1]
    # BERT and GPT-2 derive the head size from hidden/heads; keep the hidden size they can express.
    q_heads = len(kept_units) * adapter_for(model).q_heads_per_unit()
    hidden = q_heads * adapter_for(model).head_dim() if name in ("bert", "gpt2") else 18
    plan = CompactionPlan(hidden=list(range(1, hidden + 1)), heads={i: kept_units for i in range(3)},
                          ffn={i: list(range(0, 37, 2)) for i in range(3)})
    compacted = compact(model, plan)
    save_compacted(compacted, tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["vtrans_compaction"]
    assert record["plain_loadable"]
    plain = getattr(transformers, type(model).__name__).from_pretrained(tmp_path, attn_implementation="eager").eval()
    batch = inputs(model, 13)
    assert_same(output(plain, batch), output(compacted, batch), rtol=0)


def test_nonuniform_model_says_it_needs_load_compacted(tmp_path):
    model = build("llama-gqa", 14)
    save_compacted(compact(model, random_plan(model, 14)), tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["vtrans_compaction"]
    assert record["plain_loadable"] is False


def test_save_keeps_dtype(tmp_path):
    model = build("qwen2", 15).to(torch.bfloat16)
    compacted = compact(model, random_plan(model, 15))
    save_compacted(compacted, tmp_path)
    reloaded = load_compacted(tmp_path, attn_implementation="eager")
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    batch = inputs(model)
    assert torch.equal(output(reloaded, batch), output(compacted, batch))


def test_truncated_checkpoint_error_names_the_file(tmp_path):
    model = build("gpt2", 16)
    save_compacted(compact(model, random_plan(model, 16)), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        load_compacted(tmp_path)


def test_mismatched_checkpoint_error_names_tensor_and_shapes(tmp_path):
    model = build("llama-gqa", 17)
    save_compacted(compact(model, random_plan(model, 17)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vtrans_compaction"]["ffn"][0] += 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.\w+_proj\.weight' has shape .* expects"):
        load_compacted(tmp_path)


def test_missing_folder_and_foreign_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_compacted(tmp_path / "nowhere")
    build("bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not written by save_compacted"):
        load_compacted(tmp_path)


def test_rounded_count():
    assert [rounded_count(c, 8, 100) for c in (0, 1, 4, 11, 12, 13, 99, 100)] == [0, 8, 8, 8, 16, 16, 96, 100]
    assert rounded_count(5, 8, 6) == 6  # fewer units than one multiple: keep what there is
    assert rounded_count(37, 1, 37) == 37


def test_round_to_uses_scores_and_reports(tmp_path):
    model = build("llama-bias", 18)
    scores = torch.arange(37, dtype=torch.float64)  # neuron j scores j: rounding keeps the highest
    plan = CompactionPlan(ffn={0: [0, 1, 2, 3, 30], 1: [5, 6, 7, 8, 9, 10, 11, 12, 13, 36]},
                          hidden=list(range(21)), scores={"ffn": {0: scores, 1: scores}})
    rounded = compact(model, plan, round_to=4)
    expected_plan = CompactionPlan(ffn={0: [1, 2, 3, 30], 1: [5, 6, 7, 8, 9, 10, 11, 12, 13, 34, 35, 36]},
                                   hidden=list(range(20)))
    # hidden dims without scores fall back to weight norms; compare with the rounded hidden set it chose
    record = rounded.config.vtrans_compaction
    assert record["hidden"] == 20 and record["ffn"] == [4, 12, 37]
    assert {"structure": "ffn", "layer": 0, "from": 5, "to": 4} in record["rounding"]
    norms = model.model.embed_tokens.weight.norm(dim=0)
    drop = min(range(21), key=lambda j: norms[j].item())
    expected_plan.hidden = [j for j in range(21) if j != drop]
    batch = inputs(model)
    assert_same(output(rounded, batch), output(compact(model, expected_plan), batch), rtol=0)


@pytest.mark.parametrize("bad, message", [
    (dict(hidden=[]), "keep at least one hidden dim"),
    (dict(hidden=[0, 24]), r"hidden: indices \[24\] out of range"),
    (dict(heads={5: [0]}), r"heads: layers \[5\] do not exist"),
    (dict(ffn={0: [-1]}), r"ffn\[0\]: indices \[-1\] out of range"),
    (dict(ffn={0: [1, 2]}, ffn_scale={0: [1.0, 2.0, 3.0]}), "expected 37 values .* or 2"),
])
def test_bad_plans_name_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        compact(build("bert"), CompactionPlan(**bad))


def test_bad_arguments():
    with pytest.raises(TypeError, match="list of int"):
        CompactionPlan(heads={0: "ab"})
    with pytest.raises(ValueError, match="round_to"):
        compact(build("bert"), CompactionPlan(), round_to=0)
    with pytest.raises(TypeError, match="plan"):
        compact(build("bert"), {"hidden": [0]})
    with pytest.raises(ValueError, match="not supported; supported classes: .*LlamaForCausalLM"):
        compact(transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)),
            CompactionPlan())


def test_plan_json_round_trip(tmp_path):
    plan = random_plan(build("qwen2"), 19)
    plan.save(tmp_path / "plan.json")
    again = CompactionPlan.load(tmp_path / "plan.json")
    assert again.to_dict() == plan.to_dict()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CompactionPlan.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown fields"):
        CompactionPlan.from_dict({"hidden": None, "layers": []})


def test_scales_dict_is_the_same_as_separate_fields():
    model = build("llama-gqa", 20)
    plan = random_plan(model, 20)
    same = CompactionPlan(hidden=plan.hidden, heads=plan.heads, ffn=plan.ffn,
                          scales={"hidden": plan.hidden_scale, "heads": plan.head_scale, "ffn": plan.ffn_scale})
    batch = inputs(model)
    assert torch.equal(output(compact(model, same), batch), output(compact(model, plan), batch))
    with pytest.raises(ValueError, match="not both"):
        CompactionPlan(hidden_scale=[1.0], scales={"hidden": [1.0]})
