"""Where masks act in a transformers model (DESIGN 2.3), written once for every gate source.

``wire_gates(model, source)`` registers forward hooks at the places the adapter names: the hidden gate on the
summed embeddings (after the embedding norm in BERT) and on every attention-output and FFN-output projection's
output, norms over the kept hidden dims only, head gates on the output projection's input (one gate per head
block), FFN gates on the down projection's input, and a sublayer whose gates are all zero contributes exactly
zero, bias included. A *source* says what the gates are: a fixed ``CompactionPlan`` (``masked_by_plan``) or the
learnable masks of ``attach``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..reference.masked_norm import layer_norm_kept, rms_norm_kept
from .adapters.base import Adapter, get_module


class GateSource:
    """What ``wire_gates`` asks of a gate source. ``training`` is the hooked module's mode."""

    def active(self) -> bool:
        """False to let every hook pass through (e.g. masks switched off for a teacher forward)."""
        return True

    def has_hidden(self) -> bool:
        raise NotImplementedError

    def hidden_gate(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """``x`` [..., hidden] times the hidden gate."""
        raise NotImplementedError

    def hidden_keep(self, training: bool) -> torch.Tensor:
        """Bool [hidden]: the dims norm statistics cover."""
        raise NotImplementedError

    def has_units(self, kind: str, layer: int) -> bool:
        """Whether ``kind`` ("heads" or "ffn") of ``layer`` is gated."""
        raise NotImplementedError

    def gate_units(self, kind: str, layer: int, x: torch.Tensor, width: int,
                   training: bool) -> tuple[torch.Tensor, bool]:
        """``x`` [..., units * width] with each unit's width-wide block gated, and whether every gate is zero
        (the sublayer is removed)."""
        raise NotImplementedError

    # What the fused wiring (hf/fused.py) asks in addition: gates as fused-op arguments.
    def hidden_gate_kwargs(self, training: bool) -> dict:
        """Fused-op keyword arguments applying the hidden gate to the op's output columns."""
        raise NotImplementedError

    def unit_gate(self, kind: str, layer: int, rows: int, training: bool) -> tuple[torch.Tensor, bool]:
        """The unit gates as [units] or [rows, units] (an input gate of the consumer), and whether all are zero."""
        raise NotImplementedError

    def unit_gate_kwargs(self, kind: str, layer: int, training: bool) -> tuple[dict, bool]:
        """Fused-op keyword arguments applying the unit gates to a producer's output columns (FFN neurons), and
        whether all are zero."""
        raise NotImplementedError


def _norm(module: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.LayerNorm):
        return layer_norm_kept(x, keep, module.weight, module.bias, module.eps)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return rms_norm_kept(x, keep, module.weight, eps)


def gate_blocks(x: torch.Tensor, gate: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` [..., units * width] with each width-wide block scaled by its gate ([units] or [rows, units])."""
    gate = gate.to(device=x.device, dtype=x.dtype)
    blocks = x.reshape(-1, x.shape[-1] // width, width) * gate.reshape(-1, gate.shape[-1], 1)
    return blocks.reshape(x.shape)


def wire_gates(model: nn.Module, adapter: Adapter, source: GateSource, skip: frozenset[str] = frozenset()) -> list:
    """Register the gating hooks of ``source`` on ``model``; returns the hook handles (remove them to undo).
    Modules whose path is in ``skip`` get no hooks (the fused wiring gates them inside their own forward)."""
    handles = []

    def on(path, kind, fn):
        if path in skip:
            return
        module = get_module(model, path)
        if kind == "pre":
            def hook(mod, args):
                return fn(mod, args) if source.active() else None
            handles.append(module.register_forward_pre_hook(hook))
        else:
            def hook(mod, args, output):
                return fn(mod, args, output) if source.active() else None
            handles.append(module.register_forward_hook(hook))

    if source.has_hidden():
        hidden_out = lambda mod, args, out: source.hidden_gate(out, mod.training)  # noqa: E731
        emb_norm = adapter.embedding_norm()
        if emb_norm:
            on(emb_norm, "post", lambda mod, args, out: source.hidden_gate(
                _norm(mod, args[0], source.hidden_keep(mod.training)), mod.training))
        elif adapter.embedding_output():
            on(adapter.embedding_output(), "post", hidden_out)
        else:
            for path in adapter.embedding_tables():
                on(path, "post", hidden_out)
        for path in adapter.hidden_norms():
            if path != emb_norm:
                on(path, "post", lambda mod, args, out: _norm(mod, args[0], source.hidden_keep(mod.training)))
        for i in range(adapter.num_layers()):
            roles = adapter.layer_roles(i)
            if not adapter.attention_removed(i):
                on(roles.head_consumer, "post", hidden_out)
            if not adapter.ffn_removed(i):
                on(roles.ffn_consumer, "post", hidden_out)
        for path in adapter.head_square():
            on(path, "post", lambda mod, args, out: out * source.hidden_keep(mod.training).to(out.dtype))

    head_width = adapter.q_heads_per_unit() * adapter.head_dim()
    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        for kind, consumer, width in (("heads", roles.head_consumer, head_width), ("ffn", roles.ffn_consumer, 1)):
            if source.has_units(kind, i):
                _gate_sublayer(on, source, kind, i, consumer, width)
    return handles


def _gate_sublayer(on, source: GateSource, kind: str, layer: int, consumer: str, width: int) -> None:
    # The pre-hook gates the consumer's input; when every gate is zero the post-hook also zeroes the output,
    # so a removed sublayer adds nothing to the residual stream, bias included.
    state = {"removed": False}

    def gate_input(mod, args):
        gated, state["removed"] = source.gate_units(kind, layer, args[0], width, mod.training)
        return (gated,) + tuple(args[1:])

    def zero_if_removed(mod, args, output):
        return output * 0 if state["removed"] else None

    on(consumer, "pre", gate_input)
    on(consumer, "post", zero_if_removed)
