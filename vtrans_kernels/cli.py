"""The ``vtrans`` command.

Subcommands: ``info`` (versions, devices, backends), ``prune`` (train masks under a size target, write the
plan, logs, plots and the compacted model), ``compact`` (apply a saved CompactionPlan to a model folder),
``export`` (a model folder as an ONNX file for ONNX Runtime or a GGUF file for llama.cpp), ``profile``
(a model's per-layer latency table on this device, for ``prune --target latency``) and
``bench`` (the benchmark suite of the repository's bench/ folder, the same as ``python -m bench``).
"""
import argparse
import sys

from .export.cli import add_export_parser, run_export
from .latency.cli import add_profile_parser, run_profile

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model")


def _compact(args) -> int:
    from pathlib import Path

    from .fileio import staged_folder
    from .hf import CompactionPlan, adapter_for, compact, save_compacted
    from .hf.serialization import load_model
    from .prune.outdir import check_not_input, prepare_out

    check_not_input(args.out, {"--model": args.model, "--masks": args.masks})
    settings = dict(resume=False, overwrite=args.overwrite, ours=_compact_output)
    prepare_out(args.out, **settings, clear=False)
    plan = CompactionPlan.load(args.masks)
    model = load_model(args.model)
    _check_plan_weights(plan, model, args.force)
    before = sum(p.numel() for p in model.parameters())
    compacted = compact(model, plan, round_to=args.round_to)
    after = sum(p.numel() for p in compacted.parameters())
    prepare_out(args.out, **settings)
    out = save_compacted(compacted, args.out)
    with staged_folder(out) as stage:  # copies land through renames, never through links planted in --out
        for name in TOKENIZER_FILES:
            if (Path(args.model) / name).is_file():
                (stage / name).write_bytes((Path(args.model) / name).read_bytes())
    units = adapter_for(compacted).units()
    record = compacted.config.vtrans_compaction
    print(f"parameters: {before:,} -> {after:,} ({after / before:.1%} kept)")
    print(f"hidden size: {units.hidden}; layers kept: {record['sources']}")
    print(f"attention units per layer: {list(units.heads)}")
    print(f"FFN neurons per layer: {list(units.ffn)}")
    for change in record["rounding"]:
        print(f"rounded (round_to={args.round_to}): {change}")
    print(f"wrote {out}: {loaded_by(out)}")
    return 0


def loaded_by(folder) -> str:
    """What loads the compacted model folder ``folder``, and how to export it for serving (the CLI's last line)."""
    from pathlib import Path

    from .hf.model_card import GGUF_FAMILIES, loader_phrase
    from .hf.serialization import read_config

    config = read_config(Path(folder))
    loader = loader_phrase(getattr(config, "vtrans_compaction", None))
    formats = "onnx|gguf" if config.model_type in GGUF_FAMILIES else "onnx"
    return f"{loader}; README.md there says how; serve it: vtrans export --model {folder} --format {formats} --out PATH"


def _compact_output(name: str) -> bool:
    """Whether ``name`` in an output folder is a file ``vtrans compact`` writes (removed by --overwrite)."""
    return name in TOKENIZER_FILES or name in ("config.json", "generation_config.json", "README.md") or \
        (name.startswith("model") and ".safetensors" in name)


def _check_plan_weights(plan, model, force: bool) -> None:
    """Refuse (unless ``force``) a plan recording the weights of another model than ``model``."""
    from .prune.identity import weights_fingerprint

    recorded = (plan.model or {}).get("fingerprint")
    if recorded is None:
        return
    found = weights_fingerprint(model)
    if found != recorded and not force:
        raise ValueError(f"--masks: the plan was made for a model with other weights (fingerprint {recorded[:12]}, "
                         f"--model has {found[:12]}): another checkpoint of the same architecture, or the teacher "
                         "that `vtrans prune --teacher-steps` fine-tuned; pass --force to apply it anyway")


def _bench(argv: list[str]) -> int:
    """Run ``python -m bench`` with ``argv``: bench/ is not installed with the package, so it is looked up in
    the current directory, then beside the package (an editable install of the repository)."""
    from pathlib import Path

    roots = [Path.cwd(), Path(__file__).resolve().parents[1]]
    root = next((r for r in roots if (r / "bench" / "__main__.py").is_file()), None)
    if root is None:
        print("vtrans bench: error: the benchmark suite lives in the repository's bench/ folder, which is not part "
              f"of the installed package; run this in the vtrans-kernels repository root (looked in {roots[0]} "
              f"and {roots[1]})", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    return bench_main(argv, prog="vtrans bench")


def _load_for_task(path: str, task: str, num_labels: int | None):
    from pathlib import Path

    import transformers

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"--model: no transformers model folder (config.json) at {path}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        if task == "classification":
            model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(path)
    except Exception as err:  # transformers raises many types for unreadable folders: name the folder instead
        text = str(err).strip()
        raise ValueError(f"--model: cannot load {path} (missing, truncated or corrupt files?): "
                         f"{text.splitlines()[0] if text else type(err).__name__}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _profile_model(path: str, task: str):
    """The model ``vtrans profile`` times: loaded as ``vtrans prune --task`` loads it."""
    labels = _classifier_labels(path) if task == "classification" else None
    return _load_for_task(path, task, labels)[0]


def _classifier_labels(path: str) -> int | None:
    """The number of labels of the model's trained classifier, or None when the folder holds no classifier (the
    head will be new, sized by the data)."""
    from pathlib import Path

    from .hf.serialization import read_config

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"--model: no transformers model folder (config.json) at {path}")
    config = read_config(Path(path))
    trained = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
    return int(config.num_labels) if trained else None


def _init_distributed(device: str | None) -> str:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns this process's device."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available() and device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _prune(args) -> int:
    import torch.distributed as dist

    from .prune.config import PruneConfig
    from .prune.data import load_text_data
    from .prune.options import mask_config
    from .prune.outdir import check_not_input, prepare_out
    from .prune.pipeline import PipelineOptions, format_summary, prune_pipeline
    from .prune.run import CHECKPOINT
    from .prune.seeding import seed_everything

    config = PruneConfig(
        target_sparsity=args.target_sparsity, target=args.target, seq_len=args.seq_len, steps=args.steps,
        target_speedup=args.target_speedup, latency_table=args.profile,
        batch_size=args.batch_size, finetune_steps=args.finetune_steps, subset_fraction=args.subset_fraction,
        round_to=args.round_to, uniform=args.uniform, seed=args.seed, autocast=args.autocast,
        grad_accumulation=args.grad_accumulation, checkpoint_every=args.checkpoint_every,
        bias_compensation=args.bias_compensation, calibration_batches=args.calibration_batches, **mask_config(args))
    check_not_input(args.out, {"--model": args.model, "--data": args.data})
    head = _classifier_labels(args.model) if args.task == "classification" else None
    data = load_text_data(args.data, args.task, num_labels=head)
    labels = head or (len(data.label_names) if data.label_names else None)
    device = _init_distributed(args.device)
    settings = dict(resume=args.resume, overwrite=args.overwrite, ours=_prune_output)
    if _is_main():  # rank 0 alone writes --out; other ranks could see its first files and refuse
        prepare_out(args.out, **settings, clear=False)

    def load():
        seed_everything(args.seed)  # a fresh classifier head is drawn the same way every time
        return _load_for_task(args.model, args.task, labels)

    model, tokenizer = load()
    model.to(device)
    if _is_main():
        prepare_out(args.out, **settings)
    options = PipelineOptions(task=args.task, max_length=args.max_length, teacher_steps=args.teacher_steps,
                              resume=args.resume, progress=not args.no_progress, fsdp=args.fsdp,
                              calibrate_latency=not args.no_calibrate)
    try:
        summary = prune_pipeline(model, tokenizer, data, config, args.out, options,
                                 reload=lambda: load()[0].to(device))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary is None:  # not rank 0
        return 0
    print(format_summary(summary))
    print(f"wrote {args.out}: plan.json, log.jsonl, {CHECKPOINT}, masks.pt, plots, compacted/")
    print(f"compacted model {summary['compacted_path']}: {loaded_by(summary['compacted_path'])}")
    return 0


def _is_main() -> bool:
    import os
    return int(os.environ.get("RANK", "0")) == 0


# What `vtrans prune` writes in --out (removed by --overwrite before a new run).
PRUNE_OUTPUTS = ("checkpoint.pt", "log.jsonl", "plan.json", "plan_compensated.json", "masks.pt", "teacher.pt",
                 "summary.json", "config.json", "kept_units.png", "training.png", "compacted")


def _prune_output(name: str) -> bool:
    return name in PRUNE_OUTPUTS


def _interrupted(command: str, argv: list[str], out: str | None) -> int:
    """One line on stderr after Ctrl-C: where the last checkpoint is and the command that resumes from it."""
    import shlex
    from pathlib import Path

    from .prune.run import CHECKPOINT

    checkpoint = Path(out) / CHECKPOINT if out else None
    if command == "profile":
        print("vtrans profile: interrupted; nothing was written (the table is written when it is complete)",
              file=sys.stderr)
    elif command != "prune":
        print(f"vtrans {command}: interrupted; {out} may hold a partial model, run the command again with "
              "--overwrite", file=sys.stderr)
    elif checkpoint is not None and checkpoint.is_file():
        resume = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
        print(f"vtrans prune: interrupted; the last checkpoint is {checkpoint}; resume with: "
              f"{shlex.join(['vtrans', *resume])}", file=sys.stderr)
    else:
        print("vtrans prune: interrupted before the first checkpoint; nothing to resume: run the command again "
              "with --overwrite", file=sys.stderr)
    return 130


def _add_prune_parser(sub) -> None:
    from .prune.options import add_mask_options

    p = sub.add_parser("prune", help="train VTrans masks under a size target and write the compacted model")
    p.add_argument("--model", required=True, help="transformers model folder")
    p.add_argument("--data", required=True, help="local .csv/.jsonl with `text` (and `label`), or a datasets name")
    p.add_argument("--task", choices=("classification", "lm"), default="classification")
    add_mask_options(p)
    p.add_argument("--target-sparsity", type=float, default=0.5, help="in (0, 1)")
    p.add_argument("--target", choices=("params", "flops", "latency"), default="params",
                   help="what the sparsity counts: layer parameters, FLOPs per sequence of --seq-len tokens, or the "
                        "latency of the --profile table (then give --target-speedup instead of --target-sparsity)")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="with --target latency: the speedup over the unpruned model, by the table (> 1, e.g. 2.0)")
    p.add_argument("--profile", default=None,
                   help="with --target latency: the latency table JSON of `vtrans profile` (this device and dtype)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="with --target latency: keep the table's plan; by default it is timed against the unpruned "
                        "model here and re-planned until the measured speedup is within 3%% of the target")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length of the FLOPs target")
    p.add_argument("--steps", type=int, default=200, help="mask-training steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (block size for lm)")
    p.add_argument("--teacher-steps", type=int, default=0, help="fine-tune the model on the task first")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tune steps of the compacted model")
    p.add_argument("--subset-fraction", type=float, default=None, help="data fraction (default by variant)")
    p.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="mixed-precision forward passes")
    p.add_argument("--round-to", type=int, default=1, help="round FFN and hidden widths to multiples of K")
    p.add_argument("--bias-compensation", action="store_true",
                   help="fold the mean contribution of each sublayer's removed units (measured on training batches) "
                        "into its output bias before compacting; writes OUT/plan_compensated.json")
    p.add_argument("--calibration-batches", type=int, default=8,
                   help="training batches that --bias-compensation and --mask-start oneshot measure on")
    p.add_argument("--uniform", action="store_true",
                   help="keep the same heads and FFN width in every layer, so the compacted model loads with "
                        "plain from_pretrained (and vLLM, TGI)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds Python, NumPy, torch and the data order: the same inputs and seed give the same plan")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--out", required=True, help="output folder (new or empty; not inside --model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model with FSDP2 (Faster-VTrans); default: replicate (DDP-style)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vtrans`` console script."""
    parser = argparse.ArgumentParser(prog="vtrans", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, and which backend serves each op here")
    _add_prune_parser(sub)
    comp = sub.add_parser("compact", help="rewrite a model into a smaller dense model by a CompactionPlan")
    comp.add_argument("--model", required=True, help="model folder (transformers or save_compacted format)")
    comp.add_argument("--masks", required=True, help="CompactionPlan JSON (written by vtrans prune or plan.save)")
    comp.add_argument("--out", required=True, help="output folder (safetensors + config.json; new or empty)")
    comp.add_argument("--overwrite", action="store_true", help="replace a model saved earlier in --out")
    comp.add_argument("--force", action="store_true",
                      help="apply a plan made for other weights of the same architecture")
    comp.add_argument("--round-to", type=int, default=1, help="round FFN and hidden widths to multiples of K")
    add_export_parser(sub)
    add_profile_parser(sub)
    sub.add_parser("bench", add_help=False, help="the benchmark suite (python -m bench; see vtrans bench --help)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the suite parses its own options
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info
        info.main()
        return 0
    if args.command == "export":
        return run_export(args)
    try:
        if args.command == "profile":
            return run_profile(args, _profile_model)
        return _prune(args) if args.command == "prune" else _compact(args)
    except KeyboardInterrupt:
        return _interrupted(args.command, argv, args.out)
    except (FileNotFoundError, ValueError, TypeError, OSError, RuntimeError, OverflowError) as err:
        print(f"vtrans {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
