"""Bias compensation (FLAP-style): what a plan's removed units added on average, folded into output biases.

A sublayer that loses some of its units (attention heads or KV groups, FFN neurons) loses their contribution
``W_out[:, removed] @ a[removed]`` to the residual stream. Its mean over calibration tokens is a constant vector,
so adding it to the output projection's bias repairs the mean exactly and costs nothing at inference. The
shifts are stored in the plan (``head_bias_shift``/``ffn_bias_shift``), so ``compact(model, plan)`` stays a
deterministic function of the saved plan.
"""
from __future__ import annotations

import logging
from contextlib import closing, contextmanager, nullcontext
from dataclasses import replace
from typing import Iterable, Mapping

import torch
from torch import nn

from .adapters import adapter_for
from .adapters.base import Adapter, get_module, unit_columns
from .attach import masks_of
from .masked_eval import masked_by_plan
from .plan import CompactionPlan, Kept, ResolvedPlan, resolve_plan
from .rounding import round_plan
from .slicing import weight_dims

log = logging.getLogger(__name__)


def bias_compensation_support(model: nn.Module) -> dict[str, str | None]:
    """Per structure ("heads", "ffn"): ``None`` when bias compensation can be compacted exactly into ``model``'s
    architecture, else why not (e.g. Qwen2 and Mistral build o_proj and down_proj without a bias and have no
    config option for one)."""
    adapter = adapter_for(model)
    return {kind: adapter.output_bias_support(kind) for kind in ("heads", "ffn")}


@torch.no_grad()
def compensate_plan(model: nn.Module, plan: CompactionPlan, batches: Iterable[Mapping[str, torch.Tensor]], *,
                    round_to: int = 1, readout: str = "auto") -> CompactionPlan:
    """``plan`` with bias shifts that fold the mean contribution of each sublayer's removed units into its output
    projection's bias (FLAP's bias compensation).

    For every sublayer that keeps some but not all of its units the shift is ``W_out[:, removed] @ mean(a[removed])``,
    where ``a`` is the input of the output projection (attention: the heads' outputs, a KV group's unit being all
    its query heads; FFN: the neurons after the activation, for SwiGLU after act(gate) * up), averaged over the
    non-padding tokens (``attention_mask``) of ``batches``; in the last layer, over the tokens the task head reads
    (``readout``, see :func:`readout_of`), since the last layer's output elsewhere reaches nothing. The means are
    measured on the model as the plan prunes it: the masked model of the plan (:func:`masked_by_plan`, kept units
    at their scales, removed hidden dims gone) with the shifts of the sublayers before already added, sublayer by
    sublayer, so the compacted model sees what was measured. The kept units' own (scaled) contributions are
    untouched. A sublayer the plan removes entirely stays removed without a shift (DESIGN 2.3: its branch
    contributes exactly zero), and removed hidden dims need none (they are gone). Shifts already in ``plan`` are
    replaced.

    ``batches`` is an iterable of model inputs (``input_ids``, ``attention_mask``, ...; a ``labels`` entry is
    ignored). ``readout``: ``"auto"`` (:func:`readout_of` the model), ``"all"`` (every non-padding token, also in
    the last layer: for a backbone whose outputs are all used, e.g. mean-pooled), ``"first"`` (position 0) or
    ``"last"`` (each row's last non-padding token). ``round_to`` rounds the plan first as
    ``compact(..., round_to=k)`` would (the shifts belong to the rounded units); compact the result with any
    ``round_to``, it then changes nothing. Architectures whose config cannot express the bias (see
    :func:`bias_compensation_support`) get no shift for that structure, with a warning logged. ``model`` is left
    unchanged (hooks are removed, its train/eval mode restored).
    """
    adapter, resolved, plan, batches, readout = prepared(model, plan, batches, round_to, readout)
    plan = replace(plan, head_bias_shift={}, ffn_bias_shift={})
    support = bias_compensation_support(model)
    for kind, reason in support.items():
        if reason:
            log.warning("bias compensation of %s skipped: %s", "attention" if kind == "heads" else "the FFN", reason)
    shifts = {"heads": {}, "ffn": {}}
    with measuring(model):
        for layer, kind, kept, tokens in partial_sublayers(adapter, resolved, readout):
            if support[kind]:
                continue
            measured = replace(plan, head_bias_shift=shifts["heads"], ffn_bias_shift=shifts["ffn"])
            shifts[kind][layer] = _shift(model, adapter, measured, kind, layer, kept, batches, tokens)
    return replace(plan, head_bias_shift=shifts["heads"], ffn_bias_shift=shifts["ffn"])


def prepared(model: nn.Module, plan: CompactionPlan, batches, round_to: int, readout: str):
    """The checked arguments of a calibration pass over ``plan`` (bias compensation, the least-squares refit):
    ``(adapter, resolved plan, plan rounded to round_to, batches as a list of input dicts, readout resolved)``."""
    adapter = adapter_for(model)
    units = adapter.units()
    resolved = resolve_plan(plan, units.hidden, units.heads, units.ffn)
    if readout not in READOUTS:
        raise ValueError(f"readout: expected one of {', '.join(map(repr, READOUTS))}, got {readout!r}")
    readout = readout_of(model) if readout == "auto" else readout
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to: expected an int >= 1, got {round_to!r}")
    if round_to > 1:
        resolved, _ = round_plan(adapter, resolved, round_to, plan.scores)
        plan = _explicit(plan, resolved)
    batches = [_model_inputs(batch, i) for i, batch in enumerate(batches)]
    if not batches:
        raise ValueError("batches: calibration needs at least one batch")
    return adapter, resolved, plan, batches, readout


@contextmanager
def measuring(model: nn.Module):
    """``model`` in eval mode with any attached masks unwired (the plan's gates are what is measured); its mode is
    restored on exit."""
    masks = masks_of(model)
    was_training = model.training
    model.eval()
    try:
        with masks.unwired() if masks is not None else nullcontext():
            yield model
    finally:
        model.train(was_training)


def partial_sublayers(adapter: Adapter, resolved: ResolvedPlan, readout: str):
    """``(layer, kind, kept, tokens)`` of every sublayer keeping some but not all of its units, in forward order;
    ``tokens`` is the readout its calibration statistics are taken over (``readout`` in the last layer)."""
    for layer in range(adapter.num_layers()):
        for kind in ("heads", "ffn"):
            kept = (resolved.heads if kind == "heads" else resolved.ffn)[layer]
            if kept.count not in (0, kept.total):
                yield layer, kind, kept, readout if layer == adapter.num_layers() - 1 else "all"


READOUTS = ("auto", "all", "first", "last")


def readout_of(model: nn.Module) -> str:
    """Which tokens' last-layer outputs ``model``'s head reads: ``"first"`` for BERT/RoBERTa sequence classifiers
    (the [CLS]/<s> token, through the pooler or classifier), ``"last"`` for decoder sequence classifiers (the score
    head's last non-padding token), ``"all"`` for LM heads and backbones (every token's output is used)."""
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return "all"
    return "last" if adapter_for(model).pre_ln else "first"


def token_mask(batch: Mapping[str, torch.Tensor], readout: str) -> torch.Tensor | None:
    """Bool [batch, seq] of the tokens a mean is taken over (``None``: every token)."""
    mask = batch.get("attention_mask")
    if readout == "all":
        return None if mask is None else mask.bool()
    shape = batch["input_ids"].shape
    chosen = torch.zeros(shape, dtype=torch.bool)
    if readout == "first":
        chosen[:, 0] = True
    else:  # the last non-padding position of each row (as HF's score head finds it for right or left padding)
        positions = torch.arange(shape[1]).expand(shape)
        present = mask.bool() if mask is not None else torch.ones(shape, dtype=torch.bool)
        chosen[torch.arange(shape[0]), (positions * present).argmax(-1)] = True
    return chosen


def _model_inputs(batch, index: int) -> dict:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(f"batches[{index}]: expected a dict of model inputs with 'input_ids', got "
                        f"{type(batch).__name__}")
    return {k: v for k, v in batch.items() if k != "labels"}


def _explicit(plan: CompactionPlan, resolved: ResolvedPlan) -> CompactionPlan:
    """``plan`` with the kept units and scales of ``resolved`` written out (the rounded plan as a plan)."""
    def index(kept: Kept):
        return kept.index.tolist()

    def scales(all_kept):
        return {i: kept.scale for i, kept in enumerate(all_kept) if kept.scale is not None}

    return replace(plan, hidden=None if resolved.hidden.is_everything() else index(resolved.hidden),
                   heads={i: index(k) for i, k in enumerate(resolved.heads)},
                   ffn={i: index(k) for i, k in enumerate(resolved.ffn)},
                   hidden_scale=resolved.hidden.scale, head_scale=scales(resolved.heads),
                   ffn_scale=scales(resolved.ffn))


class Measured(Exception):
    """Raised by :func:`consumer_inputs`' hook: nothing after the measured sublayer needs computing."""


def sublayer_consumer(model: nn.Module, adapter: Adapter, kind: str, layer: int) -> tuple[nn.Module, int]:
    """``(output projection, unit width)`` of one sublayer: the module that consumes its units (attention heads or
    KV groups, FFN neurons) and how many of its input columns one unit has."""
    roles = adapter.layer_roles(layer)
    consumer = get_module(model, roles.head_consumer if kind == "heads" else roles.ffn_consumer)
    return consumer, (adapter.q_heads_per_unit() * adapter.head_dim() if kind == "heads" else 1)


def out_in_weight(consumer: nn.Module) -> torch.Tensor:
    """``consumer``'s weight as float64 on the CPU, laid out [out, in] (GPT-2's Conv1D stores it [in, out])."""
    weight = consumer.weight.detach().double().cpu()
    return weight.T if weight_dims(consumer)[0] == 1 else weight


def consumer_inputs(model: nn.Module, consumer: nn.Module, plan: CompactionPlan, batches: list[dict], readout: str):
    """Run the masked model of ``plan`` over ``batches`` up to ``consumer`` and yield, per batch, ``(x, tokens)``:
    ``consumer``'s input before the plan's gates (the hook is registered before them; so every unit's output at
    scale 1), and the bool [batch, seq] mask of the tokens ``readout`` names, on the device of ``x`` (the
    model's; ``None``: every token). The forward pass stops at ``consumer``. Raises ``ValueError`` when no batch
    has a token to measure. Close the generator (``contextlib.closing``) if the loop may stop early: the hook
    and the plan's gates stay on the model until it ends."""
    device = next(model.parameters()).device
    seen = []

    def stop(module, args):
        seen.append(args[0].detach())
        raise Measured

    measured = 0
    handle = consumer.register_forward_pre_hook(stop)
    try:
        with masked_by_plan(model, plan):
            for batch in batches:
                try:
                    model(**{k: v.to(device) for k, v in batch.items()})
                except Measured:
                    pass
                if seen:
                    x, tokens = seen.pop(), token_mask(batch, readout)
                    tokens = None if tokens is None else tokens.to(x.device)
                    measured += x.shape[:-1].numel() if tokens is None else int(tokens.sum())
                    yield x, tokens
    finally:
        handle.remove()
    if measured == 0:
        raise ValueError("batches: every calibration token is padding (attention_mask is all zero)")


def _shift(model: nn.Module, adapter: Adapter, plan: CompactionPlan, kind: str, layer: int, kept: Kept,
           batches: list[dict], readout: str) -> torch.Tensor:
    """``W_out[:, removed] @ mean(a[removed])`` of one sublayer, measured in the masked model of ``plan`` over the
    tokens ``readout`` names."""
    consumer, width = sublayer_consumer(model, adapter, kind, layer)
    removed = torch.ones(kept.total, dtype=torch.bool)
    removed[kept.index] = False
    columns = unit_columns(removed.nonzero().view(-1), width)
    total, count = torch.zeros(columns.numel(), dtype=torch.float64), 0
    with closing(consumer_inputs(model, consumer, plan, batches, readout)) as inputs:
        for x, tokens in inputs:  # the removed units' outputs
            x = x.index_select(-1, columns.to(x.device)).double()
            x = x.reshape(-1, x.shape[-1])
            if tokens is not None:
                x = x[tokens.reshape(-1)]
            total += x.sum(0).cpu()
            count += x.shape[0]
    return out_in_weight(consumer)[:, columns] @ (total / count)
