"""Microbenchmark of the fused masked norms (residual add + LayerNorm/RMSNorm over kept dims + VIB hidden gate)
against the unmasked norm and the eager PyTorch composition that pruning code uses today.

Shapes (bf16): BERT-base LayerNorm 4096 x 768 and LLaMA-7B RMSNorm 4096 x 4096 (rows = batch x sequence).
Impls, in one run: ``vtrans`` (ops.masked_layer_norm / masked_rms_norm with residual and seeded VIB gate),
``unmasked`` (x + residual, then F.layer_norm / F.rms_norm), ``eager`` (x + residual, the masked norm in
PyTorch, randn, gate multiply) and on a GPU ``compiled-eager`` (torch.compile of eager). Modes fwd / bwd /
full; GB/s counts the bytes the fused op must move (fwd: read x, residual, write y, h; bwd: read dy, dh, h,
write dx) for every impl, so GB/s compare like for like; also the fraction of the copy bandwidth and the
speedups over unmasked and eager. Without a GPU it runs a tiny CPU smoke shape (figures say nothing about a
GPU). Rows are appended to bench/results/bench_masked_norm.csv.

Usage: python bench/bench_masked_norm.py [--smoke] [--device cuda|cpu] [--csv PATH]
"""

import torch
import torch.nn.functional as F
from common import RESULTS_DIR, copy_bandwidth, environment, op_bench_main, peak_mib, timed, timing

from vtrans_kernels import ops
from vtrans_kernels.reference.masked_norm import layer_norm_kept, rms_norm_kept

RESULTS = RESULTS_DIR / "bench_masked_norm.csv"
SHAPES = {"layer_norm": ("bert-base", 4096, 768), "rms_norm": ("llama-7b", 4096, 4096)}
SMOKE_SHAPE = (64, 96)
SEED = 1


def _inputs(norm, rows, hidden, dtype, device):
    gen = torch.Generator().manual_seed(0)
    leaf = lambda t: t.to(device).requires_grad_(True)  # noqa: E731
    x = leaf(torch.randn(rows, hidden, generator=gen).to(dtype))
    residual = leaf(torch.randn(rows, hidden, generator=gen).to(dtype))
    keep = (torch.rand(hidden, generator=gen) < 0.75).to(device)
    weight = leaf(torch.ones(hidden, dtype=dtype))
    bias = leaf(torch.zeros(hidden, dtype=dtype)) if norm == "layer_norm" else None
    mu = leaf(torch.ones(hidden))
    log_sigma2 = leaf(torch.full((hidden,), -4.0))
    return x, residual, keep, weight, bias, mu, log_sigma2


def _impls(norm, x, residual, keep, weight, bias, mu, log_sigma2, compiled: bool):
    """label -> function returning the outputs (y, h) whose gradients the backward measures."""
    eps = 1e-5 if norm == "layer_norm" else 1e-6
    gate = dict(mu=mu, log_sigma2=log_sigma2)

    def vtrans():
        if norm == "layer_norm":
            return ops.masked_layer_norm(x, keep, weight, bias, eps, residual=residual, seed=SEED, **gate)
        return ops.masked_rms_norm(x, keep, weight, eps, residual=residual, seed=SEED, **gate)

    def unmasked():
        h = x + residual
        if norm == "layer_norm":
            return F.layer_norm(h, h.shape[-1:], weight, bias, eps), h
        return F.rms_norm(h, h.shape[-1:], weight, eps), h

    def eager():
        h = x + residual
        y = layer_norm_kept(h, keep, weight, bias, eps) if norm == "layer_norm" else rms_norm_kept(h, keep, weight, eps)
        noise = torch.randn(y.shape, device=y.device, dtype=torch.float32)
        return (y.float() * (mu + torch.exp(0.5 * log_sigma2) * noise)).to(y.dtype), h

    impls = {"vtrans": vtrans, "unmasked": unmasked, "eager": eager}
    if compiled:
        impls["compiled-eager"] = torch.compile(eager)
    return impls


def _modes(fn, leaves, grads):
    """mode -> callable: forward, backward of a retained forward, and forward + backward (the unmasked norm
    leaves the gate parameters unused)."""
    outs = fn()

    def full():
        torch.autograd.grad(fn(), leaves, grads, allow_unused=True)

    return {"fwd": fn, "full": full,
            "bwd": lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True, allow_unused=True)}


def run(device: str, smoke: bool, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """One row per (norm, impl, mode); see the module docstring."""
    if device == "cpu" and not smoke:
        print("no GPU: the GPU figures need a GPU; running the CPU smoke shape")
        smoke = True
    env = environment(device)
    rows_out = []
    for norm, (model, rows, hidden) in SHAPES.items():
        if smoke:
            rows, hidden = SMOKE_SHAPE
        x, residual, keep, weight, bias, mu, log_sigma2 = _inputs(norm, rows, hidden, dtype, device)
        leaves = [t for t in (x, residual, weight, bias, mu, log_sigma2) if t is not None]
        grads = (torch.randn_like(x), torch.randn_like(x))
        n_bytes = {"fwd": 4 * x.numel() * x.element_size(), "bwd": 4 * x.numel() * x.element_size()}
        n_bytes["full"] = n_bytes["fwd"] + n_bytes["bwd"]
        copy_gbs, _ = copy_bandwidth(x.detach(), device)
        shape = f"{rows}x{hidden}" + ("" if smoke else f" ({model})")
        print(f"{norm} {shape} {str(dtype).replace('torch.', '')}: copy bandwidth {copy_gbs:.0f} GB/s")
        medians = {}
        impls = _impls(norm, x, residual, keep, weight, bias, mu, log_sigma2, compiled=device == "cuda")
        for impl, fn in impls.items():
            for mode, call in _modes(fn, leaves, grads).items():
                median, p20, p80 = timed(call, device)
                medians[impl, mode] = median
                gbs = n_bytes[mode] / median / 1e6
                rows_out.append(dict(
                    **env, op=f"masked_{norm}", shape=shape, dtype=str(dtype).replace("torch.", ""), mode=mode,
                    impl=impl, **timing(median, p20, p80), tflops="", gb_per_s=f"{gbs:.1f}",
                    frac_copy_bw=f"{gbs / copy_gbs:.3f}", peak_mib=peak_mib(call, device)))
        for row in rows_out[-len(impls) * 3:]:
            ms = float(row["median_ms"])
            row["speedup_vs_unmasked"] = f"{medians['unmasked', row['mode']] / ms:.2f}"
            row["speedup_vs_eager"] = f"{medians['eager', row['mode']] / ms:.2f}"
            print(f"  {row['impl']:<15} {row['mode']:<5} {ms:8.3f} ms {float(row['gb_per_s']):8.1f} GB/s "
                  f"{float(row['frac_copy_bw']):6.1%} of copy  {row['speedup_vs_unmasked']:>5}x unmasked  "
                  f"{row['speedup_vs_eager']:>5}x eager")
    return rows_out


def main() -> None:
    op_bench_main(__doc__, run, RESULTS)


if __name__ == "__main__":
    main()
