"""Deployment speed of compacted models: dense vs compacted latency and throughput, next to the FLOPs ratio.

For a BERT-base-shaped encoder and a LLaMA-style GQA decoder (random weights of real shapes), builds plans
at several parameter sparsities of the layers (the same fraction of heads/KV groups, FFN neurons and hidden
dims in every layer, random units), compacts with and without ``round_to``, and times in the same run:
encoder forward; decoder prefill (one forward over the prompt) and decode (one new token per step against a
KV cache of the prompt). Reports median ms, tokens/s, the speedup over the dense model and the FLOPs
reduction from the size model, and their ratio. Goal on a GPU: speedup >= 0.8x the FLOPs reduction at batch
32 x seq 128 for the BERT-base shape at 50/75/90% sparsity. Without a GPU it runs small shapes and reports
CPU numbers only. Rows go to bench/results/bench_compacted.csv.

Usage: python bench/bench_compacted.py [--sparsities 0.5 0.75 0.9] [--batch 32 --seq 128] [--dtype bfloat16]
       [--smoke]; the suite (python -m bench) calls ``run(device, smoke)``.
"""
import argparse
import inspect

import torch
import transformers as tf
from common import RESULTS_DIR, append_rows, default_device, environment, timed, timing

from vtrans_kernels import CompactionPlan, compact
from vtrans_kernels.hf import adapter_for
from vtrans_kernels.masks import count_flops, count_parameters

RESULTS = RESULTS_DIR / "bench_compacted.csv"

SHAPES = {  # (GPU shape, CPU smoke shape)
    "bert": (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
             dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)),
    "llama": (dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                   intermediate_size=2816, head_dim=64),
              dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                   intermediate_size=704, head_dim=32)),
}


def build(arch: str, gpu: bool):
    shape = SHAPES[arch][0 if gpu else 1]
    if arch == "bert":
        return tf.BertModel(tf.BertConfig(vocab_size=30522, max_position_embeddings=512, **shape))
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=32000, **shape))


def uniform_plan(model, sparsity: float, seed: int) -> CompactionPlan:
    """Keep the same fraction r of every structure in every layer, r chosen so that the layers' parameters
    drop by ``sparsity`` (size model, embeddings excluded); random units."""
    spec = adapter_for(model).spec()
    full = count_parameters(spec, embeddings=False)

    def counts(r):
        return (max(1, round(r * spec.hidden_size)), [max(1, round(r * u)) for u in spec.units_per_layer],
                [max(1, round(r * f)) for f in spec.ffn_per_layer])

    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if count_parameters(spec, *counts(mid), embeddings=False) > (1 - sparsity) * full:
            high = mid
        else:
            low = mid
    hidden, heads, ffn = counts(low)
    gen = torch.Generator().manual_seed(seed)

    def pick(total, n):
        return sorted(torch.randperm(total, generator=gen)[:n].tolist())

    return CompactionPlan(hidden=pick(spec.hidden_size, hidden),
                          heads={i: pick(spec.units_per_layer[i], n) for i, n in enumerate(heads)},
                          ffn={i: pick(spec.ffn_per_layer[i], n) for i, n in enumerate(ffn)})


def measurements(arch: str, model, batch: int, seq: int, device: str):
    """{mode: (callable, tokens per call)} for the model's deployment modes."""
    ids = torch.randint(3, 1000, (batch, seq), device=device)
    if arch == "bert":
        return {"forward": (lambda: model(input_ids=ids), batch * seq)}
    cache_holder = {}

    def prefill():
        cache_holder["out"] = model(input_ids=ids, use_cache=True)
        return cache_holder["out"]

    prefill()
    next_ids = ids[:, -1:]
    # transformers 5.24 renamed the forward's ``past_key_values`` argument to ``cache``
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def decode():
        cache = cache_holder["out"].past_key_values
        out = model(input_ids=next_ids, use_cache=True, **{cache_arg: cache})
        cache.crop(-1)  # drop the new position again so every timed step sees the same cache length
        return out

    return {"prefill": (prefill, batch * seq), "decode": (decode, batch)}


def run(device: str, smoke: bool, archs=tuple(SHAPES), sparsities=(0.5, 0.75, 0.9), batches=None, seqs=None,
        round_to: int | None = None, dtype: str | None = None) -> list[dict]:
    """Time dense against compacted models on ``device``; one row per (arch, variant, mode, batch, seq).
    Defaults: real shapes, batch 1/8/32 x seq 128/512, round_to 64, bf16 on a GPU; the small CPU shapes at
    batch 4 x seq 64 (batch 2 x seq 16 and 3 timed runs with ``smoke``), round_to 8, fp32 on CPU."""
    gpu = device == "cuda"
    if not gpu:
        print("no GPU: CPU run at small shapes; the GPU goal (>= 0.8x the FLOPs reduction) needs a GPU")
    batches = batches or ([1, 8, 32] if gpu else [2 if smoke else 4])
    seqs = seqs or ([128, 512] if gpu else [16 if smoke else 64])
    round_to = round_to or (64 if gpu else 8)
    dtype = getattr(torch, dtype or ("bfloat16" if gpu else "float32"))
    env = environment(device)
    rows = []
    with torch.inference_mode():
        for arch in archs:
            dense = build(arch, gpu).to(device=device, dtype=dtype).eval()
            spec = adapter_for(dense).spec()
            variants = [("dense", 0.0, 1, dense)]
            for sparsity in sparsities:
                plan = uniform_plan(dense, sparsity, seed=0)
                for rnd in (1, round_to):
                    variants.append((f"compact{'' if rnd == 1 else f'-round{rnd}'}", sparsity, rnd,
                                     compact(dense, plan, round_to=rnd)))
            for batch in batches:
                for seq in seqs:
                    baseline = {}
                    for label, sparsity, rnd, model in variants:
                        units = adapter_for(model).units()
                        flops = count_flops(spec, seq, units.hidden, units.heads, units.ffn)
                        for mode, (fn, tokens) in measurements(arch, model, batch, seq, device).items():
                            median, p20, p80 = timed(fn, device, repeats=3 if smoke else 7)
                            if label == "dense":
                                baseline[mode] = (median, flops)
                            speedup = baseline[mode][0] / median
                            flops_reduction = baseline[mode][1] / flops
                            rows.append(dict(**env, op=arch, shape=f"{batch}x{seq}", dtype=str(dtype).split(".")[-1],
                                             mode=mode, impl=label, **timing(median, p20, p80), sparsity=sparsity,
                                             round_to=rnd, batch=batch, seq=seq,
                                             tokens_per_s=f"{tokens / median * 1e3:.0f}", speedup=f"{speedup:.2f}",
                                             flops_reduction=f"{flops_reduction:.2f}",
                                             speedup_over_flops=f"{speedup / flops_reduction:.2f}"))
                            print(f"{arch:<6} {label:<15} s={sparsity:<4} {mode:<8} b={batch:<3} s={seq:<4} "
                                  f"{median:9.3f} ms  {speedup:5.2f}x dense  (FLOPs {flops_reduction:5.2f}x, "
                                  f"ratio {speedup / flops_reduction:4.2f})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(SHAPES), choices=sorted(SHAPES))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--batch", nargs="+", type=int, default=None)
    parser.add_argument("--seq", nargs="+", type=int, default=None)
    parser.add_argument("--round-to", type=int, default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--smoke", action="store_true", help="tiniest CPU batch and sequence")
    args = parser.parse_args()
    device = default_device()
    append_rows(RESULTS, run(device, args.smoke, args.arch, args.sparsities, args.batch, args.seq, args.round_to,
                             args.dtype))


if __name__ == "__main__":
    main()
