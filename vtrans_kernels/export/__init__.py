"""Export to serving engines: ONNX (ONNX Runtime and other ONNX engines) and GGUF (llama.cpp).

:func:`export_model` is the one entry point (``vtrans export`` calls it): it takes a model folder or an
in-memory model, checks the request before loading or writing anything, and hands the model to the format's
writer (:func:`vtrans_kernels.export.onnx.export_onnx`, :func:`vtrans_kernels.export.gguf.export_gguf`), which
are imported only when used, so the package does not need ``onnx`` or ``gguf`` to import.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from ..fileio import TMP_SUFFIX

FORMATS = ("onnx", "gguf")


def export_model(source: str | os.PathLike | nn.Module, format: str, out: str | os.PathLike, *,
                 overwrite: bool = False, **options) -> Path:
    """Export ``source`` to the file ``out`` in ``format`` (``"onnx"`` or ``"gguf"``) and return ``out``.

    ``source`` is a model folder (written by :func:`vtrans_kernels.save_compacted`, or any folder of a supported
    transformers class; loaded with :func:`vtrans_kernels.hf.serialization.load_model`) or an in-memory model.
    ``options`` go to the writer: ``opset``, ``external_data`` and ``optimize`` for ONNX (:func:`export_onnx`),
    ``tokenizer_dir`` and ``dtype`` ("f32", "f16") for GGUF (``tokenizer_dir`` defaults to the source folder
    when it holds a tokenizer.json; without a tokenizer the GGUF carries llama.cpp's placeholder vocabulary).

    Refused, before anything is loaded or written: an unknown ``format`` (``ValueError``); a ``source`` folder
    that is missing (``FileNotFoundError``), is a file, has no config.json or names a class that is not
    supported (``ValueError``); an ``out`` that exists (unless ``overwrite``), is a folder, or lies inside the
    source folder (``ValueError``, even with ``overwrite``: the export would write into the model); a model
    class the format does not handle (GGUF: LLaMA, Mistral and Qwen2 causal LMs only). The file is written
    under a temporary name beside ``out`` and renamed into place, so a failed or interrupted export leaves no
    partial file and an earlier ``out`` intact.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    folder = _check_source(source) if not isinstance(source, nn.Module) else None
    _check_out(out, folder, overwrite, format, options)
    if folder is not None:
        from ..hf.serialization import read_config

        _check_class(format, read_config(folder).architectures[0], f"source: {str(folder)!r} holds a")
    model = _load(folder) if folder is not None else source
    _check_class(format, _class_name(model), "source: a")
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        from .onnx import export_onnx

        return export_onnx(model, out, **options)
    return _export_gguf(model, out, folder, **options)


def _check_source(source) -> Path:
    """The source folder, checked to hold a config.json of a supported class."""
    from ..hf.adapters import supported_classes
    from ..hf.serialization import read_config

    folder = Path(source)
    if not folder.exists():
        raise FileNotFoundError(f"source: model folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(f"source: {str(folder)!r} is a file; expected a model folder (config.json + weights)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"source: {str(folder)!r} is not a model folder: it has no config.json (expected a folder "
                         "written by vtrans compact / save_compacted or save_pretrained)")
    names = getattr(read_config(folder), "architectures", None) or []
    if not names or names[0] not in supported_classes():
        raise ValueError(f"source: {str(folder)!r} holds a {names[0] if names else 'model of unnamed class'}, "
                         f"which is not supported; supported classes: {', '.join(supported_classes())}")
    return folder


def _check_out(out: Path, folder: Path | None, overwrite: bool, format: str, options: dict) -> None:
    if out.is_dir():
        raise ValueError(f"out: {str(out)!r} is a folder; give the path of the file to write "
                         f"(for example {str(out / ('model.' + format))!r})")
    if folder is not None:
        root = os.path.realpath(folder)
        target = os.path.realpath(out)
        if os.path.commonpath([root, target]) == root:
            raise ValueError(f"out: {str(out)!r} lies inside the source model folder {str(folder)!r}; write the "
                             "export elsewhere (the model folder is an input and stays as it is)")
    if not overwrite:
        files = [out]
        if format == "onnx":
            from .onnx import onnx_files

            files = onnx_files(out, external_data=True) if options.get("external_data") is not False else files
        existing = [repr(str(f)) for f in files if os.path.lexists(f)]
        if existing:
            raise ValueError(f"out: {', '.join(existing)} already exists; pass overwrite=True (vtrans export "
                             "--overwrite) to replace it, or choose another path")


def _check_class(format: str, name: str, what: str) -> None:
    """Refuse a model class the format's writer does not handle (before loading the model where possible)."""
    if format == "gguf":
        from .gguf import SUPPORTED_CLASSES

        if name not in SUPPORTED_CLASSES:
            raise ValueError(f"{what} {name}, which GGUF export does not support (llama.cpp's per-layer-shape "
                             f"architecture; supported: {', '.join(SUPPORTED_CLASSES)}); export it with format "
                             "'onnx' instead")


def _class_name(model: nn.Module) -> str:
    from ..hf.adapters import adapter_for

    adapter_for(model)  # TypeError / ValueError naming the supported classes for anything else
    return type(model).__name__


def _load(folder: Path) -> nn.Module:
    from ..hf.serialization import load_model

    return load_model(folder)


def _export_gguf(model: nn.Module, out: Path, folder: Path | None, *, tokenizer_dir=None, **options) -> Path:
    """The GGUF writer, given a temporary name beside ``out`` that is renamed into place once complete."""
    try:
        from .gguf import export_gguf
    except ModuleNotFoundError as err:
        if err.name == "gguf":
            raise ImportError("GGUF export needs the 'gguf' package: pip install gguf "
                              "(or pip install 'vtrans-kernels[serve]')") from None
        raise
    if tokenizer_dir is None and folder is not None and (folder / "tokenizer.json").is_file():
        tokenizer_dir = folder  # the model folder's tokenizer goes into the file (without one: token ids only)
    # a fresh folder beside ``out`` (same file system, so the rename is atomic), whatever the writer does
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=TMP_SUFFIX))
    try:
        export_gguf(model, stage / out.name, tokenizer_dir=None if tokenizer_dir is None else Path(tokenizer_dir),
                    **options)
        os.replace(stage / out.name, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def __getattr__(name: str):
    # export_onnx on first use: importing the package (as `vtrans --help` does) loads neither transformers nor onnx
    if name == "export_onnx":
        from .onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["export_model", "export_onnx", "FORMATS"]
