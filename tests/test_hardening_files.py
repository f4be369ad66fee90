"""Model folders and plan files from elsewhere: tensor files an index names outside the folder, links planted in
the folder being written, leftover weights of an earlier save, unreadable plans and plans for other models."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build, inputs, output, random_plan

from vtrans_kernels import CompactionPlan, compact, load_compacted, save_compacted
from vtrans_kernels.hf import adapter_for
from vtrans_kernels.hf.plan import model_record
from vtrans_kernels.hf.serialization import load_model


@pytest.fixture
def saved(tmp_path):
    model = build("gpt2", 3)
    small = compact(model, random_plan(model, 3))
    folder = save_compacted(small, tmp_path / "saved")
    return small, folder


@pytest.mark.parametrize("where", ["absolute", "parent", "link"])
def test_index_named_files_outside_the_folder_are_refused(tmp_path, saved, where):
    small, folder = saved
    secret = tmp_path / "secret.safetensors"  # a readable tensor file outside the folder
    save_file({k: v.contiguous() for k, v in small.state_dict().items() if "lm_head" not in k}, str(secret))
    name = {"absolute": str(secret), "parent": "../secret.safetensors", "link": "inside.safetensors"}[where]
    if where == "link":
        (folder / "inside.safetensors").symlink_to(secret)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"any": name}}))
    with pytest.raises(ValueError, match=rf"the tensor file '{name}' \(named by model\.safetensors\.index\.json\) "
                                         r"lies outside .*; refusing to read it"):
        load_compacted(folder)


def test_a_malformed_index_is_a_clear_error(saved):
    _, folder = saved
    (folder / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
    with pytest.raises(ValueError, match="'weight_map' must map tensor names to file names"):
        load_compacted(folder)


@pytest.mark.parametrize("damage", ["zero bytes", "truncated"])
def test_unreadable_weights_are_clear_errors(tmp_path, saved, damage):
    _, folder = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(b"" if damage == "zero bytes" else weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors' \(truncated or corrupt\?\)"):
        load_model(folder)
    plain = tmp_path / "plain"
    build("bert").save_pretrained(plain)
    (plain / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot load the model in .*plain' \(missing, truncated or corrupt"):
        load_model(plain)
    (plain / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*config\.json' as a transformers config"):
        load_model(plain)


def test_saving_replaces_planted_links_and_earlier_weights(tmp_path, saved):
    small, _ = saved
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").symlink_to(victim)
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00001-of-00002."
                                                                                         "safetensors"}}))
    save_compacted(small, folder)
    assert victim.read_text() == "keep me" and not (folder / "config.json").is_symlink()
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "generation_config.json", "model.safetensors"]
    batch = inputs(small)
    assert torch.equal(output(load_compacted(folder), batch), output(small, batch))


@pytest.mark.parametrize("text, message", [
    ('{"ffn": {"0": [1e400]}}', r"ffn\[0\]: expected integer unit indices, got inf"),
    ('{"ffn": {"0": [true]}}', r"ffn\[0\]: expected integer unit indices, got True"),
    ('{"ffn": {"0": [100000000000000000000000]}}', r"ffn\[0\]: indices \[100000000000000000000000\] out of range"),
    ('{"heads": {"1e400": [0]}}', r"heads: layer keys must be ints, got '1e400'"),
    ('{"ffn_scale": {"0": ["a"]}}', r"ffn_scale\[0\]: expected a list of numbers"),
    ("[" * 100000, "nests too deeply"),
])
def test_unreadable_plans_are_clear_errors(tmp_path, text, message):
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises((TypeError, ValueError), match=message):
        compact(build("bert"), CompactionPlan.load(tmp_path / "plan.json"))


def test_a_plan_for_another_model_is_refused():
    llama, bert = build("llama-gqa"), build("bert")
    units = [3, 3, 3]
    plan = CompactionPlan(heads={0: [0]}, model=model_record("llama", 24, [2, 2, 2], [37] * 3))
    assert CompactionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).model == plan.model
    with pytest.raises(ValueError, match=r"made for another model \(model_type: plan made for 'llama', model has "
                                         r"'bert'; heads: plan made for \[2, 2, 2\], "
                                         r"model has \[4, 4, 4\]\)"):
        compact(bert, plan)
    compact(llama, plan)  # the model it was made for
    plan.model["heads"] = units
    with pytest.raises(ValueError, match=r"heads: plan made for \[3, 3, 3\], model has \[2, 2, 2\]"):
        compact(llama, plan)
    classifier_plan = CompactionPlan(ffn={0: [1, 2]}, model=model_record("bert", 24, [4] * 3, [37] * 3))
    base = compact(build("bert-base"), classifier_plan)  # the same backbone under another head class
    assert adapter_for(base).units().ffn == (2, 37, 37)
