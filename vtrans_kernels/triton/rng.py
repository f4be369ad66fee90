"""Philox4x32-10 noise inside Triton kernels: the function specified in ``reference/rng.py``.

Element ``(r, c)`` of the 2-D noise view takes word ``c % 4`` of the block with counter
``(c // 4, r_lo, r_hi, 0)``. The helpers compute one block per group of four columns and interleave
the words back into column order, so a tile costs a quarter of a Philox evaluation per element.
"""
import triton
import triton.language as tl


@triton.jit
def philox4x32(seed_lo, seed_hi, c0, c1, c2):
    """Philox4x32-10 on uint32 counters ``(c0, c1, c2, 0)`` with key ``(seed_lo, seed_hi)``."""
    c3 = tl.zeros_like(c0)
    # (seed words may arrive as i32, i64 or a constexpr 1 after Triton's integer specialisation)
    k0 = (tl.zeros_like(c0) + seed_lo).to(tl.uint32)
    k1 = (tl.zeros_like(c0) + seed_hi).to(tl.uint32)
    for _ in tl.static_range(10):
        a0 = c0
        a2 = c2
        c0 = tl.umulhi(a2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(a0, 0xD2511F53) ^ c3 ^ k1
        c1 = tl.mul(a2, 0xCD9E8D57, sanitize_overflow=False)
        c3 = tl.mul(a0, 0xD2511F53, sanitize_overflow=False)
        k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
        k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def word_to_uniform(word):
    """uint32 -> float32 uniform strictly inside (0, 1), exact: ``(w >> 9) * 2**-23 + 2**-24``."""
    return (word >> 9).to(tl.float32) * 1.1920928955078125e-07 + 5.960464477539063e-08


@triton.jit
def _block_words(seed_lo, seed_hi, rows, group0, GROUPS: tl.constexpr):
    # rows: int64 [BLOCK_R]; returns four uint32 [BLOCK_R, GROUPS] words for column groups group0 + j.
    groups = group0 + tl.arange(0, GROUPS)
    c0 = tl.zeros_like(rows[:, None]).to(tl.uint32) + groups[None, :].to(tl.uint32)
    c1 = (rows[:, None] & 0xFFFFFFFF).to(tl.uint32) + tl.zeros_like(c0)
    c2 = ((rows[:, None] >> 32) & 0xFFFFFFFF).to(tl.uint32) + tl.zeros_like(c0)
    return philox4x32(seed_lo, seed_hi, c0, c1, c2)


@triton.jit
def _to_columns(v0, v1, v2, v3):
    # [R, G] x 4 -> [R, 4G] with column 4g + k taken from v_k[:, g].
    return tl.interleave(tl.interleave(v0, v2), tl.interleave(v1, v3))


@triton.jit
def uniform_tile(seed_lo, seed_hi, rows, col0, BLOCK_C: tl.constexpr):
    """Uniforms for rows ``rows`` (int64 [BLOCK_R]) and columns ``col0 .. col0+BLOCK_C`` (col0 % 4 == 0)."""
    w0, w1, w2, w3 = _block_words(seed_lo, seed_hi, rows, col0 // 4, BLOCK_C // 4)
    return _to_columns(word_to_uniform(w0), word_to_uniform(w1), word_to_uniform(w2), word_to_uniform(w3))


@triton.jit
def normal_tile(seed_lo, seed_hi, rows, col0, BLOCK_C: tl.constexpr):
    """Standard normals for rows ``rows`` and columns ``col0 .. col0+BLOCK_C`` (col0 % 4 == 0)."""
    w0, w1, w2, w3 = _block_words(seed_lo, seed_hi, rows, col0 // 4, BLOCK_C // 4)
    rho_a = tl.sqrt(-2.0 * tl.log(word_to_uniform(w0)))
    theta_a = 6.283185307179586 * word_to_uniform(w1)
    rho_b = tl.sqrt(-2.0 * tl.log(word_to_uniform(w2)))
    theta_b = 6.283185307179586 * word_to_uniform(w3)
    return _to_columns(rho_a * tl.cos(theta_a), rho_a * tl.sin(theta_a),
                       rho_b * tl.cos(theta_b), rho_b * tl.sin(theta_b))
