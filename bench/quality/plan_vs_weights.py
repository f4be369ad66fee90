"""Is it the plan or the weights? A mask cell of the encoder study (bench/quality/encoder.py) has two things a
one-shot cell lacks: its plan (which units, at which counts per layer and structure, with the gate values as
scales) and its weights (trained beside the masks, for VTrans and hard-concrete). This crosses them with the
one-shot plan and the teacher's weights, and scores every pair as the study scores a cell (accuracy before,
then after the distilled fine-tune with the lr search on dev):

- ``masks``: the cell's own plan on its mask-trained weights (the cell itself, run again: it should repeat the
  cell's row of the study CSV);
- ``oneshot_units``: the one-shot plan's units (chosen on the teacher) on the mask-trained weights, with the
  masks' scales on the units they share;
- ``mask_ranks_oneshot_counts``: the masks' own ranking of units, cut at the one-shot plan's count for every
  structure and layer, on the mask-trained weights (the masks' choice of units without their shape);
- ``masks_teacher_weights``: the masks' units, without their scales, on the teacher's weights;
- ``oneshot_ranks_masks_counts_teacher_weights``: the one-shot plan's ranking of units cut at the masks' count
  for every structure and layer, on the teacher's weights (the masks' shape without their choice of units, as
  the decoder study's ``--unit-ranking calibration``).

The one-shot plan on the teacher's weights is the study's ``oneshot`` cell. The mask cell is found (or trained)
with encoder.py's options, so pass the ones its row was made with, e.g.

    python bench/quality/plan_vs_weights.py --sparsities 0.5 --methods vtrans --seeds 0 --structures heads ffn

Rows go to bench/results/quality/plan_vs_weights.csv, one per (seed, sparsity, method, pair).
"""
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench"), str(ROOT / "bench" / "quality")]
from common import RESULTS_DIR, append_rows, environment  # noqa: E402
import encoder  # noqa: E402
from study import kept_units, lr_label, machine  # noqa: E402

PAIRS = ("masks", "oneshot_units", "mask_ranks_oneshot_counts", "masks_teacher_weights",
         "oneshot_ranks_masks_counts_teacher_weights")


def pair_plans(masks_plan, oneshot_plan) -> dict:
    """``{pair: (plan, on_teacher_weights)}`` for every pair of ``PAIRS``."""
    with_mask_scales = replace(oneshot_plan, hidden_scale=masks_plan.hidden_scale, head_scale=masks_plan.head_scale,
                               ffn_scale=masks_plan.ffn_scale)
    return {"masks": (masks_plan, False), "oneshot_units": (with_mask_scales, False),
            "mask_ranks_oneshot_counts": (masks_plan.ranked_at_counts(oneshot_plan), False),
            "masks_teacher_weights": (masks_plan.without_scales(), True),
            "oneshot_ranks_masks_counts_teacher_weights": (oneshot_plan.without_scales().ranked_at_counts(masks_plan),
                                                           True)}


def main(argv=None) -> None:
    p = encoder.parser()
    p.description = __doc__
    p.set_defaults(methods=["vtrans"], sparsities=[0.5], csv=str(RESULTS_DIR / "quality" / "plan_vs_weights.csv"))
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    args = encoder.parse_args(p, argv)
    if "oneshot" in args.methods:
        p.error("--methods: expected mask methods (the one-shot cell is the other side of every pair)")
    if args.compact_original:  # every pair names its weights itself
        p.error("--compact-original: not a choice here (the masks_teacher_weights pair compacts the weights from "
                "before mask training); encoder.py --compact-original scores that as a cell of its own")
    work = Path(args.work) / args.task
    feats, labels = encoder.task_features(args, work)
    for seed in args.seeds:
        teacher = encoder.seed_teacher(args, feats, labels, seed, work)
        for sparsity in args.sparsities:
            oneshot = encoder.cell_masks(args, encoder.fresh_model(labels, teacher, args.device), feats, seed,
                                         sparsity, "oneshot", work)[1].plan
            for method in args.methods:
                torch.manual_seed(seed)
                trained = encoder.fresh_model(labels, teacher, args.device)
                cell, masks = encoder.cell_masks(args, trained, feats, seed, sparsity, method, work)
                for pair, (plan, on_teacher) in pair_plans(masks.plan, oneshot).items():
                    if pair not in args.pairs:
                        continue
                    model = encoder.fresh_model(labels, teacher, args.device) if on_teacher else trained
                    scored = encoder.score_plan(args, model, plan, feats, labels, teacher, seed,
                                                f"{method} {sparsity} {pair}")
                    row = dict(task=args.task, **cell, pair=pair,
                               dev_before=round(scored.before["dev"], 4), test_before=round(scored.before["test"], 4),
                               dev_after=round(scored.after["dev"], 4), test_after=round(scored.after["test"], 4),
                               **kept_units(scored.choice.model, encoder.fresh_model(labels)),
                               finetune_lr=lr_label([scored.choice.lr]), dev_by_lr=scored.choice.scores_label(),
                               machine=machine())
                    append_rows(Path(args.csv), [{**environment(args.device), **row}])
                    print({k: row[k] for k in ("method", "target_sparsity", "pair", "dev_before", "dev_after",
                                               "test_after")})


if __name__ == "__main__":
    main()
