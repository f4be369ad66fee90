"""Autotuning of the masked linear GEMM: the candidate tiles per operand width, the resource estimates that
drop a tile before anything compiles, and the row-count bucket that the tuning is keyed by.

Estimates (checked against the compiler's numbers for sm_80 and sm_90 by bench/compile_check.py, which fails
when a kept tile exceeds shared memory or a kept 16-bit tile spills):
- shared memory: the pipeline keeps ``buffers`` copies of an x tile and one weight tile per weight (two with
  SwiGLU), plus the input gate's tile (fp32 [BLOCK_M, BLOCK_K] per row, [BLOCK_K] shared); Hopper's wgmma path
  with 16-bit operands uses ``num_stages`` buffers, the mma path ``num_stages - 1`` (exact on sm_80); with fp32
  operands the gated x tile is staged once more (measured on both targets);
- registers: the fp32 accumulators per thread and weight, ``BLOCK_M * BLOCK_N / (32 * num_warps)``, must leave
  room for the operands and the epilogue. Measured on sm_90 (bf16, 4096^3): with a plain, vector-gate or VIB
  evaluation epilogue 64 per weight fit (110-224 registers, no spills); with the VIB training epilogue (Philox
  noise for the whole tile, plus erf for GELU) 64 spill 240 bytes and 32 fit (174-180 registers); SwiGLU's two
  accumulators with 64 each spill on sm_80 and in 4-warp tiles on sm_90, and sm_80's mma path spills at 64
  where sm_90's wgmma does not. So 64 per weight only on sm_90 without noise and without SwiGLU, else 32.
  16 warps cap a thread at 128 registers and spill: never used.
"""
import torch
import triton

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried for 16-bit operands
TILES_16BIT = ((128, 128, 64, 8, 3), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (128, 64, 64, 4, 4),
               (64, 128, 64, 4, 4), (64, 64, 64, 4, 4))
#: fp32 operands: twice the bytes per element, so shorter K steps and fewer stages
TILES_FP32 = ((128, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3))
#: fp32 accumulators per thread and weight: the roomy case (sm_90, light epilogue, one weight), and every other
MAX_ACC_PER_THREAD, MAX_ACC_PER_THREAD_TIGHT = 64, 32
VIB_GATE = 2  # masked_linear's GATE constexpr of the VIB gate
#: row counts are tuned per power-of-two bucket between these (below the first, one launch wave holds every tile;
#: above the last, every tile is saturated)
MIN_ROW_BUCKET, MAX_ROW_BUCKET = 1 << 8, 1 << 16


def all_configs() -> list:
    """Every candidate as a triton.Config; ``prune`` keeps the ones for the call's dtype that fit the GPU."""
    return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, GROUP_M=8), num_warps=w, num_stages=s)
            for m, n, k, w, s in dict.fromkeys(TILES_16BIT + TILES_FP32)]


def row_bucket(rows: int) -> int:
    """The autotuning key for ``rows`` (batch x sequence): the next power of two, capped, so a training run
    with varying batch and sequence sizes tunes a handful of times, not once per shape."""
    return min(max(triton.next_power_of_2(max(rows, 1)), MIN_ROW_BUCKET), MAX_ROW_BUCKET)


def shared_bytes(cfg, operand_bytes: int, weights: int, arch: int, in_gate: int = 0) -> int:
    """Estimated shared memory of a tile config (see the module docstring); ``in_gate``: masked_linear's
    IN_GATE (0 none, 1 shared [groups], 2 per row [rows, groups])."""
    kw = cfg.kwargs
    buffers = cfg.num_stages if (arch >= 90 and operand_bytes == 2) else cfg.num_stages - 1
    per_stage = (kw["BLOCK_M"] + weights * kw["BLOCK_N"]) * kw["BLOCK_K"] * operand_bytes
    gate_tile = {0: 0, 1: kw["BLOCK_K"] * 4, 2: kw["BLOCK_M"] * kw["BLOCK_K"] * 4}[in_gate]
    staged_x = kw["BLOCK_M"] * kw["BLOCK_K"] * 4 if in_gate and operand_bytes == 4 else 0
    return max(1, buffers) * (per_stage + gate_tile) + staged_x


def accumulators_per_thread(cfg) -> int:
    """fp32 accumulator registers per thread for one weight."""
    kw = cfg.kwargs
    return kw["BLOCK_M"] * kw["BLOCK_N"] // (32 * cfg.num_warps)


def _device_limits(x: torch.Tensor) -> tuple[int, int]:
    """(max shared memory per block, compute capability as 80/90/...) of the device Triton compiles for."""
    from triton.runtime import driver
    active = driver.active
    device = x.device.index if x.device.type == "cuda" and x.device.index is not None else \
        active.get_current_device()
    return active.utils.get_device_properties(device)["max_shared_mem"], active.get_current_target().arch


def fits(cfg, dtype: torch.dtype, swiglu: bool, noise: bool, in_gate: int, max_shared: int, arch: int) -> bool:
    """Whether the estimates keep ``cfg`` for operands of ``dtype`` on a device with these limits (``noise``:
    the epilogue draws or loads VIB training noise; ``in_gate`` as in ``shared_bytes``)."""
    operand_bytes = 4 if dtype == torch.float32 else 2
    tiles = TILES_FP32 if operand_bytes == 4 else TILES_16BIT
    kw = cfg.kwargs
    if (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], cfg.num_warps, cfg.num_stages) not in tiles:
        return False
    weights = 2 if swiglu else 1
    roomy = arch >= 90 and not noise and not swiglu
    return (shared_bytes(cfg, operand_bytes, weights, arch, in_gate) <= max_shared
            and accumulators_per_thread(cfg) <= (MAX_ACC_PER_THREAD if roomy else MAX_ACC_PER_THREAD_TIGHT))


def prune(configs, named_args, **kwargs):
    """``early_config_prune`` of the autotuner: the configs for this call's dtype and epilogue that fit this
    GPU (the autotuning key holds every flag this depends on)."""
    x = named_args["x_ptr"]
    max_shared, arch = _device_limits(x)
    noise = kwargs.get("GATE") == VIB_GATE and bool(kwargs.get("TRAINING"))
    kept = [c for c in configs
            if fits(c, x.dtype, bool(kwargs.get("SWIGLU")), noise, int(kwargs.get("IN_GATE", 0)), max_shared, arch)]
    if not kept:
        raise RuntimeError(f"vtrans masked_linear (triton): no tile fits a device with {max_shared} bytes of "
                           f"shared memory for {x.dtype} operands")
    return kept
