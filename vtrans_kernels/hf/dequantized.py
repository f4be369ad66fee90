"""Models loaded from GGUF files: transformers dequantizes their weights to fp32 but still marks them quantized.

``from_pretrained(..., gguf_file=...)`` leaves ``model.hf_quantizer``, ``model.is_quantized`` and
``config.quantization_config`` (method "gguf") on a model whose tensors are ordinary floating-point ones, and
``save_pretrained`` then refuses it as "not serializable". A compacted model is a new dense model, so the
record is dropped from it; saving an uncompacted one drops it for the duration of the save.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


def is_dequantized_gguf(model: nn.Module) -> bool:
    """Whether ``model`` carries transformers' GGUF quantization record over floating-point weights only."""
    config = getattr(model, "config", None)
    method = getattr(getattr(config, "quantization_config", None), "quant_method", None)
    if str(getattr(method, "value", method)).lower() != "gguf":
        return False
    return all(p.is_floating_point() for p in model.parameters())


def drop_gguf_record(model: nn.Module) -> None:
    """Remove the GGUF quantization record from ``model`` (in place) when its weights are dequantized."""
    if is_dequantized_gguf(model):
        model.hf_quantizer = None
        model.is_quantized = False
        del model.config.quantization_config


@contextmanager
def without_gguf_record(model: nn.Module):
    """Within the block ``model`` has no GGUF quantization record (when its weights are dequantized)."""
    if not is_dequantized_gguf(model):
        yield model
        return
    saved = (model.hf_quantizer, model.is_quantized, model.config.quantization_config)
    drop_gguf_record(model)
    try:
        yield model
    finally:
        model.hf_quantizer, model.is_quantized, model.config.quantization_config = saved
