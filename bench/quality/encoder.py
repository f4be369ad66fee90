"""Experiment 1 of the quality study: MiniLM-L6 on movie-review sentiment (and TREC questions), pruned to
several parameter sparsities by VTrans, Fast-VTrans, Faster-VTrans, hard-concrete (CoFi-style, same
objective) and the one-shot activation-norm baseline, all through the same code and budget; plus
"faster_short", Faster-VTrans with a tenth of the mask steps (the "10x faster" question).

Every (task, seed, sparsity, method) is one cell. A finished cell is a row of
bench/results/quality/encoder_<task>.csv and is skipped when the command runs again; a cell cut off midway
resumes from its checkpoint under --work. So the study runs a piece at a time:

    python bench/quality/encoder.py --task sentiment --sparsities 0.5 --methods faster oneshot --seeds 0

Splits: the data is split once by --split-seed into train (72%), dev (8%) and test (20%). Teachers are
fine-tuned on train (one per seed, cached); every method then gets --mask-steps of mask training on train
(Fast/Faster on their 3% subset) and --finetune-steps of distilled fine-tuning of the compacted model, at each
learning rate of --finetune-lrs (the same search for every method); the rate with the best dev accuracy is kept.
The table reports dev and test accuracy before and after that fine-tune. Test rows never feed a choice.
Each finished cell also records which dev and test rows its fine-tuned model got right (row_records.py, next to
the CSV), so paired.py can compare two methods row by row; --record-rows replays finished cells to add them.
The mask objective's options (--mask-start, --settle-fraction, --warmup-fraction, --soft-count) are part of a
mask cell's key and of its checkpoint folder's name, as in decoder.py; so is --structures (what every method
prunes, the one-shot baseline included; the figures draw only the cells that prune all three).
"""
import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench")]
from common import RESULTS_DIR, append_rows, default_device, environment  # noqa: E402
from minilm import model_path  # noqa: E402
import summarize  # noqa: E402
from row_records import append_record, recorded_cells, records_path  # noqa: E402
from study import (BUDGET_COLUMNS, FinetuneChoice, add_compact_original_argument,  # noqa: E402
                   add_fold_scales_argument, add_mask_start_arguments, add_structures_argument, add_threads_argument,
                   cell_folder, compact_label, done_rows, fold_label, init_label,
                   kept_units, latencies, lr_label, machine, mask_plan, search_finetune_lr, cell_settings_label,
                   start_config, start_settings, structures_label)

METHODS = {  # name -> (mask method, variant); "oneshot" has no masks
    "vtrans": ("vib", "vtrans"), "fast": ("vib", "fast"), "faster": ("vib", "faster"),
    "faster_short": ("vib", "faster"), "hard_concrete": ("hard_concrete", "vtrans"), "oneshot": (None, None),
}
# Methods that train their masks for a fraction of --mask-steps: "faster_short" asks whether Faster-VTrans keeps
# its accuracy when it compresses 10x faster than VTrans (same fine-tune budget).
STEP_FRACTION = {"faster_short": 0.1}
# The fine-tune learning rates every method's compacted model is searched over (picked by dev accuracy). On
# sentiment the first grid, 2e-5 5e-5 1e-4, never picked 2e-5 and picked its top rate in 3 of 5 cells.
FINETUNE_LRS = (5e-5, 1e-4, 2e-4)
# What makes a cell: a run that differs in any of these trains its own cell instead of skipping it as done.
CELL_KEY = ("seed", "target_sparsity", "method", "log_sigma2_init", "fold_scales") + BUDGET_COLUMNS + (
    "finetune_lrs", "uniform", "mask_start", "settle_fraction", "size_count", "warmup_fraction", "structures",
    "quench_fraction", "compact_from", "quench_gradient", "allocation")


def method_steps(args, method: str) -> int:
    """The mask-training steps ``method`` gets out of --mask-steps."""
    return max(1, round(args.mask_steps * STEP_FRACTION.get(method, 1.0)))


def compaction(args) -> dict:
    """The ``PruneConfig`` settings of --no-fold-scales and --compact-original."""
    from vtrans_kernels.prune.config import compaction_settings
    return compaction_settings(args.no_fold_scales, "original" if args.compact_original else "trained")


def cell_values(args, seed: int, sparsity: float, method: str) -> dict:
    """A cell's ``CELL_KEY`` columns: what its row records and what the skip check compares."""
    mask_method = METHODS[method][0]
    return dict(seed=seed, target_sparsity=sparsity, method=method,
                log_sigma2_init=init_label(mask_method, args.log_sigma2_init),
                fold_scales=fold_label(mask_method, compaction(args)["fold_scales"]),
                compact_from=compact_label(mask_method, args.compact_original), mask_steps=method_steps(args, method),
                finetune_steps=args.finetune_steps, batch_size=args.batch_size,
                finetune_lrs=lr_label(args.finetune_lrs),
                uniform="True" if args.uniform and mask_method is not None else "",
                structures=structures_label(args.structures), **start_settings(*METHODS[method], args))


def cell_key(args, seed: int, sparsity: float, method: str) -> tuple[str, ...]:
    """A cell's ``CELL_KEY`` values, as the results CSV holds them."""
    values = cell_values(args, seed, sparsity, method)
    return tuple(str(values[column]) for column in CELL_KEY)


def task_data(task: str, work: Path):
    import movie_reviews
    import trec_questions

    from vtrans_kernels.prune.data import load_text_data
    path = work / f"{task}.csv"
    if not path.exists():  # written once from the installed package; a copy carried to another machine is reused
        {"sentiment": movie_reviews.write_csv, "trec": trec_questions.write_csv}[task](path)
    return load_text_data(str(path), "classification")


def splits(data, split_seed: int):
    train_dev, test = data.split(0.2, split_seed)
    train, dev = train_dev.split(0.1, split_seed)
    return train, dev, test


def fresh_model(num_labels: int, state: dict | None = None, device: str = "cpu"):
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=num_labels)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device)


def teacher_state(args, task, seed, train_batches, labels, work: Path) -> dict:
    from vtrans_kernels.prune.checkpoint import load_checkpoint, save_atomic
    from vtrans_kernels.prune.finetune import finetune
    path = work / f"teacher_s{seed}.pt"
    if path.exists():
        return load_checkpoint(path)
    torch.manual_seed(seed)
    model = fresh_model(labels, device=args.device)
    finetune(model, train_batches, args.teacher_steps, lr=args.teacher_lr, progress=True, desc=f"teacher s{seed}")
    save_atomic(model.state_dict(), path)
    return model.state_dict()


@dataclass
class PlanScore:
    """Dev and test accuracy of a plan's masked model (``before``) and of its compacted, fine-tuned copy
    (``after``, from ``correct``: that copy's per-row results, bool [rows] per split); ``choice`` is the lr
    search's pick (the fine-tuned model, its rate, every rate's dev score)."""

    before: dict
    correct: dict
    choice: FinetuneChoice

    @property
    def after(self) -> dict:
        return {split: float(flags.float().mean()) for split, flags in self.correct.items()}


def score_plan(args, model, plan, feats, labels, teacher, seed: int, desc: str) -> PlanScore:
    """Score ``plan`` on ``model`` as every study cell is scored: the masked model on dev and test, then the
    compacted model after --finetune-steps of distillation from the teacher at each of --finetune-lrs, the rate
    with the best dev accuracy kept (test never chooses)."""
    from vtrans_kernels.hf import compact, masked_by_plan
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.evaluate import correct_per_row, evaluate
    from vtrans_kernels.prune.finetune import finetune

    train = Batches(feats["train"], args.batch_size, seed=seed)
    evaluation = {k: Batches(feats[k], 64) for k in ("dev", "test")}
    accuracy = lambda m, split: evaluate(m, evaluation[split], "classification")["accuracy"]  # noqa: E731
    with masked_by_plan(model, plan):
        before = {k: accuracy(model, k) for k in evaluation}
    distill_from = fresh_model(labels, teacher, args.device).eval()
    choice = search_finetune_lr(
        compact(model, plan), args.finetune_lrs,
        lambda small, lr: finetune(small, train, args.finetune_steps, lr=lr, teacher=distill_from, progress=True,
                                   desc=f"{desc} fine-tune lr {lr:g}"),
        lambda small: accuracy(small, "dev"), seed=seed)
    return PlanScore(before, {k: correct_per_row(choice.model, evaluation[k]) for k in evaluation}, choice)


def cell_masks(args, model, feats, seed: int, sparsity: float, method: str, work: Path):
    """``(cell, masks)``: the ``CELL_KEY`` values of a cell and its plan (``study.MaskPlan``), the masks trained on
    ``model`` (in place, for the variants that train weights) or replayed from the cell's checkpoint folder.
    The plan compacts ``masks.pruner.compaction_model()`` (``model``, or its weights from before mask training
    with --compact-original); the one-shot baseline's compacts ``model``."""
    cell = cell_values(args, seed, sparsity, method)
    folder = cell_folder(work, cell["mask_steps"], args.batch_size, method, cell_settings_label(cell), sparsity, seed)
    masks = mask_plan(model, feats["train"], METHODS[method], sparsity, folder,
                      batch_size=args.batch_size, seq_len=args.max_length, seed=seed, steps=cell["mask_steps"],
                      mask_lr=args.mask_lr, log_sigma2_init=args.log_sigma2_init, soft_count=args.soft_count,
                      **compaction(args), uniform=args.uniform, **start_config(args),
                      structures=tuple(args.structures))
    return cell, masks


def run_cell(args, task, seed, sparsity, method, feats, labels, teacher, work: Path) -> tuple[dict, dict]:
    """Prune, compact, fine-tune and measure one cell: its CSV row (without the environment and teacher columns)
    and the fine-tuned model's per-row results (``PlanScore.correct``)."""
    torch.manual_seed(seed)
    model = fresh_model(labels, teacher, args.device)
    cell, masks = cell_masks(args, model, feats, seed, sparsity, method, work)
    source = model if masks.pruner is None else masks.pruner.compaction_model()
    scored = score_plan(args, source, masks.plan, feats, labels, teacher, seed, f"{method} {sparsity}")
    before, after, choice = scored.before, scored.after, scored.choice
    small = choice.model
    kept = kept_units(small, fresh_model(labels))
    probe = {k: v[:32] for k, v in feats["test"].items() if k != "labels"}
    return dict(
        task=task, **cell,
        achieved_sparsity=kept["achieved_sparsity"],
        dev_before=round(before["dev"], 4), test_before=round(before["test"], 4),
        dev_after=round(after["dev"], 4), test_after=round(after["test"], 4),
        hidden=kept["hidden"], heads=kept["heads"], ffn=kept["ffn"],
        mask_decision_sparsity="" if masks.decision_sparsity is None else masks.decision_sparsity,
        mask_time_s=round(masks.seconds, 1), mask_resumed=masks.resumed, finetune_time_s=round(choice.seconds, 1),
        **latencies(small, probe),
        finetune_lr=lr_label([choice.lr]), dev_by_lr=choice.scores_label(),
        machine=machine(),
    ), scored.correct


def parser() -> argparse.ArgumentParser:
    """The driver's command line (bench/quality/plan_vs_weights.py adds to it to find the same cells)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("sentiment", "trec"), default="sentiment")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--split-seed", type=int, default=1234)
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--teacher-lr", type=float, default=1e-4)
    p.add_argument("--mask-steps", type=int, default=150)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lrs", type=float, nargs="+", default=list(FINETUNE_LRS),
                   help="fine-tune learning rates searched for every method alike; the one with the best dev accuracy "
                        "is kept and reported (one value: no search)")
    p.add_argument("--mask-lr", type=float, default=0.1)
    p.add_argument("--log-sigma2-init", type=float, default=-1.0)
    add_mask_start_arguments(p)
    add_fold_scales_argument(p)
    add_compact_original_argument(p)
    p.add_argument("--uniform", action="store_true",
                   help="plans keep the same heads and FFN width in every layer (PruneConfig.uniform; mask methods "
                        "only); replays the masks of the non-uniform cell when they exist")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=40)
    p.add_argument("--device", default=default_device(), help="where models train (default: the GPU if any)")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--csv", default=None, help="default bench/results/quality/encoder_<task>.csv")
    p.add_argument("--record-rows", action="store_true",
                   help="also replay the finished cells asked for that have no per-row record (their masks from the "
                        "checkpoint folder, the fine-tune again) and record them when they reproduce their row")
    add_structures_argument(p)
    add_threads_argument(p)
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p``'s arguments, checked, with the torch thread count set."""
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if any(lr <= 0 for lr in args.finetune_lrs) or len(set(args.finetune_lrs)) < len(args.finetune_lrs):
        p.error(f"--finetune-lrs: expected distinct positive learning rates, got {args.finetune_lrs}")
    return args


def task_features(args, work: Path) -> tuple[dict, int]:
    """The task's tokenized train / dev / test splits and its label count."""
    from transformers import AutoTokenizer

    from vtrans_kernels.prune.data import tokenize_classification
    data = task_data(args.task, work)
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    parts = dict(zip(("train", "dev", "test"), splits(data, args.split_seed)))
    return {k: tokenize_classification(v, tokenizer, args.max_length) for k, v in parts.items()}, len(data.label_names)


def seed_teacher(args, feats: dict, labels: int, seed: int, work: Path) -> dict:
    """The cached (or freshly fine-tuned) teacher state of ``seed``."""
    from vtrans_kernels.prune.data import Batches
    return teacher_state(args, args.task, seed, Batches(feats["train"], args.batch_size, seed=seed + 100), labels,
                         work)


def main(argv=None) -> None:
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.evaluate import evaluate

    args = parse_args(parser(), argv)
    work = Path(args.work) / args.task
    csv_path = Path(args.csv) if args.csv else RESULTS_DIR / "quality" / f"encoder_{args.task}.csv"
    rows_path = records_path(csv_path)
    done = done_rows(csv_path, CELL_KEY)
    recorded = recorded_cells(rows_path, CELL_KEY)
    feats, labels = task_features(args, work)
    for seed in args.seeds:
        keys = {(sparsity, method): cell_key(args, seed, sparsity, method)
                for sparsity in args.sparsities for method in args.methods}
        pending = [cell for cell, key in keys.items()
                   if key not in done or (args.record_rows and key not in recorded)]
        if not pending:  # a finished seed needs neither its teacher nor the teacher's evaluation
            continue
        teacher = seed_teacher(args, feats, labels, seed, work)
        teacher_model = fresh_model(labels, teacher, args.device)
        teacher_acc = {k: evaluate(teacher_model, Batches(feats[k], 64), "classification")["accuracy"]
                       for k in ("dev", "test")}
        print(f"teacher seed {seed}: dev {teacher_acc['dev']:.4f} test {teacher_acc['test']:.4f}")
        for sparsity, method in pending:
            key = keys[(sparsity, method)]
            row, correct = run_cell(args, args.task, seed, sparsity, method, feats, labels, teacher, work)
            if key in done:  # --record-rows: a replay of a finished cell, recorded only if it reproduces its row
                if not same_accuracy(done[key], row):
                    continue
            else:
                row.update(teacher_dev=round(teacher_acc["dev"], 4), teacher_test=round(teacher_acc["test"], 4))
                append_rows(csv_path, [{**environment(args.device), **row}])
                print({k: row[k] for k in ("method", "target_sparsity", "test_before", "test_after", "mask_time_s")})
            append_record(rows_path, dict(zip(CELL_KEY, key)), args.task, correct)
    summarize.main(["--results", str(csv_path.parent)])  # the table and plots of everything finished so far


def same_accuracy(saved: dict, replayed: dict) -> bool:
    """Whether a replayed cell reproduced its saved row's dev and test accuracy after the fine-tune (warns if
    not: its per-row results would not be the row's)."""
    columns = ("dev_after", "test_after")
    if all(float(saved[c]) == float(replayed[c]) for c in columns):
        return True
    warnings.warn(f"--record-rows: the replay of {replayed['method']} at {replayed['target_sparsity']} seed "
                  f"{replayed['seed']} gave {[replayed[c] for c in columns]}, its row says "
                  f"{[saved[c] for c in columns]}; no record written")
    return False


if __name__ == "__main__":
    main()
