"""Masks acting inside the fused ops: the wiring ``attach`` uses by default (DESIGN 2.3, issue: masks inside
the GEMMs instead of extra passes over the activations).

Where ``gating.wire_gates`` multiplies activations in forward hooks, this wiring replaces the forward of the
modules the gates act on with one fused op each:
- the FFN block: ``masked_swiglu`` (LLaMA-style: act(gate) * up, gated per neuron in the epilogue) or
  ``masked_linear`` with the activation (BERT's intermediate), the FFN gate drawn inside the kernel;
- each output projection (attention and FFN): ``masked_linear`` with the head gates as an input gate on the
  head blocks and the hidden gate in the epilogue; a sublayer whose gates are all zero outputs zero, bias
  included;
- each norm over the residual stream: ``masked_layer_norm`` / ``masked_rms_norm`` over the kept dims (BERT's
  embedding norm with the hidden gate fused in).
Whatever has no fused form (GPT-2's Conv1D projections, embedding tables, task-head layers) keeps its hooks
from ``wire_gates``. Both wirings compute the same function (tested), so the hooks stay the readable oracle.
"""
from __future__ import annotations

import types

from torch import nn

from .. import ops
from .adapters.base import Adapter, get_module
from .gating import GateSource, wire_gates

# transformers' ``hidden_act`` names -> the fused ops' activations
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}


class ForwardOverride:
    """Replaces ``module.forward`` with ``fn(module, *args, **kwargs)``; ``remove()`` restores the class's forward
    (a hook-handle look-alike, so both wirings are undone the same way). While ``source`` is inactive the
    module runs its own forward."""

    def __init__(self, module: nn.Module, source: GateSource, fn):
        def forward(mod, *args, **kwargs):
            if not source.active():
                return type(mod).forward(mod, *args, **kwargs)
            return fn(mod, *args, **kwargs)

        self.module = module
        module.forward = types.MethodType(forward, module)

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or (hasattr(module, "variance_epsilon") and hasattr(module, "weight"))


def _norm_op(module: nn.Module, x, keep, gate_kwargs: dict):
    if isinstance(module, nn.LayerNorm):
        return ops.masked_layer_norm(x, keep, module.weight, module.bias, module.eps, **gate_kwargs)
    return ops.masked_rms_norm(x, keep, module.weight, module.variance_epsilon, **gate_kwargs)


class _Wiring:
    """Builds the overrides of one model; ``fused`` collects the module paths the hooks must leave alone."""

    def __init__(self, model: nn.Module, adapter: Adapter, source: GateSource):
        self.model, self.adapter, self.source = model, adapter, source
        self.handles: list = []
        self.fused: set[str] = set()

    def override(self, path: str, fn) -> None:
        self.handles.append(ForwardOverride(get_module(self.model, path), self.source, fn))
        self.fused.add(path)

    def hidden_kwargs(self, training: bool) -> dict:
        return self.source.hidden_gate_kwargs(training) if self.source.has_hidden() else {}

    def norms(self) -> None:
        source, emb_norm = self.source, self.adapter.embedding_norm()
        if not source.has_hidden():
            return
        for path in self.adapter.hidden_norms():
            if not _is_norm(get_module(self.model, path)):
                continue
            gated = path == emb_norm  # BERT: the hidden gate acts on the embedding norm's output

            def forward(mod, x, gated=gated):
                gate = self.hidden_kwargs(mod.training) if gated else {}
                return _norm_op(mod, x, source.hidden_keep(mod.training), gate)

            self.override(path, forward)

    def output_projection(self, path: str, kind: str, layer: int, state: dict | None = None) -> None:
        """``path`` (an nn.Linear reading heads or FFN neurons) as one masked_linear. ``kind="heads"`` gates its
        input head blocks; for ``"ffn"`` the producer gated the neurons and ``state`` says if all are zero."""
        if not isinstance(get_module(self.model, path), nn.Linear):
            return
        source = self.source
        units = kind == "heads" and source.has_units("heads", layer)
        if not (units or state is not None or source.has_hidden()):
            return  # nothing gates this projection

        def forward(mod, x):
            in_gate, removed = None, False
            if units:
                in_gate, removed = source.unit_gate("heads", layer, x.numel() // x.shape[-1], mod.training)
            elif state is not None:
                removed = state["removed"]
            y = ops.masked_linear(x, mod.weight, mod.bias, in_gate=in_gate, **self.hidden_kwargs(mod.training))
            return y * 0 if removed else y

        self.override(path, forward)

    def ffn(self, layer: int) -> None:
        roles = self.adapter.layer_roles(layer)
        block = self.adapter.ffn_block(layer)
        activation = ACTIVATIONS.get(getattr(self.adapter.config, "hidden_act", None))
        if block is None or activation is None:
            return
        path, form = block
        source, gated = self.source, self.source.has_units("ffn", layer)
        state = {"removed": False}

        def gate(training):
            kwargs, state["removed"] = source.unit_gate_kwargs("ffn", layer, training) if gated else ({}, False)
            return kwargs

        if form == "swiglu":
            consumer = get_module(self.model, roles.ffn_consumer)
            if not isinstance(consumer, nn.Linear):
                return

            def swiglu_forward(mod, x):
                g, u = (get_module(self.model, p) for p in roles.ffn_producers)
                a = ops.masked_swiglu(x, g.weight, u.weight, g.bias, u.bias, activation=activation,
                                      **gate(mod.training))
                y = ops.masked_linear(a, consumer.weight, consumer.bias, **self.hidden_kwargs(mod.training))
                return y * 0 if state["removed"] else y

            self.override(path, swiglu_forward)
            self.fused.add(roles.ffn_consumer)
        else:
            (producer_path,) = roles.ffn_producers
            producer = get_module(self.model, producer_path)
            if not isinstance(producer, nn.Linear):
                return
            self.override(path, lambda mod, x: ops.masked_linear(x, producer.weight, producer.bias,
                                                                 activation=activation, **gate(mod.training)))
            self.output_projection(roles.ffn_consumer, "ffn", layer, state)


def wire_fused(model: nn.Module, adapter: Adapter, source: GateSource) -> list:
    """Route the gates of ``source`` through the fused ops where the model has fused forms, hooks elsewhere;
    returns the handles (``remove()`` each to undo)."""
    wiring = _Wiring(model, adapter, source)
    wiring.norms()
    for layer in range(adapter.num_layers()):
        if not adapter.attention_removed(layer):
            wiring.output_projection(adapter.layer_roles(layer).head_consumer, "heads", layer)
        if not adapter.ffn_removed(layer):
            wiring.ffn(layer)
    return wiring.handles + wire_gates(model, adapter, source, skip=frozenset(wiring.fused))
