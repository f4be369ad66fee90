"""One-shot structured baseline: score units by activation norm x weight norm on calibration batches, keep the
same fraction of every structure (the FFN's fraction adjusted to land on the target). The comparison point every method should beat."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..hf.adapters import adapter_for
from ..hf.adapters.base import get_module
from ..hf.plan import CompactionPlan
from ..hf.slicing import weight_dims
from ..masks.allocation import closest_fraction, kept_count
from ..masks.mask_set import STRUCTURES
from ..masks.size_model import SizeMeasure
from .data import Batches


@torch.no_grad()
def unit_scores(model: nn.Module, batches: Batches, steps: int = 4) -> dict:
    """Importance per unit, ``{"hidden": [H], "heads": {layer: [units]}, "ffn": {layer: [neurons]}}``:
    for heads and neurons, the L2 norm of the unit's input to the consuming projection over the calibration
    tokens times the norm of its weight columns; for hidden dims, the L2 norm of the residual stream entering
    every hidden norm."""
    adapter = adapter_for(model)
    width = adapter.q_heads_per_unit() * adapter.head_dim()
    sums: dict = {"hidden": None, "heads": {}, "ffn": {}}
    handles = []

    def accumulate(key, layer):
        def hook(module, args):
            x = args[0].detach().float()
            sq = x.reshape(-1, x.shape[-1]).square().sum(0)
            if key == "hidden":
                sums["hidden"] = sq if sums["hidden"] is None else sums["hidden"] + sq
            else:
                sums[key][layer] = sums[key].get(layer, 0) + sq
        return hook

    for path in adapter.hidden_norms():
        handles.append(get_module(model, path).register_forward_pre_hook(accumulate("hidden", None)))
    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        handles.append(get_module(model, roles.head_consumer).register_forward_pre_hook(accumulate("heads", i)))
        handles.append(get_module(model, roles.ffn_consumer).register_forward_pre_hook(accumulate("ffn", i)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for step in range(steps):
            model(**{k: v.to(device) for k, v in batches.batch(step).items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    scores = {"hidden": sums["hidden"].sqrt().cpu(), "heads": {}, "ffn": {}}
    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        for key, consumer, unit_width in (("heads", roles.head_consumer, width), ("ffn", roles.ffn_consumer, 1)):
            module = get_module(model, consumer)
            _, in_dim = weight_dims(module)
            column_norms = module.weight.detach().float().norm(dim=1 - in_dim).cpu()
            activation = sums[key][i].sqrt().cpu()
            scores[key][i] = (activation * column_norms).view(-1, unit_width).sum(-1)
    return scores


def oneshot_plan(model: nn.Module, batches: Batches, target_sparsity: float, *,
                 structures: Sequence[str] = STRUCTURES, target: str = "params", seq_len: int = 128,
                 count_embeddings: bool = False, calibration_steps: int = 4, measure=None) -> CompactionPlan:
    """A plan keeping the top-scoring fraction ``r`` of every unit of ``structures`` (hidden dims, and the heads
    and neurons of each layer), with ``r`` chosen by bisection so the sparsity is closest to the target; then,
    when FFN neurons are pruned, their fraction alone is re-chosen the same way with the others held at ``r``,
    because heads come in a few coarse units a layer (whole KV groups under GQA) and ``r`` alone can miss the
    target by a head's share of every layer. ``measure`` (anything with ``sparsity(hidden, units, ffn)``, e.g. a
    latency table's) replaces the size measure that ``target``, ``seq_len`` and ``count_embeddings`` describe."""
    if not 0.0 < target_sparsity < 1.0:
        raise ValueError(f"target_sparsity: expected a value in (0, 1), got {target_sparsity}")
    adapter = adapter_for(model)
    spec = adapter.spec()
    measure = SizeMeasure(spec, target, seq_len, count_embeddings) if measure is None else measure
    scores = unit_scores(model, batches, calibration_steps)

    def counts(ratio, ffn_ratio):
        keep = lambda n, s, r: kept_count(n, r) if s in structures else n  # noqa: E731
        return (keep(spec.hidden_size, "hidden", ratio), [keep(u, "heads", ratio) for u in spec.units_per_layer],
                [keep(f, "ffn", ffn_ratio) for f in spec.ffn_per_layer])

    ratio = closest_fraction(lambda r: measure.sparsity(*counts(r, r)), target_sparsity)
    ffn_ratio = closest_fraction(lambda f: measure.sparsity(*counts(ratio, f)), target_sparsity) \
        if "ffn" in structures else ratio
    hidden, heads, ffn = counts(ratio, ffn_ratio)
    top = lambda score, k: sorted(torch.topk(score, k).indices.tolist())  # noqa: E731
    return CompactionPlan(
        hidden=top(scores["hidden"], hidden) if "hidden" in structures else None,
        heads={i: top(scores["heads"][i], k) for i, k in enumerate(heads)} if "heads" in structures else {},
        ffn={i: top(scores["ffn"][i], k) for i, k in enumerate(ffn)} if "ffn" in structures else {},
        scores=scores)
