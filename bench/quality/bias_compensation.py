"""Which pruning methods bias compensation (vtrans_kernels.hf.compensate_plan, issue 18 item 3) helps, before the
fine-tune: each plan is compacted with and without the shifts and both models are scored.

    python bench/quality/bias_compensation.py encoder --sparsities 0.5 0.7 --methods oneshot faster
    python bench/quality/bias_compensation.py decoder --sparsities 0.2 0.3

encoder: MiniLM-L6 movie-review sentiment through the study's own setup (bench/quality/encoder.py: splits, cached
teacher, mask training via study.mask_plan), dev and test accuracy of the compacted model. decoder: SmolLM2-135M
on the Python docs (bench/quality/decoder.py: corpus, held-out perplexity), one-shot plans. The calibration batches
are training batches. Rows go to bench/results/quality/bias_compensation.csv, one per (model, method, sparsity,
compensation). Every choice the study makes stays on dev; test numbers are only reported.
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
from study import cell_folder, init_label, machine, mask_plan  # noqa: E402

CSV = RESULTS_DIR / "quality" / "bias_compensation.csv"


def compare(model, plan, calibration: list, score, readouts) -> list[dict]:
    """Score the compacted model of ``plan`` without bias compensation, then with it measured on ``calibration``
    for each of ``readouts`` (``compensate_plan``'s readout: which tokens the last layer's means are taken on)."""
    from vtrans_kernels.hf import compact, compensate_plan
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
    return rows


def run_encoder(args) -> None:
    from transformers import AutoTokenizer

    from minilm import model_path
    from vtrans_kernels.prune.data import Batches, tokenize_classification
    from vtrans_kernels.prune.evaluate import evaluate

    study = argparse.Namespace(device="cpu", teacher_steps=300, teacher_lr=1e-4)  # the study's teacher settings
    work = Path(args.work) / "sentiment"
    data = encoder.task_data("sentiment", work)
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    parts = dict(zip(("train", "dev", "test"), encoder.splits(data, 1234)))
    feats = {k: tokenize_classification(v, tokenizer, 40) for k, v in parts.items()}
    labels = len(data.label_names)
    teacher = encoder.teacher_state(study, "sentiment", args.seed, Batches(feats["train"], 32, seed=args.seed + 100),
                                    labels, work)
    evaluation = {k: Batches(feats[k], 64) for k in ("dev", "test")}

    def score(model):
        return {f"{k}_accuracy": round(evaluate(model, b, "classification")["accuracy"], 4)
                for k, b in evaluation.items()}

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
            for row in compare(model, masks.plan, calibration, score, args.readouts):
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
                           lambda m: {"perplexity": round(decoder.perplexity(m, features["test"]), 3)}, args.readouts):
            write(dict(model="SmolLM2-135M python docs", method="oneshot", target_sparsity=sparsity,
                       unpruned_perplexity=round(unpruned, 3), **row))


def write(row: dict) -> None:
    row = {**environment("cpu"), **row, "finetune_steps": 0, "machine": machine()}
    append_rows(CSV, [row])
    print({k: v for k, v in row.items() if k in ("model", "method", "target_sparsity", "compensation", "readout",
                                                 "test_accuracy", "perplexity", "compensate_s")})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("encoder", "decoder"))
    p.add_argument("--sparsities", type=float, nargs="+", required=True)
    p.add_argument("--methods", nargs="+", choices=list(encoder.METHODS), default=["oneshot", "faster"],
                   help="encoder only; the decoder part runs the one-shot baseline")
    p.add_argument("--readouts", nargs="+", choices=("auto", "all", "first", "last"), default=["auto"],
                   help="compensate_plan readouts to score (the CSV's readout column; rows before it had 'all')")
    p.add_argument("--mask-steps", type=int, default=150, help="encoder mask-training steps (the study's budget)")
    p.add_argument("--calibration-batches", type=int, default=8, help="training batches the means are taken on")
    p.add_argument("--decoder-batch", type=int, default=4, help="blocks per decoder calibration batch")
    p.add_argument("--eval-blocks", type=int, default=32, help="held-out SmolLM2 blocks of 128 tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    (run_encoder if args.part == "encoder" else run_decoder)(args)


if __name__ == "__main__":
    main()
