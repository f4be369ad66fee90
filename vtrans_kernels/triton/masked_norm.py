"""Triton kernels for the masked norms (statistics over the kept hidden dims, DESIGN 2.3): residual add,
LayerNorm or RMSNorm, affine and an optional hidden gate (a vector, or a VIB gate with in-kernel noise) in one
pass over each row.

Each program holds BLOCK_R whole rows (the hidden dim in one block, H up to ``MAX_HIDDEN``). The forward
stores y, h = x + residual (rounded to the activation dtype before the statistics, so y is the norm of the
returned h) and the fp32 row statistics. The backward recomputes the normalised rows from h and the
statistics, regenerates the noise, writes dh (plus the incoming gradient of h) and one row of partial
parameter-gradient sums per program, reduced afterwards in a fixed order (deterministic).
"""
import torch
import triton
import triton.language as tl

from ..reference.masked_norm import backend_functions
from ..reference.rng import rows_cols, split_seed
from . import launch
from .rounding import cast_out
from .vib import gate_columns, gate_noise

__all__ = ["masked_layer_norm", "masked_layer_norm_backward", "masked_rms_norm", "masked_rms_norm_backward"]

#: the widest hidden dim one program holds in registers
MAX_HIDDEN = 16384

# GATE constexpr values
_NO_GATE, _VECTOR_GATE, _VIB_TRAIN, _VIB_EVAL = 0, 1, 2, 3


@triton.jit
def _gate(a_ptr, log_sigma2_ptr, cols, col_mask, GATE: tl.constexpr):
    # Per-column (a, sigma) with z = a + sigma * noise: the vector gate has sigma 0, VIB evaluation a = mu*keep.
    # The else is needed: the compiler (unlike the interpreter) compiles what follows a returning constexpr branch.
    if GATE == 1:
        a = tl.load(a_ptr + cols, mask=col_mask, other=0.0)
        sigma = tl.zeros_like(a)
    else:
        a, sigma = gate_columns(a_ptr, log_sigma2_ptr, cols, col_mask, GATE == 2)
    return a, sigma


@triton.jit
def _normalise(h, keep, mean, rstd, RMS: tl.constexpr):
    # the normalised rows on kept dims, 0 on pruned ones: (h - mean) * rstd (LayerNorm) or h * rstd (RMSNorm)
    if RMS:
        return tl.where(keep[None, :] != 0.0, h, 0.0) * rstd[:, None]
    return tl.where(keep[None, :] != 0.0, h - mean[:, None], 0.0) * rstd[:, None]


@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _forward_kernel(x_ptr, res_ptr, keep_ptr, w_ptr, b_ptr, a_ptr, log_sigma2_ptr, noise_ptr,
                    y_ptr, h_ptr, mean_ptr, rstd_ptr, R, H, eps, seed_lo, seed_hi,
                    RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                    GATE: tl.constexpr, HAS_NOISE: tl.constexpr, ROUND_BF16: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    row_mask = rows < R
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows[:, None] * H + cols[None, :]
    keep = tl.load(keep_ptr + cols, mask=col_mask, other=0.0)
    inv_count = 1.0 / tl.maximum(tl.sum(keep, axis=0), 1.0)  # all-zero keep: statistics 0, y = 0
    kept = keep != 0.0  # pruned dims are never read (selects, not * keep): a NaN there changes nothing
    par_mask = col_mask & kept
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    h = x.to(tl.float32)
    if HAS_RES:
        h_out = cast_out(h + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32), x.dtype, ROUND_BF16)
        tl.store(h_ptr + offs, h_out, mask=mask)
        h = h_out.to(tl.float32)
    if RMS:
        mean = tl.zeros([BLOCK_R], dtype=tl.float32)
        centered = tl.where(kept[None, :], h, 0.0)
    else:
        mean = tl.sum(tl.where(kept[None, :], h, 0.0), axis=1) * inv_count
        centered = tl.where(kept[None, :], h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) * inv_count + eps)
    y = centered * rstd[:, None]
    if HAS_W:
        y *= tl.load(w_ptr + cols, mask=par_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = (y + tl.load(b_ptr + cols, mask=par_mask, other=0.0).to(tl.float32)[None, :]) * keep[None, :]
    if GATE != 0:
        a, sigma = _gate(a_ptr, log_sigma2_ptr, cols, par_mask, GATE)
        z = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32) + a[None, :]
        if GATE == 2:
            z += sigma[None, :] * gate_noise(noise_ptr, offs, mask, seed_lo, seed_hi, rows, 0, HAS_NOISE, BLOCK_H)
        y *= z
    tl.store(y_ptr + offs, cast_out(y, x.dtype, ROUND_BF16), mask=mask)
    if not RMS:
        tl.store(mean_ptr + rows, mean, mask=row_mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _backward_kernel(gy_ptr, gh_ptr, h_ptr, mean_ptr, rstd_ptr, keep_ptr, w_ptr, b_ptr, a_ptr, log_sigma2_ptr,
                     noise_ptr, dh_ptr, dw_part_ptr, db_part_ptr, da_part_ptr, dls2_part_ptr,
                     R, H, rows_per_prog, seed_lo, seed_hi,
                     RMS: tl.constexpr, HAS_GH: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                     GATE: tl.constexpr, HAS_NOISE: tl.constexpr, ROUND_BF16: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    keep = tl.load(keep_ptr + cols, mask=col_mask, other=0.0)
    inv_count = 1.0 / tl.maximum(tl.sum(keep, axis=0), 1.0)
    par_mask = col_mask & (keep != 0.0)
    w = keep * 0.0 + 1.0
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=par_mask, other=0.0).to(tl.float32)
    if GATE != 0:
        a, sigma = _gate(a_ptr, log_sigma2_ptr, cols, par_mask, GATE)
    dw = tl.zeros([BLOCK_H], dtype=tl.float32)
    db = tl.zeros([BLOCK_H], dtype=tl.float32)
    da = tl.zeros([BLOCK_H], dtype=tl.float32)
    dls2 = tl.zeros([BLOCK_H], dtype=tl.float32)
    row_start = tl.program_id(0).to(tl.int64) * rows_per_prog
    for r0 in range(0, rows_per_prog, BLOCK_R):
        rows = row_start + r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        row_mask = rows < R
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows[:, None] * H + cols[None, :]
        h_raw = tl.load(h_ptr + offs, mask=mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        mean = rstd * 0.0
        if not RMS:
            mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
        xhat = _normalise(h_raw.to(tl.float32), keep, mean, rstd, RMS)
        g = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if GATE != 0:
            # the gate's gradient needs the ungated output y0; the norm's needs g * z
            y0 = xhat * w[None, :]
            if HAS_B:
                y0 = (y0 + tl.load(b_ptr + cols, mask=par_mask, other=0.0).to(tl.float32)[None, :]) * keep[None, :]
            gy0 = g * y0
            da += tl.sum(gy0, axis=0)
            z = tl.zeros([BLOCK_R, BLOCK_H], dtype=tl.float32) + a[None, :]
            if GATE == 2:
                noise = gate_noise(noise_ptr, offs, mask, seed_lo, seed_hi, rows, 0, HAS_NOISE, BLOCK_H)
                z += sigma[None, :] * noise
                dls2 += tl.sum(gy0 * noise, axis=0)
            g *= z
        g *= keep[None, :]
        dw += tl.sum(g * xhat, axis=0)
        db += tl.sum(g, axis=0)
        g *= w[None, :]
        # d/dh of the normalised row: rstd * (g - xhat * mean(g * xhat) [- mean(g)]), over kept dims
        dh = g - xhat * (tl.sum(g * xhat, axis=1) * inv_count)[:, None]
        if not RMS:
            dh -= (tl.sum(g, axis=1) * inv_count)[:, None]
        dh *= rstd[:, None] * keep[None, :]
        if HAS_GH:
            dh += tl.load(gh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dh_ptr + offs, cast_out(dh, h_raw.dtype, ROUND_BF16), mask=mask)
    part = tl.program_id(0).to(tl.int64) * H + cols
    if HAS_W:
        tl.store(dw_part_ptr + part, dw, mask=col_mask)
    if HAS_B:
        tl.store(db_part_ptr + part, db, mask=col_mask)
    if GATE != 0:
        if GATE == 3:
            # VIB evaluation: the keep decision is a step function, so only kept units get a mu gradient
            da = tl.where(a != 0.0, da, 0.0)
        tl.store(da_part_ptr + part, da, mask=col_mask)
    if GATE == 2:
        tl.store(dls2_part_ptr + part, 0.5 * sigma * dls2, mask=col_mask)


def _tile(rows: int, hidden: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_H, num_warps): whole rows per program; the interpreter gets bigger tiles (its cost is
    per program, not per element)."""
    if hidden > MAX_HIDDEN:  # the dispatcher falls back before this (limits.call_limits); direct calls land here
        raise ValueError(f"vtrans masked norm (triton): hidden size {hidden} exceeds {MAX_HIDDEN}; "
                         f"use the torch backend")
    block_h = max(4, triton.next_power_of_2(hidden))  # >= 4: one Philox block per 4 columns
    elems = 16384 if launch.interpreted() else 4096
    block_r = max(1, min(triton.next_power_of_2(rows), elems // block_h))
    # forward: 8 elements per thread (16 spill with the in-kernel noise); the backward keeps four per-column
    # accumulators and four per-column parameters, so 16 per thread with fewer warps (more registers each:
    # 16 warps cap a thread at 128). Rows wider than 2048 spill (bench/compile_check.py reports how much).
    warps = min(16, max(4, block_r * block_h // (512 if backward else 256)))
    return block_r, block_h, warps


def _gate_mode(out_gate, mu, training) -> tuple[int, torch.Tensor | None]:
    if out_gate is not None:
        return _VECTOR_GATE, out_gate
    if mu is not None:
        return (_VIB_TRAIN if training else _VIB_EVAL), mu
    return _NO_GATE, None


def _keep01(keep, device):
    return (keep != 0).to(device=device, dtype=torch.float32)


def _forward(rms, x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    rows, hidden = rows_cols(x)
    block_r, block_h, warps = _tile(rows, hidden)
    gate, a = _gate_mode(out_gate, mu, training)
    y = torch.empty_like(x)
    h = torch.empty_like(x) if residual is not None else x.new_empty(0)
    mean = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    lo, hi = split_seed(seed)
    _forward_kernel[(triton.cdiv(rows, block_r),)](
        x, residual, _keep01(keep, x.device), weight, bias, a, log_sigma2, noise, y, h, mean, rstd, rows, hidden,
        eps, lo, hi, RMS=rms, HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
        GATE=gate, HAS_NOISE=noise is not None, ROUND_BF16=launch.round_bf16_by_hand(x.dtype),
        BLOCK_R=block_r, BLOCK_H=block_h, num_warps=warps)
    return y, h, mean, rstd


def _backward(rms, grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed,
              training):
    rows, hidden = rows_cols(h)
    block_r, block_h, warps = _tile(rows, hidden, backward=True)
    gate, a = _gate_mode(out_gate, mu, training)
    # enough row programs to fill the GPU, few enough that the partial sums stay small
    progs = max(1, min(triton.cdiv(rows, block_r), 1 if launch.interpreted() else 264))
    rows_per_prog = triton.cdiv(triton.cdiv(rows, progs), block_r) * block_r
    progs = triton.cdiv(rows, rows_per_prog)
    parts = torch.zeros((4, progs, hidden), dtype=torch.float32, device=h.device)
    dh = torch.empty_like(h)
    lo, hi = split_seed(seed)
    _backward_kernel[(progs,)](
        grad_y, grad_h, h, mean, rstd, _keep01(keep, h.device), weight, bias, a, log_sigma2, noise, dh,
        parts[0], parts[1], parts[2], parts[3], rows, hidden, rows_per_prog, lo, hi,
        RMS=rms, HAS_GH=grad_h is not None, HAS_W=weight is not None, HAS_B=bias is not None, GATE=gate,
        HAS_NOISE=noise is not None, ROUND_BF16=launch.round_bf16_by_hand(h.dtype),
        BLOCK_R=block_r, BLOCK_H=block_h, num_warps=warps)

    def grad_of(t, i):
        return h.new_empty(0) if t is None else parts[i].sum(dim=0).to(t.dtype)

    # the op's order: (dh, dweight, dbias, dout_gate, dmu, dlog_sigma2)
    return (dh, grad_of(weight, 0), grad_of(bias, 1), grad_of(out_gate, 2), grad_of(mu, 2),
            grad_of(log_sigma2, 3))


masked_layer_norm, masked_layer_norm_backward, masked_rms_norm, masked_rms_norm_backward = backend_functions(
    _forward, _backward)
