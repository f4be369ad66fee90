"""`CompactionPlan`: which units of a model survive pruning, and the gate scales to fold into the weights."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

import torch

from ..fileio import write_text
from ..masks.mask_set import STRUCTURES, structure_names

Indices = Sequence[int]


def _as_index_list(values, what: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{what}: expected a list of int unit indices, got {values!r}")
    values = list(values)
    for v in values:
        # bools are ints to Python, and a float index must be whole and finite (JSON's 1e400 reads as inf)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise TypeError(f"{what}: expected integer unit indices, got {_short(v)} in {_short(values)}")
    return [int(v) for v in values]


def _short(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (plans read from files can hold anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _as_layer_dict(mapping, what: str, convert=None) -> dict:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a dict keyed by layer, got {type(mapping).__name__}")
    out = {}
    for layer, kept in mapping.items():
        try:
            layer_index = int(layer)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"{what}: layer keys must be ints, got {_short(layer)}") from None
        out[layer_index] = (convert or _as_index_list)(kept, f"{what}[{layer_index}]")
    return out


def _check_structures(mapping, what: str) -> None:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a dict with keys among 'hidden', 'heads', 'ffn'")
    unknown = set(mapping) - {"hidden", "heads", "ffn"}
    if unknown:
        raise ValueError(f"{what}: unknown structures {sorted(unknown)}; expected keys among 'hidden', 'heads', "
                         "'ffn'")


def _as_scale(values, what: str, kind: str = "per-unit scales") -> torch.Tensor | None:
    if values is None:
        return None
    try:
        scale = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{what}: expected a list of numbers ({kind}), got {_short(values)}") from None
    if scale.dim() != 1:
        raise ValueError(f"{what}: expected a 1-D vector of {kind}, got shape {tuple(scale.shape)}")
    if not torch.isfinite(scale).all():
        raise ValueError(f"{what}: {kind} must be finite")
    return scale


def _as_scale_dict(mapping, what: str, kind: str = "per-unit scales") -> dict[int, torch.Tensor]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a dict {{layer: {kind}}}, got {type(mapping).__name__}")
    return {layer: _as_scale(values, f"{what}[{layer}]", kind)
            for layer, values in _as_layer_dict(mapping, what, lambda v, _: v).items()}


_SHIFT = "one bias shift per hidden dim"


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
        head_bias_shift, ffn_bias_shift: optional ``{layer: vector}`` added to the bias of that layer's attention
            (resp. FFN) output projection, one value per hidden dim of the model (before ``hidden`` is applied;
            the hidden scale multiplies it like the bias). :func:`vtrans_kernels.hf.compensate_plan` sets them to
            the mean contribution of the sublayer's removed units on calibration data (bias compensation). A
            shift on a sublayer the plan removes is refused: a removed sublayer adds exactly zero.
        model: optional record of the model the plan was made for (see :func:`model_record`): its model type,
            unit counts and weight fingerprint. :func:`vtrans_kernels.compact` refuses a plan whose model type or
            unit counts differ from the model's; ``vtrans compact`` also checks the fingerprint.

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
    model: dict | None = None
    head_bias_shift: dict[int, torch.Tensor] = field(default_factory=dict)
    ffn_bias_shift: dict[int, torch.Tensor] = field(default_factory=dict)

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
        self.head_bias_shift = _as_scale_dict(self.head_bias_shift, "CompactionPlan.head_bias_shift", _SHIFT)
        self.ffn_bias_shift = _as_scale_dict(self.ffn_bias_shift, "CompactionPlan.ffn_bias_shift", _SHIFT)
        scores = dict(self.scores or {})
        _check_structures(scores, "CompactionPlan.scores")
        self.scores = {
            "hidden": _as_scale(scores.get("hidden"), "CompactionPlan.scores['hidden']"),
            "heads": _as_scale_dict(scores.get("heads"), "CompactionPlan.scores['heads']"),
            "ffn": _as_scale_dict(scores.get("ffn"), "CompactionPlan.scores['ffn']"),
        }
        self.model = None if self.model is None else _as_model_record(self.model)

    def without_scales(self) -> "CompactionPlan":
        """A copy of this plan keeping the same units (and scores) with every scale dropped: the kept units keep
        their original weights instead of having the learned gate values folded in."""
        return replace(self, hidden_scale=None, head_scale={}, ffn_scale={})

    def ranked_at_counts(self, counts: "CompactionPlan",
                         structures: Sequence[str] = STRUCTURES) -> "CompactionPlan":
        """This plan's ranking cut at ``counts``' number of kept units in every structure and layer: for each, the
        units with the highest of this plan's ``scores`` (e.g. a one-shot plan's calibration scores at the counts
        a mask plan chose per layer). Only the ``structures`` named ("hidden", "heads", "ffn") are re-ranked; the
        others keep ``counts``' own units (e.g. ``structures=("ffn",)``: the mask plan's heads, the calibration
        scores' FFN neurons). Scales stay with their units, so they must be full-length vectors; values listed
        for the kept units only belong to units the cut may drop, and are refused. Bias shifts are dropped: they
        are the removed units' contribution, and the cut removes others (``compensate_plan`` again)."""
        structures = structure_names(structures, "CompactionPlan.ranked_at_counts(structures=...)")

        def top(score, units, where):
            if score is None:
                raise ValueError(f"CompactionPlan.ranked_at_counts: this plan has no scores for {where}, which "
                                 "counts prunes; expected a plan with scores over every unit there")
            if len(units) > score.numel():
                raise ValueError(f"CompactionPlan.ranked_at_counts: counts keeps {len(units)} units of {where}, "
                                 f"more than the {score.numel()} this plan scores")
            return sorted(torch.topk(score, len(units)).indices.tolist())

        def recut(kind):
            if kind not in structures:
                return {layer: list(units) for layer, units in getattr(counts, kind).items()}
            scores = self.scores[kind]
            return {layer: top(scores.get(layer), units, f"{kind} of layer {layer}")
                    for layer, units in getattr(counts, kind).items()}

        for name, scale, score in [("hidden_scale", self.hidden_scale, self.scores["hidden"])] + [
                (f"{kind}_scale[{layer}]", vec, self.scores[key].get(layer))
                for kind, key in (("head", "heads"), ("ffn", "ffn"))
                for layer, vec in getattr(self, f"{kind}_scale").items()]:
            if scale is not None and (score is None or scale.numel() != score.numel()):
                raise ValueError(f"CompactionPlan.ranked_at_counts: {name} lists {scale.numel()} values, not one "
                                 "per unit; expected full-length scales (or none: without_scales())")
        hidden = counts.hidden
        if hidden is not None and "hidden" in structures:
            hidden = top(self.scores["hidden"], hidden, "the hidden dims")
        return replace(self, hidden=hidden, heads=recut("heads"), ffn=recut("ffn"), head_bias_shift={},
                       ffn_bias_shift={})

    # ---- persistence: plain JSON, no pickles -------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-serialisable dict (layer keys become strings, tensors lists)."""
        def vec(t):
            return None if t is None else t.tolist()

        def per_layer(d, conv):
            return {str(k): conv(v) for k, v in sorted(d.items())}

        out = {
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
        if self.model is not None:
            out["model"] = dict(self.model)
        for name in ("head_bias_shift", "ffn_bias_shift"):  # written only when set: older readers stay valid
            if getattr(self, name):
                out[name] = per_layer(getattr(self, name), vec)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "CompactionPlan":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"CompactionPlan.from_dict: expected a dict, got {type(data).__name__}")
        allowed = {"hidden", "heads", "ffn", "hidden_scale", "head_scale", "ffn_scale", "scores", "scales",
                   "model", "head_bias_shift", "ffn_bias_shift"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"CompactionPlan: unknown fields {sorted(unknown)}; expected among {sorted(allowed)}")
        return cls(**{k: data[k] for k in data})

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (through a temporary file and a rename, replacing rather than following a
        symbolic link at ``path``)."""
        write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompactionPlan":
        """Read a plan written by :meth:`save`; anything else raises an error naming the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file {str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise ValueError(f"plan file {str(path)!r} is a folder; expected a plan.json file") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"plan file {str(path)!r} is not UTF-8 JSON text (byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"plan file {str(path)!r} is not valid JSON: {err}") from None
        except RecursionError:
            raise ValueError(f"plan file {str(path)!r} nests too deeply to be a plan") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"plan file {str(path)!r}: {err}") from None


# Keys of CompactionPlan.model and what each must be.
_MODEL_RECORD = {"model_type": str, "hidden": int, "heads": list, "ffn": list, "fingerprint": (str, type(None))}


def _as_model_record(record) -> dict:
    if not isinstance(record, Mapping) or set(record) != set(_MODEL_RECORD):
        raise ValueError(f"CompactionPlan.model: expected a dict with keys {sorted(_MODEL_RECORD)}, got "
                         f"{_short(record)}")
    for key, kind in _MODEL_RECORD.items():
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise TypeError(f"CompactionPlan.model[{key!r}]: expected {kind}, got {_short(record[key])}")
    return {**record, "heads": _as_index_list(record["heads"], "CompactionPlan.model['heads']"),
            "ffn": _as_index_list(record["ffn"], "CompactionPlan.model['ffn']")}


def model_record(model_type: str, hidden: int, heads: Sequence[int], ffn: Sequence[int],
                 fingerprint: str | None = None) -> dict:
    """A :attr:`CompactionPlan.model` record: the model's type (``config.model_type``: "bert", "llama", ...; a
    plan fits every head class of that backbone), hidden size, units per layer (heads or KV groups, FFN neurons)
    and optionally a fingerprint of its weights."""
    return _as_model_record({"model_type": model_type, "hidden": int(hidden), "heads": list(heads), "ffn": list(ffn),
                             "fingerprint": fingerprint})


def plan_model_mismatch(plan: CompactionPlan, model_type: str, hidden: int, heads: Sequence[int],
                        ffn: Sequence[int]) -> list[str]:
    """What differs between the model ``plan`` was made for (its record) and the given one; empty when the
    plan has no record or they agree."""
    if plan.model is None:
        return []
    record, found = plan.model, {"model_type": model_type, "hidden": int(hidden), "heads": list(heads),
                                 "ffn": list(ffn)}
    return [f"{key}: plan made for {record[key]!r}, model has {found[key]!r}" for key in found
            if record[key] != found[key]]


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
        unique = sorted(set(indices))
        bad = [i for i in unique if not 0 <= i < total]  # before torch.tensor, which overflows on huge ints
        if bad:
            raise ValueError(f"{what}: indices {_short(bad[:5])} out of range; this structure has {total} units")
        index = torch.tensor(unique, dtype=torch.long)
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
    # per layer: the vector added to the output projection's bias (full hidden length), or None
    head_shift: tuple[torch.Tensor | None, ...] = ()
    ffn_shift: tuple[torch.Tensor | None, ...] = ()

    def has_shifts(self) -> bool:
        return any(s is not None for s in self.head_shift + self.ffn_shift)


def resolve_plan(plan: CompactionPlan, hidden: int, heads: Sequence[int], ffn: Sequence[int]) -> ResolvedPlan:
    """Check ``plan`` against a model with ``hidden`` dims and the given per-layer unit counts."""
    if not isinstance(plan, CompactionPlan):
        raise TypeError(f"plan: expected a CompactionPlan, got {type(plan).__name__}")
    n_layers = len(heads)
    for name, mapping in (("heads", plan.heads), ("ffn", plan.ffn), ("head_scale", plan.head_scale),
                          ("ffn_scale", plan.ffn_scale), ("head_bias_shift", plan.head_bias_shift),
                          ("ffn_bias_shift", plan.ffn_bias_shift)):
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
    head_shift = _shifts(plan.head_bias_shift, kept_heads, hidden, "head_bias_shift")
    ffn_shift = _shifts(plan.ffn_bias_shift, kept_ffn, hidden, "ffn_bias_shift")
    return ResolvedPlan(kept_hidden, kept_heads, kept_ffn, head_shift, ffn_shift)


def _shifts(mapping: dict, kept: tuple[Kept, ...], hidden: int, name: str) -> tuple[torch.Tensor | None, ...]:
    """Per layer, the bias shift of ``mapping`` checked against the hidden size and the kept units."""
    for layer, shift in mapping.items():
        if shift.numel() != hidden:
            raise ValueError(f"CompactionPlan.{name}[{layer}]: expected {hidden} values (one per hidden dim of the "
                             f"model, before pruning), got {shift.numel()}")
        if kept[layer].count == 0:
            raise ValueError(f"CompactionPlan.{name}[{layer}]: the plan removes this sublayer, which then adds "
                             "exactly zero; a bias shift cannot be kept on it")
    return tuple(mapping.get(i) for i in range(len(kept)))
