"""Triton kernels for the masked linear layer and the masked SwiGLU FFN, beside their launchers.

Forward: one GEMM kernel. The input gate scales the x tiles inside the K loop (no gated copy of x in memory);
the epilogue adds the bias, rounds the pre-activation to the activation dtype (stored when the backward needs
it), applies the activation and the output gate (VIB noise drawn in-kernel with Philox from (seed, row,
column), exactly ``reference.rng.normal``) and stores y. SwiGLU runs two accumulators over the same x tiles.

Backward: one fused elementwise + column-reduction kernel turns the output gradient into the pre-activation
gradient ``gh = g * z * act'(h)`` (the noise regenerated, never stored) and writes deterministic per-program
column partial sums for d bias, d out_gate / d mu and d log_sigma2. The two big products (dx = gh W and
dW = gh^T x) then go to cuBLAS through torch.matmul: they are plain GEMMs with nothing left to fuse, and
cuBLAS beats a hand-written Triton GEMM on the transposed layouts they need. The backward saves only the
pre-activation(s) the forward stored: no noise, no gate values, no post-activation copy.
"""
import math

import torch
import triton
import triton.language as tl

from ..reference.masked_linear import activation_id, needs_preactivation, scaled_input
from ..reference.rng import split_seed
from . import launch, linear_configs
from .rounding import cast_out
from .vib import gate_columns, gate_noise  # the VIB gate's per-column parameters and its noise, shared with vib_gate

__all__ = ["masked_linear", "masked_linear_backward", "masked_swiglu", "masked_swiglu_backward"]

# output gate kinds (constexpr GATE) and input gate kinds (constexpr IN_GATE)
_NO_GATE, _VECTOR_GATE, _VIB_GATE = 0, 1, linear_configs.VIB_GATE
_NO_IN_GATE, _IN_GATE_SHARED, _IN_GATE_PER_ROW = 0, 1, 2


# ----------------------------------------------------------------------------------------------------------
# shared device functions
@triton.jit
def _tanh(v):
    # tanh from the sigmoid (no tanh in core Triton); absolute error ~1e-7, fine inside 0.5 * h * (1 + tanh)
    return 2.0 * tl.sigmoid(2.0 * v) - 1.0


@triton.jit
def _act_and_grad(h, ACT: tl.constexpr):
    """(act(h), act'(h)) in fp32 for activation id ACT (reference.masked_linear.ACTIVATIONS)."""
    if ACT == 1:  # gelu, exact erf form
        cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
        return h * cdf, cdf + h * tl.exp(-0.5 * h * h) * 0.3989422804014327
    elif ACT == 2:  # gelu, tanh approximation
        t = _tanh(0.7978845608028654 * (h + 0.044715 * h * h * h))
        return 0.5 * h * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * 0.7978845608028654 * (
            1.0 + 0.134145 * h * h)
    elif ACT == 3:  # relu
        return tl.maximum(h, 0.0), (h > 0.0).to(tl.float32)
    elif ACT == 4:  # silu
        s = tl.sigmoid(h)
        return h * s, s * (1.0 + h * (1.0 - s))
    else:
        return h, tl.full(h.shape, 1.0, tl.float32)


@triton.jit
def _out_gate(gate_ptr, mu_ptr, log_sigma2_ptr, eps_ptr, rows, col0, cols, mask, N, seed_lo, seed_hi,
              GATE: tl.constexpr, TRAINING: tl.constexpr, HAS_EPS: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """(z, eps, sigma, keep) of a [BLOCK_M, BLOCK_N] output tile: the gate values, the VIB noise (0 without
    noise), the per-column sigma (0 outside VIB training) and whether each column can get a gate gradient."""
    col_mask = cols < N
    z = tl.full([BLOCK_M, BLOCK_N], 1.0, tl.float32)
    eps = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    sigma = tl.zeros([BLOCK_N], dtype=tl.float32)
    keep = col_mask
    if GATE == 1:
        z = z * tl.load(gate_ptr + cols, mask=col_mask, other=0.0)[None, :]
    elif GATE == 2:
        mu, sigma = gate_columns(mu_ptr, log_sigma2_ptr, cols, col_mask, TRAINING)
        z = z * mu[None, :]
        if TRAINING:
            offs = rows[:, None] * N + cols[None, :]
            eps = gate_noise(eps_ptr, offs, mask, seed_lo, seed_hi, rows, col0, HAS_EPS, BLOCK_N)
            z += sigma[None, :] * eps
        else:
            keep = mu != 0.0  # evaluation: mu * keep; pruned units get no gradient
    return z, eps, sigma, keep


# ----------------------------------------------------------------------------------------------------------
# forward: GEMM + epilogue
@triton.jit(do_not_specialize=launch.SEED_ARGS + ["M_BUCKET"])
def _forward_kernel(x_ptr, w_ptr, w2_ptr, b_ptr, b2_ptr, in_gate_ptr, gate_ptr, mu_ptr, log_sigma2_ptr, eps_ptr,
                    y_ptr, h_ptr, h2_ptr, M, N, K, G, block_width, seed_lo, seed_hi, M_BUCKET,
                    ACT: tl.constexpr, GATE: tl.constexpr, TRAINING: tl.constexpr, HAS_EPS: tl.constexpr,
                    HAS_BIAS: tl.constexpr, IN_GATE: tl.constexpr, SWIGLU: tl.constexpr, SAVE_H: tl.constexpr,
                    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # grouped program order: GROUP_M row blocks sweep the column blocks together, so weight tiles stay in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    col0 = pid_n * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * K + ks[None, :]
    w_offs = cols[None, :].to(tl.int64) * K + ks[:, None]  # [BLOCK_K, BLOCK_N]: weight^T tile
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = k0 + ks < K
        xt = tl.load(x_ptrs + k0, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if IN_GATE == 1:
            s = tl.load(in_gate_ptr + (k0 + ks) // block_width, mask=k_mask, other=0.0)
            xt = cast_out(xt.to(tl.float32) * s[None, :], x_ptr.dtype.element_ty, ROUND_BF16)
        elif IN_GATE == 2:
            s = tl.load(in_gate_ptr + rows[:, None] * G + ((k0 + ks) // block_width)[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            xt = cast_out(xt.to(tl.float32) * s, x_ptr.dtype.element_ty, ROUND_BF16)
        w_mask = k_mask[:, None] & col_mask[None, :]
        wt = tl.load(w_ptr + w_offs + k0, mask=w_mask, other=0.0)
        if DOT_F32:  # interpreter only: its bf16 dot is wrong
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(xt, wt, acc, input_precision=PRECISION)
        if SWIGLU:
            w2t = tl.load(w2_ptr + w_offs + k0, mask=w_mask, other=0.0)
            if DOT_F32:
                w2t = w2t.to(tl.float32)
            acc2 = tl.dot(xt, w2t, acc2, input_precision=PRECISION)

    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows[:, None] * N + cols[None, :]
    out_ty = y_ptr.dtype.element_ty
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    # the pre-activation is rounded to the activation dtype, as an unfused model has it (and as it is saved)
    h = cast_out(acc, out_ty, ROUND_BF16)
    if SAVE_H:
        tl.store(h_ptr + offs, h, mask=mask)
    a, _ = _act_and_grad(h.to(tl.float32), ACT)
    if SWIGLU:
        if HAS_BIAS:
            acc2 += tl.load(b2_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        h2 = cast_out(acc2, out_ty, ROUND_BF16)
        tl.store(h2_ptr + offs, h2, mask=mask)
        a = a * h2.to(tl.float32)
    z, _, _, _ = _out_gate(gate_ptr, mu_ptr, log_sigma2_ptr, eps_ptr, rows, col0, cols, mask, N, seed_lo, seed_hi,
                           GATE, TRAINING, HAS_EPS, BLOCK_M, BLOCK_N)
    tl.store(y_ptr + offs, cast_out(a * z, out_ty, ROUND_BF16), mask=mask)


# tuned per (row bucket, N, K, flags, dtypes); tiles that cannot fit the GPU are dropped before compiling
_forward_tuned = triton.autotune(linear_configs.all_configs(),
                                 key=["M_BUCKET", "N", "K", "SWIGLU", "IN_GATE", "GATE", "TRAINING", "ACT"],
                                 prune_configs_by={"early_config_prune": linear_configs.prune})(_forward_kernel)


def _interpreter_config(m: int, n: int, k: int) -> dict:
    # the interpreter's cost is per program and per op: few big tiles (tl.dot needs 16 at least)
    def tile(v, cap):
        return max(16, min(triton.next_power_of_2(v), cap))
    return dict(BLOCK_M=tile(m, 128), BLOCK_N=tile(n, 128), BLOCK_K=tile(k, 128), GROUP_M=8)


def _gate_kind(out_gate, mu) -> int:
    return _VECTOR_GATE if out_gate is not None else _VIB_GATE if mu is not None else _NO_GATE


def _launch_forward(x, w, w2, b, b2, in_gate, out_gate, mu, log_sigma2, eps, seed, training, activation, save_h,
                    op):
    """(y, h or None, h2 or None), each [..., N] like x (h2: SwiGLU's up projection)."""
    n, k = w.shape
    m = _rows(x)
    x2 = x.reshape(m, k)
    y = x.new_empty((*x.shape[:-1], n))
    h = torch.empty_like(y) if save_h else None
    h2 = torch.empty_like(y) if w2 is not None else None
    groups = in_gate.shape[-1] if in_gate is not None else 1
    in_kind = _NO_IN_GATE if in_gate is None else _IN_GATE_PER_ROW if in_gate.dim() == 2 else _IN_GATE_SHARED
    lo, hi = split_seed(seed)
    args = (x2, w, w2, b, b2, in_gate, out_gate, mu, log_sigma2, eps, y, h, h2, m, n, k, groups, k // groups, lo, hi,
            linear_configs.row_bucket(m))
    flags = dict(ACT=activation_id(activation, op), GATE=_gate_kind(out_gate, mu), TRAINING=training,
                 HAS_EPS=eps is not None, HAS_BIAS=b is not None, IN_GATE=in_kind, SWIGLU=w2 is not None,
                 SAVE_H=save_h, DOT_F32=launch.interpreted() and x2.dtype == torch.bfloat16,
                 PRECISION=launch.dot_precision(x2.dtype), ROUND_BF16=launch.round_bf16_by_hand(x2.dtype))
    if launch.interpreted():
        cfg = _interpreter_config(m, n, k)
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        _forward_kernel[grid](*args, **flags, **cfg)
    else:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        _forward_tuned[grid](*args, **flags)
    return y, h, h2


# ----------------------------------------------------------------------------------------------------------
# backward: pre-activation gradient + column partial sums
@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _backward_kernel(g_ptr, h_ptr, h2_ptr, gate_ptr, mu_ptr, log_sigma2_ptr, eps_ptr, gh_ptr, gh2_ptr, part_ptr,
                     M, N, rows_per_prog, seed_lo, seed_hi, ACT: tl.constexpr, GATE: tl.constexpr,
                     TRAINING: tl.constexpr, HAS_EPS: tl.constexpr, SWIGLU: tl.constexpr, ROUND_BF16: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Each program owns a column block and a run of rows. It writes gh (and, for SwiGLU, the up-projection's
    # gradient gh2) and one row of each column partial sum in part [4, programs, N]: d bias, d bias2,
    # d gate = sum g*a (out_gate or mu) and sum g*a*eps (-> d log_sigma2); summed afterwards, deterministic.
    col0 = tl.program_id(1) * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    out_ty = gh_ptr.dtype.element_ty
    d_bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    d_bias2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    d_gate = tl.zeros([BLOCK_N], dtype=tl.float32)
    d_noise = tl.zeros([BLOCK_N], dtype=tl.float32)
    sigma = tl.zeros([BLOCK_N], dtype=tl.float32)
    keep = col_mask
    row_start = tl.program_id(0).to(tl.int64) * rows_per_prog
    for r0 in range(0, rows_per_prog, BLOCK_M):
        rows = row_start + r0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask = (rows[:, None] < M) & col_mask[None, :]
        offs = rows[:, None] * N + cols[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z, eps, sigma, keep = _out_gate(gate_ptr, mu_ptr, log_sigma2_ptr, eps_ptr, rows, col0, cols, mask, N,
                                        seed_lo, seed_hi, GATE, TRAINING, HAS_EPS, BLOCK_M, BLOCK_N)
        a, da = _act_and_grad(h, ACT)
        ga = g * z
        if SWIGLU:
            up = tl.load(h2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            gh2 = ga * a
            tl.store(gh2_ptr + offs, cast_out(gh2, out_ty, ROUND_BF16), mask=mask)
            d_bias2 += tl.sum(gh2, axis=0)
            gh = ga * up * da
            a = a * up
        else:
            gh = ga * da
        tl.store(gh_ptr + offs, cast_out(gh, out_ty, ROUND_BF16), mask=mask)
        d_bias += tl.sum(gh, axis=0)
        if GATE != 0:
            ga_out = g * a
            d_gate += tl.sum(ga_out, axis=0)
            if TRAINING:
                d_noise += tl.sum(ga_out * eps, axis=0)
    part = tl.program_id(0).to(tl.int64) * N + cols
    plane = tl.num_programs(0).to(tl.int64) * N
    tl.store(part_ptr + part, d_bias, mask=col_mask)
    tl.store(part_ptr + plane + part, d_bias2, mask=col_mask)
    tl.store(part_ptr + 2 * plane + part, tl.where(keep, d_gate, 0.0), mask=col_mask)
    tl.store(part_ptr + 3 * plane + part, 0.5 * sigma * d_noise, mask=col_mask)


def _launch_backward(g2, h, h2, out_gate, mu, log_sigma2, eps, seed, training, activation, op):
    """(gh, gh2 or None, [4, N] fp32 column sums: d bias, d bias2, d gate, d log_sigma2)."""
    m, n = g2.shape
    gh = torch.empty_like(g2)
    gh2 = torch.empty_like(g2) if h2 is not None else None
    block_m, block_n = launch.tile_2d(m, n)
    block_n = max(block_n, 16)
    # enough row programs to fill the GPU, few enough that the partial sums stay small
    row_progs = max(1, min(triton.cdiv(m, block_m), 1 if launch.interpreted() else 128))
    rows_per_prog = triton.cdiv(triton.cdiv(m, row_progs), block_m) * block_m
    row_progs = triton.cdiv(m, rows_per_prog)
    parts = torch.empty((4, row_progs, n), dtype=torch.float32, device=g2.device)
    lo, hi = split_seed(seed)
    _backward_kernel[(row_progs, triton.cdiv(n, block_n))](
        g2, h, h2, out_gate, mu, log_sigma2, eps, gh, gh2, parts, m, n, rows_per_prog, lo, hi,
        ACT=activation_id(activation, op), GATE=_gate_kind(out_gate, mu), TRAINING=training,
        HAS_EPS=eps is not None, SWIGLU=h2 is not None, ROUND_BF16=launch.round_bf16_by_hand(g2.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=8)  # 4 spill on sm_90 with the regenerated noise
    return gh, gh2, parts.sum(dim=1)


def _gate_grads(sums, out_gate, mu, log_sigma2, training, need_out, need_mu, need_ls2, empty):
    """(d out_gate, d mu, d log_sigma2) from the column sums; ``empty()`` where not wanted."""
    def pick(want, t, value):
        return value if want and t is not None else empty()
    d_ls2 = sums[3] if training else torch.zeros_like(sums[3])
    return pick(need_out, out_gate, sums[2].clone()), pick(need_mu, mu, sums[2].clone()), \
        pick(need_ls2, log_sigma2, d_ls2.clone())


def _rows(x) -> int:
    return math.prod(x.shape[:-1])


# ----------------------------------------------------------------------------------------------------------
# launchers (the triton backend's functions: the op's arguments, contiguous)
def masked_linear(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training):
    save_h = needs_preactivation(activation, out_gate is not None or mu is not None)
    y, h, _ = _launch_forward(x, weight, None, bias, None, in_gate, out_gate, mu, log_sigma2,
                              eps if training else None, seed, training, activation, save_h, "masked_linear")
    return y, (h if save_h else y.new_empty(0))


def _input_gate_backward(dxs, x2, in_gate, need_dx, need_din, x_shape):
    """(dx, d in_gate) from dxs, the gradient of the gated input [rows, K]: dx = dxs * s (one rounding, written
    straight into a fresh [..., K] tensor) and d s = sum over each block of dxs * x (fp32)."""
    rows, k = x2.shape
    groups = in_gate.shape[-1]
    s = in_gate.reshape(-1, groups, 1)
    dx, d_in = x2.new_empty(0), x2.new_empty(0)
    if need_din:
        d_in = (dxs.float() * x2.float()).reshape(rows, groups, k // groups).sum(dim=2)
        d_in = d_in if in_gate.dim() == 2 else d_in.sum(dim=0)
    if need_dx:
        dx = x2.new_empty(x_shape)
        torch.mul(dxs.reshape(rows, groups, k // groups), s, out=dx.view(rows, groups, k // groups))
    return dx, d_in


def masked_linear_backward(grad, saved, x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed,
                           training, needs):
    need_dx, need_dw, need_db, need_din, need_dout, need_dmu, need_dls2 = needs
    n, k = weight.shape
    rows = _rows(x)
    g2, x2 = grad.reshape(rows, n), x.reshape(rows, k)
    def empty():  # a distinct empty tensor per unwanted gradient (custom-op outputs must not alias)
        return x.new_empty(0)

    if saved.numel() == 0:  # no activation and no output gate: the pre-activation gradient is the gradient
        gh, sums = g2, g2.sum(dim=0, dtype=torch.float32).expand(4, n)
    else:
        gh, _, sums = _launch_backward(g2, saved.reshape(rows, n), None, out_gate, mu, log_sigma2,
                                       eps if training else None, seed, training, activation, "masked_linear")
    dx, dw, d_in = empty(), empty(), empty()
    if in_gate is None:
        if need_dx:
            dx = torch.matmul(gh.view(*x.shape[:-1], n), weight)
        if need_dw:
            dw = gh.t() @ x2
    else:
        if need_dx or need_din:
            dx, d_in = _input_gate_backward(gh @ weight, x2, in_gate, need_dx, need_din, x.shape)
        if need_dw:
            dw = gh.t() @ scaled_input(x2, in_gate)  # the same rounded gated operand the forward multiplied
    db = sums[0].to(bias.dtype, copy=True) if need_db and bias is not None else empty()
    return (dx, dw, db, d_in,
            *_gate_grads(sums, out_gate, mu, log_sigma2, training, need_dout, need_dmu, need_dls2, empty))


def masked_swiglu(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training):
    return _launch_forward(x, w_gate, w_up, b_gate, b_up, None, out_gate, mu, log_sigma2, eps if training else None,
                           seed, training, activation, True, "masked_swiglu")


def masked_swiglu_backward(grad, h_gate, h_up, x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2,
                           eps, seed, training, needs):
    need_dx, need_dwg, need_dwu, need_dbg, need_dbu, need_dout, need_dmu, need_dls2 = needs
    n, k = w_gate.shape
    rows = _rows(x)
    g2, x2 = grad.reshape(rows, n), x.reshape(rows, k)
    gg, gu, sums = _launch_backward(g2, h_gate.reshape(rows, n), h_up.reshape(rows, n), out_gate, mu, log_sigma2,
                                    eps if training else None, seed, training, activation, "masked_swiglu")
    def empty():  # a distinct empty tensor per unwanted gradient (custom-op outputs must not alias)
        return x.new_empty(0)

    dx = empty()
    if need_dx:
        dx = x.new_empty(x.shape)
        dx2 = dx.view(rows, k)
        torch.mm(gg, w_gate, out=dx2)
        dx2.addmm_(gu, w_up)
    dwg = gg.t() @ x2 if need_dwg else empty()
    dwu = gu.t() @ x2 if need_dwu else empty()
    dbg = sums[0].to(b_gate.dtype, copy=True) if need_dbg and b_gate is not None else empty()
    dbu = sums[1].to(b_up.dtype, copy=True) if need_dbu and b_up is not None else empty()
    return (dx, dwg, dwu, dbg, dbu, *_gate_grads(sums, out_gate, mu, log_sigma2, training, need_dout, need_dmu,
                                                 need_dls2, empty))
