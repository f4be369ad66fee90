"""Bias compensation (vtrans_kernels.hf.compensate_plan): the shifts are the measured means of the removed units'
contributions, compaction carries them exactly, they survive saving, and they bring the pruned model closer to
the unpruned one."""
import json

import pytest
import torch
from plan_fixtures import assert_close, calibration, mean_heavy, partial_plan, unpruned_inputs
from tiny_models import BUILDERS, build, inputs, output

from vtrans_kernels import CompactionPlan, compact, load_compacted, masked_by_plan, save_compacted
from vtrans_kernels.hf import adapter_for, bias_compensation_support, compensate_plan
from vtrans_kernels.hf.adapters.base import get_module, unit_columns
from vtrans_kernels.hf.compensation import readout_of

EXPRESSIBLE = sorted(n for n in BUILDERS if n not in ("qwen2", "mistral"))


def reference(model, plan, shifted, batch):
    """The explicit reference: the masked model of the plan without shifts, with each shift added by a hook on
    the output projection (registered first, so before the hidden gate scales that output)."""
    adapter = adapter_for(model)
    handles = []
    for kind, shifts in (("heads", shifted.head_bias_shift), ("ffn", shifted.ffn_bias_shift)):
        for layer, shift in shifts.items():
            roles = adapter.layer_roles(layer)
            path = roles.head_consumer if kind == "heads" else roles.ffn_consumer
            handles.append(get_module(model, path).register_forward_hook(
                lambda mod, args, out, s=shift: out + s.to(out.dtype)))
    try:
        with masked_by_plan(model, plan):
            expected = output(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return expected


@pytest.mark.parametrize("name", EXPRESSIBLE)
def test_compacted_equals_reference_with_shifts(name):
    model = build(name, 1)
    plan = partial_plan(model, 1)
    shifted = compensate_plan(model, plan, calibration(model))
    n_layers = adapter_for(model).num_layers()
    assert set(shifted.ffn_bias_shift) == set(range(n_layers))  # every FFN keeps some neurons, loses some
    assert 1 not in shifted.head_bias_shift  # the removed attention stays removed, without a shift
    batch = inputs(model, 7)
    expected = reference(model, plan, shifted, batch)
    actual = output(compact(model, shifted), batch)
    if actual.shape[-1] != expected.shape[-1]:  # a backbone: hidden states out
        expected = expected[..., shifted.hidden]
    assert_close(actual, expected)
    with masked_by_plan(model, shifted):  # the masked model of a plan with shifts is the same reference
        masked = output(model, batch)
    assert_close(masked[..., shifted.hidden] if masked.shape != actual.shape else masked, actual)
    # and the shifts matter: without them the output differs by far more than the tolerance above
    unshifted = output(compact(model, plan), batch)
    assert (unshifted - actual).abs().max() > 20 * 1e-5 * expected.abs().max()


def test_shift_is_the_mean_over_non_padding_tokens():
    """FFN of layer 0 of a BERT (attention of layer 0 kept whole, no hidden pruning): the shift is
    W_down[:, removed] @ mean of the removed neurons over the non-padding tokens, measured in the unpruned model."""
    model = build("bert", 0)
    removed = [1, 4, 5, 20, 36]
    kept = [i for i in range(37) if i not in removed]
    plan = CompactionPlan(ffn={0: kept})
    batches = calibration(model, 2)
    seen, weight = unpruned_inputs(model, "ffn", 0, batches)  # bert.encoder.layer[0].output.dense
    tokens = torch.cat([a[b["attention_mask"].bool()] for a, b in zip(seen, batches)]).double()
    padded = torch.cat([a.reshape(-1, 37) for a in seen]).double()
    assert tokens.shape[0] < padded.shape[0]  # the calibration batches have padding
    expected = weight[:, removed] @ tokens[:, removed].mean(0)
    shifted = compensate_plan(model, plan, batches)
    assert set(shifted.ffn_bias_shift) == {0} and not shifted.head_bias_shift
    assert torch.allclose(shifted.ffn_bias_shift[0], expected, rtol=1e-9, atol=1e-12)
    wrong = weight[:, removed] @ padded[:, removed].mean(0)
    assert not torch.allclose(shifted.ffn_bias_shift[0], wrong, atol=1e-6)


def _last_ffn_inputs(model, batches):
    """The last layer's FFN down-projection inputs on ``batches`` (unpruned model: the plans below prune only it)."""
    layer = adapter_for(model).num_layers() - 1
    return (layer, *unpruned_inputs(model, "ffn", layer, batches))


@pytest.mark.parametrize("name, readout", [("bert", "first"), ("roberta", "first"), ("gpt2-cls", "last"),
                                           ("llama-cls", "last"), ("gpt2", "all"), ("llama-gqa", "all"),
                                           ("bert-base", "all")])
def test_last_layer_shift_is_the_mean_at_the_tokens_the_head_reads(name, readout):
    """The last layer's output reaches the head only at the tokens it reads: a sequence classifier's [CLS] (BERT,
    RoBERTa) or last non-padding token (decoders), every token for LM heads and backbones. The last layer's shift
    is the removed neurons' mean there; a mean over all tokens (what compensation took before) fails this for the
    classifiers, as [CLS] is far from the average token."""
    model = build(name, 0)
    assert readout_of(model) == readout
    batches = calibration(model, 2)
    layer, seen, weight = _last_ffn_inputs(model, batches)
    width = weight.shape[1]
    removed = [1, 4, 5, 20, width - 1]
    plan = CompactionPlan(ffn={layer: [i for i in range(width) if i not in removed]})
    rows = []
    for a, batch in zip(seen, batches):
        mask = batch["attention_mask"].bool()
        if readout == "all":
            rows.append(a[mask])
        elif readout == "first":
            rows.append(a[:, 0])
        else:  # the last position whose mask is 1 (tiny_models left-pads decoders, so the last position here)
            last = torch.tensor([int(m.nonzero().max()) for m in mask])
            rows.append(a[torch.arange(a.shape[0]), last])
    expected = weight[:, removed] @ torch.cat(rows).double()[:, removed].mean(0)
    shifted = compensate_plan(model, plan, batches)
    assert torch.allclose(shifted.ffn_bias_shift[layer], expected, rtol=1e-9, atol=1e-12)
    every = compensate_plan(model, plan, batches, readout="all")  # the explicit all-token mean, for any model
    all_tokens = torch.cat([a[b["attention_mask"].bool()] for a, b in zip(seen, batches)]).double()
    assert torch.allclose(every.ffn_bias_shift[layer], weight[:, removed] @ all_tokens[:, removed].mean(0),
                          rtol=1e-9, atol=1e-12)
    if readout != "all":
        assert (every.ffn_bias_shift[layer] - expected).norm() > 0.1 * expected.norm()


def test_last_readout_finds_the_last_non_padding_token_of_right_padded_rows():
    """Right padding (as a tokenizer with padding_side='right' gives): the score head's token is the last one with
    attention_mask 1, not the last position."""
    model = build("gpt2-cls", 0)
    batch = inputs(model, 5, batch=3)
    batch["attention_mask"] = torch.tensor([[1] * 11, [1] * 7 + [0] * 4, [1] * 3 + [0] * 8])
    layer, (a,), weight = _last_ffn_inputs(model, [batch])
    plan = CompactionPlan(ffn={layer: list(range(0, weight.shape[1], 2))})
    removed = list(range(1, weight.shape[1], 2))
    read = a[torch.arange(3), torch.tensor([10, 6, 2])].double()
    shifted = compensate_plan(model, plan, [batch], readout="last")
    assert torch.allclose(shifted.ffn_bias_shift[layer], weight[:, removed] @ read[:, removed].mean(0),
                          rtol=1e-9, atol=1e-12)


def test_readout_is_checked():
    model = build("bert", 0)
    with pytest.raises(ValueError, match="readout: expected one of 'auto', 'all', 'first', 'last', got 'cls'"):
        compensate_plan(model, CompactionPlan(ffn={0: [1]}), calibration(model, 1), readout="cls")


def test_gqa_unit_is_the_whole_group():
    """llama-gqa: 6 query heads in 2 KV groups; removing group 1 removes query heads 3..5 (all their columns)."""
    model = build("llama-gqa", 0)
    batches = calibration(model, 1)
    seen, weight = unpruned_inputs(model, "heads", 0, batches)  # model.layers[0].self_attn.o_proj
    columns = unit_columns(torch.tensor([1]), 3 * adapter_for(model).head_dim())
    assert columns.tolist() == list(range(12, 24))
    tokens = seen[0][batches[0]["attention_mask"].bool()].double()
    expected = weight[:, columns] @ tokens[:, columns].mean(0)
    shifted = compensate_plan(model, CompactionPlan(heads={0: [0]}), batches)
    assert torch.allclose(shifted.head_bias_shift[0], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama-bias"])
def test_compensation_lowers_the_error_to_the_unpruned_model(name):
    """On held-out inputs of the calibration distribution the compensated model is closer to the unpruned one.
    Shifts of the wrong sign or of the kept units' columns make it worse, so this fails on either mistake."""
    model = mean_heavy(name)
    units = adapter_for(model).units()
    plan = CompactionPlan(ffn={i: list(range(0, units.ffn[i], 2)) for i in range(len(units.ffn))})
    shifted = compensate_plan(model, plan, calibration(model, 4))
    held_out = inputs(model, 55, batch=4)
    unpruned = output(model, held_out)

    def error(p):
        return (output(compact(model, p), held_out) - unpruned).square().mean().item()

    plain, compensated = error(plan), error(shifted)
    flipped = CompactionPlan(ffn=plan.ffn, ffn_bias_shift={i: -s for i, s in shifted.ffn_bias_shift.items()})
    assert compensated < 0.5 * plain, (compensated, plain)
    assert error(flipped) > plain


def test_save_and_reload_round_trip(tmp_path):
    model = build("llama-gqa", 2)  # no biases in the input: compaction switches attention_bias/mlp_bias on
    plan = partial_plan(model, 2)
    compacted = compact(model, compensate_plan(model, plan, calibration(model)))
    assert compacted.config.attention_bias and compacted.config.mlp_bias
    assert not model.config.attention_bias and not model.config.mlp_bias  # the input is untouched
    batch = inputs(model, 3)
    save_compacted(compacted, tmp_path / "m")
    again = load_compacted(tmp_path / "m")
    assert torch.equal(output(again, batch), output(compacted, batch))


def test_uniform_compensated_llama_loads_with_from_pretrained(tmp_path):
    import transformers

    model = build("llama-gqa", 0)
    plan = CompactionPlan(heads={i: [1] for i in range(3)}, ffn={i: list(range(0, 37, 2)) for i in range(3)})
    compacted = compact(model, compensate_plan(model, plan, calibration(model)))
    save_compacted(compacted, tmp_path / "m")
    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    batch = inputs(model, 4)
    assert plain.model.layers[0].self_attn.o_proj.bias is not None
    assert_close(output(plain, batch), output(compacted, batch))


def test_plan_round_trip(tmp_path):
    model = build("gpt2", 0)
    shifted = compensate_plan(model, partial_plan(model, 0), calibration(model))
    shifted.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert set(data["ffn_bias_shift"]) == {str(i) for i in shifted.ffn_bias_shift}
    again = CompactionPlan.load(tmp_path / "plan.json")
    assert again.to_dict() == shifted.to_dict()
    batch = inputs(model, 1)
    assert torch.equal(output(compact(model, again), batch), output(compact(model, shifted), batch))
    # a plan without shifts writes no shift fields (files of older versions stay what they were)
    assert "ffn_bias_shift" not in CompactionPlan(ffn={0: [1]}).to_dict()


def test_plan_checks_shifts():
    model = build("bert", 0)
    with pytest.raises(ValueError, match=r"ffn_bias_shift\[0\]: expected 24 values"):
        compact(model, CompactionPlan(ffn={0: [1, 2]}, ffn_bias_shift={0: [0.0] * 5}))
    with pytest.raises(ValueError, match=r"head_bias_shift\[2\]: the plan removes this sublayer"):
        compact(model, CompactionPlan(heads={2: []}, head_bias_shift={2: [0.0] * 24}))
    with pytest.raises(ValueError, match="head_bias_shift: layers \\[7\\] do not exist"):
        compact(model, CompactionPlan(head_bias_shift={7: [0.0] * 24}))
    with pytest.raises(ValueError, match="must be finite"):
        CompactionPlan(ffn_bias_shift={0: [float("nan")] * 24})
    with pytest.raises(ValueError, match="batches: calibration needs at least one batch"):
        compensate_plan(model, CompactionPlan(ffn={0: [1]}), [])
    with pytest.raises(TypeError, match=r"batches\[0\]"):
        compensate_plan(model, CompactionPlan(ffn={0: [1]}), [torch.zeros(3)])


def test_rounding_after_compensation_is_refused_and_compensating_rounds():
    model = build("bert", 0)
    plan = CompactionPlan(ffn={0: list(range(21))})
    batches = calibration(model, 1)
    with pytest.raises(ValueError, match="round_to: rounding to multiples of 8 changes"):
        compact(model, compensate_plan(model, plan, batches), round_to=8)
    rounded = compensate_plan(model, plan, batches, round_to=8)
    assert len(rounded.ffn[0]) == 24 and 0 in rounded.ffn_bias_shift
    batch = inputs(model, 2)
    assert torch.equal(output(compact(model, rounded, round_to=8), batch), output(compact(model, rounded), batch))


@pytest.mark.parametrize("name", ["qwen2", "mistral"])
def test_architectures_without_a_bias_option_are_skipped_with_a_message(name, caplog):
    model = build(name, 0)
    support = bias_compensation_support(model)
    assert "o_proj without a bias" in support["heads"] and "down_proj without a bias" in support["ffn"]
    plan = partial_plan(model, 0)
    with caplog.at_level("WARNING"):
        shifted = compensate_plan(model, plan, calibration(model, 1))
    assert not shifted.head_bias_shift and not shifted.ffn_bias_shift
    assert "bias compensation of attention skipped" in caplog.text
    with pytest.raises(ValueError, match="ffn_bias_shift: .*down_proj without a bias"):
        compact(model, CompactionPlan(ffn={0: [1]}, ffn_bias_shift={0: [0.0] * 24}))


def test_gguf_export_carries_the_new_biases(tmp_path):
    gguf = pytest.importorskip("gguf")
    from vtrans_kernels.export.gguf import export_gguf

    model = build("llama-gqa", 0)
    plan = CompactionPlan(heads={i: [1] for i in range(3)}, ffn={i: list(range(0, 37, 2)) for i in range(3)})
    compacted = compact(model, compensate_plan(model, plan, calibration(model)))
    path = export_gguf(compacted, tmp_path / "m.gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for i in range(3):
        expected = compacted.model.layers[i].mlp.down_proj.bias.detach().numpy()
        assert torch.allclose(torch.tensor(tensors[f"blk.{i}.ffn_down.bias"].data.copy()), torch.tensor(expected))
        assert f"blk.{i}.attn_output.bias" in tensors


def test_prune_cli_with_bias_compensation_end_to_end(tmp_path, capsys):
    """`vtrans prune --bias-compensation` on a tiny LLaMA: the compacted model carries the shifts, the compensated
    plan is written, and `vtrans compact` with that plan reproduces the saved model exactly."""
    from tiny_text import model_folder, write_data

    from vtrans_kernels.cli import main

    folder = model_folder(tmp_path / "llama", "llama-gqa")
    data = write_data(tmp_path / "text.jsonl", fmt="jsonl", columns=("text",))
    out = tmp_path / "out"
    argv = ["prune", "--model", str(folder), "--data", str(data), "--out", str(out), "--task", "lm", "--steps", "4",
            "--batch-size", "4", "--max-length", "16", "--seq-len", "16", "--no-progress", "--target-sparsity",
            "0.4", "--structures", "heads,ffn", "--bias-compensation", "--calibration-batches", "2"]
    assert main(argv) == 0
    assert "bias compensation: sublayers shifted" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    record = summary["bias_compensation"]
    assert record["calibration_batches"] == 2 and record["shifted"]["ffn"] and not record["skipped"]
    plan = CompactionPlan.load(out / "plan_compensated.json")
    assert sorted(plan.ffn_bias_shift) == record["shifted"]["ffn"]
    saved = load_compacted(out / "compacted")
    assert saved.config.mlp_bias
    assert main(["compact", "--model", str(folder), "--masks", str(out / "plan_compensated.json"),
                 "--out", str(tmp_path / "again")]) == 0
    again = load_compacted(tmp_path / "again")
    batch = {"input_ids": torch.tensor([[3, 9, 4, 7, 11]])}
    assert torch.equal(output(again, batch), output(saved, batch))


def test_prune_config_and_cli_name_the_calibration_argument(tmp_path, capsys):
    from vtrans_kernels.cli import main
    from vtrans_kernels.prune.config import PruneConfig

    with pytest.raises(ValueError, match="calibration_batches: expected a positive int"):
        PruneConfig(bias_compensation=True, calibration_batches=0)
    with pytest.raises(ValueError, match="bias_compensation: expected True or False"):
        PruneConfig(bias_compensation="yes")
    argv = ["prune", "--model", str(tmp_path), "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "o"),
            "--bias-compensation", "--calibration-batches", "0", "--no-progress"]
    assert main(argv) == 2
    assert "calibration_batches" in capsys.readouterr().err
