"""`attach(model)`: learnable VIB or hard-concrete masks on a transformers model, in place; `detach` undoes it."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Sequence

from torch import nn

from ..masks.mask_set import STRUCTURES, MaskSet
from ..masks.size_model import SizeMeasure
from .adapters import adapter_for
from .adapters.base import RECORD_KEY
from .fused import wire_fused
from .gating import GateSource, gate_blocks, wire_gates
from .plan import CompactionPlan
from .uniform import uniform_decision

_ATTR = "_vtrans_masks"


class ModelMasks(MaskSet):
    """The :class:`MaskSet` of a model returned by :func:`attach`: the masks plus what ties them to the model
    (the hooks, the size measure of its architecture, the conversion to a :class:`CompactionPlan`).

    It is not a submodule of the model: optimise ``masks.parameters()`` separately, and ``model.state_dict()``
    stays that of the unmasked model.
    """

    def __init__(self, model: nn.Module, method: str, structures: Sequence[str], seed: int,
                 mask_init: dict | None = None, fused: bool | None = None):
        adapter = adapter_for(model)
        super().__init__(adapter.spec(), method, structures, seed=seed, mask_init=mask_init)
        self.adapter = adapter
        # the fused ops pay off where their Triton kernels run; on CPU the hooks' C++ gate op is faster than
        # the reference versions of the fused ops (which draw their noise with the PyTorch Philox)
        self.fused = next(model.parameters()).is_cuda if fused is None else bool(fused)
        self._handles = []

    def measure(self, target: str = "params", seq_len: int = 128, embeddings: bool = False) -> SizeMeasure:
        """The size measure of this model for a sparsity target (see :class:`SizeMeasure`)."""
        return SizeMeasure(self.spec, target, seq_len, embeddings)

    def plan(self, target_sparsity: float | None = None, measure: SizeMeasure | None = None,
             tolerance: float = 0.005, *, uniform: bool = False, round_to: int = 1,
             allocation: str = "scores") -> CompactionPlan:
        """The final masks as a :class:`CompactionPlan`: kept units by the deterministic decision (adjusted to hit
        ``target_sparsity`` under ``measure`` when given, see :meth:`MaskSet.decide`), each mask's scale to
        fold in, and its scores for rounding. ``allocation`` shares the target among structures and layers (see
        :data:`~vtrans_kernels.masks.allocation.ALLOCATIONS`).

        ``uniform=True`` keeps the same number of heads (KV groups) and FFN neurons in every layer, in shapes the
        model's config class can express, so the compacted model loads with plain ``from_pretrained``; the counts
        come from the scores across layers and hit ``target_sparsity`` (default: the sparsity of the masks' own
        decision) as closely as those shapes allow; pruned FFN and hidden widths are multiples of ``round_to``
        (see :func:`~vtrans_kernels.hf.uniform.uniform_decision`)."""
        measure = measure or self.measure()
        if uniform:
            target = self.sparsity(measure) if target_sparsity is None else target_sparsity
            decision = uniform_decision(self, measure, target, round_to)
        else:
            decision = self.decide(measure, target_sparsity, tolerance, allocation)
        kept = lambda keep: keep.nonzero().flatten().tolist()  # noqa: E731
        by_layer = lambda masks, keeps: {i: kept(k) for i, k in enumerate(keeps)} if masks is not None else {}  # noqa: E731
        per_layer = lambda masks, fn: {i: fn(m) for i, m in enumerate(masks)} if masks is not None else {}  # noqa: E731
        return CompactionPlan(
            hidden=None if decision.hidden is None else kept(decision.hidden),
            heads=by_layer(self.heads, decision.heads),
            ffn=by_layer(self.ffn, decision.ffn),
            scales={"hidden": None if self.hidden is None else self.hidden.scale(),
                    "heads": per_layer(self.heads, lambda m: m.scale()),
                    "ffn": per_layer(self.ffn, lambda m: m.scale())},
            scores={"hidden": None if self.hidden is None else self.hidden.score(),
                    "heads": per_layer(self.heads, lambda m: m.score()),
                    "ffn": per_layer(self.ffn, lambda m: m.score())},
        )

    def wire(self) -> None:
        """Register the hooks through which the masks act on the model (idempotent)."""
        if self._handles:
            return
        model = self.adapter.model

        def new_step(module, args, kwargs):
            if module.training and self.enabled:
                self.new_step()

        self._handles = [model.register_forward_pre_hook(new_step, with_kwargs=True)]
        wire = wire_fused if self.fused else wire_gates
        self._handles += wire(model, self.adapter, _MaskGates(self))

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def unwired(self):
        """Within the block the model has none of the mask hooks (e.g. while it is copied)."""
        self.detach_hooks()
        try:
            yield
        finally:
            self.wire()


class _MaskGates(GateSource):
    """Gates drawn from a :class:`ModelMasks`: stochastic in training mode, deterministic in eval mode."""

    def __init__(self, masks: ModelMasks):
        self.masks = masks

    def _sampled(self, training: bool) -> bool:
        """Whether the gates are drawn: in a training forward, unless the masks' noise is off (quenched)."""
        return training and self.masks.noise

    def _straight_through(self, training: bool) -> bool:
        """Whether the gates are the quenched ones with the straight-through gradient (``UnitMask.quench_gate``):
        a training forward with the noise off, under ``quench_gradient="straight_through"``."""
        return training and not self.masks.noise and self.masks.quench_gradient == "straight_through"

    def active(self):
        return self.masks.enabled

    def has_hidden(self):
        return self.masks.hidden is not None

    def hidden_gate(self, x, training):
        hidden = self.masks.hidden
        if self._straight_through(training):
            return gate_blocks(x, hidden.quench_gate(), 1)
        return hidden.gate_last_dim(x, self.masks.site_seed(0), self._sampled(training))

    def hidden_keep(self, training):
        training = self._sampled(training)
        hidden = self.masks.hidden
        return hidden.training_keep(self.masks.site_seed(0)) if training else hidden.keep()

    def has_units(self, kind, layer):
        return self.masks.layer_mask(kind, layer) is not None

    def _unit_mask(self, kind, layer, training):
        # (mask, its site seed, whether every gate is zero this step)
        mask = self.masks.layer_mask(kind, layer)
        seed = self.masks.site_seed(1 + 2 * layer + (kind == "ffn"))
        if self._sampled(training):
            keep = mask.training_keep(seed) if mask.method == "hard_concrete" else None
            removed = keep is not None and not bool(keep.any())
        else:
            removed = not bool(mask.keep().any())
        return mask, seed, removed

    def gate_units(self, kind, layer, x, width, training):
        mask, seed, removed = self._unit_mask(kind, layer, training)
        if self._straight_through(training):
            return gate_blocks(x, mask.quench_gate(), width), removed
        sampled = self._sampled(training)
        if width == 1:
            return mask.gate_last_dim(x, seed, sampled), removed
        return gate_blocks(x, mask.unit_gates(x.numel() // x.shape[-1], seed, sampled), width), removed

    def hidden_gate_kwargs(self, training):
        if self._straight_through(training):
            return dict(out_gate=self.masks.hidden.quench_gate())
        return self.masks.hidden.fused_gate(self.masks.site_seed(0), self._sampled(training))

    def unit_gate(self, kind, layer, rows, training):
        mask, seed, removed = self._unit_mask(kind, layer, training)
        if self._straight_through(training):
            return mask.quench_gate(), removed
        return mask.unit_gates(rows, seed, self._sampled(training)), removed

    def unit_gate_kwargs(self, kind, layer, training):
        mask, seed, removed = self._unit_mask(kind, layer, training)
        if self._straight_through(training):
            return dict(out_gate=mask.quench_gate()), removed
        return mask.fused_gate(seed, self._sampled(training)), removed


def attach(model: nn.Module, method: str = "vib", structures: Sequence[str] = STRUCTURES, *,
           seed: int = 0, mask_init: dict | None = None, fused: bool | None = None) -> ModelMasks:
    """Put masks on a transformers v5 model in place (DESIGN 2.3) and return them.

    Args:
        model: a supported model (``vtrans_kernels.hf.supported_classes()``), not yet compacted or masked.
        method: ``"vib"`` (VTrans, per-token Gaussian gates) or ``"hard_concrete"`` (CoFi-style L0 gates).
        structures: any of ``"hidden"``, ``"heads"``, ``"ffn"``. Heads are KV groups in GQA/MQA models.
        seed: base seed of the mask noise (training-mode forwards draw fresh noise from it, reproducibly).
        mask_init: initial values, ``{"mu": 1.0, "log_sigma2": -9.0}`` (VIB) or ``{"drop": 0.5}``
            (hard-concrete); parameters are drawn from torch's global generator.
        fused: route the masks through the fused ops (``vtrans_kernels.hf.fused``: gated GEMMs, SwiGLU and
            masked norms, noise drawn inside the kernels); ``False`` applies them with forward hooks that
            multiply activations (the same function; the readable reference). Default: fused for a model on
            CUDA, hooks on CPU (where the C++ gate op beats the reference fused ops).
    Returns:
        The :class:`ModelMasks` (an ``nn.Module``; on the model's device after ``masks.to(device)``). In
        ``model.train()`` the gates are sampled; in ``model.eval()`` they are the deterministic gates, and the
        model then computes what ``compact(model, masks.plan())`` computes.
    """
    if getattr(model, _ATTR, None) is not None:
        raise ValueError("attach: this model already has masks; call vtrans_kernels.detach(model) first")
    masks = ModelMasks(model, method, structures, seed, mask_init, fused)
    if getattr(model.config, RECORD_KEY, None):
        raise ValueError("attach: the model is already compacted; attach masks to the unpruned model")
    masks.to(next(model.parameters()).device)
    masks.wire()
    model.__dict__[_ATTR] = masks
    return masks


def masks_of(model: nn.Module) -> ModelMasks | None:
    """The masks :func:`attach` put on ``model``, or ``None``."""
    return getattr(model, _ATTR, None)


def copy_unmasked(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the masks :func:`attach` put on it (the original keeps them)."""
    import copy

    masks = masks_of(model)
    with masks.unwired() if masks is not None else nullcontext():
        return copy.deepcopy(model, memo={id(masks): None} if masks is not None else None)


def detach(model: nn.Module) -> ModelMasks:
    """Remove the masks of :func:`attach`; the model computes its original function again. Returns them."""
    masks = masks_of(model)
    if masks is None:
        raise ValueError("detach: this model has no masks attached")
    masks.detach_hooks()
    del model.__dict__[_ATTR]
    return masks
