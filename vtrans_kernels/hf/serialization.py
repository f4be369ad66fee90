"""`save_compacted` / `load_compacted`: compacted models as safetensors + config.json, no pickles.

The config carries the compaction record (``config.vtrans_compaction``): the original config, the source
layer of every remaining layer, and the kept hidden size, heads and FFN neurons per layer. Loading rebuilds
the architecture from the original config by the same compaction code (keeping the first units of each
structure), then loads the tensors strictly, so any per-layer shape round-trips. When every layer kept the
same shapes and the config can express them, the folder also loads with plain ``from_pretrained``.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..fileio import staged_folder
from .adapters import adapter_for, supported_classes
from .adapters.base import RECORD_KEY
from .compact import apply_plan
from .dequantized import without_gguf_record
from .model_card import model_card
from .plan import CompactionPlan, resolve_plan

try:  # transformers v5: skip the random init of a model whose weights are loaded right after
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers
    from contextlib import nullcontext as no_init_weights


def save_compacted(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (compacted or not) to the folder ``path`` as safetensors + config.json.

    A model that was never compacted gets an identity record in its config first. A ``README.md`` says what
    loads the folder (plain ``from_pretrained`` when every layer kept the same shape, else
    :func:`load_compacted`) and how to export it for serving; nothing saved names an absolute path of this
    machine. A model loaded from a GGUF file (dequantized by transformers) saves like any other. Files are written to a
    temporary folder inside ``path`` and renamed in one by one, so an interrupted save never leaves a
    half-written tensor file under its final name and a symbolic link planted in ``path`` is replaced, not
    followed; weight files of an earlier model saved there are removed. Returns the folder.
    """
    adapter = adapter_for(model)
    if not getattr(model.config, RECORD_KEY, None):
        apply_plan(adapter, resolve_plan(CompactionPlan(), *_unit_args(adapter)))
    path = Path(path)
    with staged_folder(path) as stage, _config_for_saving(adapter), without_gguf_record(model):
        model.save_pretrained(stage, safe_serialization=True)
        (stage / "README.md").write_text(model_card(model, getattr(model.config, RECORD_KEY)))
        written = set(os.listdir(stage))
    for name in os.listdir(path):  # weights of an earlier model saved here would be read with the new index
        if name not in written and _WEIGHT_FILE.fullmatch(name):
            os.unlink(path / name)
    return path


# Files of a saved model's weights (single file, shards, shard index).
_WEIGHT_FILE = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")


# Config fields that describe layer widths; see _config_for_saving.
_WIDTH_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim",
                 "n_embd", "n_head", "n_inner")


@contextmanager
def _config_for_saving(adapter):
    """Mark in the record whether plain ``from_pretrained`` can load the folder. When it cannot (per-layer
    shapes, removed sublayers, or widths the config class rejects, like LLaMA's hidden % heads check), the
    saved config keeps the original width fields, so that it passes the config's validation; the record,
    not those fields, then describes the shapes."""
    config = adapter.config
    record = getattr(config, RECORD_KEY)
    record["original"].pop("_name_or_path", None)  # where the input model was loaded from, on this machine
    plain = adapter.plain_loadable()
    if plain and hasattr(config, "validate"):
        try:
            config.validate()
        except Exception:  # the config class's own validation: any failure means "not expressible"
            plain = False
    record["plain_loadable"] = plain
    record["attn_implementation"] = getattr(config, "_attn_implementation", None)
    current = {f: getattr(config, f) for f in _WIDTH_FIELDS if not plain and f in record["original"]}
    try:
        for field in current:
            setattr(config, field, record["original"][field])
        yield
    finally:
        for field, value in current.items():
            setattr(config, field, value)


def load_compacted(path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                   attn_implementation: str | None = None) -> nn.Module:
    """Rebuild and load a model written by :func:`save_compacted` (eval mode).

    ``dtype`` defaults to the dtype of the saved tensors; ``attn_implementation`` ("eager", "sdpa", ...)
    defaults to the one the model was saved with. Raises ``FileNotFoundError`` for a missing folder or
    file, and ``ValueError`` naming the tensor and both shapes for a truncated or mismatched checkpoint.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"load_compacted: {str(config_file)!r} does not exist")
    config = read_config(path)
    record = getattr(config, RECORD_KEY, None)
    if not record:
        raise ValueError(f"load_compacted: {str(config_file)!r} has no '{RECORD_KEY}' record, so it was not "
                         "written by save_compacted; load it with transformers' from_pretrained")
    model_class = _model_class(config)
    tensors = _read_tensors(path)
    if dtype is None:
        dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    original = type(config).from_dict(record["original"])
    for field in record.get("added_biases", []):  # biases that bias compensation gave the compacted model
        setattr(original, field, True)
    attn_implementation = attn_implementation or record.get("attn_implementation")
    if attn_implementation is not None:
        original._attn_implementation = attn_implementation
    with no_init_weights():
        model = model_class(original)
    model.tie_weights()  # no_init_weights skips the tying that init would do
    model.to(dtype)
    adapter = adapter_for(model)
    apply_plan(adapter, resolve_plan(_first_units_plan(record, adapter.num_layers()), *_unit_args(adapter)))
    setattr(model.config, RECORD_KEY, record)
    _load_strict(model, tensors, path)
    model.tie_weights()
    return model.eval()


def load_model(path: str | os.PathLike, **kwargs) -> nn.Module:
    """Load a supported model folder: a compacted one with :func:`load_compacted`, any other with the
    transformers class named in its config (``kwargs`` go to either loader)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(path)!r} has no config.json")
    config = read_config(path)
    if getattr(config, RECORD_KEY, None):
        return load_compacted(path, **kwargs)
    model_class = _model_class(config)
    try:
        return model_class.from_pretrained(str(path), **kwargs).eval()
    except Exception as err:  # transformers raises many types for unreadable weights; say which folder
        raise ValueError(f"cannot load the model in {str(path)!r} (missing, truncated or corrupt weights?): "
                         f"{_first_line(err)}") from None


def read_config(path: Path):
    """The transformers config of the model folder ``path``; ``ValueError`` naming the file when unreadable."""
    try:
        return transformers.AutoConfig.from_pretrained(str(path))
    except Exception as err:  # OSError, ValueError, KeyError... for a config.json that is not one
        raise ValueError(f"cannot read {str(path / 'config.json')!r} as a transformers config: "
                         f"{_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unit_args(adapter):
    units = adapter.units()
    return units.hidden, units.heads, units.ffn


def _first_units_plan(record: dict, n_layers: int) -> CompactionPlan:
    """The plan that gives the original architecture the recorded shapes (first units of each structure)."""
    heads = {i: [] for i in range(n_layers)}
    ffn = {i: [] for i in range(n_layers)}
    for source, n_heads, n_ffn in zip(record["sources"], record["heads"], record["ffn"]):
        heads[source] = list(range(n_heads))
        ffn[source] = list(range(n_ffn))
    return CompactionPlan(hidden=list(range(record["hidden"])), heads=heads, ffn=ffn)


def _model_class(config):
    names = getattr(config, "architectures", None) or []
    if not names:
        raise ValueError("config.json has no 'architectures' entry naming the model class")
    model_class = getattr(transformers, names[0], None)
    if model_class is None or names[0] not in supported_classes():
        raise ValueError(f"model class {names[0]!r} is not supported; supported classes: "
                         f"{', '.join(supported_classes())}")
    return model_class


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index_file = path / "model.safetensors.index.json"
    sharded = index_file.is_file()
    files = _index_files(index_file) if sharded else ["model.safetensors"]
    tensors = {}
    for name in files:
        file = _inside(path, name, index_file if sharded else path / "config.json")
        if not file.is_file():
            raise FileNotFoundError(f"load_compacted: tensor file {str(file)!r} does not exist")
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"load_compacted: cannot read {str(file)!r} (truncated or corrupt?): {err}") from None
    return tensors


def _index_files(index_file: Path) -> list[str]:
    """The tensor files a shard index names, checked to be a ``{"weight_map": {tensor: file name}}``."""
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ValueError(f"load_compacted: {str(index_file)!r} is not a shard index (a JSON object with a "
                         "'weight_map' of tensor names to file names)") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"load_compacted: {str(index_file)!r}: 'weight_map' must map tensor names to file names")
    return sorted(set(weight_map.values()))


def _inside(folder: Path, name: str, named_by: Path) -> Path:
    """``folder / name``, refused unless it is a plain name that stays inside ``folder`` (links resolved):
    an index could otherwise make the loader read any file on the machine."""
    candidate = folder / name
    root = os.path.realpath(folder)
    if os.path.isabs(name) or ".." in Path(name).parts or \
            os.path.commonpath([root, os.path.realpath(candidate)]) != root:
        raise ValueError(f"load_compacted: the tensor file {name!r} (named by {named_by.name}) lies outside "
                         f"{str(folder)!r}; refusing to read it")
    return candidate


def _load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    aliases = _tied_aliases(model)
    for name, tensor in tensors.items():
        if name not in expected:
            raise ValueError(f"load_compacted: {path} has tensor {name!r} {tuple(tensor.shape)}, which the "
                             "recorded architecture does not have (config.json and weights do not match)")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"load_compacted: tensor {name!r} has shape {tuple(tensor.shape)} in {path} but the "
                             f"architecture recorded in config.json expects {tuple(expected[name].shape)}")
    missing = [n for n in expected if n not in tensors and not (aliases.get(n, set()) & tensors.keys())]
    if missing:
        shapes = ", ".join(f"{n!r} {tuple(expected[n].shape)}" for n in missing[:5])
        raise ValueError(f"load_compacted: {path} lacks {len(missing)} tensor(s) the architecture needs: {shapes}"
                         f"{' ...' if len(missing) > 5 else ''} (truncated or mismatched checkpoint)")
    model.load_state_dict(tensors, strict=False)


def _tied_aliases(model: nn.Module) -> dict[str, set[str]]:
    """For each state-dict name, the other names that share its storage (tied weights)."""
    by_tensor: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), set()).add(name)
    return {name: names - {name} for names in by_tensor.values() for name in names}


__all__ = ["save_compacted", "load_compacted", "load_model"]
