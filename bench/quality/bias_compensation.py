"""Which pruning methods bias compensation (vtrans_kernels.hf.compensate_plan, issue 18 item 3) and the least-squares
refit (vtrans_kernels.hf.refit_plan) help: each plan is compacted without and with them and every model is scored,
before the fine-tune (and, with --finetune-steps, after it).

    python bench/quality/bias_compensation.py encoder --sparsities 0.5 0.7 --methods oneshot faster
    python bench/quality/bias_compensation.py decoder --sparsities 0.2 0.3 --refit-ridges 1e-3

encoder: MiniLM-L6 movie-review sentiment through the study's own setup (bench/quality/encoder.py: splits, cached
teacher, mask training via study.mask_plan), dev and test accuracy of the compacted model, and with --finetune-steps
after the study's distilled fine-tune too. decoder: SmolLM2-135M on the Python docs (bench/quality/decoder.py:
corpus, held-out perplexity), one-shot plans. The calibration batches are training batches. Rows go to
bench/results/quality/bias_compensation.csv, one per (model, method, sparsity, compensation, readout, refit ridge).
Every choice the study makes stays on dev; test numbers are only reported.
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench"), str(ROOT / "bench" / "quality")]
from common import RESULTS_DIR, append_rows, environment  # noqa: E402
import decoder  # noqa: E402
import encoder  # noqa: E402
from study import add_threads_argument, cell_folder, init_label, machine, mask_plan  # noqa: E402

CSV = RESULTS_DIR / "quality" / "bias_compensation.csv"


def compare(model, plan, calibration: list, score, readouts, ridges=()) -> list[dict]:
    """Score the compacted model of ``plan`` without bias compensation, then with it measured on ``calibration``
    for each of ``readouts`` (``compensate_plan``'s readout: which tokens the last layer's means are taken on),
    then refitted by least squares (``refit_plan``, default readout) for each ridge of ``ridges``."""
    from vtrans_kernels.hf import compact, compensate_plan, refit_plan
    from vtrans_kernels.hf.compensation import readout_of

    tokens = sum(int(b["attention_mask"].sum()) for b in calibration)
    common = dict(calibration_batches=len(calibration), calibration_tokens=tokens)
    rows = [dict(compensation=False, readout="", **score(compact(model, plan)), **common)]
    for readout in readouts:
        start = time.perf_counter()
        shifted = compensate_plan(model, plan, calibration, readout=readout)
        seconds = time.perf_counter() - start
        rows.append(dict(compensation=True, readout=readout_of(model) if readout == "auto" else readout,
                         **score(compact(model, shifted)), **common,
                         shifted_sublayers=len(shifted.head_bias_shift) + len(shifted.ffn_bias_shift),
                         compensate_s=round(seconds, 1)))
    for ridge in ridges:
        start = time.perf_counter()
        refit = refit_plan(model, plan, calibration, ridge=ridge)
        seconds = time.perf_counter() - start
        rows.append(dict(compensation=True, readout=readout_of(model), refit_ridge=ridge,
                         **score(compact(model, refit)), **common,
                         shifted_sublayers=len(refit.head_bias_shift) + len(refit.ffn_bias_shift),
                         compensate_s=round(seconds, 1)))
    return rows


def sentiment_setup(work: str, seed: int):
    """``(features, labels, teacher)`` of the quality study's MiniLM-L6 sentiment setup (bench/quality/encoder.py):
    the tokenized train/dev/test splits (40 tokens), the label count and the state dict of the study's fine-tuned
    teacher (cached under ``work``/sentiment, trained there with the study's settings if absent)."""
    from transformers import AutoTokenizer

    from minilm import model_path
    from vtrans_kernels.prune.data import Batches, tokenize_classification

    study = argparse.Namespace(device="cpu", teacher_steps=300, teacher_lr=1e-4)  # the study's teacher settings
    folder = Path(work) / "sentiment"
    data = encoder.task_data("sentiment", folder)
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    parts = dict(zip(("train", "dev", "test"), encoder.splits(data, 1234)))
    feats = {k: tokenize_classification(v, tokenizer, 40) for k, v in parts.items()}
    labels = len(data.label_names)
    teacher = encoder.teacher_state(study, "sentiment", seed, Batches(feats["train"], 32, seed=seed + 100), labels,
                                    folder)
    return feats, labels, teacher


def run_encoder(args) -> None:
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.evaluate import evaluate
    from vtrans_kernels.prune.finetune import finetune

    feats, labels, teacher = sentiment_setup(args.work, args.seed)
    evaluation = {k: Batches(feats[k], 64) for k in ("dev", "test")}
    distill_from = encoder.fresh_model(labels, teacher).eval()

    def accuracy(model):
        return {k: round(evaluate(model, b, "classification")["accuracy"], 4) for k, b in evaluation.items()}

    def score(model):
        row = {f"{k}_accuracy": v for k, v in accuracy(model).items()}
        if args.finetune_steps:  # the study's fine-tune (distilled from the teacher) at one lr, then scored again
            torch.manual_seed(args.seed)
            finetune(model, Batches(feats["train"], 32, seed=args.seed), args.finetune_steps, lr=args.finetune_lr,
                     teacher=distill_from)
            row.update({f"{k}_accuracy_after": v for k, v in accuracy(model).items()},
                       finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr)
        return row

    train = Batches(feats["train"], 32, seed=args.seed)
    calibration = [train.batch(step) for step in range(args.calibration_batches)]
    for sparsity in args.sparsities:
        for method in args.methods:
            torch.manual_seed(args.seed)
            model = encoder.fresh_model(labels, teacher)
            init = init_label(encoder.METHODS[method][0], -1.0)
            folder = cell_folder(Path(args.work) / "bias_compensation", args.mask_steps, 32, method, init, sparsity,
                                 args.seed)
            masks = mask_plan(model, feats["train"], encoder.METHODS[method], sparsity, folder, batch_size=32,
                              seq_len=40, seed=args.seed, steps=args.mask_steps, mask_lr=0.1, log_sigma2_init=-1.0)
            for row in compare(model, masks.plan, calibration, score, args.readouts, args.refit_ridges):
                write(dict(model="MiniLM-L6 sentiment", method=method, target_sparsity=sparsity,
                           mask_steps=args.mask_steps if encoder.METHODS[method][0] else "", **row))


def run_decoder(args) -> None:
    from prune_smollm2_lm import load_smollm2
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.oneshot import oneshot_plan

    study = decoder.parse_args(["--eval-blocks", str(args.eval_blocks)])
    teacher, tokenizer = load_smollm2()
    teacher.eval().requires_grad_(False)
    features = decoder.corpus_features(study, tokenizer)
    train = Batches(features["train"], args.decoder_batch, seed=args.seed)
    calibration = [train.batch(step) for step in range(args.calibration_batches)]
    unpruned = decoder.perplexity(teacher, features["test"])
    print(f"SmolLM2-135M held-out perplexity {unpruned:.3f} on {features['test']['input_ids'].shape[0]} blocks")
    for sparsity in args.sparsities:
        plan = oneshot_plan(copy.deepcopy(teacher), Batches(features["train"], study.batch_size, seed=args.seed),
                            sparsity, seq_len=study.block_size)
        for row in compare(teacher, plan, calibration,
                           lambda m: {"perplexity": round(decoder.perplexity(m, features["test"]), 3)}, args.readouts,
                           args.refit_ridges):
            write(dict(model="SmolLM2-135M python docs", method="oneshot", target_sparsity=sparsity,
                       unpruned_perplexity=round(unpruned, 3), **row))


def write(row: dict) -> None:
    row = {**environment("cpu"), "finetune_steps": 0, **row, "machine": machine()}
    append_rows(CSV, [row])
    print({k: v for k, v in row.items() if k in ("model", "method", "target_sparsity", "compensation", "readout",
                                                 "refit_ridge", "test_accuracy", "test_accuracy_after", "perplexity",
                                                 "compensate_s")})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("encoder", "decoder"))
    p.add_argument("--sparsities", type=float, nargs="+", required=True)
    p.add_argument("--methods", nargs="+", choices=list(encoder.METHODS), default=["oneshot", "faster"],
                   help="encoder only; the decoder part runs the one-shot baseline")
    p.add_argument("--readouts", nargs="+", choices=("auto", "all", "first", "last"), default=["auto"],
                   help="compensate_plan readouts to score (the CSV's readout column; rows before it had 'all')")
    p.add_argument("--refit-ridges", type=float, nargs="*", default=[],
                   help="also score refit_plan (least-squares scales + intercept) at these ridges (refit_ridge column)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="encoder only: also fine-tune each compacted model this many steps and score it again")
    p.add_argument("--finetune-lr", type=float, default=2e-4, help="the fine-tune's learning rate (the study's)")
    p.add_argument("--mask-steps", type=int, default=150, help="encoder mask-training steps (the study's budget)")
    p.add_argument("--calibration-batches", type=int, default=8, help="training batches the means are taken on")
    p.add_argument("--decoder-batch", type=int, default=4, help="blocks per decoder calibration batch")
    p.add_argument("--eval-blocks", type=int, default=32, help="held-out SmolLM2 blocks of 128 tokens")
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p)
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    (run_encoder if args.part == "encoder" else run_decoder)(args)


if __name__ == "__main__":
    main()
