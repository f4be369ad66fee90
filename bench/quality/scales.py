"""What folding the learned gate values into the weights does to a decoder plan: the held-out perplexity of
the compacted SmolLM2 before any fine-tune, with the plan's per-unit scales (VIB mu, hard-concrete
deterministic gates) and with the same kept units at scale 1.

Masks trained with frozen weights (Faster) learn their gate values as free per-unit gains under heavy gate noise;
folded into a deterministic model they can cost more than the pruning itself. Reads every plan.json under
--work (the decoder driver's checkpoint folders) and appends a row per plan to
bench/results/quality/decoder_scales.csv, skipping plans already there:

    python bench/quality/scales.py --eval-blocks 64
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench")]
from common import RESULTS_DIR, append_rows, environment  # noqa: E402
import decoder  # noqa: E402
from study import add_threads_argument, done_cells  # noqa: E402


def main(argv=None) -> None:
    from prune_smollm2_lm import load_smollm2

    from vtrans_kernels.hf import CompactionPlan, compact

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "runs" / "quality" / "decoder"))
    p.add_argument("--eval-blocks", type=int, default=64)
    add_threads_argument(p)
    p.add_argument("--csv", default=str(RESULTS_DIR / "quality" / "decoder_scales.csv"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    plans = sorted(Path(args.work).glob("L*/**/plan.json"))
    if not plans:
        sys.exit(f"no plan.json under {args.work}; run bench/quality/decoder.py first")
    csv_path, teachers = Path(args.csv), {}
    done = done_cells(csv_path, ("cell", "eval_blocks"))
    for path in plans:
        cell = str(path.parent.relative_to(args.work))
        if (cell, str(args.eval_blocks)) in done:
            continue
        setup = path.relative_to(args.work).parts[0]                  # L<layers>_b<block>_d<docs>_t<frac>_s<seed>
        layers, block, docs, fraction, split = (part[1:] for part in setup.split("_"))
        if setup not in teachers:
            model, tokenizer = load_smollm2(int(layers))
            setup_args = decoder.parse_args(["--block-size", block, "--test-fraction", fraction, "--split-seed", split,
                                             "--eval-blocks", str(args.eval_blocks)]
                                            + ([] if docs == "all" else ["--docs", docs]))
            teachers[setup] = model.eval().requires_grad_(False), decoder.corpus_features(setup_args, tokenizer)
        teacher, features = teachers[setup]
        plan = CompactionPlan.load(path)
        ppl = {name: decoder.perplexity(compact(teacher, candidate), features["test"])
               for name, candidate in (("scaled", plan), ("unscaled", plan.without_scales()))}
        row = dict(cell=cell, ppl_scaled=round(ppl["scaled"], 2), ppl_unscaled=round(ppl["unscaled"], 2),
                   eval_blocks=args.eval_blocks)
        append_rows(csv_path, [{**environment("cpu"), **row}])
        print(row)


if __name__ == "__main__":
    main()
