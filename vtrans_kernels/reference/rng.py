"""Counter-based random numbers in plain PyTorch: the specification every backend reproduces.

Noise is defined over a 2-D view ``(rows, cols)`` of a tensor (cols = its last dimension). Element
``(r, c)`` takes word ``c % 4`` of the Philox4x32-10 block with key ``(seed_lo, seed_hi)`` and counter
``(c // 4, r_lo, r_hi, 0)``, so four neighbouring columns share one block (four draws per block keeps
the generator cheaper than the memory traffic it hides behind). A word ``w`` gives the uniform
``(w >> 9) * 2**-23 + 2**-24``: exact in fp32 and strictly inside (0, 1). Normals come by Box-Muller from
the word pairs (0, 1) and (2, 3): ``rho = sqrt(-2 log u_even)``, ``theta = 2 pi u_odd``, the even column
gets ``rho cos theta``, the odd one ``rho sin theta``. The Triton kernels (``triton/rng.py``) and the
C++/CUDA kernels (``csrc/include/vtrans_philox.h``) implement the same function, so a seed names the same
noise on every backend.
"""
import torch

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
TWO_PI = 6.283185307179586


def split_seed(seed: int | None) -> tuple[int, int]:
    """The two 32-bit key words of a seed (any Python int, taken modulo 2**64; None, for explicit noise, is 0)."""
    seed = (seed or 0) & ((1 << 64) - 1)
    return seed & _MASK32, seed >> 32


def rows_cols(t: torch.Tensor) -> tuple[int, int]:
    """The 2-D view noise is defined over: (rows, last dim); a 0-d tensor is one element."""
    cols = t.shape[-1] if t.dim() else 1
    return (t.numel() // cols if cols else 0), cols


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # 32x32 -> 64-bit product built from 16-bit halves so int64 arithmetic never overflows.
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    lo_lo, mid1, mid2, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    carry = ((lo_lo >> 16) + (mid1 & 0xFFFF) + (mid2 & 0xFFFF)) >> 16
    hi = (hi_hi + (mid1 >> 16) + (mid2 >> 16) + carry) & _MASK32
    lo = (lo_lo + ((mid1 + mid2) << 16)) & _MASK32
    return hi, lo


def philox4x32(seed: int, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 blocks for counters ``(c0, c1, c2, 0)``: int64 tensor of shape ``c0.shape + (4,)``."""
    k0, k1 = split_seed(seed)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return torch.stack((c0, c1, c2, c3), dim=-1)


def _words(seed: int, rows: int, cols: int, device) -> torch.Tensor:
    groups = (cols + 3) // 4
    r = torch.arange(rows, dtype=torch.int64, device=device)[:, None].expand(rows, groups)
    g = torch.arange(groups, dtype=torch.int64, device=device)[None, :].expand(rows, groups)
    return philox4x32(seed, g, r & _MASK32, (r >> 32) & _MASK32)  # [rows, groups, 4]


def word_to_uniform(word: torch.Tensor) -> torch.Tensor:
    """Map uint32 words (held in int64) to float32 uniforms strictly inside (0, 1)."""
    return (word >> 9).to(torch.float32) * (2.0**-23) + (2.0**-24)


def uniform(seed: int, rows: int, cols: int, device="cpu") -> torch.Tensor:
    """float32 ``[rows, cols]`` uniforms in (0, 1) for ``seed`` (the noise of ``hard_concrete_sample``)."""
    u = word_to_uniform(_words(seed, rows, cols, device))
    return u.reshape(rows, u.shape[1] * 4)[:, :cols]  # (not -1: ambiguous for 0 rows)


def normal(seed: int, rows: int, cols: int, device="cpu") -> torch.Tensor:
    """float32 ``[rows, cols]`` standard normals for ``seed`` (the noise of ``vib_gate``)."""
    u = word_to_uniform(_words(seed, rows, cols, device))
    rho = torch.sqrt(-2.0 * torch.log(u[..., 0::2]))  # [rows, groups, 2]
    theta = TWO_PI * u[..., 1::2]
    n = torch.stack((rho * torch.cos(theta), rho * torch.sin(theta)), dim=-1)  # [rows, groups, 2, 2]
    return n.reshape(rows, n.shape[1] * 4)[:, :cols]
