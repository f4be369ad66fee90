"""``vtrans export``: write a model folder as an ONNX or GGUF file for a serving engine.

``vtrans_kernels.cli`` adds the subcommand with :func:`add_export_parser` and runs it with :func:`run_export`.
Nothing heavy is imported until the command runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("onnx", "gguf")


def add_export_parser(sub) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``vtrans`` subparsers ``sub``; returns its parser."""
    p = sub.add_parser("export", help="write a model folder as an ONNX file (ONNX Runtime) or a GGUF file (llama.cpp)",
                       description="Export a model folder (compacted by vtrans, or any supported transformers "
                                   "model) to one file a serving engine loads. ONNX: inputs input_ids and "
                                   "attention_mask (int64, dynamic batch and sequence), output logits "
                                   "(last_hidden_state for a bare backbone), fp32. GGUF: the LLaMA, Mistral and "
                                   "Qwen2 families, for llama.cpp.")
    p.add_argument("--model", required=True, help="model folder (written by vtrans compact / save_compacted, or "
                                                  "save_pretrained)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx or gguf")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.onnx); not inside --model")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
    p.add_argument("--external-data", action="store_true",
                   help="ONNX: store the weights in <out>.data beside the graph (automatic above 1.5 GiB of "
                        "weights: one .onnx file cannot exceed 2 GiB)")
    p.add_argument("--optimize", action="store_true",
                   help="ONNX: run onnxscript's graph optimizer (smaller graph; ONNX Runtime fuses the graph itself, "
                        "so it ran no faster there; slow for deep models)")
    p.add_argument("--dtype", default=None, choices=("f32", "f16"),
                   help="GGUF: storage type of the 2-D weights (default f32; norms and biases stay f32). ONNX "
                        "export is fp32 only")
    p.add_argument("--tokenizer-dir", default=None,
                   help="GGUF: folder holding the tokenizer.json to embed (default: --model when it has one; "
                        "without one the file takes token ids only)")
    return p


def run_export(args: argparse.Namespace) -> int:
    """Run ``vtrans export`` for the parsed ``args``; prints what was written and what loads it. Returns the
    exit status (2 with a one-line error on stderr for bad input)."""
    from . import export_model

    options = {}
    if args.format == "onnx":
        options = dict(opset=args.opset, external_data=True if args.external_data else None, optimize=args.optimize)
        if args.dtype is not None or args.tokenizer_dir is not None:
            return _error("--dtype and --tokenizer-dir apply to --format gguf only (ONNX export writes fp32)")
    else:
        if args.opset is not None or args.external_data or args.optimize:
            return _error("--opset, --external-data and --optimize apply to --format onnx only")
        options = {k: v for k, v in (("dtype", args.dtype), ("tokenizer_dir", args.tokenizer_dir)) if v is not None}
    try:
        out = export_model(args.model, args.format, args.out, overwrite=args.overwrite, **options)
    except (FileNotFoundError, ValueError, TypeError, ImportError, OSError, RuntimeError) as err:
        return _error(err)
    except KeyboardInterrupt:
        print(f"vtrans export: interrupted; nothing was written to {args.out} (an earlier file there is unchanged)",
              file=sys.stderr)
        return 130
    print(_source_line(Path(args.model)))
    if args.format == "onnx":
        _print_onnx(out)
    else:
        tokenizer = args.tokenizer_dir or (args.model if (Path(args.model) / "tokenizer.json").is_file() else None)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): GGUF ({args.dtype or 'f32'} weights, "
              f"{f'tokenizer of {tokenizer}' if tokenizer else 'no tokenizer: token ids in, logits out'})")
        print(f"runs with llama.cpp: llama-cli -m {out}, or llama_cpp.Llama(model_path={str(out)!r})")
    return 0


def _error(err) -> int:
    print(f"vtrans export: error: {err}", file=sys.stderr)
    return 2


def _source_line(folder: Path) -> str:
    from ..hf.adapters.base import RECORD_KEY
    from ..hf.model_card import loader_phrase
    from ..hf.serialization import read_config

    return f"source: {folder} ({loader_phrase(getattr(read_config(folder), RECORD_KEY, None))})"


def _print_onnx(out: Path) -> None:
    from .onnx import onnx_interface

    interface = onnx_interface(out)
    files = [out, *(out.parent / name for name in interface["external_files"])]
    size = sum(f.stat().st_size for f in files) / 2**20

    def names(part):
        return ", ".join(f"{name} [{', '.join(map(str, dims))}]" for name, dims in interface[part].items())

    print(f"wrote {' + '.join(map(str, files))} ({size:.1f} MiB): ONNX, fp32, inputs {names('inputs')} (int64); "
          f"output {names('outputs')}")
    print(f"runs with onnxruntime: onnxruntime.InferenceSession({str(out)!r}).run(None, "
          "{'input_ids': ids, 'attention_mask': mask})")


__all__ = ["add_export_parser", "run_export"]
