"""GGUF export of LLaMA / Mistral / Qwen2 causal LMs for llama.cpp, per-layer shapes included.

llama.cpp's ``deci`` architecture (DeciLM / Nemotron-NAS) reads the head count, KV-head count and FFN width of
every layer from arrays, with 0 meaning a removed sublayer, and otherwise computes what a LLaMA layer computes
(pre-RMSNorm, RoPE, GQA, SwiGLU, optional q/k/v/o and FFN biases). A compacted model, whose layers differ in
shape, is written in that architecture. Three quirks of llama.cpp's deci graph (0.3.36 / its vendored llama.cpp)
shape the layout, each worked around exactly, without changing what the model computes:

- llama.cpp derives the head size from layer 0 and refuses a model whose layer 0 has no attention heads; such a
  layer gets a placeholder attention of one head whose value and output projections are zero (adds exactly 0).
- a layer written with ``feed_forward_length`` 0 but attention heads drops its attention output (the graph skips
  the rest of the layer, residual add included); such a layer gets a placeholder FFN of width 1 whose
  projections are zero (adds exactly 0).
- llama.cpp's LLaMA-family rope rotates pairs of adjacent dims, transformers' rotates dim ``j`` with dim
  ``j + head_dim / 2``; q and k rows (weights and biases) are permuted per head so that both agree.

llama.cpp has no sliding-window attention for this architecture: a model that uses one (Mistral v0.1) gets the
window as its context length, within which both compute the same.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fileio import atomic_write
from ..hf.adapters import adapter_for
from ..hf.adapters.base import get_module

log = logging.getLogger(__name__)

SUPPORTED_CLASSES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
ARCH = "deci"
DTYPES = ("f32", "f16")

# transformers' pre-tokenizer regexes that llama.cpp reimplements, by llama.cpp's pre-tokenizer name
_SPLIT_REGEX_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def export_gguf(model: nn.Module, out: Path, *, tokenizer_dir: Path | None = None, dtype: str = "f32") -> Path:
    """Write ``model`` (a LLaMA / Mistral / Qwen2 causal LM, compacted or not) to the GGUF file ``out``.

    The file uses llama.cpp's ``deci`` architecture, with per-layer ``head_count``, ``head_count_kv`` and
    ``feed_forward_length`` arrays (0: removed sublayer); 2-D weights are stored as ``dtype`` ("f32" or "f16"),
    norms and biases as f32. ``tokenizer_dir`` is a folder of Hugging Face tokenizer files (a ``tokenizer.json`` of a
    byte-level BPE, as GPT-2 / LLaMA-3 / Qwen2 / SmolLM use, or of a SentencePiece-style BPE with byte fallback, as
    LLaMA-2 / Mistral use; with ``tokenizer_config.json``); without it the file gets llama.cpp's placeholder
    vocabulary of the model's vocabulary size (token ids in, logits out; no text). The file is written to a
    temporary file beside ``out`` and renamed, so a failure leaves no partial file. Returns ``out``.

    Raises ``ValueError`` for a model outside the family, a configuration llama.cpp cannot reproduce (an
    activation other than SiLU, an unsupported rope scaling) or a tokenizer it cannot represent.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    name = type(model).__name__
    if name not in SUPPORTED_CLASSES:
        raise ValueError(f"model: {name} cannot be exported to GGUF; supported classes: "
                         f"{', '.join(SUPPORTED_CLASSES)}")
    out = Path(out)
    config = model.config
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"model: hidden_act {config.hidden_act!r} is not supported by llama.cpp's deci "
                         "architecture (SiLU only)")
    rope = _rope(config)
    adapter = adapter_for(model)
    head_dim = adapter.head_dim()
    vocab_size = model.get_input_embeddings().num_embeddings
    tokenizer = _read_tokenizer(Path(tokenizer_dir), vocab_size) if tokenizer_dir is not None else None
    tensors, layers = _tensors(model, rope["llama3"])

    import gguf  # optional dependency: only the export needs it

    writer = gguf.GGUFWriter(None, ARCH)
    writer.add_name(str(getattr(config, "_name_or_path", "") or name).rstrip("/").split("/")[-1] or name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_block_count(len(layers))
    writer.add_context_length(_context_length(config))
    writer.add_embedding_length(adapter.hidden_size())
    writer.add_feed_forward_length([layer["n_ff"] for layer in layers])
    writer.add_head_count([layer["n_head"] for layer in layers])
    writer.add_head_count_kv([layer["n_head_kv"] for layer in layers])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope["theta"])
    if rope.get("linear_factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["linear_factor"])
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_size)
    if tokenizer is None:
        writer.add_tokenizer_model("none")  # llama.cpp then makes vocab_size placeholder tokens
    else:
        _add_tokenizer(writer, tokenizer, config, vocab_size)

    for tensor_name, array in tensors:
        if array.ndim == 2 and dtype == "f16":
            array = array.astype(np.float16)
        writer.add_tensor(tensor_name, array)

    def write(f):
        # GGUFWriter opens its own file by path; handing it the temporary file of atomic_write instead puts it
        # in the state it has after opening one ("EMPTY", the only state in which it writes a header).
        writer.fout = [f]
        writer.state = gguf.WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()

    atomic_write(out, write)
    return out


# ---- model ----------------------------------------------------------------------------------------------------
def _rope(config) -> dict:
    """Rope base frequency and scaling of ``config``: ``theta``, ``linear_factor`` (or None) and ``llama3`` (the
    llama3 scaling parameters, which become llama.cpp's ``rope_freqs`` tensor; or None)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    rope = {"theta": theta, "linear_factor": None, "llama3": None}
    if kind == "default":
        return rope
    if kind == "linear":
        rope["linear_factor"] = float(params["factor"])
        return rope
    if kind == "llama3":
        rope["llama3"] = params
        return rope
    raise ValueError(f"model: rope scaling {kind!r} is not supported for GGUF export (default, linear and "
                     "llama3 are)")


def _llama3_freq_factors(params: dict, theta: float, head_dim: int) -> np.ndarray:
    """Per-frequency divisors that turn plain rope into transformers' llama3 rope scaling."""
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_context = float(params.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    divisors = []
    for k in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (k / head_dim)
        if wavelen < high_wavelen:
            divisors.append(1.0)
        elif wavelen > low_wavelen:
            divisors.append(factor)
        else:  # transformers blends the scaled and unscaled frequency in between
            smooth = (old_context / wavelen - low) / (high - low)
            divisors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(divisors, dtype=np.float32)


def _context_length(config) -> int:
    length = int(config.max_position_embeddings)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window and (layer_types is None or "sliding_attention" in layer_types) and window < length:
        log.warning("GGUF export: llama.cpp's deci architecture has no sliding-window attention; the context "
                    "length is set to the window (%d tokens), within which llama.cpp computes what the model "
                    "computes", window)
        return int(window)
    return length


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def _rope_rows(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows (weight or bias) reordered per head from transformers' half-split rope to llama.cpp's
    adjacent-pair rope: within each head, row ``2j`` becomes the old row ``j`` and ``2j+1`` the old ``j + d/2``."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _tensors(model: nn.Module, llama3_params) -> tuple[list[tuple[str, np.ndarray]], list[dict]]:
    """The GGUF tensors of ``model`` (name, f32 array) and the per-layer counts written beside them."""
    import gguf

    def tname(kind, suffix="weight", bid=None):
        base = gguf.TENSOR_NAMES[kind]
        return f"{base.format(bid=bid) if bid is not None else base}.{suffix}"

    T = gguf.MODEL_TENSOR
    adapter = adapter_for(model)
    units = adapter.units()
    hidden, head_dim, group = units.hidden, adapter.head_dim(), adapter.q_heads_per_unit()
    tensors: list[tuple[str, np.ndarray]] = []
    layers: list[dict] = []

    word = get_module(model, adapter.embedding_tables()[0]).weight
    tensors.append((tname(T.TOKEN_EMBD), _array(word)))
    tensors.append((tname(T.OUTPUT_NORM), _array(get_module(model, adapter.final_norm()).weight)))
    if not adapter.lm_head_tied():  # llama.cpp reuses token_embd when output.weight is absent
        head = model.get_output_embeddings()
        if head.bias is not None:
            raise ValueError("model: an LM head with a bias cannot be expressed in llama.cpp's deci architecture")
        tensors.append((tname(T.OUTPUT), _array(head.weight)))
    if llama3_params is not None:
        theta = float(llama3_params.get("rope_theta", getattr(model.config, "rope_theta", 10000.0)))
        tensors.append((tname(T.ROPE_FREQS), _llama3_freq_factors(llama3_params, theta, head_dim)))

    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        kv_units, n_ff = units.heads[i], units.ffn[i]
        n_head_kv, n_head = kv_units, kv_units * group
        if n_head_kv:
            q, k, v = (get_module(model, p) for p in roles.head_producers)
            o = get_module(model, roles.head_consumer)
            tensors.append((tname(T.ATTN_NORM, bid=i), _array(get_module(model, roles.attn_norm).weight)))
            tensors.append((tname(T.ATTN_Q, bid=i), _array(_rope_rows(q.weight, n_head))))
            tensors.append((tname(T.ATTN_K, bid=i), _array(_rope_rows(k.weight, n_head_kv))))
            tensors.append((tname(T.ATTN_V, bid=i), _array(v.weight)))
            tensors.append((tname(T.ATTN_OUT, bid=i), _array(o.weight)))
            for kind, module, heads in ((T.ATTN_Q, q, n_head), (T.ATTN_K, k, n_head_kv), (T.ATTN_V, v, 0)):
                if module.bias is not None:
                    bias = _rope_rows(module.bias, heads) if heads else module.bias
                    tensors.append((tname(kind, "bias", i), _array(bias)))
            if o.bias is not None:
                tensors.append((tname(T.ATTN_OUT, "bias", i), _array(o.bias)))
        elif i == 0:
            # placeholder (see the module docstring): one head, zero values and output, so it adds exactly 0
            n_head = n_head_kv = 1
            zeros = np.zeros((head_dim, hidden), dtype=np.float32)
            tensors.append((tname(T.ATTN_NORM, bid=i), np.ones(hidden, dtype=np.float32)))
            for kind in (T.ATTN_Q, T.ATTN_K, T.ATTN_V):
                tensors.append((tname(kind, bid=i), zeros))
            tensors.append((tname(T.ATTN_OUT, bid=i), np.zeros((hidden, head_dim), dtype=np.float32)))
        if n_ff:
            gate, up = (get_module(model, p) for p in roles.ffn_producers)
            down = get_module(model, roles.ffn_consumer)
            tensors.append((tname(T.FFN_NORM, bid=i), _array(get_module(model, roles.ffn_norm).weight)))
            for kind, module in ((T.FFN_GATE, gate), (T.FFN_UP, up), (T.FFN_DOWN, down)):
                tensors.append((tname(kind, bid=i), _array(module.weight)))
                if module.bias is not None:
                    tensors.append((tname(kind, "bias", i), _array(module.bias)))
        elif n_head:
            # placeholder (see the module docstring): width 1, zero projections, so it adds exactly 0
            n_ff = 1
            tensors.append((tname(T.FFN_NORM, bid=i), np.ones(hidden, dtype=np.float32)))
            tensors.append((tname(T.FFN_GATE, bid=i), np.zeros((1, hidden), dtype=np.float32)))
            tensors.append((tname(T.FFN_UP, bid=i), np.zeros((1, hidden), dtype=np.float32)))
            tensors.append((tname(T.FFN_DOWN, bid=i), np.zeros((hidden, 1), dtype=np.float32)))
        layers.append({"n_head": n_head, "n_head_kv": n_head_kv, "n_ff": n_ff})
    return tensors, layers


# ---- tokenizer ------------------------------------------------------------------------------------------------
def _read_tokenizer(folder: Path, vocab_size: int) -> dict:
    """What llama.cpp needs of a folder's tokenizer.json: its tokenizer kind ("gpt2": byte-level BPE; "llama":
    SentencePiece-style BPE with byte fallback, as LLaMA-2 and Mistral ship), tokens, token types, scores
    ("llama" only) and the pre-tokenizer name ("gpt2" only)."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer_dir: {str(path)!r} does not exist (a Hugging Face tokenizer.json is needed)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    bpe = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    decoders = [d.get("type") for d in decoder.get("decoders", [])] if decoder.get("type") == "Sequence" else []
    if bpe.get("type") == "BPE" and decoder.get("type") == "ByteLevel":
        kind, pre = "gpt2", _pre_tokenizer_name(spec, path)
    elif bpe.get("type") == "BPE" and bpe.get("byte_fallback") and "ByteFallback" in decoders:
        kind, pre = "llama", None
    else:
        raise ValueError(f"tokenizer_dir: {path} is neither a byte-level BPE tokenizer nor a SentencePiece-style BPE "
                         f"with byte fallback (model {bpe.get('type')!r}, decoder {decoder.get('type')!r}); only "
                         "those two kinds are supported")
    by_id: dict[int, tuple[str, int]] = {}
    for token, index in bpe["vocab"].items():
        is_byte = kind == "llama" and len(token) == 6 and token.startswith("<0x") and token.endswith(">")
        by_id[int(index)] = (token, gguf.TokenType.BYTE if is_byte else gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens", []):
        token_type = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        if kind == "llama" and added["content"] == bpe.get("unk_token"):
            token_type = gguf.TokenType.UNKNOWN
        by_id[int(added["id"])] = (added["content"], token_type)
    if max(by_id) >= vocab_size:
        raise ValueError(f"tokenizer_dir: {path} has token id {max(by_id)}, but the model's embedding has only "
                         f"{vocab_size} rows")
    tokens, types = [], []
    for index in range(vocab_size):  # ids the tokenizer does not use are padding rows of the embedding
        token, token_type = by_id.get(index, (f"[PAD{index}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(token_type)
    result = {"folder": folder, "kind": kind, "tokens": tokens, "types": types, "pre": pre}
    if kind == "llama":
        result["scores"] = _merge_scores(bpe, tokens)
        result["space_prefix"] = _adds_space_prefix(spec)
    return result


def _merge_scores(bpe: dict, tokens: list[str]) -> list[float]:
    """Scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose result scores highest:
    a token made by merge rank ``r`` scores ``-r``, so the merge order is the BPE model's (earliest rank first)."""
    rank_of: dict[str, int] = {}
    for rank, merge in enumerate(bpe.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank_of.setdefault(left + right, rank)
    return [-float(rank_of[token]) if token in rank_of else 0.0 for token in tokens]


def _adds_space_prefix(spec: dict) -> bool:
    """Whether the tokenizer puts a word boundary (U+2581) before the text, as llama.cpp's add_space_prefix does."""
    def steps(part):
        part = part or {}
        return part.get("normalizers") or part.get("pretokenizers") or [part]

    for step in steps(spec.get("normalizer")):
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
    for step in steps(spec.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return False


def _pre_tokenizer_name(spec: dict, path: Path) -> str:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json (llama.cpp reimplements a fixed set)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    normalizer = (spec.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        raise ValueError(f"tokenizer_dir: {path} has a {normalizer} normalizer, which llama.cpp does not apply")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_REGEX_PRE:
            return _SPLIT_REGEX_PRE[regex]
    raise ValueError(f"tokenizer_dir: {path} has a pre-tokenizer ({json.dumps(pre)[:200]}) that this export does "
                     "not map to one of llama.cpp's (gpt-2, smollm, llama-bpe, qwen2)")


def _add_tokenizer(writer, tokenizer: dict, config, vocab_size: int) -> None:
    import gguf

    byte_level = tokenizer["kind"] == "gpt2"
    writer.add_tokenizer_model(tokenizer["kind"])
    if byte_level:
        writer.add_tokenizer_pre(tokenizer["pre"])
    else:
        writer.add_token_scores(tokenizer["scores"])
        writer.add_add_space_prefix(tokenizer["space_prefix"])
    writer.add_token_list(tokenizer["tokens"])
    writer.add_token_types(tokenizer["types"])
    # byte-level BPE is applied by merges; llama.cpp's SentencePiece tokenizer uses the scores instead
    special = gguf.SpecialVocab(tokenizer["folder"], load_merges=byte_level, n_vocab=vocab_size)
    if byte_level and not special.merges:
        raise ValueError(f"tokenizer_dir: {tokenizer['folder']} has no BPE merges")
    # the model's own config says which tokens start and end its sequences; the tokenizer files fill the rest
    for kind in ("bos", "eos"):
        token_id = getattr(config, f"{kind}_token_id", None)
        if isinstance(token_id, (list, tuple)):
            token_id = token_id[0] if token_id else None
        if token_id is not None and 0 <= int(token_id) < vocab_size:
            special.special_token_ids[kind] = int(token_id)
    # llama.cpp's default for prepending BOS depends on the pre-tokenizer; write what the HF tokenizer does (its
    # config's add_bos_token or post-processor template, read by SpecialVocab; neither: no BOS)
    special.add_special_token.setdefault("bos", False)
    _quiet(lambda: special.add_to_gguf(writer, quiet=True))


def _quiet(call):
    """Run ``call`` with the gguf package's info logging silenced (it logs every special token it writes)."""
    gguf_log = logging.getLogger("gguf")
    level = gguf_log.level
    gguf_log.setLevel(max(level, logging.WARNING))
    try:
        return call()
    finally:
        gguf_log.setLevel(level)


__all__ = ["export_gguf", "SUPPORTED_CLASSES"]
