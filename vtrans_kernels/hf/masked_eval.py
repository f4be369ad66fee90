"""The masked model of a plan, in eval mode: the reference that compaction must reproduce.

``masked_by_plan(model, plan)`` gates the model in place with forward hooks (``gating.wire_gates``) where
DESIGN 2.3 puts the masks, with the plan's kept units and scales as fixed gates. It lets a user preview a plan
without compacting, and it is the oracle of the compaction tests.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .adapters import Adapter, adapter_for
from .adapters.base import get_module
from .gating import GateSource, gate_blocks, wire_gates
from .plan import CompactionPlan, ResolvedPlan, resolve_plan


class PlanGates(GateSource):
    """Fixed gates from a resolved plan: kept units get their scale, the others zero."""

    def __init__(self, resolved: ResolvedPlan):
        self.resolved = resolved

    def has_hidden(self):
        return not self.resolved.hidden.is_everything()

    def hidden_gate(self, x, training):
        return x * self.resolved.hidden.gate().to(device=x.device, dtype=x.dtype)

    def hidden_keep(self, training):
        return self.resolved.hidden.mask()

    def _kept(self, kind, layer):
        return (self.resolved.heads if kind == "heads" else self.resolved.ffn)[layer]

    def has_units(self, kind, layer):
        return not self._kept(kind, layer).is_everything()

    def gate_units(self, kind, layer, x, width, training):
        kept = self._kept(kind, layer)
        return gate_blocks(x, kept.gate(), width), kept.count == 0


@contextmanager
def masked_by_plan(model: nn.Module, plan: CompactionPlan):
    """Within the ``with`` block, ``model`` computes the masked model of ``plan`` (use it in eval mode).

    The plan's bias shifts are added to the output projections' outputs, before the hidden gate (as compaction
    adds them to the bias that the hidden dims slice and scale). The hooks are removed on exit, also when the
    block raises.
    """
    adapter = adapter_for(model)
    units = adapter.units()
    resolved = resolve_plan(plan, units.hidden, units.heads, units.ffn)
    # registered first, so each shift is added before wire_gates' hidden gate scales the same output
    handles = _shift_hooks(model, adapter, resolved)
    handles += wire_gates(model, adapter, PlanGates(resolved))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _shift_hooks(model: nn.Module, adapter: Adapter, resolved: ResolvedPlan) -> list:
    handles = []
    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        for consumer, shift in ((roles.head_consumer, resolved.head_shift[i]), (roles.ffn_consumer,
                                                                               resolved.ffn_shift[i])):
            if shift is not None:
                def add(mod, args, output, shift=shift):
                    return output + shift.to(device=output.device, dtype=output.dtype)
                handles.append(get_module(model, consumer).register_forward_hook(add))
    return handles


__all__ = ["masked_by_plan"]
