"""Microbenchmark of the fused masked linear (GELU + VIB output gate) and masked SwiGLU against the unmasked
layer and the eager PyTorch composition mask-training code uses today (linear + act + randn + mul).

Shapes (bf16): BERT-base FFN up-projection 4096 x 768 -> 3072 and LLaMA-7B 4096 x 4096 -> 11008 for
masked_linear; LLaMA-7B gate/up projections 4096 x 4096 -> 11008 for masked_swiglu. Modes: fwd, bwd, full
(fwd + bwd). Reported: median / p20 / p80 ms, TFLOP/s of the GEMMs, peak memory above the inputs, and the
ratios time / unmasked time (goal: at most 1.15) and eager time / time (goal: at least 1.5 for full), plus
peak memory against eager (goal: less). Without a GPU it runs a tiny CPU smoke shape: CPU figures say
nothing about the goals.

Usage: python bench/bench_masked_linear.py [--smoke] [--device cuda|cpu] [--csv PATH]
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS_DIR, environment, op_bench_main, timed  # noqa: E402

from vtrans_kernels import ops  # noqa: E402

RESULTS = RESULTS_DIR / "bench_masked_linear.csv"
SHAPES = {"masked_linear": [("bert-base", 4096, 768, 3072), ("llama-7b", 4096, 4096, 11008)],
          "masked_swiglu": [("llama-7b", 4096, 4096, 11008)]}
SMOKE_SHAPE = ("smoke", 64, 32, 48)
SEED = 1234


def _vib_z(mu, log_sigma2, rows):
    # the eager composition: draw the noise, build z, multiply (what pruning code does without the fused op)
    eps = torch.randn(rows, mu.shape[0], device=mu.device, dtype=torch.float32)
    return mu + torch.exp(0.5 * log_sigma2) * eps


def implementations(op: str) -> dict:
    """impl name -> fn(x, weights, mu, log_sigma2) for one op."""
    if op == "masked_linear":
        def fused(x, w, mu, ls2):
            return ops.masked_linear(x, w[0], w[1], activation="gelu", mu=mu, log_sigma2=ls2, seed=SEED)

        def unmasked(x, w, mu, ls2):
            return F.gelu(F.linear(x, w[0], w[1]))

        def eager(x, w, mu, ls2):
            return (F.gelu(F.linear(x, w[0], w[1])) * _vib_z(mu, ls2, x.shape[0])).to(x.dtype)
    else:
        def fused(x, w, mu, ls2):
            return ops.masked_swiglu(x, w[0], w[1], mu=mu, log_sigma2=ls2, seed=SEED)

        def unmasked(x, w, mu, ls2):
            return F.silu(F.linear(x, w[0])) * F.linear(x, w[1])

        def eager(x, w, mu, ls2):
            return (F.silu(F.linear(x, w[0])) * F.linear(x, w[1]) * _vib_z(mu, ls2, x.shape[0])).to(x.dtype)
    return {"vtrans": fused, "unmasked": unmasked, "eager": eager}


def _inputs(op, rows, k, n, device, dtype):
    x = torch.randn(rows, k, device=device, dtype=dtype, requires_grad=True)
    if op == "masked_linear":
        weights = [torch.randn(n, k, device=device, dtype=dtype) / k**0.5, torch.zeros(n, device=device, dtype=dtype)]
    else:
        weights = [torch.randn(n, k, device=device, dtype=dtype) / k**0.5 for _ in range(2)]
    mu = torch.ones(n, device=device, requires_grad=True)
    log_sigma2 = torch.full((n,), -4.0, device=device, requires_grad=True)
    for w in weights:
        w.requires_grad_(True)
    return x, weights, mu, log_sigma2


def _peak_mib(fn, device) -> float:
    """Peak memory (MiB) that ``fn`` allocates above what was allocated before it (GPU only; NaN on CPU)."""
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _modes(fn, x, weights, mu, log_sigma2, grad):
    leaves = (x, *weights, mu, log_sigma2)

    def fwd():
        return fn(x, weights, mu, log_sigma2)

    def full():
        torch.autograd.grad(fwd(), leaves, grad, allow_unused=True)

    y = fwd()
    return {"fwd": (lambda: fwd(), fwd),
            "bwd": (lambda: torch.autograd.grad(y, leaves, grad, retain_graph=True, allow_unused=True), None),
            "full": (full, full)}


def run(device: str, smoke: bool) -> list[dict]:
    """Benchmark rows for each op, shape, mode and implementation (see the module docstring)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    env = environment(device)
    rows_out = []
    for op, shapes in SHAPES.items():
        for label, rows, k, n in ([SMOKE_SHAPE] if smoke else shapes):
            x, weights, mu, log_sigma2 = _inputs(op, rows, k, n, device, dtype)
            grad = torch.randn(rows, n, device=device, dtype=dtype)
            fwd_flops = 2 * rows * k * n * len([w for w in weights if w.dim() == 2])
            flops = {"fwd": fwd_flops, "bwd": 2 * fwd_flops, "full": 3 * fwd_flops}
            impls = implementations(op)
            if device == "cuda":
                impls["compiled-eager"] = torch.compile(impls["eager"])
            measured = {}  # (impl, mode) -> (median, p20, p80, peak)
            for impl, fn in impls.items():
                for mode, (call, peak_call) in _modes(fn, x, weights, mu, log_sigma2, grad).items():
                    peak = _peak_mib(peak_call, device) if peak_call is not None else float("nan")
                    measured[impl, mode] = (*timed(call, device, repeats=3 if smoke else 7), peak)
            for (impl, mode), (median, p20, p80, peak) in measured.items():
                unmasked, eager = measured["unmasked", mode], measured["eager", mode]
                rows_out.append(dict(
                    **env, op=op, shape=f"{label} {rows}x{k}->{n}", dtype=str(dtype).replace("torch.", ""),
                    mode=mode, impl=impl, median_ms=round(median, 4), p20_ms=round(p20, 4), p80_ms=round(p80, 4),
                    tflops=round(flops[mode] / median / 1e9, 2), peak_mib=round(peak, 1),
                    time_vs_unmasked=round(median / unmasked[0], 3), speedup_vs_eager=round(eager[0] / median, 3),
                    peak_vs_eager=round(peak / eager[3], 3)))
    return rows_out


def main() -> None:
    rows = op_bench_main(__doc__, run, RESULTS)
    print(f"{'op':<14} {'shape':<28} {'mode':<5} {'impl':<15} {'ms':>9} {'TFLOP/s':>8} {'peak MiB':>9} "
          f"{'/unmasked':>9} {'eager/':>7}")
    for r in rows:
        print(f"{r['op']:<14} {r['shape']:<28} {r['mode']:<5} {r['impl']:<15} {r['median_ms']:>9.3f} "
              f"{r['tflops']:>8.2f} {r['peak_mib']:>9.1f} {r['time_vs_unmasked']:>9.3f} {r['speedup_vs_eager']:>7.2f}")


if __name__ == "__main__":
    main()
