"""`CompactionPlan`: which units of a model survive pruning, and the gate scales to fold into the weights."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch

Indices = Sequence[int]


def _as_index_list(values, what: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected a list of int unit indices, got {values!r}") from None
    if any(float(v) != o for v, o in zip(values, out)):
        raise TypeError(f"{what}: expected integer unit indices, got {list(values)!r}")
    return out


def _as_layer_dict(mapping, what: str) -> dict[int, list[int]]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a dict {{layer: list of kept indices}}, got {type(mapping).__name__}")
    out = {}
    for layer, kept in mapping.items():
        try:
            layer_index = int(layer)
        except (TypeError, ValueError):
            raise TypeError(f"{what}: layer keys must be ints, got {layer!r}") from None
        out[layer_index] = _as_index_list(kept, f"{what}[{layer_index}]")
    return out


def _check_structures(mapping, what: str) -> None:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a dict with keys among 'hidden', 'heads', 'ffn'")
    unknown = set(mapping) - {"hidden", "heads", "ffn"}
    if unknown:
        raise ValueError(f"{what}: unknown structures {sorted(unknown)}; expected keys among 'hidden', 'heads', "
                         "'ffn'")


def _as_scale(values, what: str) -> torch.Tensor | None:
    if values is None:
        return None
    scale = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if scale.dim() != 1:
        raise ValueError(f"{what}: expected a 1-D vector of per-unit scales, got shape {tuple(scale.shape)}")
    if not torch.isfinite(scale).all():
        raise ValueError(f"{what}: scales must be finite")
    return scale


def _as_scale_dict(mapping, what: str) -> dict[int, torch.Tensor]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a dict {{layer: per-unit scales}}, got {type(mapping).__name__}")
    return {int(layer): _as_scale(values, f"{what}[{layer}]") for layer, values in mapping.items()}


@dataclass
class CompactionPlan:
    """Kept units of a pruned model, the input of :func:`vtrans_kernels.compact`.

    Args:
        hidden: kept hidden (residual-stream) dims, or ``None`` to keep all of them.
        heads: ``{layer: kept head indices}``; for GQA/MQA models the unit is the KV group (keeping a group keeps
            all its query heads). A layer absent from the dict keeps every head; an empty list removes the
            attention sublayer, bias included.
        ffn: ``{layer: kept intermediate neurons}``, same conventions; an empty list removes the FFN sublayer.
        hidden_scale, head_scale, ffn_scale: optional per-unit gate values folded into the weights (the VIB
            ``mu`` or the hard-concrete deterministic value). Each is either a full-length vector (one value per
            unit of the original model) or one value per kept unit, in the order of the kept indices.
        scores: optional per-unit importance over all units of a structure (``{"hidden": vec, "heads":
            {layer: vec}, "ffn": {layer: vec}}``), used by ``round_to`` to choose which units to add or drop.
        scales: the three scale arguments in one dict of the same form as ``scores`` (an alternative
            spelling; do not give both).

    Indices are sorted and deduplicated when the plan is applied; out-of-range indices raise ``ValueError``.
    """

    hidden: Indices | None = None
    heads: dict[int, Indices] = field(default_factory=dict)
    ffn: dict[int, Indices] = field(default_factory=dict)
    hidden_scale: torch.Tensor | None = None
    head_scale: dict[int, torch.Tensor] = field(default_factory=dict)
    ffn_scale: dict[int, torch.Tensor] = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    scales: dict | None = None

    def __post_init__(self):
        if self.scales is not None:
            _check_structures(self.scales, "CompactionPlan.scales")
            if self.hidden_scale is not None or self.head_scale or self.ffn_scale:
                raise ValueError("CompactionPlan: give scales either as `scales` or as hidden_scale/head_scale/"
                                 "ffn_scale, not both")
            self.hidden_scale = self.scales.get("hidden")
            self.head_scale = self.scales.get("heads") or {}
            self.ffn_scale = self.scales.get("ffn") or {}
            self.scales = None
        self.hidden = None if self.hidden is None else _as_index_list(self.hidden, "CompactionPlan.hidden")
        self.heads = _as_layer_dict(self.heads, "CompactionPlan.heads")
        self.ffn = _as_layer_dict(self.ffn, "CompactionPlan.ffn")
        self.hidden_scale = _as_scale(self.hidden_scale, "CompactionPlan.hidden_scale")
        self.head_scale = _as_scale_dict(self.head_scale, "CompactionPlan.head_scale")
        self.ffn_scale = _as_scale_dict(self.ffn_scale, "CompactionPlan.ffn_scale")
        scores = dict(self.scores or {})
        _check_structures(scores, "CompactionPlan.scores")
        self.scores = {
            "hidden": _as_scale(scores.get("hidden"), "CompactionPlan.scores['hidden']"),
            "heads": _as_scale_dict(scores.get("heads"), "CompactionPlan.scores['heads']"),
            "ffn": _as_scale_dict(scores.get("ffn"), "CompactionPlan.scores['ffn']"),
        }

    def without_scales(self) -> "CompactionPlan":
        """A copy of this plan keeping the same units (and scores) with every scale dropped: the kept units keep
        their original weights instead of having the learned gate values folded in."""
        return replace(self, hidden_scale=None, head_scale={}, ffn_scale={})

    # ---- persistence: plain JSON, no pickles -------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-serialisable dict (layer keys become strings, tensors lists)."""
        def vec(t):
            return None if t is None else t.tolist()

        def per_layer(d, conv):
            return {str(k): conv(v) for k, v in sorted(d.items())}

        return {
            "hidden": self.hidden,
            "heads": per_layer(self.heads, list),
            "ffn": per_layer(self.ffn, list),
            "hidden_scale": vec(self.hidden_scale),
            "head_scale": per_layer(self.head_scale, vec),
            "ffn_scale": per_layer(self.ffn_scale, vec),
            "scores": {
                "hidden": vec(self.scores["hidden"]),
                "heads": per_layer(self.scores["heads"], vec),
                "ffn": per_layer(self.scores["ffn"], vec),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "CompactionPlan":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"CompactionPlan.from_dict: expected a dict, got {type(data).__name__}")
        allowed = {"hidden", "heads", "ffn", "hidden_scale", "head_scale", "ffn_scale", "scores", "scales"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"CompactionPlan: unknown fields {sorted(unknown)}; expected among {sorted(allowed)}")
        return cls(**{k: data[k] for k in data})

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (atomically: a temporary file, then a rename)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompactionPlan":
        """Read a plan written by :meth:`save`."""
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file {str(path)!r} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"plan file {str(path)!r} is not valid JSON: {err}") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class Kept:
    """The kept units of one structure, checked against the model: sorted indices, their scales (or None),
    and the number of units the structure has now."""

    index: torch.Tensor
    scale: torch.Tensor | None
    total: int
    all_scales: torch.Tensor | None = None  # one scale per unit when the plan gave them all (for rounding)

    @property
    def count(self) -> int:
        return int(self.index.numel())

    def is_everything(self) -> bool:
        return self.count == self.total and self.scale is None

    def mask(self) -> torch.Tensor:
        """Full-length 0/1 vector (float64): 1 on kept units."""
        mask = torch.zeros(self.total, dtype=torch.float64)
        mask[self.index] = 1.0
        return mask

    def gate(self) -> torch.Tensor:
        """Full-length gate: the scale (or 1) on kept units, 0 on pruned ones (float64)."""
        gate = torch.zeros(self.total, dtype=torch.float64)
        gate[self.index] = 1.0 if self.scale is None else self.scale
        return gate


def _kept(indices, scale, total: int, what: str) -> Kept:
    if indices is None:
        index = torch.arange(total)
    else:
        index = torch.tensor(sorted(set(indices)), dtype=torch.long)
        bad = [int(i) for i in index if not 0 <= i < total]
        if bad:
            raise ValueError(f"{what}: indices {bad[:5]} out of range; this structure has {total} units")
    all_scales = None
    if scale is not None:
        if scale.numel() == total:
            all_scales, scale = scale, scale[index]
        elif scale.numel() != index.numel():
            raise ValueError(f"{what} scale: expected {total} values (one per unit) or {index.numel()} "
                             f"(one per kept unit), got {scale.numel()}")
    return Kept(index, scale, total, all_scales)


@dataclass(frozen=True)
class ResolvedPlan:
    """A plan checked against a model's unit counts: one :class:`Kept` per structure and layer."""

    hidden: Kept
    heads: tuple[Kept, ...]
    ffn: tuple[Kept, ...]


def resolve_plan(plan: CompactionPlan, hidden: int, heads: Sequence[int], ffn: Sequence[int]) -> ResolvedPlan:
    """Check ``plan`` against a model with ``hidden`` dims and the given per-layer unit counts."""
    if not isinstance(plan, CompactionPlan):
        raise TypeError(f"plan: expected a CompactionPlan, got {type(plan).__name__}")
    n_layers = len(heads)
    for name, mapping in (("heads", plan.heads), ("ffn", plan.ffn), ("head_scale", plan.head_scale),
                          ("ffn_scale", plan.ffn_scale)):
        bad = sorted(layer for layer in mapping if not 0 <= layer < n_layers)
        if bad:
            raise ValueError(f"CompactionPlan.{name}: layers {bad} do not exist; the model has {n_layers} layers")
    if plan.hidden is not None and len(plan.hidden) == 0:
        raise ValueError("CompactionPlan.hidden: an empty list would remove the whole residual stream; "
                         "keep at least one hidden dim (None keeps all)")
    kept_hidden = _kept(plan.hidden, plan.hidden_scale, hidden, "CompactionPlan.hidden")
    kept_heads = tuple(_kept(plan.heads.get(i), plan.head_scale.get(i), heads[i], f"CompactionPlan.heads[{i}]")
                       for i in range(n_layers))
    kept_ffn = tuple(_kept(plan.ffn.get(i), plan.ffn_scale.get(i), ffn[i], f"CompactionPlan.ffn[{i}]")
                     for i in range(n_layers))
    return ResolvedPlan(kept_hidden, kept_heads, kept_ffn)
