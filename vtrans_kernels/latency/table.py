"""`LatencyTable`: per-layer latencies measured on one device, for one model, dtype, batch and sequence length.

The JSON file holds what it was measured for (device, versions, model architecture, settings) and, per measured
hidden size, the attention block's latency at every kept head (KV-group) count, the FFN block's latency over a
grid of kept neurons, the fixed cost (embeddings, norms, residual adds, head) and the measured total of the
unpruned-width model. Every point keeps its raw samples next to their median and the estimate the predictions
use (``estimate_ms``, by the statistic the settings name: `stats.estimate_ms`).
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

from ..fileio import write_text
from .curves import Curve, isotonic

FORMAT = "vtrans-latency-table/1"
# Keys of the measurement that must match for a saved table to be reused instead of measured again.
REUSE_KEYS = ("device", "dtype", "batch_size", "seq_len", "versions", "model", "settings")


@dataclass
class LatencyTable:
    """A latency profile (see the module docstring). Latencies are milliseconds of one forward of
    ``batch_size`` sequences of ``seq_len`` tokens; block latencies are per layer."""

    device: dict
    dtype: str
    batch_size: int
    seq_len: int
    versions: dict
    model: dict
    settings: dict
    hidden_sizes: list[int]
    attention: dict[int, dict]
    ffn: dict[int, dict]
    fixed: dict[int, dict]
    total: dict[int, dict]
    profile_seconds: float = 0.0
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())

    def __post_init__(self):
        self.hidden_sizes = sorted(int(h) for h in self.hidden_sizes)
        for name in ("attention", "ffn", "fixed", "total"):
            points = {int(h): v for h, v in getattr(self, name).items()}
            missing = [h for h in self.hidden_sizes if h not in points]
            if missing:
                raise ValueError(f"latency table: '{name}' has no entry for hidden sizes {missing}")
            setattr(self, name, points)
        self._curves: dict = {}

    # ---- reading ----------------------------------------------------------------------------------------
    def curve(self, block: str, hidden: int) -> Curve:
        """The fitted latency :class:`Curve` of ``block`` ("attention" or "ffn") at a measured hidden size."""
        if block not in ("attention", "ffn"):
            raise ValueError(f"block: expected 'attention' or 'ffn', got {block!r}")
        key = (block, int(hidden))
        if key not in self._curves:
            points = getattr(self, block).get(int(hidden))
            if points is None:
                raise KeyError(f"latency table: hidden size {hidden} was not measured ({self.hidden_sizes})")
            self._curves[key] = Curve.fit(points["widths"], points["estimate_ms"])
        return self._curves[key]

    def fixed_ms(self) -> dict[int, float]:
        """Fixed cost per measured hidden size, fitted non-decreasing in the hidden size."""
        if "fixed" not in self._curves:
            fitted = isotonic([self.fixed[h]["estimate_ms"] for h in self.hidden_sizes])
            self._curves["fixed"] = dict(zip(self.hidden_sizes, fitted))
        return self._curves["fixed"]

    def measured_total_ms(self, hidden: int) -> float:
        """The measured (estimated) latency of the model at ``hidden`` dims and every other width unpruned."""
        return float(self.total[int(hidden)]["estimate_ms"])

    # ---- checks -----------------------------------------------------------------------------------------
    def reuse_key(self) -> dict:
        """What must match for this table to stand for a new measurement (see :data:`REUSE_KEYS`)."""
        return {k: getattr(self, k) for k in REUSE_KEYS}

    def mismatches(self, *, model: dict | None = None, device: dict | None = None,
                   dtype: str | None = None) -> list[str]:
        """What differs between this table and the given model architecture record, device record (type and
        name; CPU thread counts may differ) and dtype name."""
        found = []
        if device is not None:
            mine = (self.device.get("type"), self.device.get("name"))
            theirs = (device.get("type"), device.get("name"))
            if mine != theirs:
                found.append(f"device: the table was measured on {mine[0]} {mine[1]!r}, this run is on "
                             f"{theirs[0]} {theirs[1]!r}")
        if dtype is not None and dtype != self.dtype:
            found.append(f"dtype: the table was measured in {self.dtype}, this run uses {dtype}")
        if model is not None and model != self.model:
            keys = [k for k in sorted(set(model) | set(self.model)) if model.get(k) != self.model.get(k)]
            found.append("model: the table was measured for another model (" + "; ".join(
                f"{k}: table {_short(self.model.get(k))}, model {_short(model.get(k))}" for k in keys) + ")")
        return found

    def check_matches(self, what: str, *, model: dict | None = None, device: dict | None = None,
                      dtype: str | None = None) -> None:
        """Raise ``ValueError`` naming ``what`` (the argument that gave the table) when it does not match."""
        found = self.mismatches(model=model, device=device, dtype=dtype)
        if found:
            raise ValueError(f"{what}: this latency table does not fit the run: " + "; ".join(found) +
                             ". Measure one here with `vtrans profile` (or vtrans_kernels.latency.profile_latency)")

    def check_covers(self, what: str, units: Sequence[int], ffn: Sequence[int], hidden: int,
                     prune_hidden: bool) -> None:
        """Raise ``ValueError`` naming ``what`` when the table lacks a width a plan for a model with these unit
        counts may need: every head count up to each layer's, each layer's full FFN width, the full hidden size,
        and (``prune_hidden``) at least one smaller hidden size."""
        problems = []
        if hidden not in self.hidden_sizes:
            problems.append(f"hidden size {hidden} (the model's) was not measured (table: {self.hidden_sizes})")
        elif prune_hidden and len(self.hidden_sizes) < 2:
            problems.append(f"only hidden size {hidden} was measured, so the hidden dimension cannot be pruned; "
                            "profile smaller hidden sizes too, or prune without the 'hidden' structure")
        for h in self.hidden_sizes:
            heads = set(self.attention[h]["widths"])
            need = sorted(set(range(max(units) + 1)) - heads) if units else []
            if need:
                problems.append(f"attention at hidden {h} lacks head counts {need[:8]}")
            neurons = set(self.ffn[h]["widths"])
            need = sorted(set(ffn) - neurons)
            if need or 0 not in neurons:
                problems.append(f"FFN at hidden {h} lacks widths {sorted(set(need) | ({0} - neurons))[:8]}")
        if problems:
            raise ValueError(f"{what}: the latency table is missing widths the plan needs: " + "; ".join(problems))

    # ---- files ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-serialisable dict (hidden-size keys become strings)."""
        per_hidden = lambda d: {str(h): d[h] for h in self.hidden_sizes}  # noqa: E731
        return {"format": FORMAT, "device": self.device, "dtype": self.dtype, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "versions": self.versions, "model": self.model, "settings": self.settings,
                "hidden_sizes": self.hidden_sizes, "attention": per_hidden(self.attention),
                "ffn": per_hidden(self.ffn), "fixed": per_hidden(self.fixed), "total": per_hidden(self.total),
                "profile_seconds": self.profile_seconds, "created": self.created}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyTable":
        """Inverse of :meth:`to_dict`; anything else raises ``ValueError``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a latency table (expected \"format\": \"{FORMAT}\")")
        keys = ("device", "dtype", "batch_size", "seq_len", "versions", "model", "settings", "hidden_sizes",
                "attention", "ffn", "fixed", "total")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"latency table: missing fields {missing}")
        try:
            return cls(**{k: data[k] for k in keys}, profile_seconds=float(data.get("profile_seconds", 0.0)),
                       created=str(data.get("created", "")))
        except (TypeError, AttributeError) as err:
            raise ValueError(f"latency table: malformed ({err})") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON (through a temporary file and a rename)."""
        write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike, what: str = "profile") -> "LatencyTable":
        """Read a table written by :meth:`save`; errors name ``what`` and the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{what}: latency table {str(path)!r} does not exist (make one with "
                                    "`vtrans profile`)") from None
        except (IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{what}: {str(path)!r} is not a latency table JSON file ({err})") from None
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{what}: {str(path)!r}: {err}") from None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
