"""Architecture adapters: one file per transformers model family."""
from __future__ import annotations

from torch import nn

from .base import Adapter
from .bert import BertAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter

ADAPTERS: tuple[type[Adapter], ...] = (BertAdapter, GPT2Adapter, LlamaAdapter)


def supported_classes() -> list[str]:
    return [name for adapter in ADAPTERS for name in adapter.supported_classes]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``, or a ``ValueError`` listing the supported model classes."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    name = type(model).__name__
    for adapter_class in ADAPTERS:
        if name in adapter_class.supported_classes:
            adapter = adapter_class(model)
            adapter.check()
            return adapter
    raise ValueError(f"model: {name} is not supported; supported classes: {', '.join(supported_classes())}")
