"""The masked model of a plan, in eval mode: the reference that compaction must reproduce.

``masked_by_plan(model, plan)`` gates the model in place with forward hooks (``gating.wire_gates``) where
DESIGN 2.3 puts the masks, with the plan's kept units and scales as fixed gates. It lets a user preview a plan
without compacting, and it is the oracle of the compaction tests.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .adapters import adapter_for
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

    The hooks are removed on exit, also when the block raises.
    """
    adapter = adapter_for(model)
    units = adapter.units()
    handles = wire_gates(model, adapter, PlanGates(resolve_plan(plan, units.hidden, units.heads, units.ffn)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["masked_by_plan"]
