"""Triton kernels for the VIB gates: the fused gate (noise drawn in-kernel, regenerated in backward), the KL
penalty and the soft keep probability."""
import torch
import triton
import triton.language as tl

from ..reference.rng import rows_cols, split_seed  # the noise spec's 2-D view and key words
from . import launch, rng
from .rounding import cast_out


@triton.jit
def gate_columns(mu_ptr, log_sigma2_ptr, cols, col_mask, TRAINING: tl.constexpr):
    """Per-column VIB gate parameters: (mu, sigma) while training, (mu * keep, 0) in evaluation (every fused
    kernel with a VIB gate uses this, so all compute the gate of ``vib_gate``)."""
    mu = tl.load(mu_ptr + cols, mask=col_mask, other=0.0)
    log_sigma2 = tl.load(log_sigma2_ptr + cols, mask=col_mask, other=0.0)
    if TRAINING:
        return mu, tl.exp(0.5 * log_sigma2)
    keep = mu * mu > tl.exp(log_sigma2)
    return tl.where(keep, mu, 0.0), tl.zeros_like(mu)


@triton.jit
def gate_noise(eps_ptr, offs, mask, seed_lo, seed_hi, rows, col0, HAS_EPS: tl.constexpr, BLOCK_C: tl.constexpr):
    """The VIB noise of a [rows, col0:col0+BLOCK_C] tile: loaded from ``eps_ptr`` or drawn from the seed."""
    if HAS_EPS:
        return tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return rng.normal_tile(seed_lo, seed_hi, rows, col0, BLOCK_C)


@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _gate_forward_kernel(x_ptr, mu_ptr, log_sigma2_ptr, eps_ptr, out_ptr, R, C, seed_lo, seed_hi,
                         TRAINING: tl.constexpr, HAS_EPS: tl.constexpr, ROUND_BF16: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    col0 = tl.program_id(1) * BLOCK_C
    cols = col0 + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mask = (rows[:, None] < R) & col_mask[None, :]
    offs = rows[:, None] * C + cols[None, :]
    mu, sigma = gate_columns(mu_ptr, log_sigma2_ptr, cols, col_mask, TRAINING)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    z = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32) + mu[None, :]
    if TRAINING:
        z += sigma[None, :] * gate_noise(eps_ptr, offs, mask, seed_lo, seed_hi, rows, col0, HAS_EPS, BLOCK_C)
    tl.store(out_ptr + offs, cast_out(x.to(tl.float32) * z, x.dtype, ROUND_BF16), mask=mask)


@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _gate_backward_kernel(grad_ptr, x_ptr, mu_ptr, log_sigma2_ptr, eps_ptr, dx_ptr, dmu_part_ptr, dls2_part_ptr,
                          R, C, rows_per_prog, seed_lo, seed_hi, TRAINING: tl.constexpr, HAS_EPS: tl.constexpr,
                          ROUND_BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # Each program owns a column block and a run of rows: it writes dx and one row of column partial
    # sums for d mu = sum g*x and d log_sigma2 = sigma/2 * sum g*x*eps (reduced afterwards, deterministic).
    col0 = tl.program_id(1) * BLOCK_C
    cols = col0 + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mu, sigma = gate_columns(mu_ptr, log_sigma2_ptr, cols, col_mask, TRAINING)
    dmu = tl.zeros([BLOCK_C], dtype=tl.float32)
    dls2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    row_start = tl.program_id(0).to(tl.int64) * rows_per_prog
    for r0 in range(0, rows_per_prog, BLOCK_R):
        rows = row_start + r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (rows[:, None] < R) & col_mask[None, :]
        offs = rows[:, None] * C + cols[None, :]
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        gx = g * x.to(tl.float32)
        z = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32) + mu[None, :]
        if TRAINING:
            eps = gate_noise(eps_ptr, offs, mask, seed_lo, seed_hi, rows, col0, HAS_EPS, BLOCK_C)
            z += sigma[None, :] * eps
            dls2 += tl.sum(gx * eps, axis=0)
        dmu += tl.sum(gx, axis=0)
        tl.store(dx_ptr + offs, cast_out(g * z, x.dtype, ROUND_BF16), mask=mask)
    part = tl.program_id(0).to(tl.int64) * C + cols
    if TRAINING:
        tl.store(dmu_part_ptr + part, dmu, mask=col_mask)
        tl.store(dls2_part_ptr + part, 0.5 * sigma * dls2, mask=col_mask)
    else:
        # the keep decision is a step function of the parameters: only kept units get a mu gradient
        tl.store(dmu_part_ptr + part, tl.where(mu != 0.0, dmu, 0.0), mask=col_mask)
        tl.store(dls2_part_ptr + part, tl.zeros_like(dmu), mask=col_mask)


def vib_gate(x, mu, log_sigma2, eps, seed, training):
    out = torch.empty_like(x)
    rows, cols = rows_cols(x)
    block_r, block_c = launch.tile_2d(rows, cols)
    lo, hi = split_seed(seed)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    _gate_forward_kernel[grid](x, mu, log_sigma2, eps, out, rows, cols, lo, hi, TRAINING=training,
                               HAS_EPS=eps is not None, ROUND_BF16=launch.round_bf16_by_hand(x.dtype),
                               BLOCK_R=block_r, BLOCK_C=block_c,
                               num_warps=8)  # with 4, the in-kernel noise of a tile spills on sm_80
    return out


def vib_gate_backward(grad, x, mu, log_sigma2, eps, seed, training):
    dx = torch.empty_like(x)
    rows, cols = rows_cols(x)
    block_r, block_c = launch.tile_2d(rows, cols)
    # enough row programs to fill the GPU, few enough that the partial sums stay small
    row_progs = max(1, min(triton.cdiv(rows, block_r), 1 if launch.interpreted() else 256))
    rows_per_prog = triton.cdiv(triton.cdiv(rows, row_progs), block_r) * block_r
    row_progs = triton.cdiv(rows, rows_per_prog)
    parts = torch.empty((2, row_progs, cols), dtype=torch.float32, device=x.device)
    lo, hi = split_seed(seed)
    grid = (row_progs, triton.cdiv(cols, block_c))
    _gate_backward_kernel[grid](grad, x, mu, log_sigma2, eps, dx, parts[0], parts[1], rows, cols, rows_per_prog,
                                lo, hi, TRAINING=training, HAS_EPS=eps is not None,
                                ROUND_BF16=launch.round_bf16_by_hand(x.dtype), BLOCK_R=block_r, BLOCK_C=block_c)
    return dx, parts[0].sum(dim=0), parts[1].sum(dim=0)


@triton.jit
def _kl_kernel(mu_ptr, log_sigma2_ptr, grad_ptr, kl_part_ptr, dmu_ptr, dls2_ptr, n, BACKWARD: tl.constexpr,
               BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0)
    inv_sigma2 = tl.exp(-tl.load(log_sigma2_ptr + offs, mask=mask, other=0.0))
    ratio = mu * mu * inv_sigma2  # mu^2 / sigma^2
    if BACKWARD:
        g = tl.load(grad_ptr)
        tl.store(dmu_ptr + offs, g * mu * inv_sigma2 / (1.0 + ratio), mask=mask)
        tl.store(dls2_ptr + offs, -0.5 * g * ratio / (1.0 + ratio), mask=mask)
    else:
        # log1p(r) from log: log(1 + r) * r / ((1 + r) - 1) cancels the rounding of 1 + r for small r
        one_plus = 1.0 + ratio
        small = tl.where(one_plus == 1.0, ratio, tl.log(one_plus) * ratio / (one_plus - 1.0))
        kl = tl.where(ratio > 1.0, tl.log(one_plus), small)
        tl.store(kl_part_ptr + tl.program_id(0), 0.5 * tl.sum(tl.where(mask, kl, 0.0), axis=0))


def vib_kl(mu, log_sigma2):
    n = mu.numel()
    block = launch.block_1d(n)
    parts = torch.empty(triton.cdiv(n, block), dtype=torch.float32, device=mu.device)
    _kl_kernel[(parts.numel(),)](mu, log_sigma2, None, parts, None, None, n, BACKWARD=False, BLOCK=block)
    return parts.sum()


def vib_kl_backward(grad, mu, log_sigma2):
    n = mu.numel()
    block = launch.block_1d(n)
    dmu, dls2 = torch.empty_like(mu), torch.empty_like(log_sigma2)
    _kl_kernel[(triton.cdiv(n, block),)](mu, log_sigma2, grad.float().contiguous(), None, dmu, dls2, n,
                                         BACKWARD=True, BLOCK=block)
    return dmu, dls2


@triton.jit
def _keep_prob_kernel(mu_ptr, log_sigma2_ptr, grad_ptr, out_ptr, dls2_ptr, n, temperature, BACKWARD: tl.constexpr,
                      BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    mu = tl.load(mu_ptr + offs, mask=mask, other=1.0)
    log_sigma2 = tl.load(log_sigma2_ptr + offs, mask=mask, other=0.0)
    zero = mu == 0.0
    safe_mu = tl.where(zero, 1.0, mu)
    p = tl.sigmoid(temperature * (2.0 * tl.log(tl.abs(safe_mu)) - log_sigma2))
    if BACKWARD:
        slope = tl.where(zero, 0.0, tl.load(grad_ptr + offs, mask=mask, other=0.0) * temperature * p * (1.0 - p))
        tl.store(out_ptr + offs, 2.0 * slope / safe_mu, mask=mask)
        tl.store(dls2_ptr + offs, -slope, mask=mask)
    else:
        tl.store(out_ptr + offs, tl.where(zero, 0.0, p), mask=mask)


def vib_keep_prob(mu, log_sigma2, temperature):
    out = torch.empty_like(mu)
    n = mu.numel()
    block = launch.block_1d(n)
    _keep_prob_kernel[(triton.cdiv(n, block),)](mu, log_sigma2, None, out, None, n, temperature, BACKWARD=False,
                                                BLOCK=block)
    return out


def vib_keep_prob_backward(grad, mu, log_sigma2, temperature):
    dmu, dls2 = torch.empty_like(mu), torch.empty_like(log_sigma2)
    n = mu.numel()
    block = launch.block_1d(n)
    _keep_prob_kernel[(triton.cdiv(n, block),)](mu, log_sigma2, grad, dmu, dls2, n, temperature, BACKWARD=True,
                                                BLOCK=block)
    return dmu, dls2
