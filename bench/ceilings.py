"""The ceilings of the device in hand: copy bandwidth (GB/s) and dense GEMM rate (TFLOP/s).

Kernel rows are reported as a fraction of these: a memory-bound op against the copy bandwidth, a GEMM-like op
against the GEMM rate. On a GPU: a 1 GiB bf16 copy and a bf16 8192^3 matmul (cuBLAS). On CPU the GEMM is
fp32 (bf16 matmul on CPU is no ceiling of anything) at small sizes, and the figures say nothing about a GPU.
"""
import torch

from .common import copy_bandwidth, environment, timed, timing


def run(device: str, smoke: bool) -> list[dict]:
    """Two rows (op "copy" with gb_per_s, op "gemm" with tflops) measured on ``device``."""
    gpu = device == "cuda"
    copy_numel = 2**29 if gpu else 2**20 if smoke else 2**24
    gemm_n = 8192 if gpu else 256 if smoke else 1024
    dtype = torch.bfloat16 if gpu else torch.float32
    dtype_name = str(dtype).split(".")[-1]
    env = dict(**environment(device), section="ceilings")

    x = torch.randn(copy_numel, device=device, dtype=dtype)
    gbs, copy_ms = copy_bandwidth(x, device)
    del x
    a = torch.randn(gemm_n, gemm_n, device=device, dtype=dtype)
    b = torch.randn(gemm_n, gemm_n, device=device, dtype=dtype)
    gemm_ms = timed(lambda: a @ b, device)
    tflops = 2 * gemm_n**3 / gemm_ms[0] / 1e9
    note = "" if gpu else "CPU figure (fp32), not a GPU one"
    print(f"ceilings on {env['device']}: copy {gbs:.1f} GB/s ({dtype_name}, {copy_numel:,} elements), "
          f"GEMM {tflops:.2f} TFLOP/s ({dtype_name}, {gemm_n}^3){'  [' + note + ']' if note else ''}")
    return [dict(**env, op="copy", shape=str(copy_numel), dtype=dtype_name, mode="ceiling", impl="torch.clone",
                 **timing(*copy_ms), gb_per_s=f"{gbs:.1f}", note=note),
            dict(**env, op="gemm", shape=f"{gemm_n}x{gemm_n}x{gemm_n}", dtype=dtype_name, mode="ceiling",
                 impl="torch.matmul", **timing(*gemm_ms), tflops=f"{tflops:.3f}", note=note)]


def values(rows: list[dict]) -> dict:
    """``{"gb_per_s": copy GB/s, "tflops": GEMM TFLOP/s}`` from the rows of :func:`run`."""
    by_op = {row["op"]: row for row in rows}
    return {"gb_per_s": float(by_op["copy"]["gb_per_s"]), "tflops": float(by_op["gemm"]["tflops"])}
