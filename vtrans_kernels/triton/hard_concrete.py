"""Triton kernels for the hard-concrete gates: sample, expected L0 and the deterministic top-k mask."""
import math

import torch
import triton
import triton.language as tl

from ..reference.rng import rows_cols, split_seed  # the noise spec's 2-D view and key words
from . import launch, rng

U_EPS = 1e-6


@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _sample_kernel(log_alpha_ptr, u_ptr, grad_ptr, out_ptr, R, C, seed_lo, seed_hi, inv_beta, limit_l, limit_r,
                   HAS_U: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    col0 = tl.program_id(1) * BLOCK_C
    cols = col0 + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    offs = rows[:, None] * C + cols[None, :]
    log_alpha = tl.load(log_alpha_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_U:
        u = tl.load(u_ptr + offs, mask=mask, other=0.5).to(tl.float32)
    else:
        u = rng.uniform_tile(seed_lo, seed_hi, rows, col0, BLOCK_C)
    u = tl.minimum(tl.maximum(u, 1e-6), 1.0 - 1e-6)
    s = tl.sigmoid((tl.log(u) - tl.log(1.0 - u) + log_alpha) * inv_beta)
    stretched = s * (limit_r - limit_l) + limit_l
    if BACKWARD:
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        inside = (stretched >= 0.0) & (stretched <= 1.0)
        d = tl.where(inside, g * (limit_r - limit_l) * s * (1.0 - s) * inv_beta, 0.0)
        tl.store(out_ptr + offs, d, mask=mask)
    else:
        tl.store(out_ptr + offs, tl.minimum(tl.maximum(stretched, 0.0), 1.0), mask=mask)


def _launch_sample(grad, log_alpha, u, seed, beta, limit_l, limit_r):
    out = torch.empty_like(log_alpha)
    rows, cols = rows_cols(log_alpha)
    block_r, block_c = launch.tile_2d(rows, cols)
    lo, hi = split_seed(seed)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    _sample_kernel[grid](log_alpha, u, grad, out, rows, cols, lo, hi, 1.0 / beta, limit_l, limit_r,
                         HAS_U=u is not None, BACKWARD=grad is not None, BLOCK_R=block_r, BLOCK_C=block_c)
    return out


def hard_concrete_sample(log_alpha, u, seed, beta, limit_l, limit_r):
    return _launch_sample(None, log_alpha, u, seed, beta, limit_l, limit_r)


def hard_concrete_sample_backward(grad, log_alpha, u, seed, beta, limit_l, limit_r):
    return _launch_sample(grad, log_alpha, u, seed, beta, limit_l, limit_r)


@triton.jit
def _expected_l0_kernel(log_alpha_ptr, grad_ptr, out_ptr, n, shift, BACKWARD: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    p = tl.sigmoid(tl.load(log_alpha_ptr + offs, mask=mask, other=0.0).to(tl.float32) - shift)
    if BACKWARD:
        p = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32) * p * (1.0 - p)
    tl.store(out_ptr + offs, p, mask=mask)


def _l0_shift(beta, limit_l, limit_r):
    return beta * math.log(-limit_l / limit_r)


def _launch_expected_l0(grad, log_alpha, beta, limit_l, limit_r):
    out = torch.empty_like(log_alpha)
    n = log_alpha.numel()
    block = launch.block_1d(n)
    _expected_l0_kernel[(triton.cdiv(n, block),)](log_alpha, grad, out, n, _l0_shift(beta, limit_l, limit_r),
                                                  BACKWARD=grad is not None, BLOCK=block)
    return out


def hard_concrete_expected_l0(log_alpha, beta, limit_l, limit_r):
    return _launch_expected_l0(None, log_alpha, beta, limit_l, limit_r)


def hard_concrete_expected_l0_backward(grad, log_alpha, beta, limit_l, limit_r):
    return _launch_expected_l0(grad, log_alpha, beta, limit_l, limit_r)


@triton.jit
def _deterministic_kernel(log_alpha_ptr, grad_ptr, out_ptr, C, shift, value_scale, BACKWARD: tl.constexpr,
                          BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    # One program per (row, block of units i). Unit i is kept when fewer than keep_count units rank
    # above it (higher log_alpha, ties to the lower index): an O(C^2 / BLOCK) count, no sort needed.
    row_base = tl.program_id(0).to(tl.int64) * C
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_mask = i < C
    la_i = tl.load(log_alpha_ptr + row_base + i, mask=i_mask, other=0.0).to(tl.float32)
    expected = tl.zeros([BLOCK_J], dtype=tl.float32)
    above = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in range(0, C, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        j_mask = j < C
        la_j = tl.load(log_alpha_ptr + row_base + j, mask=j_mask, other=0.0).to(tl.float32)
        expected += tl.where(j_mask & (la_j == la_j), tl.sigmoid(la_j - shift), 0.0)  # a NaN unit counts 0
        ahead = (la_j[None, :] > la_i[:, None]) | ((la_j[None, :] == la_i[:, None]) & (j[None, :] < i[:, None]))
        above += tl.sum((ahead & j_mask[None, :]).to(tl.int32), axis=1)
    keep_count = tl.floor(tl.sum(expected, axis=0) + 0.5)
    keep = (above.to(tl.float32) < keep_count) & (la_i == la_i)  # NaN: pruned, and never ahead of a unit
    value = tl.sigmoid(la_i * value_scale)
    if BACKWARD:
        g = tl.load(grad_ptr + row_base + i, mask=i_mask, other=0.0).to(tl.float32)
        value = g * value * (1.0 - value) * value_scale
    tl.store(out_ptr + row_base + i, tl.where(keep, value, 0.0), mask=i_mask)


def _launch_deterministic(grad, log_alpha, beta, limit_l, limit_r):
    out = torch.empty_like(log_alpha)
    rows, cols = rows_cols(log_alpha)
    widest = 1024 if launch.interpreted() else 128  # the interpreter pays per step, not per element
    block_i = max(16, min(triton.next_power_of_2(cols), widest))
    block_j = max(16, min(triton.next_power_of_2(cols), widest))
    _deterministic_kernel[(rows, triton.cdiv(cols, block_i))](
        log_alpha, grad, out, cols, _l0_shift(beta, limit_l, limit_r), 0.8 / beta,
        BACKWARD=grad is not None, BLOCK_I=block_i, BLOCK_J=block_j)
    return out


def hard_concrete_deterministic(log_alpha, beta, limit_l, limit_r):
    return _launch_deterministic(None, log_alpha, beta, limit_l, limit_r)


def hard_concrete_deterministic_backward(grad, log_alpha, beta, limit_l, limit_r):
    return _launch_deterministic(grad, log_alpha, beta, limit_l, limit_r)
