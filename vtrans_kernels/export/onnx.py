"""ONNX export of supported transformers models, compacted or not, for ONNX Runtime and other ONNX engines.

The graph is traced with ``torch.onnx.export(..., dynamo=True)`` (torch.export underneath), so every layer keeps
the shapes it has: per-layer heads / KV groups and FFN widths, removed attention or FFN sublayers and a pruned
hidden size need nothing from the engine but a graph. The exported graph's interface, the same for every
architecture:

- inputs ``input_ids`` and ``attention_mask``: int64, shape ``[batch, sequence]`` (1 for tokens, 0 for padding),
  both axes dynamic (``sequence`` up to the model's position table for BERT, RoBERTa and GPT-2);
- one output: ``logits`` for models with a head (``[batch, sequence, vocab]`` for language models,
  ``[batch, num_labels]`` for sequence classification), ``last_hidden_state`` (``[batch, sequence, hidden]``) for
  bare backbones (``BertModel``, ``LlamaModel``, ...).

No KV cache: a decoder's graph recomputes the whole sequence (``use_cache=False``), which is what one prefill or
a full-sequence scoring pass costs. Weights are fp32. The interface is also stored in the file's metadata
(``vtrans.inputs``, ``vtrans.output``, ``vtrans.source_class``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..fileio import TMP_SUFFIX, _fsync_folder
from ..hf.adapters import adapter_for

INPUT_NAMES = ("input_ids", "attention_mask")
# torch's exporter writes the weights beside the graph above this many bytes of initializers: a protobuf message
# (the .onnx file) cannot exceed 2 GiB. Mirrors torch.onnx's own threshold (1536 MiB, which leaves room for the graph).
SINGLE_FILE_LIMIT = 1536 * 2**20
# The trace's example shape: neither axis 0 or 1 (torch.export would specialise those) and the two differ, so that
# no guard ties batch to sequence.
_TRACE_BATCH, _TRACE_SEQ = 2, 8


class _ForwardToTensor(nn.Module):
    """The model as a function of (input_ids, attention_mask) returning one tensor, with the KV cache off: what
    the exporter traces."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        return getattr(out, self.output)


def output_name(model: nn.Module) -> str:
    """``"logits"`` for a model with a head, ``"last_hidden_state"`` for a bare backbone (``BertModel``, ...)."""
    return "last_hidden_state" if getattr(model, "base_model", None) is model else "logits"


def max_sequence(model: nn.Module) -> int | None:
    """The longest sequence the model can embed (its learned position table), or ``None`` for rotary positions."""
    config = model.config
    if config.model_type == "gpt2":
        return config.n_positions
    if config.model_type == "roberta":  # positions start after the padding index
        return config.max_position_embeddings - config.pad_token_id - 1
    if config.model_type == "bert":
        return config.max_position_embeddings
    return None


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in fp32 (tied weights once): about the size of the export."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * 4
    return total


def onnx_files(out: str | os.PathLike, external_data: bool) -> list[Path]:
    """The files :func:`export_onnx` writes for ``out``: the graph, and the weights file beside it when the
    weights are stored outside the graph (``<name>.data``, the name torch's exporter gives it)."""
    out = Path(out)
    return [out, out.with_name(out.name + ".data")] if external_data else [out]


def export_onnx(model: nn.Module, out: str | os.PathLike, *, opset: int | None = None,
                external_data: bool | None = None, optimize: bool = False) -> Path:
    """Export ``model`` (a supported transformers model, compacted or not) to the ONNX file ``out``.

    The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``, both axes dynamic) and
    returns ``logits`` (``last_hidden_state`` for a bare backbone); see the module docstring. It is traced from an
    fp32 eval-mode copy when the model is in another dtype or in training mode, so ``model`` itself is never
    changed. ``opset`` defaults to the exporter's. ``external_data``: ``None`` writes one self-contained file
    unless the weights exceed :data:`SINGLE_FILE_LIMIT` (1.5 GiB; a protobuf file cannot hold more than 2 GiB),
    then the weights go to ``<out>.data`` beside the graph, which refers to it by that relative name (keep
    the two files together); ``True``/``False`` force either layout, ``False`` refusing a too-large model.
    ``optimize`` runs onnxscript's graph optimizer on the export: a third of the nodes, but ONNX Runtime, which
    fuses the graph itself when it loads it, ran both at the same speed (6-layer LLaMA, measured 2026-12-02),
    and the optimizer's time grows faster than the layer count (30 layers of SmolLM2-135M's shapes: 102 s of CPU
    against 29 s for the rest of the export), so it is off by default.

    Written atomically: into a temporary folder beside ``out`` and renamed into place (the weights file before
    the graph), so an interrupted export leaves no torn file under the final names; an existing ``out`` is
    replaced (callers check for it: :func:`vtrans_kernels.export.export_model` refuses one unless asked).
    Returns ``out``. Needs the ``onnx`` and ``onnxscript`` packages.
    """
    adapter_for(model)  # a TypeError / ValueError naming the supported classes for anything else
    out = Path(out)
    size = weight_bytes(model)
    if external_data is None:
        external_data = size > SINGLE_FILE_LIMIT
    elif not external_data and size > SINGLE_FILE_LIMIT:
        raise ValueError(f"external_data=False: the model holds {size / 2**30:.2f} GiB of fp32 weights, more than "
                         f"a single .onnx file can (limit used: {SINGLE_FILE_LIMIT / 2**30:.1f} GiB, protobuf's is 2 "
                         "GiB); export with external_data=True (weights in a .data file beside the graph)")
    program = _trace(model, opset, optimize)
    _save(program, out, external_data, size)
    return out


def _trace(model: nn.Module, opset: int | None, optimize: bool = False):
    """The ``torch.onnx.ONNXProgram`` of ``model`` with dynamic batch and sequence axes."""
    from torch.export import Dim

    _require("onnxscript")
    _require("onnx")
    traced = model
    if model.training or any(p.is_floating_point() and p.dtype != torch.float32
                             for p in [*model.parameters(), *model.buffers()]):
        traced = copy.deepcopy(model).float().eval()  # the caller's model keeps its dtype and mode
    output = output_name(traced)
    limit = max_sequence(traced)
    batch = Dim("batch", min=1)
    sequence = Dim("sequence", min=1, **({} if limit is None else {"max": limit}))
    example = torch.full((_TRACE_BATCH, _TRACE_SEQ), _example_token(traced), dtype=torch.long)
    mask = torch.ones_like(example)
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            _ForwardToTensor(traced, output).eval(), (example, mask), dynamo=True, opset_version=opset,
            dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}), input_names=list(INPUT_NAMES),
            output_names=[output], external_data=False, verbose=False, optimize=optimize)
    program.model.metadata_props.update({
        "vtrans.inputs": json.dumps({name: ["batch", "sequence"] for name in INPUT_NAMES}),
        "vtrans.output": output,
        "vtrans.source_class": type(model).__name__,
        "vtrans.max_sequence": "" if limit is None else str(limit),
    })
    return program


def _example_token(model: nn.Module) -> int:
    """A token id that is no pad id (sequence-classification heads look for pads in the ids)."""
    pad = getattr(model.config, "pad_token_id", None)
    return 2 if pad != 2 else 3


def _save(program, out: Path, external_data: bool, size: int) -> None:
    """Write ``program`` to ``out`` (and ``<out>.data``) through a temporary folder beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=TMP_SUFFIX))
    try:
        staged = stage / out.name
        program.save(staged, external_data=external_data)  # torch also goes external on its own above 1.5 GiB
        written = sorted(os.listdir(stage))
        expected = sorted(p.name for p in onnx_files(out, external_data))
        if written != expected:  # the exporter's file layout changed: do not leave a graph missing its weights
            raise RuntimeError(f"export_onnx: the exporter wrote {written}, expected {expected} "
                               f"({size / 2**20:.0f} MiB of weights)")
        for name in sorted(written, key=lambda n: n == out.name):  # weights first, the graph that needs them last
            os.replace(stage / name, out.parent / name)
        _fsync_folder(out.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _require(package: str) -> None:
    try:
        __import__(package)
    except ImportError:
        raise ImportError(f"ONNX export needs the {package!r} package: pip install onnx onnxscript "
                          "(or pip install 'vtrans-kernels[serve]')") from None


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines and warnings about optional packages (torchvision ops, axis
    renames); errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def onnx_interface(path: str | os.PathLike) -> dict:
    """Inputs and outputs of an exported file (``{"inputs": {name: dims}, "outputs": {name: dims},
    "external_files": [names of the weight files it refers to]}``), read without loading external weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = sorted({entry.value for tensor in model.graph.initializer
                       if tensor.data_location == onnx.TensorProto.EXTERNAL
                       for entry in tensor.external_data if entry.key == "location"})

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {"inputs": {v.name: dims(v) for v in model.graph.input},
            "outputs": {v.name: dims(v) for v in model.graph.output}, "external_files": external}


__all__ = ["export_onnx", "onnx_files", "onnx_interface", "output_name", "max_sequence", "INPUT_NAMES",
           "SINGLE_FILE_LIMIT"]
