"""What a saved compacted folder tells its user: README, file modes, no machine paths; GGUF-loaded models save."""
import os
import stat

import pytest
import torch
import transformers
from tiny_models import build, inputs, output, random_plan

from vtrans_kernels import CompactionPlan, compact, load_compacted, save_compacted
from vtrans_kernels.cli import loaded_by


def _reloaded_from(name, tmp_path):
    """``name`` saved by transformers into ``tmp_path/src`` and loaded back: its config remembers that path."""
    build(name, 31).save_pretrained(tmp_path / "src")
    model = getattr(transformers, type(build(name)).__name__).from_pretrained(tmp_path / "src").eval()
    assert model.config._name_or_path == str(tmp_path / "src")
    return model


@pytest.mark.parametrize("uniform", [False, True])
def test_folder_says_what_loads_it(tmp_path, uniform):
    model = _reloaded_from("llama-gqa", tmp_path)
    plan = CompactionPlan(heads={i: [0] for i in range(3)}, ffn={i: list(range(16)) for i in range(3)}) if uniform \
        else random_plan(model, 31)
    out = save_compacted(compact(model, plan), tmp_path / "out")
    readme = (out / "README.md").read_text()
    if uniform:
        assert "from_pretrained(" in readme and "load_compacted" not in readme
        assert loaded_by(out).startswith("loads with from_pretrained")
    else:
        assert "vtrans_kernels.load_compacted(" in readme and "size mismatch" in readme
        assert "load_compacted" in loaded_by(out)
    assert "--format gguf" in readme and "--format onnx" in readme
    for name in os.listdir(out):  # no absolute path of this machine anywhere in the folder
        assert str(tmp_path) not in (out / name).read_bytes().decode("utf-8", "replace"), name


def test_bert_folder_offers_no_gguf(tmp_path):
    out = save_compacted(compact(build("bert", 32), random_plan(build("bert", 32), 32)), tmp_path / "out")
    assert "--format gguf" not in (out / "README.md").read_text()


def test_saved_files_are_readable_by_group_and_others(tmp_path):
    out = save_compacted(compact(build("qwen2", 33), random_plan(build("qwen2", 33), 33)), tmp_path / "out")
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(out):
        mode = stat.S_IMODE(os.stat(out / name).st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def _as_if_loaded_from_gguf(model):
    """The state transformers leaves a model loaded with ``gguf_file=``: fp32 weights marked as quantized."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    model.config.quantization_config = GgufConfig()
    model.hf_quantizer = GgufHfQuantizer(model.config.quantization_config)
    model.is_quantized = True
    return model


def test_models_loaded_from_gguf_compact_and_save(tmp_path):
    model = _as_if_loaded_from_gguf(build("llama-gqa", 34))
    with pytest.raises(Exception, match="gguf"):  # what transformers does; save_compacted must not
        model.save_pretrained(tmp_path / "plain")
    save_compacted(model, tmp_path / "whole")
    assert model.is_quantized  # the caller's model is left as it was
    compacted = compact(model, random_plan(model, 34))
    assert not compacted.is_quantized and not hasattr(compacted.config, "quantization_config")
    save_compacted(compacted, tmp_path / "compacted")
    batch = inputs(model, 34)
    assert torch.equal(output(load_compacted(tmp_path / "compacted"), batch), output(compacted, batch))
    assert torch.equal(output(load_compacted(tmp_path / "whole"), batch), output(model, batch))
