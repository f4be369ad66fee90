"""The masked model of a plan, in eval mode: the reference that compaction must reproduce.

``masked_by_plan(model, plan)`` gates the model in place with forward hooks, exactly where DESIGN 2.3 puts
the masks: the hidden gate on the embedding output and on every attention-output and FFN-output projection,
norms over the kept hidden dims only, head gates on the output projection's input, FFN gates on the down
projection's input, and a removed sublayer's branch zeroed, bias included. It lets a user preview a plan
without compacting, and it is the oracle of the compaction tests.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..reference.masked_norm import masked_layer_norm, masked_rms_norm
from .adapters import adapter_for
from .adapters.base import get_module
from .plan import CompactionPlan, resolve_plan


def _scale_output(gate: torch.Tensor):
    def hook(module, args, output):
        return output * gate.to(device=output.device, dtype=output.dtype)
    return hook


def _scale_input(gate: torch.Tensor):
    def hook(module, args):
        x = args[0]
        return (x * gate.to(device=x.device, dtype=x.dtype),) + tuple(args[1:])
    return hook


def _masked_norm(keep: torch.Tensor, gate: torch.Tensor | None = None):
    def hook(module, args, output):
        x = args[0]
        if isinstance(module, nn.LayerNorm):
            y = masked_layer_norm(x, keep, module.weight, module.bias, module.eps)
        else:
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            y = masked_rms_norm(x, keep, module.weight, eps)
        return y if gate is None else y * gate.to(device=y.device, dtype=y.dtype)
    return hook


@contextmanager
def masked_by_plan(model: nn.Module, plan: CompactionPlan):
    """Within the ``with`` block, ``model`` computes the masked model of ``plan`` (use it in eval mode).

    The hooks are removed on exit, also when the block raises.
    """
    adapter = adapter_for(model)
    units = adapter.units()
    resolved = resolve_plan(plan, units.hidden, units.heads, units.ffn)
    handles = []

    def on(path, kind, hook):
        module = get_module(model, path)
        register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
        handles.append(register(hook))

    try:
        if not resolved.hidden.is_everything():
            gate, keep = resolved.hidden.gate(), resolved.hidden.mask()
            emb_norm = adapter.embedding_norm()
            if emb_norm:
                on(emb_norm, "post", _masked_norm(keep, gate))
            else:
                for path in adapter.embedding_tables():
                    on(path, "post", _scale_output(gate))
            for path in adapter.hidden_norms():
                if path != emb_norm:
                    on(path, "post", _masked_norm(keep))
            for i in range(adapter.num_layers()):
                roles = adapter.layer_roles(i)
                if not adapter.attention_removed(i):
                    on(roles.head_consumer, "post", _scale_output(gate))
                if not adapter.ffn_removed(i):
                    on(roles.ffn_consumer, "post", _scale_output(gate))
            for path in adapter.head_square():
                on(path, "post", _scale_output(keep))
        width = adapter.q_heads_per_unit() * adapter.head_dim()
        for i in range(adapter.num_layers()):
            roles = adapter.layer_roles(i)
            for kept, consumer, unit_width in ((resolved.heads[i], roles.head_consumer, width),
                                               (resolved.ffn[i], roles.ffn_consumer, 1)):
                if kept.is_everything():
                    continue
                on(consumer, "pre", _scale_input(kept.gate().repeat_interleave(unit_width)))
                if kept.count == 0:
                    on(consumer, "post", _scale_output(torch.zeros(())))
        yield model
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["masked_by_plan"]
