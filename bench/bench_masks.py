"""Microbenchmark of the fused VIB gate against the PyTorch composition it replaces (randn + mul + mul).

Measures, in one run on the device at hand: the copy bandwidth (the roofline of an elementwise op), then
vib_gate forward, backward and forward+backward for each backend against the composition (eager, and under
torch.compile except in a smoke run), reporting median time, GB/s, peak memory, the fraction of the copy
bandwidth and the speedup over the composition. Goal on a GPU (bf16, 4096 x 3072): at least 80% of the copy
bandwidth and at least 2.5x the composition.
Rows go to bench/results/bench_masks.csv (device, versions, git sha). Without a GPU it runs a small CPU
smoke test: CPU figures say nothing about the GPU goals.

Usage: python bench/bench_masks.py [--rows 4096] [--cols 3072] [--dtype bfloat16] [--smoke]
The suite (python -m bench) calls ``run(device, smoke)``.
"""
import argparse

import torch
from common import RESULTS_DIR, append_rows, copy_bandwidth, default_device, environment, peak_mib, timed, timing

import vtrans_kernels
from vtrans_kernels import backends, ops

RESULTS = RESULTS_DIR / "bench_masks.csv"


def composition(x, mu, log_sigma2):
    """What mask-training code does without the fused op: draw the noise, build z, multiply."""
    eps = torch.randn(x.shape, device=x.device, dtype=torch.float32)
    return (x.float() * (mu + torch.exp(0.5 * log_sigma2) * eps)).to(x.dtype)


def run(device: str, smoke: bool, rows: int | None = None, cols: int | None = None,
        dtype: str = "bfloat16") -> list[dict]:
    """Time vib_gate (every serving backend) against the composition, eager and (except with ``smoke``)
    under torch.compile, on ``device``; one row per measurement. Default shape 4096 x 3072 on a GPU, 512 x 768 on CPU, 64 x 256 with ``smoke``."""
    gpu = device == "cuda"
    rows = rows or (4096 if gpu else 64 if smoke else 512)
    cols = cols or (3072 if gpu else 256 if smoke else 768)
    if not gpu:
        print("no GPU: CPU smoke run at a small shape; the GPU goals need a GPU")
    env = environment(device)
    torch_dtype = getattr(torch, dtype)
    x = torch.randn(rows, cols, device=device, dtype=torch_dtype, requires_grad=True)
    mu = torch.ones(cols, device=device, requires_grad=True)
    log_sigma2 = torch.full((cols,), -4.0, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    bytes_fwd = 2 * x.numel() * x.element_size()  # read x, write y
    bytes_bwd = 3 * x.numel() * x.element_size()  # read grad and x, write dx
    copy_gbs = copy_bandwidth(x.detach(), device)[0]
    print(f"device {env['device']}: copy bandwidth {copy_gbs:.0f} GB/s; vib_gate {rows} x {cols} {dtype}")

    def modes(fn):
        def full():
            x.grad = mu.grad = log_sigma2.grad = None
            fn().backward(grad)
        y = fn()
        return {"forward": (lambda: fn(), bytes_fwd),
                "backward": (lambda: torch.autograd.grad(y, (x, mu, log_sigma2), grad, retain_graph=True),
                             bytes_bwd),
                "full": (full, bytes_fwd + bytes_bwd)}

    candidates = {"composition": lambda: composition(x, mu, log_sigma2)}
    if not smoke:  # compiling takes longer than a smoke test may
        compiled = torch.compile(composition)
        candidates["compiled-composition"] = lambda: compiled(x, mu, log_sigma2)
    for backend in backends.NAMES:
        if backend != "torch" and backends.BACKENDS[backend].why_not(device, torch.float32) is None:
            candidates[backend] = (lambda b=backend: _fused(b, x, mu, log_sigma2))
    out, baseline = [], {}
    for label, fn in candidates.items():
        for mode, (call, nbytes) in modes(fn).items():
            median, p20, p80 = timed(call, device)
            gbs = nbytes / median / 1e6
            if label == "composition":
                baseline[mode] = median
            speedup = baseline[mode] / median
            out.append(dict(**env, op="vib_gate", impl=label, mode=mode, shape=f"{rows}x{cols}", dtype=dtype,
                            **timing(median, p20, p80), gb_per_s=f"{gbs:.1f}", peak_mib=peak_mib(call, device),
                            frac_copy_bw=f"{gbs / copy_gbs:.3f}", speedup_vs_composition=f"{speedup:.2f}"))
            print(f"  {label:<12} {mode:<9} {median:8.3f} ms  {gbs:7.1f} GB/s  {gbs / copy_gbs:5.1%} of copy  "
                  f"{speedup:5.2f}x composition")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--cols", type=int, default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--smoke", action="store_true", help="tiny shape (CPU smoke test)")
    args = parser.parse_args()
    device = default_device()
    append_rows(RESULTS, run(device, args.smoke, args.rows, args.cols, args.dtype))


def _fused(backend, x, mu, log_sigma2):
    with vtrans_kernels.use_backend(backend):
        return ops.vib_gate(x, mu, log_sigma2, seed=1)


if __name__ == "__main__":
    main()
