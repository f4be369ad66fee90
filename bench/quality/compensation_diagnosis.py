"""Where bias compensation helps or hurts MiniLM-L6 sentiment: per-layer hidden-state error of a plan's masked
model against the unpruned teacher, over all non-padding tokens and over [CLS] alone, and the logits KL, with and
without the shifts of ``compensate_plan`` (and any other plan variants the caller adds).

    python bench/quality/compensation_diagnosis.py --sparsity 0.7

The teacher is the quality study's cached fine-tuned MiniLM (runs/quality/sentiment/teacher_s0.pt, built by
bench/quality/encoder.py); the plan is the one-shot activation-norm plan at ``--sparsity``; calibration batches are
training batches, the error is measured on dev sentences (held out from calibration). The error of layer ``l`` is
``sum ||h_pruned - h_teacher||^2 / sum ||h_teacher||^2`` over the kept hidden dims of the residual stream after
layer ``l`` (BERT: after the layer's last LayerNorm); layer 0 is the embeddings. The logit margin (logit 1 - logit
0 of the binary task) shows whether a pruned model's decisions are set by its signal or by a constant offset.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench"), str(ROOT / "bench" / "quality")]
import encoder  # noqa: E402
from bias_compensation import sentiment_setup  # noqa: E402
from study import add_threads_argument  # noqa: E402


@torch.no_grad()
def errors(teacher, model, plan, batches, keep: torch.Tensor) -> dict:
    """Per-layer relative squared error (all tokens, [CLS]) and mean KL(teacher || pruned) of the logits, for the
    masked model of ``plan`` built on ``model``."""
    from vtrans_kernels.hf import masked_by_plan

    layers = teacher.config.num_hidden_layers + 1
    sums = {k: torch.zeros(layers, dtype=torch.float64) for k in ("err_all", "ref_all", "err_cls", "ref_cls")}
    kl, count, agree, margins = 0.0, 0, 0, []
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        tokens = inputs["attention_mask"].bool()
        ref = teacher(**inputs, output_hidden_states=True)
        with masked_by_plan(model, plan):
            out = model(**inputs, output_hidden_states=True)
        for layer, (h_ref, h) in enumerate(zip(ref.hidden_states, out.hidden_states)):
            h_ref, h = h_ref[..., keep].double(), h[..., keep].double()
            diff = (h - h_ref).square().sum(-1)
            norm = h_ref.square().sum(-1)
            sums["err_all"][layer] += diff[tokens].sum()
            sums["ref_all"][layer] += norm[tokens].sum()
            sums["err_cls"][layer] += diff[:, 0].sum()
            sums["ref_cls"][layer] += norm[:, 0].sum()
        p_ref = ref.logits.double().log_softmax(-1)
        p = out.logits.double().log_softmax(-1)
        kl += (p_ref.exp() * (p_ref - p)).sum().item()
        agree += (ref.logits.argmax(-1) == out.logits.argmax(-1)).sum().item()
        count += ref.logits.shape[0]
        margins.append(torch.stack([ref.logits[:, 1] - ref.logits[:, 0], out.logits[:, 1] - out.logits[:, 0]]))
    margins = torch.cat(margins, 1).double()  # [teacher, pruned] x sentences: logit 1 - logit 0 (binary task)
    return {"all": (sums["err_all"] / sums["ref_all"]).tolist(), "cls": (sums["err_cls"] / sums["ref_cls"]).tolist(),
            "kl": kl / count, "agree": agree / count, "margin": (margins[1].mean().item(), margins[1].std().item()),
            "teacher_margin": (margins[0].mean().item(), margins[0].std().item()),
            "margin_corr": torch.corrcoef(margins)[0, 1].item()}


def show(name: str, result: dict) -> None:
    fmt = lambda values: " ".join(f"{v:.4f}" for v in values)  # noqa: E731
    print(f"{name:28s} all  {fmt(result['all'])}")
    print(f"{'':28s} cls  {fmt(result['cls'])}")
    print(f"{'':28s} KL {result['kl']:.4f}  argmax agreement {result['agree']:.4f}  logit margin mean "
          f"{result['margin'][0]:.3f} std {result['margin'][1]:.3f} (teacher {result['teacher_margin'][0]:.3f} std "
          f"{result['teacher_margin'][1]:.3f}), correlation with the teacher's {result['margin_corr']:.3f}",
          flush=True)


def setup(args):
    """(teacher, a fresh copy to prune, train/dev/test features, label count) of the study's sentiment setup."""
    feats, labels, state = sentiment_setup(args.work, args.seed)
    teacher = encoder.fresh_model(labels, state).eval()
    model = encoder.fresh_model(labels, state).eval()
    return teacher, model, feats, labels


def main(argv=None) -> None:
    from vtrans_kernels.hf import compensate_plan, refit_plan
    from vtrans_kernels.prune.data import Batches
    from vtrans_kernels.prune.oneshot import oneshot_plan

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--eval-batches", type=int, default=4, help="dev batches of 64 sentences")
    p.add_argument("--readouts", nargs="+", default=["all", "first"],
                   help="compensate_plan readouts to compare ('all': every token in every layer; 'first': [CLS] "
                        "in the last layer, what readout='auto' picks for this classifier)")
    p.add_argument("--refit-ridges", type=float, nargs="*", default=[], help="also measure refit_plan at these")
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p)
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, model, feats, _ = setup(args)
    plan = oneshot_plan(model, Batches(feats["train"], 32, seed=args.seed), args.sparsity, seq_len=40)
    keep = torch.ones(teacher.config.hidden_size, dtype=torch.bool)
    if plan.hidden is not None:
        keep[:] = False
        keep[plan.hidden] = True
    print(f"one-shot plan at {args.sparsity}: {int(keep.sum())} hidden dims kept, hidden_scale "
          f"{'set' if plan.hidden_scale is not None else 'none'}", flush=True)
    train = Batches(feats["train"], 32, seed=args.seed)
    calibration = [train.batch(step) for step in range(args.calibration_batches)]
    held_out = list(Batches(feats["dev"], 64).sequential())[:args.eval_batches]
    show("plan", errors(teacher, model, plan, held_out, keep))
    for readout in args.readouts:
        start = time.perf_counter()
        shifted = compensate_plan(model, plan, calibration, readout=readout)
        print(f"compensate_plan(readout={readout!r}) {time.perf_counter() - start:.1f}s", flush=True)
        show(f"plan + compensation {readout}", errors(teacher, model, shifted, held_out, keep))
    for ridge in args.refit_ridges:
        start = time.perf_counter()
        refit = refit_plan(model, plan, calibration, ridge=ridge)
        print(f"refit_plan(ridge={ridge:g}) {time.perf_counter() - start:.1f}s", flush=True)
        show(f"plan refit ridge {ridge:g}", errors(teacher, model, refit, held_out, keep))


if __name__ == "__main__":
    main()
