"""The ``vtrans`` command.

Subcommands: ``info`` (versions, devices, backends), ``prune`` (train masks under a size target, write the
plan, logs, plots and the compacted model), ``compact`` (apply a saved CompactionPlan to a model folder) and
``bench`` (the benchmark suite of the repository's bench/ folder, the same as ``python -m bench``).
"""
import argparse
import sys

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model")


def _compact(args) -> int:
    import shutil
    from pathlib import Path

    from .hf import CompactionPlan, adapter_for, compact, save_compacted
    from .hf.serialization import load_model

    plan = CompactionPlan.load(args.masks)
    model = load_model(args.model)
    before = sum(p.numel() for p in model.parameters())
    compacted = compact(model, plan, round_to=args.round_to)
    after = sum(p.numel() for p in compacted.parameters())
    out = save_compacted(compacted, args.out)
    for name in TOKENIZER_FILES:
        if (Path(args.model) / name).is_file():
            shutil.copy2(Path(args.model) / name, out / name)
    units = adapter_for(compacted).units()
    record = compacted.config.vtrans_compaction
    print(f"parameters: {before:,} -> {after:,} ({after / before:.1%} kept)")
    print(f"hidden size: {units.hidden}; layers kept: {record['sources']}")
    print(f"attention units per layer: {list(units.heads)}")
    print(f"FFN neurons per layer: {list(units.ffn)}")
    for change in record["rounding"]:
        print(f"rounded (round_to={args.round_to}): {change}")
    print(f"wrote {out} ({'loads with from_pretrained' if record['plain_loadable'] else 'load with vtrans_kernels.load_compacted'})")
    return 0


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
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if task == "classification":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


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

    from .prune.config import PruneConfig, vib_mask_init
    from .prune.data import load_text_data
    from .prune.pipeline import PipelineOptions, format_summary, prune_pipeline

    config = PruneConfig(
        method=args.method, variant=args.variant, structures=tuple(args.structures.split(",")),
        target_sparsity=args.target_sparsity, target=args.target, seq_len=args.seq_len, steps=args.steps,
        batch_size=args.batch_size, finetune_steps=args.finetune_steps, subset_fraction=args.subset_fraction,
        round_to=args.round_to, seed=args.seed, mask_lr=args.mask_lr, autocast=args.autocast,
        grad_accumulation=args.grad_accumulation, hidden_distill=args.hidden_distill,
        fold_scales=not args.no_fold_scales,
        mask_init=vib_mask_init(args.method, args.log_sigma2_init))
    data = load_text_data(args.data, args.task)
    labels = len(data.label_names) if data.label_names else None
    device = _init_distributed(args.device)

    def load():
        return _load_for_task(args.model, args.task, labels)[0].to(device)

    model, tokenizer = _load_for_task(args.model, args.task, labels)
    model.to(device)
    options = PipelineOptions(task=args.task, max_length=args.max_length, teacher_steps=args.teacher_steps,
                              resume=args.resume, progress=not args.no_progress, fsdp=args.fsdp)
    try:
        summary = prune_pipeline(model, tokenizer, data, config, args.out, options, reload=load)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary is None:  # not rank 0
        return 0
    print(format_summary(summary))
    print(f"wrote {args.out}: plan.json, log.jsonl, checkpoint.pt, masks.pt, plots, compacted/ (load with "
          "vtrans_kernels.load_compacted)")
    return 0


def _add_prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="train VTrans masks under a size target and write the compacted model")
    p.add_argument("--model", required=True, help="transformers model folder")
    p.add_argument("--data", required=True, help="local .csv/.jsonl with `text` (and `label`), or a datasets name")
    p.add_argument("--task", choices=("classification", "lm"), default="classification")
    p.add_argument("--method", choices=("vib", "hard_concrete"), default="vib")
    p.add_argument("--variant", choices=("vtrans", "fast", "faster"), default="faster")
    p.add_argument("--structures", default="hidden,heads,ffn", help="comma-separated subset of hidden,heads,ffn")
    p.add_argument("--target-sparsity", type=float, default=0.5, help="in (0, 1)")
    p.add_argument("--target", choices=("params", "flops"), default="params",
                   help="what the sparsity counts: layer parameters, or FLOPs per sequence of --seq-len tokens")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length of the FLOPs target")
    p.add_argument("--steps", type=int, default=200, help="mask-training steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (block size for lm)")
    p.add_argument("--teacher-steps", type=int, default=0, help="fine-tune the model on the task first")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tune steps of the compacted model")
    p.add_argument("--subset-fraction", type=float, default=None, help="data fraction (default by variant)")
    p.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="mixed-precision forward passes")
    p.add_argument("--mask-lr", type=float, default=0.05)
    p.add_argument("--log-sigma2-init", type=float, default=None,
                   help="VIB initial log sigma^2 (default -1: near the decision boundary, so a few "
                        "hundred steps reach the target)")
    p.add_argument("--hidden-distill", choices=("mse", "relative"), default="mse",
                   help="hidden-state distillation: plain MSE, or MSE relative to the teacher's power per layer "
                        "(for LLaMA-style residual streams, whose plain MSE drowns the size target)")
    p.add_argument("--no-fold-scales", action="store_true",
                   help="keep the chosen units at their original weights instead of folding the masks' learned "
                        "gate values into them (PruneConfig.fold_scales)")
    p.add_argument("--round-to", type=int, default=1, help="round FFN and hidden widths to multiples of K")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
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
    comp.add_argument("--out", required=True, help="output folder (safetensors + config.json)")
    comp.add_argument("--round-to", type=int, default=1, help="round FFN and hidden widths to multiples of K")
    sub.add_parser("bench", add_help=False, help="the benchmark suite (python -m bench; see vtrans bench --help)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the suite parses its own options
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info
        info.main()
        return 0
    try:
        return _prune(args) if args.command == "prune" else _compact(args)
    except (FileNotFoundError, ValueError, TypeError, OSError, RuntimeError) as err:
        print(f"vtrans {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
