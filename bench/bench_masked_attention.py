"""Microbenchmark of the fused masked attention (flash attention + VIB head gate with in-kernel noise).

Shapes: BERT-base (B=32, 12 heads x 64, seq 128) and LLaMA-7B (B=2, 32 heads x 128, seq 2048, causal), bf16.
Implementations, in one run: ``vtrans`` (ops.masked_attention with a VIB gate per head, seed noise),
``unmasked`` (SDPA, flash on a GPU, no gate), ``eager`` (what pruning code does today: SDPA, then randn and a
multiply by the gate) and ``compiled-eager`` (that composition under torch.compile). Modes fwd / bwd / full;
median ms, TFLOP/s (attention matmuls; causal counts half), peak memory of a full step, and ratios against the
unmasked and eager baselines. Goals on a GPU: vtrans within 1.1x of unmasked, at least 1.5x faster than eager
forward+backward with less memory. Without a GPU only a tiny smoke shape runs (CPU figures mean nothing).

Usage: python bench/bench_masked_attention.py [--smoke] [--device cuda|cpu] [--csv PATH]
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS_DIR, environment, op_bench_main, timed  # noqa: E402

from vtrans_kernels import ops  # noqa: E402

RESULTS = RESULTS_DIR / "bench_masked_attention.csv"
# name -> (B, heads, seq, head_dim, causal)
SHAPES = {"bert-base": (32, 12, 128, 64, False), "llama-7b": (2, 32, 2048, 128, True)}
SMOKE_SHAPE = {"smoke": (1, 2, 32, 32, True)}


def eager(q, k, v, mu, log_sigma2, causal):
    """SDPA, then per-token noise and a multiply by the head gate (the composition the fused op replaces)."""
    b, h, s, d = q.shape
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)  # [B, S, H, D]
    z = mu + torch.exp(0.5 * log_sigma2) * torch.randn(b * s, h, device=q.device)
    return (out.float() * z.view(b, s, h, 1)).to(q.dtype)


def unmasked(q, k, v, mu, log_sigma2, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)


def fused(q, k, v, mu, log_sigma2, causal):
    return ops.masked_attention(q, k, v, causal=causal, mu=mu, log_sigma2=log_sigma2, seed=1)


def _inputs(shape, device, dtype):
    b, h, s, d, _ = shape
    # transformers' layout: [B, S, H, D] projections viewed as [B, H, S, D]
    qkv = [torch.randn(b, s, h, d, device=device, dtype=dtype).transpose(1, 2).requires_grad_(True)
           for _ in range(3)]
    mu = torch.ones(h, device=device, requires_grad=True)
    log_sigma2 = torch.full((h,), -4.0, device=device, requires_grad=True)
    return qkv, mu, log_sigma2


def _peak_mib(fn, device) -> float:
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(device: str, smoke: bool) -> list[dict]:
    """Measure every implementation, shape and mode; returns the CSV rows (printing a table as it goes)."""
    env = environment(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    impls = {"unmasked": unmasked, "eager": eager, "vtrans": fused}
    if not smoke:
        impls["compiled-eager"] = torch.compile(eager)
    rows = []
    for shape_name, shape in (SMOKE_SHAPE if smoke else SHAPES).items():
        b, h, s, d, causal = shape
        flops_fwd = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
        qkv, mu, log_sigma2 = _inputs(shape, device, dtype)
        leaves = (*qkv, mu, log_sigma2)
        measured = {}  # (impl, mode) -> (median, p20, p80, flops, peak)
        for impl, fn in impls.items():
            call = lambda fn=fn: fn(*qkv, mu, log_sigma2, causal)  # noqa: E731
            y = call()
            grad = torch.randn_like(y)
            step = lambda call=call, grad=grad: torch.autograd.grad(call(), leaves, grad, allow_unused=True)  # noqa: E731
            modes = {"fwd": (call, flops_fwd),
                     "bwd": (lambda y=y, grad=grad: torch.autograd.grad(y, leaves, grad, retain_graph=True,
                                                                        allow_unused=True), 2.5 * flops_fwd),
                     "full": (step, 3.5 * flops_fwd)}
            peak = _peak_mib(step, device)
            for mode, (fn_mode, flops) in modes.items():
                measured[(impl, mode)] = (*timed(fn_mode, device), flops, peak)
        for (impl, mode), (median, p20, p80, flops, peak) in measured.items():
            row = dict(**env, op="masked_attention",
                       shape=f"{shape_name} B{b} H{h} S{s} D{d}" + (" causal" if causal else ""),
                       dtype=str(dtype).replace("torch.", ""), mode=mode, impl=impl,
                       median_ms=round(median, 4), p20_ms=round(p20, 4), p80_ms=round(p80, 4),
                       tflops=round(flops / median / 1e9, 2), peak_mib=round(peak, 1),
                       vs_unmasked=round(median / measured[("unmasked", mode)][0], 3),
                       speedup_vs_eager=round(measured[("eager", mode)][0] / median, 3))
            rows.append(row)
            print(f"{row['shape']:<32} {impl:<15} {mode:<5} {median:9.3f} ms {row['tflops']:8.2f} TFLOP/s "
                  f"peak {peak:8.1f} MiB  {row['vs_unmasked']:5.2f}x unmasked  "
                  f"{row['speedup_vs_eager']:5.2f}x faster than eager")
    return rows


def main() -> None:
    op_bench_main(__doc__, run, RESULTS)


if __name__ == "__main__":
    main()
