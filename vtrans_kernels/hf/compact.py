"""`compact`: rewrite a pruned transformers model into a smaller dense model of the same class."""
from __future__ import annotations

import copy
import logging

from torch import nn

from . import slicing
from .adapters import adapter_for
from .adapters.base import RECORD_KEY, Adapter, get_module, set_module, unit_columns
from .attach import copy_unmasked
from .dequantized import drop_gguf_record
from .plan import CompactionPlan, Kept, ResolvedPlan, plan_model_mismatch, resolve_plan
from .rounding import round_plan

log = logging.getLogger(__name__)


def compact(model: nn.Module, plan: CompactionPlan, round_to: int = 1) -> nn.Module:
    """A new model of the same class with only the units ``plan`` keeps; ``model`` is left untouched.

    Heads (KV groups under GQA), FFN neurons and hidden dims are sliced out of every projection, norm,
    embedding and head that holds them; the plan's scales are folded into the weights first; a sublayer with
    no units left is removed (its branch adds exactly zero, bias included); a pre-LN layer with both sublayers
    removed is dropped. ``round_to=k`` first rounds the kept FFN neurons and hidden dims of each structure to
    a multiple of ``k`` (nearest, by the units' scores; heads are whole units already). What rounding changed
    is logged and stored with the shapes in ``new_model.config.vtrans_compaction``. In eval mode the result
    computes what the masked model computes (:func:`vtrans_kernels.hf.masked_by_plan`). The plan's bias shifts
    (``head_bias_shift``/``ffn_bias_shift``, see :func:`vtrans_kernels.hf.compensate_plan`) are added to the
    output projections' biases; a LLaMA model then gets ``attention_bias``/``mlp_bias`` (zero biases on the
    sublayer's other projections). A plan that records
    the model it was made for (``plan.model``) is refused, naming what differs, when the model type or unit
    counts of ``model`` are not the recorded ones.
    """
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to: expected an int >= 1, got {round_to!r}")
    adapter = adapter_for(model)
    units = adapter.units()
    if isinstance(plan, CompactionPlan):
        mismatch = plan_model_mismatch(plan, adapter.config.model_type, units.hidden, units.heads, units.ffn)
        if mismatch:  # another architecture or model size: its indices would cut the wrong units
            raise ValueError("plan: it was made for another model (" + "; ".join(mismatch) + ")")
    resolved = resolve_plan(plan, units.hidden, units.heads, units.ffn)
    changes = []
    if round_to > 1:
        resolved, changes = round_plan(adapter, resolved, round_to, plan.scores)
        if changes and resolved.has_shifts():  # the shifts were measured with the units before rounding
            raise ValueError(f"round_to: rounding to multiples of {round_to} changes the kept units of a plan that "
                             "carries bias shifts, which were measured for the units before rounding; round "
                             f"while compensating instead: compensate_plan(model, plan, batches, round_to={round_to})")
        for change in changes:
            log.info("round_to=%d: %s", round_to, change)
    new_model = copy_unmasked(model)  # masks attached to the input stay there, not on the copy
    drop_gguf_record(new_model)  # a compacted model is a plain dense model, whatever file the input came from
    apply_plan(adapter_for(new_model), resolved, rounding=changes)
    return new_model


def apply_plan(adapter: Adapter, plan: ResolvedPlan, rounding: list | None = None) -> None:
    """Compact ``adapter.model`` in place (callers pass a copy)."""
    record = _start_record(adapter)
    added = _add_bias_shifts(adapter, plan)
    if added:
        record["added_biases"] = sorted(set(record.get("added_biases", [])) | set(added))
    if not plan.hidden.is_everything():
        _compact_hidden(adapter, plan.hidden)
    for i in range(adapter.num_layers()):
        heads, ffn = plan.heads[i], plan.ffn[i]
        if heads.count == 0:
            if not adapter.attention_removed(i):
                adapter.remove_attention(i)
        elif not heads.is_everything():
            _compact_heads(adapter, i, heads)
        if ffn.count == 0:
            if not adapter.ffn_removed(i):
                adapter.remove_ffn(i)
        elif not ffn.is_everything():
            _compact_ffn(adapter, i, ffn)
    kept_layers = _drop_empty_layers(adapter)
    units = adapter.units()
    adapter.update_config(units)
    record["sources"] = [record["sources"][i] for i in kept_layers]
    record.update(hidden=units.hidden, heads=list(units.heads), ffn=list(units.ffn),
                  rounding=list(record.get("rounding", [])) + list(rounding or []))
    setattr(adapter.config, RECORD_KEY, record)


def _add_bias_shifts(adapter: Adapter, plan: ResolvedPlan) -> list[str]:
    """Add the plan's bias shifts to the output projections (before any slicing: they are full hidden length).
    Returns the config fields switched on to give the projections a bias."""
    added = []
    for kind, shifts in (("heads", plan.head_shift), ("ffn", plan.ffn_shift)):
        if all(shift is None for shift in shifts):
            continue
        reason = adapter.output_bias_support(kind)
        if reason:
            raise ValueError(f"CompactionPlan.{'head' if kind == 'heads' else 'ffn'}_bias_shift: {reason}")
        field = adapter.enable_output_bias(kind)
        if field:
            added.append(field)
        for i, shift in enumerate(shifts):
            if shift is not None:
                roles = adapter.layer_roles(i)
                path = roles.head_consumer if kind == "heads" else roles.ffn_consumer
                set_module(adapter.model, path, slicing.bias_shifted(get_module(adapter.model, path), shift))
    return added


def _start_record(adapter: Adapter) -> dict:
    """The shape record of the model, started from the original config on the first compaction."""
    previous = getattr(adapter.config, RECORD_KEY, None)
    if previous:
        return copy.deepcopy(previous)
    original = adapter.config.to_dict()
    original.pop(RECORD_KEY, None)
    original.pop("_name_or_path", None)  # a path on the machine the model was loaded on
    return {"format": 1, "original": original, "sources": list(range(adapter.num_layers()))}


def _replace(adapter: Adapter, path: str, **kwargs) -> None:
    set_module(adapter.model, path, slicing.projection(get_module(adapter.model, path), **kwargs))


def _compact_heads(adapter: Adapter, i: int, kept: Kept) -> None:
    roles = adapter.layer_roles(i)
    for path in roles.head_producers:
        _replace(adapter, path, out_index=adapter.head_producer_rows(i, path, kept.index))
    width = adapter.q_heads_per_unit() * adapter.head_dim()
    scale = None if kept.scale is None else kept.scale.repeat_interleave(width)
    _replace(adapter, roles.head_consumer, in_index=unit_columns(kept.index, width), in_scale=scale)
    adapter.set_head_count(i, kept.count * adapter.q_heads_per_unit())


def _compact_ffn(adapter: Adapter, i: int, kept: Kept) -> None:
    roles = adapter.layer_roles(i)
    for path in roles.ffn_producers:
        _replace(adapter, path, out_index=kept.index)
    _replace(adapter, roles.ffn_consumer, in_index=kept.index, in_scale=kept.scale)


def _compact_hidden(adapter: Adapter, kept: Kept) -> None:
    model, index, scale = adapter.model, kept.index, kept.scale
    tied = adapter.lm_head_tied()
    emb_norm = adapter.embedding_norm()
    # The embedding gate folds into the embedding norm when there is one (BERT), else into the tables.
    for path in adapter.embedding_tables():
        set_module(model, path, slicing.embedding(get_module(model, path), index, None if emb_norm else scale))
    if emb_norm:
        set_module(model, emb_norm, slicing.norm(get_module(model, emb_norm), index, scale))
    final = adapter.final_norm()
    if final:
        # A tied LM head reads the scaled word table too; dividing the final norm by the scale undoes that.
        compensation = None
        if tied and scale is not None and not emb_norm:
            if bool((scale == 0).any()):
                raise ValueError("CompactionPlan.hidden_scale: a kept hidden dim has scale 0, which cannot be "
                                 "folded into a model whose LM head is tied to the embeddings")
            compensation = 1.0 / scale
        set_module(model, final, slicing.norm(get_module(model, final), index, compensation))
    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        if not adapter.attention_removed(i):
            for path in roles.head_producers:
                _replace(adapter, path, in_index=index)
            _replace(adapter, roles.head_consumer, out_index=index, out_scale=scale)
        if not adapter.ffn_removed(i):
            for path in roles.ffn_producers:
                _replace(adapter, path, in_index=index)
            _replace(adapter, roles.ffn_consumer, out_index=index, out_scale=scale)
    for path in adapter.hidden_norms():
        if path not in (emb_norm, final):
            set_module(model, path, slicing.norm(get_module(model, path), index))
    for path in adapter.head_square():
        _replace(adapter, path, in_index=index, out_index=index)
    word = get_module(model, adapter.embedding_tables()[0])
    for path in adapter.head_readers():
        _replace(adapter, path, in_index=index)
        if tied and get_module(model, path) is model.get_output_embeddings():
            model.get_output_embeddings().weight = word.weight


def _drop_empty_layers(adapter: Adapter) -> list[int]:
    """Drop pre-LN layers whose attention and FFN are both removed; returns the indices that stay."""
    n = adapter.num_layers()
    keep = [i for i in range(n)
            if not (adapter.pre_ln and adapter.attention_removed(i) and adapter.ffn_removed(i))]
    if len(keep) < n:
        layers = adapter.layers()
        kept_modules = [layers[i] for i in keep]
        for new_index, layer in enumerate(kept_modules):
            adapter.set_layer_index(layer, new_index)
        set_module(adapter.model, adapter.layers_path(), nn.ModuleList(kept_modules))
        layer_types = getattr(adapter.config, "layer_types", None)
        if layer_types:
            adapter.config.layer_types = [layer_types[i] for i in keep]
    return keep


__all__ = ["compact", "apply_plan", "RECORD_KEY"]
