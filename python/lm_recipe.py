"""Shared command line of the language-modelling recipes: prune a causal LM on the movie-review text."""
import argparse
import sys
import time
from pathlib import Path

from vtrans_kernels.prune.options import add_mask_options, mask_config

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
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=2000, help="sentences of text to use")
    add_mask_options(p)
    p.set_defaults(mask_lr=0.1, hidden_distill=hidden_distill, structures=structures, mask_start=mask_start,
                   settle_fraction=settle_fraction, rank_by_calibration=rank_by_calibration)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(model, tokenizer, args) -> dict:
    """Prune ``model`` with the settings in ``args`` and print the summary table."""
    from vtrans_kernels.prune import PruneConfig
    from vtrans_kernels.prune.data import load_text_data
    from vtrans_kernels.prune.pipeline import PipelineOptions, format_summary, prune_pipeline

    start = time.perf_counter()
    out = Path(args.out)
    data = load_text_data(str(write_csv(out / "text.csv", args.limit)), "lm")
    config = PruneConfig(target_sparsity=args.target_sparsity, steps=args.steps, batch_size=args.batch_size,
                         finetune_steps=args.finetune_steps, seq_len=args.block_size, subset_fraction=1.0,
                         log_every=5, checkpoint_every=25, **mask_config(args))
    options = PipelineOptions(task="lm", max_length=args.block_size, resume=args.resume,
                              progress=not args.no_progress)
    summary = prune_pipeline(model, tokenizer, data, config, out, options)
    print(format_summary(summary))
    print(f"total time {time.perf_counter() - start:.1f} s; outputs in {out}")
    return summary
