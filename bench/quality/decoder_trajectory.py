"""Diagnosis for the decoder study: how the plan of Faster-VTrans masks changes while they train, measured on a dev
split carved from the training documents (never on the held-out test documents).

The decoder study (decoder.py) has no dev split. This script splits the study's training documents once more
(--dev-fraction of them, by --dev-seed; no document in both), trains the masks of one cell on the rest exactly as
decoder.py does (same PruneConfig settings, same seeded 3% subset rule), and every --every steps compacts the
model by the masks' plan at the target (gate values not folded, the study's headline setting) and measures its
perplexity on --dev-blocks evenly spaced dev blocks. Step 0 is the plan the masks start from: with
--mask-start oneshot, the one-shot plan. With --finetune-steps, the start plan and the final plan are also
fine-tuned as decoder.py fine-tunes (same batches, seed and rate) and measured on dev again (``dev_ppl_after``),
so a setting can be chosen on what the study reports after the fine-tune. With --crossed as well, two plans that
separate the masks' choice of units within a layer from their allocation across layers are fine-tuned and
measured the same way: the final plan's ranking cut at the start plan's counts per layer and structure
(``masks_ranks_start_counts``), the start plan's ranking cut at the final plan's counts
(``start_ranks_masks_counts``), and the same for the FFN neurons only, the final plan's heads kept
(``start_ranks_masks_counts_ffn``). A row per measured step (column ``plan`` empty) and per crossed plan goes to
bench/results/quality/decoder_trajectory.csv:

    python bench/quality/decoder_trajectory.py --sparsity 0.2 --mask-start oneshot
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench")]
from common import RESULTS_DIR, append_rows, environment  # noqa: E402
import decoder  # noqa: E402
from study import (add_mask_start_arguments, add_structures_argument, machine, start_config,  # noqa: E402
                   start_settings, structures_label)


def dev_features(args, tokenizer) -> dict:
    """``{"train": features, "dev": features}``: the study's training documents split by document into a part the
    masks train on and a dev part, thinned to --dev-blocks evenly spaced blocks."""
    import python_docs

    from vtrans_kernels.prune.data import TextData, tokenize_lm

    train, _ = TextData(python_docs.documents(args.docs)).split(args.test_fraction, args.split_seed)
    train, dev = train.split(args.dev_fraction, args.dev_seed)
    features = {"train": tokenize_lm(train, tokenizer, args.block_size),
                "dev": tokenize_lm(dev, tokenizer, args.block_size)}
    features["dev"] = decoder.evenly_spaced(features["dev"], args.dev_blocks)
    return features


def changed_units(plan, start) -> int:
    """How many units (hidden dims, KV groups, FFN neurons) ``plan`` keeps that ``start`` removes or the reverse."""
    changed = len(set(plan.hidden or []) ^ set(start.hidden or []))
    for structure in ("heads", "ffn"):
        a, b = getattr(plan, structure), getattr(start, structure)
        changed += sum(len(set(a.get(i, [])) ^ set(b.get(i, []))) for i in set(a) | set(b))
    return changed


def finetuned_dev(args, teacher, plan, features) -> dict:
    """Dev perplexity of ``plan``'s compacted model after decoder.py's distilled fine-tune (--finetune-steps at
    --finetune-lr, the study's batches and seed), as the columns ``dev_ppl_after``, ``finetune_steps`` and
    ``finetune_lr``."""
    from vtrans_kernels.hf import compact
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.finetune import finetune

    small = compact(teacher, plan)
    torch.manual_seed(args.seed)
    finetune(small, Batches(features["train"], args.batch_size, seed=args.seed + 2), args.finetune_steps,
             lr=args.finetune_lr, teacher=teacher.eval(), progress=True, desc="fine-tune")
    return dict(dev_ppl_after=round(decoder.perplexity(small, features["dev"]), 3),
                finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr)


def main(argv=None) -> None:
    from prune_smollm2_lm import load_smollm2

    from vtrans_kernels.hf import compact
    from vtrans_kernels.prune import PruneConfig, Pruner
    from vtrans_kernels.prune.calibration import start_from_calibration
    from vtrans_kernels.prune.config import vib_mask_init
    from vtrans_kernels.prune.data import Batches

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10, help="measure the plan every N steps (and at step 0)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--mask-lr", type=float, default=decoder.DEFAULT_MASK_LR)
    p.add_argument("--log-sigma2-init", type=float, default=-1.0)
    p.add_argument("--hidden-distill", choices=("mse", "relative"), default="relative")
    add_mask_start_arguments(p)
    add_structures_argument(p)
    p.add_argument("--dev-fraction", type=float, default=0.1, help="fraction of the training documents for dev")
    p.add_argument("--dev-seed", type=int, default=4321)
    p.add_argument("--dev-blocks", type=int, default=32)
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="fine-tune the start plan and the final plan this many steps and measure both on dev")
    p.add_argument("--finetune-lr", type=float, default=5e-5)
    p.add_argument("--crossed", action="store_true",
                   help="with --finetune-steps, also fine-tune the final ranking at the start's counts, the "
                        "start's ranking at the final counts, and the final plan with the start's ranking of "
                        "FFN neurons at its counts")
    decoder.add_corpus_arguments(p)
    p.add_argument("--csv", default=str(RESULTS_DIR / "quality" / "decoder_trajectory.csv"))
    args = p.parse_args(argv)
    if args.crossed and not args.finetune_steps:
        p.error("--crossed: the crossed plans are judged after the fine-tune; give --finetune-steps too")
    torch.set_num_threads(args.threads)

    teacher, tokenizer = load_smollm2(min(args.layers or decoder.FULL_LAYERS, decoder.FULL_LAYERS))
    teacher.eval().requires_grad_(False)
    features = dev_features(args, tokenizer)
    dev_teacher = decoder.perplexity(teacher, features["dev"])
    cfg = PruneConfig(method="vib", variant="faster", target_sparsity=args.sparsity, steps=args.steps,
                      batch_size=args.batch_size, seq_len=args.block_size, seed=args.seed, mask_lr=args.mask_lr,
                      mask_init=vib_mask_init("vib", args.log_sigma2_init, args.soft_count),
                      hidden_distill=args.hidden_distill, **start_config(args), structures=tuple(args.structures),
                      fold_scales=False)
    torch.manual_seed(args.seed)
    pruner = Pruner(copy.deepcopy(teacher), cfg)
    batches = Batches(features["train"], args.batch_size, seed=args.seed, fraction=cfg.data_fraction)
    if args.mask_start == "oneshot":
        start_from_calibration(pruner, batches, cfg.calibration_batches)
    plans, rows, began = {}, [], time.perf_counter()
    print(f"dev: {features['dev']['input_ids'].shape[0]} blocks, unpruned perplexity {dev_teacher:.3f}")
    while True:
        if pruner.step % args.every == 0 or pruner.step == args.steps:
            plan = plans[pruner.step] = pruner.plan()
            row = dict(target_sparsity=args.sparsity, seed=args.seed, step=pruner.step, plan="",
                       decision_sparsity=round(float(pruner.masks.sparsity(pruner.measure)), 4),
                       units_changed_from_start=changed_units(plan, plans[0]),
                       dev_ppl=round(decoder.perplexity(compact(teacher, plan), features["dev"]), 3),
                       dev_teacher_ppl=round(dev_teacher, 3), **start_settings("vib", "faster", args),
                       mask_lr=args.mask_lr, hidden_distill=args.hidden_distill,
                       log_sigma2_init=args.log_sigma2_init, structures=structures_label(args.structures),
                       mask_steps=args.steps, batch_size=args.batch_size,
                       dev_blocks=features["dev"]["input_ids"].shape[0],
                       elapsed_s=round(time.perf_counter() - began, 1), machine=machine())
            rows.append(row)
            print({k: row[k] for k in ("step", "decision_sparsity", "units_changed_from_start", "dev_ppl")},
                  flush=True)
        if pruner.step >= args.steps:
            break
        pruner.train_step(batches.batch(pruner.step))
    if args.finetune_steps:
        for row in (rows[0], rows[-1]):
            row.update(finetuned_dev(args, teacher, plans[row["step"]], features))
            print({k: row[k] for k in ("step", "dev_ppl", "dev_ppl_after")}, flush=True)
    if args.crossed:
        final, start = plans[pruner.step], plans[0]
        for name, plan in (("masks_ranks_start_counts", final.ranked_at_counts(start)),
                           ("start_ranks_masks_counts", start.ranked_at_counts(final)),
                           ("start_ranks_masks_counts_ffn", start.ranked_at_counts(final, structures=("ffn",)))):
            row = {**rows[-1], "plan": name, "units_changed_from_start": changed_units(plan, start),
                   "dev_ppl": round(decoder.perplexity(compact(teacher, plan), features["dev"]), 3),
                   **finetuned_dev(args, teacher, plan, features)}
            rows.append(row)
            print({k: row[k] for k in ("plan", "dev_ppl", "dev_ppl_after")}, flush=True)
    append_rows(Path(args.csv), [{**environment("cpu"), **row} for row in rows])


if __name__ == "__main__":
    main()
