"""Launch helpers shared by the Triton kernel families: tile shapes and interpreter detection."""
import os

import triton

#: kernel arguments holding seed words: a new seed every step must not compile a new kernel variant
SEED_ARGS = ["seed_lo", "seed_hi"]


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at kernel definition)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tile_2d(rows: int, cols: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C) for a row-major 2-D elementwise pass; BLOCK_C is a multiple of 4 (one Philox block
    per 4 columns). The interpreter gets bigger tiles: its cost is per program, not per element."""
    elems = 16384 if interpreted() else 2048
    block_c = max(4, min(triton.next_power_of_2(cols), 256 if not interpreted() else 1024))
    block_r = max(1, min(triton.next_power_of_2(rows), elems // block_c))
    return block_r, block_c


def block_1d(numel: int) -> int:
    """Block size for a flat elementwise pass."""
    return max(16, min(triton.next_power_of_2(numel), 16384 if interpreted() else 1024))


def dot_precision(dtype) -> str:
    """``input_precision`` of ``tl.dot``: fp32 operands follow torch's setting (full fp32 unless
    ``torch.backends.cuda.matmul.allow_tf32``); 16-bit operands ignore it."""
    import torch
    return "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"


def round_bf16_by_hand(dtype) -> bool:
    """True when a kernel must round fp32 -> bf16 itself: the interpreter truncates that cast (measured with
    triton 3.8), while the GPU rounds to nearest even. Never true on the GPU path."""
    import torch
    return interpreted() and dtype == torch.bfloat16
