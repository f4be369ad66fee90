"""The ``vtrans`` command.

Subcommands: ``info`` (versions, devices, backends) and ``compact`` (apply a saved CompactionPlan to a model
folder and write the smaller model). Pruning and benchmark subcommands join as their pipelines land.
"""
import argparse
import sys


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
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "vocab.json", "merges.txt", "tokenizer.model"):
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vtrans`` console script."""
    parser = argparse.ArgumentParser(prog="vtrans", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, and which backend serves each op here")
    comp = sub.add_parser("compact", help="rewrite a model into a smaller dense model by a CompactionPlan")
    comp.add_argument("--model", required=True, help="model folder (transformers or save_compacted format)")
    comp.add_argument("--masks", required=True, help="CompactionPlan JSON (written by vtrans prune or plan.save)")
    comp.add_argument("--out", required=True, help="output folder (safetensors + config.json)")
    comp.add_argument("--round-to", type=int, default=1, help="round FFN and hidden widths to multiples of K")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info
        info.main()
        return 0
    try:
        return _compact(args)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"vtrans {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
