"""Shared command line of the language-modelling recipes: prune a causal LM on the movie-review text."""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movie_reviews import write_csv  # noqa: E402


def parser(description: str, out: str, steps: int, target: float, hidden_distill: str = "mse",
           structures: str = "hidden,heads,ffn", mask_start: str = "init", settle_fraction: float | None = None,
           rank_by_calibration: str = "") -> argparse.ArgumentParser:
    """The recipes' shared options; the keyword arguments are the recipe's defaults (a recipe for a real model
    passes the settings its study chose, docs/pruning.md)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=out)
    p.add_argument("--target-sparsity", type=float, default=target)
    p.add_argument("--method", default="vib", choices=("vib", "hard_concrete"))
    p.add_argument("--variant", default="faster", choices=("vtrans", "fast", "faster"))
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=2000, help="sentences of text to use")
    p.add_argument("--mask-lr", type=float, default=0.1)
    p.add_argument("--log-sigma2-init", type=float, default=None,
                   help="VIB initial log sigma^2 (default: PruneConfig's -1)")
    p.add_argument("--hidden-distill", default=hidden_distill, choices=("mse", "relative"),
                   help="hidden-state distillation of the mask training (PruneConfig.hidden_distill)")
    p.add_argument("--structures", default=structures, help="comma-separated subset of hidden,heads,ffn")
    p.add_argument("--mask-start", choices=("init", "oneshot"), default=mask_start,
                   help="oneshot: the masks start from the one-shot calibration plan (PruneConfig.mask_start)")
    p.add_argument("--settle-fraction", type=float, default=settle_fraction,
                   help="last fraction of the mask steps that hold the decision on the target "
                        "(PruneConfig.settle_fraction; default: the variant's)")
    p.add_argument("--rank-by-calibration", default=rank_by_calibration, metavar="STRUCTURES",
                   help="comma-separated structures whose units the plan takes from the one-shot calibration scores "
                        "at the masks' counts; '' for none (PruneConfig.rank_by_calibration; implies unfolded scales)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(model, tokenizer, args) -> dict:
    """Prune ``model`` with the settings in ``args`` and print the summary table."""
    from vtrans_kernels.prune import PruneConfig
    from vtrans_kernels.prune.config import compaction_settings, vib_mask_init
    from vtrans_kernels.prune.data import load_text_data
    from vtrans_kernels.prune.pipeline import PipelineOptions, format_summary, prune_pipeline

    start = time.perf_counter()
    ranked = tuple(filter(None, args.rank_by_calibration.split(",")))
    out = Path(args.out)
    data = load_text_data(str(write_csv(out / "text.csv", args.limit)), "lm")
    config = PruneConfig(method=args.method, variant=args.variant, target_sparsity=args.target_sparsity,
                         steps=args.steps, batch_size=args.batch_size, finetune_steps=args.finetune_steps,
                         seq_len=args.block_size, subset_fraction=1.0, log_every=5, checkpoint_every=25,
                         mask_lr=args.mask_lr, hidden_distill=args.hidden_distill,
                         mask_init=vib_mask_init(args.method, args.log_sigma2_init),
                         structures=tuple(args.structures.split(",")), mask_start=args.mask_start,
                         settle_fraction=args.settle_fraction,
                         **compaction_settings(False, "trained", ranked))
    options = PipelineOptions(task="lm", max_length=args.block_size, resume=args.resume,
                              progress=not args.no_progress)
    summary = prune_pipeline(model, tokenizer, data, config, out, options)
    print(format_summary(summary))
    print(f"total time {time.perf_counter() - start:.1f} s; outputs in {out}")
    return summary
