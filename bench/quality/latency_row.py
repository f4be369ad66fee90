"""Quality study, latency row (issue 19): does pruning to a latency target keep more accuracy than a parameter
target of the same measured speed?

MiniLM-L6 on movie-review sentiment, with the study's splits, cached teacher, budgets and fine-tune search
(bench/quality/encoder.py, study.py). For each requested speedup S:

1. **Latency plan**: Faster-VTrans masks trained with ``PruneConfig(target="latency", target_speedup=S)`` against
   the CPU latency table of bench/results/latency/ (batch 1 x 128 tokens, one thread), and the closed loop of
   ``vtrans_kernels.latency.calibrate`` (the plan timed against the unpruned model here and re-planned from the
   same masks until it measures S within 3%).
2. **Parameter plan of the same measured speed**: Faster-VTrans masks trained to the parameter sparsity of the
   latency masks' table plan (a first guess at the same speed); then the parameter sparsity of their plan is
   bisected on the measured speedup (each step: plan from the same masks at that sparsity, compact, time against
   the unpruned model) until it measures the latency plan's speedup within 2%.
3. Both compacted models get the study's fine-tune search (distilled from the teacher, each learning rate of
   --finetune-lrs, the best dev accuracy kept), and the unpruned model and both plans are timed together in
   interleaved rounds (median of per-round ratios, thread CPU time, one thread) for the speedups reported.

With --train-at T both kinds of masks are trained once (latency to T, parameters to the sparsity of that plan)
and every speedup is planned from them: the closed loop for the latency plan, the bisection for the parameter
plan. That is the CPU budget's shortcut; by default each speedup trains its own.

Rows: bench/results/quality/latency_sentiment.csv (one per speedup and plan kind); a speedup already there at the
same budget is skipped. Dev accuracy makes every choice; test accuracy is only reported.

    python bench/quality/latency_row.py --speedups 1.5 2 3
"""
import argparse
import math
import os
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench"), str(ROOT / "bench" / "quality")]
from common import RESULTS_DIR, append_rows, environment  # noqa: E402
from encoder import FINETUNE_LRS, METHODS, fresh_model, splits, task_data, teacher_state  # noqa: E402
from study import done_cells, kept_units, lr_label, machine, mask_plan, search_finetune_lr  # noqa: E402

TABLE = RESULTS_DIR / "latency" / "minilm-l6_cpu_b1_s128.json"
KEY = ("requested_speedup", "seed", "mask_steps", "finetune_steps", "batch_size", "finetune_lrs", "train_at")


class Timing:
    """Speedups of compacted models over ``dense`` on the table's batch and sequence length, one torch thread,
    the thread's CPU time, median of per-round ratios (``calibrate.measure_speedup``)."""

    def __init__(self, dense, table, seed: int):
        from vtrans_kernels.latency.timer import Stopwatch

        self.dense = dense.eval()
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, dense.config.vocab_size, (table.batch_size, table.seq_len), generator=gen)
        self.stopwatch, self.seed = Stopwatch("thread"), seed

    def _forward(self, model):
        mask = torch.ones_like(self.ids)
        return lambda: model(input_ids=self.ids, attention_mask=mask)

    def speedup(self, small, rounds: int = 30) -> float:
        """Paired speedup of ``small`` over the unpruned model (more rounds while the estimate is loose)."""
        from vtrans_kernels.latency.calibrate import measure_speedup

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return measure_speedup(self._forward(self.dense), self._forward(small.eval()), self.stopwatch,
                                       min_rounds=rounds, max_rounds=150, seed=self.seed).speedup
        finally:
            torch.set_num_threads(threads)

    def together(self, models: dict, rounds: int) -> dict:
        """``{name: SpeedupEstimate}`` of every model, timed in the same interleaved rounds as the unpruned one."""
        from vtrans_kernels.latency.calibrate import paired_speedup, time_interleaved

        forwards = {"dense": self._forward(self.dense), **{k: self._forward(m.eval()) for k, m in models.items()}}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                samples = time_interleaved(forwards, [self.stopwatch], rounds, warmup=3,
                                           rng=random.Random(self.seed))[self.stopwatch.clock]
        finally:
            torch.set_num_threads(threads)
        return {k: paired_speedup(samples["dense"], samples[k]) for k in models}


def matched_parameter_plan(model, pruner, timing: Timing, target: float, start: float, *, tolerance: float = 0.02,
                           steps: int = 10):
    """The plan from ``pruner``'s (parameter-target) masks whose measured speedup is ``target`` within
    ``tolerance``: from ``start``, steps of 0.05 until two plans bracket the target, then bisection on the
    parameter sparsity. Returns (plan, sparsity, measured
    speedup, every (sparsity, measured) tried)."""
    from vtrans_kernels.hf import compact

    tried = []

    def at(sparsity):
        plan = pruner.plan(sparsity)
        measured = timing.speedup(compact(model, plan))
        tried.append((round(sparsity, 4), round(measured, 3)))
        print(f"  parameter plan at sparsity {sparsity:.4f}: measured {measured:.3f}x (want {target:.3f}x)")
        return plan, measured

    low = high = None  # the densest plan measured faster than the target, the sparsest measured slower
    sparsity, best = start, None
    for _ in range(steps):
        plan, measured = at(sparsity)
        if best is None or abs(math.log(measured / target)) < abs(math.log(best[2] / target)):
            best = (plan, sparsity, measured)
        if abs(measured / target - 1) <= tolerance:
            break
        if measured < target:
            low = sparsity
        else:
            high = sparsity
        if low is not None and high is not None:
            sparsity = (low + high) / 2
        else:  # not bracketed yet: step 0.05 towards the target
            sparsity = min(sparsity + 0.05, 0.97) if high is None else max(sparsity - 0.05, 0.0)
    return (*best, tried)


def run_speedup(args, speedup, feats, labels, teacher, teacher_acc, timing, work) -> list[dict]:
    """The latency plan and the parameter plan of the same measured speed at ``speedup``: two rows."""
    from vtrans_kernels.hf import compact, masked_by_plan
    from vtrans_kernels.latency.calibrate import calibrate_plan
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.evaluate import evaluate
    from vtrans_kernels.prune.finetune import finetune

    evaluation = {k: Batches(feats[k], 64) for k in ("dev", "test")}
    train = Batches(feats["train"], args.batch_size, seed=args.seed)
    common = dict(batch_size=args.batch_size, seq_len=args.max_length, seed=args.seed, steps=args.mask_steps,
                  mask_lr=args.mask_lr, log_sigma2_init=args.log_sigma2_init)
    folder = work / f"m{args.mask_steps}_bs{args.batch_size}"
    trained_at = args.train_at or speedup  # the speedup both kinds of masks are trained for
    dense = fresh_model(labels)

    # latency masks trained to `trained_at` (a finished folder is replayed, not trained again)
    torch.manual_seed(args.seed)
    latency_model = fresh_model(labels, teacher)
    latency_masks = mask_plan(latency_model, feats["train"], METHODS["faster"], 1 - 1 / trained_at,
                              folder / f"latency_faster_{trained_at:g}x_s{args.seed}", target="latency",
                              target_speedup=trained_at, latency_table=str(TABLE), **common)
    # parameter masks trained to the parameter sparsity of the latency masks' own table plan at `trained_at`
    params_sparsity = round(kept_units(compact(latency_model, latency_masks.plan), dense)["achieved_sparsity"], 2)
    latency_plan, calibration = calibrate_plan(latency_model, latency_masks.pruner, seed=args.seed,
                                               target_speedup=speedup)
    latency_small = compact(latency_model, latency_plan)
    guess = kept_units(latency_small, dense)["achieved_sparsity"]
    print(f"{speedup:g}x: latency plan measured {calibration.best.measured:.3f}x in the closed loop "
          f"({len(calibration.attempts)} plans); its parameter sparsity {guess:.4f}")

    torch.manual_seed(args.seed)
    params_model = fresh_model(labels, teacher)
    params_masks = mask_plan(params_model, feats["train"], METHODS["faster"], params_sparsity,
                             folder / f"faster_{params_sparsity}_s{args.seed}", **common)
    params_plan, _, matched, tried = matched_parameter_plan(params_model, params_masks.pruner, timing,
                                                            calibration.best.measured, guess)
    params_small = compact(params_model, params_plan)

    distill_from = fresh_model(labels, teacher).eval()
    cells = {"latency": (latency_model, latency_plan, latency_small, latency_masks),
             "params": (params_model, params_plan, params_small, params_masks)}
    finished = {}
    for kind, (model, plan, small, masks) in cells.items():
        with masked_by_plan(model, plan):
            before = {k: evaluate(model, b, "classification")["accuracy"] for k, b in evaluation.items()}
        choice = search_finetune_lr(
            small, args.finetune_lrs,
            lambda m, lr: finetune(m, train, args.finetune_steps, lr=lr, teacher=distill_from, progress=False),
            lambda m: evaluate(m, evaluation["dev"], "classification")["accuracy"], seed=args.seed)
        after = {k: evaluate(choice.model, b, "classification")["accuracy"] for k, b in evaluation.items()}
        finished[kind] = (choice, before, after, masks)
    load = os.getloadavg()[0]
    speeds = timing.together({k: finished[k][0].model for k in finished}, args.rounds)
    load = max(load, os.getloadavg()[0])
    rows = []
    for kind, (choice, before, after, masks) in finished.items():
        kept = kept_units(choice.model, dense)
        estimate = speeds[kind]
        rows.append(dict(
            task="sentiment", requested_speedup=f"{speedup:g}", plan=kind, seed=args.seed,
            masks_trained_at=f"{trained_at:g}x" if kind == "latency" else f"sparsity {params_sparsity}",
            measured_speedup=round(estimate.speedup, 3), speedup_interval=f"{estimate.low:.3f}-{estimate.high:.3f}",
            search_speedup=round(calibration.best.measured if kind == "latency" else matched, 3),
            table_speedup=round(calibration.best.table_speedup, 3) if kind == "latency" else "",
            parameter_sparsity=kept["achieved_sparsity"], hidden=kept["hidden"], heads=kept["heads"],
            ffn=kept["ffn"],
            dev_before=round(before["dev"], 4), test_before=round(before["test"], 4),
            dev_after=round(after["dev"], 4), test_after=round(after["test"], 4),
            teacher_dev=round(teacher_acc["dev"], 4), teacher_test=round(teacher_acc["test"], 4),
            finetune_lr=lr_label([choice.lr]), dev_by_lr=choice.scores_label(),
            how=("closed loop: " + " ".join(f"{a.asked:.3f}>{a.table_speedup:.3f}:{a.measured:.3f}"
                                            for a in calibration.attempts)) if kind == "latency" else
                ("plan bisected on measured speed: " + " ".join(f"{s}:{m}" for s, m in tried)),
            mask_decision_sparsity=masks.decision_sparsity, mask_time_s=round(masks.seconds, 1),
            log_sigma2_init=args.log_sigma2_init, mask_steps=args.mask_steps, finetune_steps=args.finetune_steps,
            batch_size=args.batch_size,
            finetune_lrs=lr_label(args.finetune_lrs), train_at=f"{args.train_at:g}" if args.train_at else "",
            rounds=args.rounds, load_average=f"{load:.1f}",
            machine=machine(), table=TABLE.name))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=1234)
    p.add_argument("--teacher-steps", type=int, default=300, help="as encoder.py (the cached teacher is reused)")
    p.add_argument("--teacher-lr", type=float, default=1e-4)
    p.add_argument("--mask-steps", type=int, default=150)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lrs", type=float, nargs="+", default=list(FINETUNE_LRS))
    p.add_argument("--mask-lr", type=float, default=0.1)
    p.add_argument("--log-sigma2-init", type=float, default=-1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=40)
    p.add_argument("--rounds", type=int, default=150, help="interleaved rounds of the final timing")
    p.add_argument("--train-at", type=float, default=None,
                   help="train both kinds of masks once, for this speedup, and plan every speedup from them (a CPU "
                        "budget: the other speedups' plans come from masks trained for another point); default: "
                        "masks trained for each speedup")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--csv", default=str(RESULTS_DIR / "quality" / "latency_sentiment.csv"))
    args = p.parse_args(argv)
    args.device = "cpu"  # the latency table is a CPU table: the masks train where they are timed

    from transformers import AutoTokenizer

    from minilm import model_path
    from vtrans_kernels.latency import LatencyTable
    from vtrans_kernels.prune.data import Batches, tokenize_classification
    from vtrans_kernels.prune.evaluate import evaluate

    work = Path(args.work) / "sentiment"
    csv_path = Path(args.csv)
    done = done_cells(csv_path, KEY)
    data = task_data("sentiment", work)
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    parts = dict(zip(("train", "dev", "test"), splits(data, args.split_seed)))
    feats = {k: tokenize_classification(v, tokenizer, args.max_length) for k, v in parts.items()}
    labels = len(data.label_names)
    teacher = teacher_state(args, "sentiment", args.seed,
                            Batches(feats["train"], args.batch_size, seed=args.seed + 100), labels, work)
    teacher_model = fresh_model(labels, teacher)
    teacher_acc = {k: evaluate(teacher_model, Batches(feats[k], 64), "classification")["accuracy"]
                   for k in ("dev", "test")}
    print(f"teacher seed {args.seed}: dev {teacher_acc['dev']:.4f} test {teacher_acc['test']:.4f}")
    timing = Timing(fresh_model(labels), LatencyTable.load(TABLE), args.seed)
    for speedup in args.speedups:
        key = tuple(str(v) for v in (f"{speedup:g}", args.seed, args.mask_steps, args.finetune_steps,
                                     args.batch_size, lr_label(args.finetune_lrs),
                                     f"{args.train_at:g}" if args.train_at else ""))
        if key in done:
            continue
        rows = run_speedup(args, speedup, feats, labels, teacher, teacher_acc, timing, work)
        append_rows(csv_path, [{**environment("cpu"), **row} for row in rows])
        for row in rows:
            print({k: row[k] for k in ("requested_speedup", "plan", "measured_speedup", "parameter_sparsity",
                                       "dev_after", "test_before", "test_after")})


if __name__ == "__main__":
    main()
