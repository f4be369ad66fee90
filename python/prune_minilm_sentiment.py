"""The embedded default: prune the real all-MiniLM-L6-v2 encoder on movie-review sentiment with Faster-VTrans.

Fine-tunes a teacher briefly (the checkpoint has no classifier), trains VIB masks with the weights frozen under
a parameter-sparsity target, compacts, and prints teacher vs pruned accuracy, kept units and sparsity.
Defaults fit 2 CPU cores in a few minutes; pass --steps/--teacher-steps/--limit to scale up or down.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

from vtrans_kernels.prune.options import add_mask_options, mask_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm import model_path  # noqa: E402
from movie_reviews import write_csv  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/minilm-sentiment")
    parser.add_argument("--target-sparsity", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--teacher-steps", type=int, default=80)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N sentences")
    parser.add_argument("--subset-fraction", type=float, default=None)
    add_mask_options(parser)
    parser.set_defaults(mask_lr=0.1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from vtrans_kernels.prune import PruneConfig
    from vtrans_kernels.prune.data import load_text_data
    from vtrans_kernels.prune.pipeline import PipelineOptions, format_summary, prune_pipeline

    torch.manual_seed(0)
    start = time.perf_counter()
    out = Path(args.out)
    data = load_text_data(str(write_csv(out / "movie_reviews.csv", args.limit)), "classification")
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.label_names))
    config = PruneConfig(target_sparsity=args.target_sparsity, steps=args.steps, batch_size=args.batch_size,
                         finetune_steps=args.finetune_steps, subset_fraction=args.subset_fraction,
                         seq_len=args.max_length, log_every=5, checkpoint_every=25, **mask_config(args))
    options = PipelineOptions(task="classification", max_length=args.max_length, teacher_steps=args.teacher_steps,
                              resume=args.resume, progress=not args.no_progress)
    summary = prune_pipeline(model, tokenizer, data, config, out, options)
    print(format_summary(summary))
    print(f"total time {time.perf_counter() - start:.1f} s; outputs in {out}")
    return summary


if __name__ == "__main__":
    main()
