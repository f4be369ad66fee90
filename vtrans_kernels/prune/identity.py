"""What a pruning run belongs to: fingerprints of the model, the data and the settings that shape the masks, so
that a resumed run or a compaction can refuse a checkpoint or a plan made for something else."""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from .config import PruneConfig

# PruneConfig fields that do not change the trained masks: logging, checkpoint spacing and what happens after the
# masks are trained (compaction, bias compensation and fine-tuning). Every other field must match for a checkpoint
# to resume, but for ``calibration_batches``, which shapes the run only when the masks start from the one-shot plan
# (``mask_start`` "oneshot") or the plan ranks units by the calibration scores (``rank_by_calibration``, scored before
# the first step); otherwise only bias compensation reads it.
AFTER_MASKS = ("log_every", "checkpoint_every", "finetune_steps", "round_to", "fold_scales", "uniform",
               "bias_compensation", "compact_from")
# Config entries that vary between copies of the same model (where it was loaded from, library versions).
_VOLATILE_CONFIG = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
                    "_attn_implementation_autoset", "attn_implementation", "_commit_hash")


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.device.type != "meta":
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # a buffer: no copy


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _hash_tensor(digest, name, tensors[name])
    return digest.hexdigest()


def config_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's class and configuration, less the entries that vary between copies."""
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        values = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG}
        digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's weights (its ``state_dict``; attached masks are not part of it)."""
    return tensors_fingerprint(model.state_dict())


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's class, configuration and weights. Reads every weight once."""
    return hashlib.sha256((config_fingerprint(model) + weights_fingerprint(model)).encode()).hexdigest()


def model_entries(model: nn.Module) -> dict:
    """The entries of a run record that pin its model: config and weight fingerprints."""
    return {"model.config": config_fingerprint(model), "model.weights": weights_fingerprint(model)}


def text_fingerprint(data) -> str:
    """SHA-256 (hex) of a :class:`~.data.TextData`: its texts, labels and label names."""
    payload = {"texts": data.texts, "labels": data.labels, "label_names": data.label_names}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def data_record(batches) -> dict:
    """The entries of a run record that pin its training batches (a :class:`~.data.Batches`): a fingerprint of
    the tokenized rows and of the subset the run draws from, the batch size and the data-order seed."""
    return {"data": tensors_fingerprint({**batches.features, "__rows__": batches.rows}),
            "data.rows": int(next(iter(batches.features.values())).shape[0]),
            "data.batch_size": batches.batch_size, "data.seed": batches.seed}


def mask_settings(config: PruneConfig) -> dict:
    """The settings of ``config`` that shape the trained masks, prefixed ``settings.``."""
    return _mask_entries({f"settings.{k}": v for k, v in config.to_dict().items()})


def _mask_entries(record: dict) -> dict:
    """``record`` without the ``settings.`` entries that do not shape the masks (:data:`AFTER_MASKS`, and
    ``calibration_batches`` unless the masks start from the one-shot plan or the plan ranks units by the calibration
    scores). A record written by an older version may still hold some of them; they are dropped the same way."""
    after = {f"settings.{k}" for k in AFTER_MASKS}
    if record.get("settings.mask_start", "init") != "oneshot" and not record.get("settings.rank_by_calibration"):
        after.add("settings.calibration_batches")
    if not record.get("settings.quench_fraction"):
        after.add("settings.quench_gradient")  # no quenched step, so no quenched gate's gradient
    return {k: v for k, v in record.items() if k not in after}


def differences(saved: dict, current: dict) -> list[str]:
    """One ``key: X (saved) vs Y (now)`` line per entry that differs (an entry missing on one side counts).
    Long hex fingerprints are shortened to 12 characters."""
    def show(value):
        if value is _MISSING:
            return "absent"
        if isinstance(value, str) and len(value) == 64:
            return value[:12]
        return repr(value)

    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, _MISSING), current.get(key, _MISSING)
        if _normalise(a) != _normalise(b):
            out.append(f"{_DESCRIPTIONS.get(key, key)}: {show(a)} (checkpoint) vs {show(b)} (this run)")
    return out


# How the fingerprint entries of a run record read in a message.
_DESCRIPTIONS = {"model.config": "model class and config (fingerprint)", "model.weights": "model weights (fingerprint)",
                 "input_model": "input model before the teacher fine-tune (fingerprint)",
                 "data": "training rows (tokenized, fingerprint)", "text_data": "data (texts and labels, fingerprint)",
                 "data.rows": "training rows", "data.batch_size": "batch size", "data.seed": "data-order seed"}


_MISSING = object()


def _normalise(value):
    """JSON round trip, so that tuples and lists, and int and str dict keys, compare equal."""
    if value is _MISSING:
        return value
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# What a run recorded before a setting existed did, where the setting's default is not that (no settling and no
# quench came before them; a quench came before its straight-through gradient).
BEFORE_THEY_EXISTED = {"settle_fraction": 0.0, "quench_fraction": 0.0, "quench_gradient": "exact"}


def settings_as_run(settings: dict) -> dict:
    """``settings`` (a ``PruneConfig.to_dict()`` written by any version) with every setting it lacks as the run
    had it: a record written before a setting existed ran as its default does (a new setting defaults to the old
    behaviour), or as :data:`BEFORE_THEY_EXISTED` says where the default changed the behaviour."""
    return {**PruneConfig().to_dict(), **BEFORE_THEY_EXISTED, **settings}


def _with_later_defaults(record: dict) -> dict:
    """A run record with its ``settings.`` entries completed by :func:`settings_as_run`."""
    prefix = "settings."
    settings = {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}
    return {**record, **{prefix + k: v for k, v in settings_as_run(settings).items()}}


def check_same_run(saved: dict | None, current: dict, where: str) -> None:
    """Raise ``ValueError`` naming every entry where the run record ``saved`` (from a checkpoint at ``where``)
    differs from ``current``; a checkpoint without a record is refused too."""
    if saved is None:
        raise ValueError(f"resume: {where} has no record of the model, data and settings it was made with (written "
                         "by an older vtrans-kernels); start a new run (--overwrite)")
    saved, current = _mask_entries(_with_later_defaults(saved)), _mask_entries(current)
    if "settings.quench_gradient" not in saved or "settings.quench_gradient" not in current:
        # one side has no quenched step: the quench fractions differ, and the gradient adds nothing to say so
        saved.pop("settings.quench_gradient", None)
        current.pop("settings.quench_gradient", None)
    diff = differences(saved, current)
    if diff:
        raise ValueError(f"resume: {where} belongs to another run; what differs: " + "; ".join(diff)
                         + ". Resume with the same model, data and settings, or start a new run (--overwrite)")
