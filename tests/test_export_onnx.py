"""ONNX export (issue 17): every tiny model family, compacted by a random non-uniform plan with removed sublayers
and a pruned hidden size, exports once and runs in ONNX Runtime (CPU) at other batch sizes and sequence lengths
than the trace's; its output matches the compacted PyTorch model to fp32 tolerance, and decoders continue a
prompt with the same greedy tokens. Exports are shared across the tests of a family (about 5 s each)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import BUILDERS, DECODERS, build, greedy, inputs, output, random_plan

from vtrans_kernels import compact
from vtrans_kernels.export import onnx as onnx_export
from vtrans_kernels.export.onnx import INPUT_NAMES, export_onnx, onnx_interface

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# (batch, sequence) pairs run in ONNX Runtime; the export traces batch 2 x sequence 8. Batch 1 and a sequence
# shorter than Mistral's sliding window (5) are the shapes a graph specialised to the trace gets wrong.
SHAPES = [(3, 17), (1, 3)]


def session(path) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a shared CI machine: one thread is as fast for these sizes, and quieter
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, batch: dict) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {name: batch[name].numpy() for name in INPUT_NAMES})[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(family)`` -> (compacted model, path, ONNX Runtime session), exported once per family."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(family: str):
        if family not in cache:
            model = build(family)
            compacted = compact(model, random_plan(model, seed=1))
            path = export_onnx(compacted, folder / f"{family}.onnx")
            cache[family] = compacted, path, session(path)
        return cache[family]

    return get


@pytest.mark.parametrize("family", list(BUILDERS))
def test_onnx_runtime_matches_the_compacted_model(exported, family):
    compacted, path, sess = exported(family)
    record = compacted.config.vtrans_compaction
    assert len(set(record["ffn"])) > 1 and (0 in record["heads"] or len(record["sources"]) < 3)  # non-uniform, removals
    expected_output = "last_hidden_state" if family == "bert-base" else "logits"
    interface = onnx_interface(path)
    assert list(interface["inputs"]) == list(INPUT_NAMES) and list(interface["outputs"]) == [expected_output]
    assert all(dims == ["batch", "sequence"] for dims in interface["inputs"].values())
    assert interface["external_files"] == []
    for batch_size, seq in SHAPES:
        batch = inputs(compacted, seed=batch_size, batch=batch_size, seq=seq)
        got, want = run(sess, batch), output(compacted, batch)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_greedy_tokens_match(exported, family):
    """ONNX Runtime re-runs the whole sequence each step (the graph has no KV cache); PyTorch uses generate."""
    compacted, _, sess = exported(family)
    prompt = torch.randint(2, 61, (2, 5), generator=torch.Generator().manual_seed(7))
    want = greedy(compacted, prompt, new_tokens=10)
    ids = prompt.numpy()
    for _ in range(10):
        logits = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None]], axis=1)
    assert torch.equal(torch.from_numpy(ids), want)


def test_the_trace_runs_on_an_fp32_eval_copy(exported, tmp_path, monkeypatch):
    """A bf16 model in training mode is traced as an fp32 eval-mode copy (dropout off) and itself left as it is;
    checked at the exporter's door, without paying for a trace."""
    compacted, _, _ = exported("llama-gqa")
    half = copy.deepcopy(compacted).to(torch.bfloat16).train()
    before = {k: v.clone() for k, v in half.state_dict().items()}
    seen = {}

    def fake_export(module, args, **kwargs):
        seen.update(training=module.training, dtypes={p.dtype for p in module.parameters()},
                    dynamic=kwargs["dynamic_shapes"], shape=tuple(args[0].shape))
        raise RuntimeError("stop here")

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    with pytest.raises(RuntimeError, match="stop here"):
        export_onnx(half, tmp_path / "m.onnx")
    assert seen["training"] is False and seen["dtypes"] == {torch.float32}
    assert all(set(dims) == {0, 1} for dims in seen["dynamic"]) and 1 not in seen["shape"]
    assert half.training and {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert all(torch.equal(before[k], v) for k, v in half.state_dict().items())
    assert list(tmp_path.iterdir()) == []


def test_over_the_single_file_limit(exported, tmp_path, monkeypatch):
    """Weights above the limit go to <out>.data beside the graph (protobuf files stop at 2 GiB); forcing a single
    file is then refused before anything is traced or written."""
    compacted, _, _ = exported("bert")
    monkeypatch.setattr(onnx_export, "SINGLE_FILE_LIMIT", 1000)
    with pytest.raises(ValueError, match="external_data=True"):
        export_onnx(compacted, tmp_path / "one.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == []


def test_not_a_supported_model():
    with pytest.raises(TypeError, match="model"):
        export_onnx(torch.nn.Linear(2, 2), "unused.onnx")
