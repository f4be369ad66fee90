"""Flash attention with causal/padding/dense bool masks, GQA and a per-head output gate (DESIGN 2.3).

Forward: one program per (query block, batch x query head), online softmax over key blocks; it stores the
gated output, the ungated output (only with a gate: the gate gradient needs it where z = 0) and the
log-sum-exp. Backward (the two-kernel scheme of Triton's fused-attention tutorial): a preprocess computes
per row ``dz = rowsum(dOg * O)`` (the gate gradient) and ``Delta = z * dz``; then one program per (key block,
batch x KV head) accumulates dK/dV over the query heads of its group (deterministic, no atomics), and one
program per (query block, batch x query head) computes dQ. The gate's noise is regenerated, never stored.
"""
import torch
import triton
import triton.language as tl

from ..reference.masked_attention import gate_units
from ..reference.rng import split_seed
from . import launch, rng
from .rounding import cast_out

__all__ = ["masked_attention", "masked_attention_backward"]

LOG2E = 1.4426950408889634
# gate kinds (constexpr GATE)
NO_GATE, UNIT_GATE, ROW_GATE, VIB_GATE = 0, 1, 2, 3


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    # the interpreter's bf16 dot is wrong: upcast there only (never on the GPU); fp32 operands use PRECISION
    # (tf32 only when torch allows it)
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def _block_and_head(num_blocks, H):
    # one flat grid axis (CUDA caps y at 65535): the blocks of one (batch, head) are adjacent, so they share its
    # K/V (or Q) in L2; both indices int64, so products with strides cannot overflow 32 bits
    pid = tl.program_id(0).to(tl.int64)
    bh = pid // num_blocks
    return pid % num_blocks, bh, bh // H, bh % H


@triton.jit
def _allowed(KPM, AM, b, h, m2, n2, Sq, Sk, am_sb, am_sh, am_sm, am_sn, CAUSAL: tl.constexpr,
             HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr):
    # m2, n2: query / key indices broadcastable to the tile ([M, 1] x [1, N] or [1, M] x [N, 1])
    ok = (m2 < Sq) & (n2 < Sk)
    if CAUSAL:
        ok = ok & (n2 <= m2 + (Sk - Sq))  # bottom-right aligned, as with a KV cache
    if HAS_KPM:
        ok = ok & (tl.load(KPM + b * Sk + n2, mask=n2 < Sk, other=0) != 0)
    if HAS_AM:
        am = tl.load(AM + b * am_sb + h * am_sh + m2.to(tl.int64) * am_sm + n2 * am_sn, mask=ok, other=0)
        ok = ok & (am != 0)
    return ok


@triton.jit
def _gate(GATE, MU, LS2, EPS, rows, row_mask, u, G, seed_lo, seed_hi, GATE_KIND: tl.constexpr,
          TRAINING: tl.constexpr, HAS_EPS: tl.constexpr):
    """(z, eps) fp32 per row for gate unit ``u``; rows = b*Sq + s (int64)."""
    eps = tl.zeros(rows.shape, dtype=tl.float32)
    if GATE_KIND == 1:
        z = eps + tl.load(GATE + u)
    elif GATE_KIND == 2:
        z = tl.load(GATE + rows * G + u, mask=row_mask, other=0.0)
    elif GATE_KIND == 3:
        mu = tl.load(MU + u)
        log_sigma2 = tl.load(LS2 + u)
        if TRAINING:
            if HAS_EPS:
                eps = tl.load(EPS + rows * G + u, mask=row_mask, other=0.0).to(tl.float32)
            else:
                # column u of the [rows, G] noise view: its group of four columns, then pick one
                tile = rng.normal_tile(seed_lo, seed_hi, rows, (u // 4) * 4, 4)
                eps = tl.sum(tl.where(tl.arange(0, 4)[None, :] == u % 4, tile, 0.0), axis=1)
            z = mu + tl.exp(0.5 * log_sigma2) * eps
        else:
            z = eps + tl.where(mu * mu > tl.exp(log_sigma2), mu, 0.0)
    else:
        z = eps + 1.0
    return z, eps


@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _forward_kernel(Q, K, V, KPM, AM, GATE, MU, LS2, EPS, OUT, O, LSE,
                    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, am_sb, am_sh, am_sm, am_sn,
                    Hq, Hkv, G, Sq, Sk, D, qk_scale, seed_lo, seed_hi,
                    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr, GATE_KIND: tl.constexpr,
                    TRAINING: tl.constexpr, HAS_EPS: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
                    ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    m_block, bh, b, h = _block_and_head(tl.cdiv(Sq, BLOCK_M), Hq)
    start_m = (m_block * BLOCK_M).to(tl.int32)
    hk = h // (Hq // Hkv)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Sq) & d_ok[None, :], other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = Sk
    if CAUSAL:
        hi = tl.minimum(Sk, start_m + BLOCK_M + Sk - Sq)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd,
                     mask=(cols[None, :] < Sk) & d_ok[:, None], other=0.0)
        s = _dot(q, kt, DOT_F32, PRECISION) * qk_scale  # log2 units
        ok = _allowed(KPM, AM, b, h, offs_m[:, None], cols[None, :], Sq, Sk, am_sb, am_sh, am_sm, am_sn,
                      CAUSAL, HAS_KPM, HAS_AM)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key so far: keep p = 0, no NaN
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :] * svd,
                    mask=(cols[:, None] < Sk) & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(cast_out(p, v.dtype, ROUND_BF16), v, DOT_F32, PRECISION)
        m_i = m_new
    empty = l_i == 0.0  # rows attending no key: output 0, log-sum-exp -inf
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    row_ok = offs_m < Sq
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)  # natural log
    tl.store(LSE + bh * Sq + offs_m, lse, mask=row_ok)
    rows = b * Sq + offs_m
    offs_o = (rows[:, None] * Hq + h) * D + offs_d[None, :]
    mask_o = row_ok[:, None] & d_ok[None, :]
    if GATE_KIND != 0:
        tl.store(O + offs_o, cast_out(o, Q.dtype.element_ty, ROUND_BF16), mask=mask_o)
        z, eps = _gate(GATE, MU, LS2, EPS, rows, row_ok, h // (Hq // G), G, seed_lo, seed_hi, GATE_KIND, TRAINING,
                       HAS_EPS)
        o = o * z[:, None]
    tl.store(OUT + offs_o, cast_out(o, Q.dtype.element_ty, ROUND_BF16), mask=mask_o)


@triton.jit(do_not_specialize=launch.SEED_ARGS)
def _preprocess_kernel(O, DO, GATE, MU, LS2, EPS, DELTA, Z, DZ, DZE, sdb, sdm, sdh, sdd, Hq, G, Sq, D,
                       seed_lo, seed_hi, GATE_KIND: tl.constexpr, TRAINING: tl.constexpr, HAS_EPS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # per row: dz = rowsum(dOg * O) (the gate gradient), Delta = z * dz, and z itself for the next kernels
    m_block, bh, b, h = _block_and_head(tl.cdiv(Sq, BLOCK_M), Hq)
    offs_m = (m_block * BLOCK_M).to(tl.int32) + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Sq
    mask = row_ok[:, None] & (offs_d[None, :] < D)
    rows = b * Sq + offs_m
    o = tl.load(O + (rows[:, None] * Hq + h) * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdb + offs_m[:, None] * sdm + h * sdh + offs_d[None, :] * sdd, mask=mask,
                 other=0.0).to(tl.float32)
    dz = tl.sum(do * o, axis=1)
    z, eps = _gate(GATE, MU, LS2, EPS, rows, row_ok, h // (Hq // G), G, seed_lo, seed_hi, GATE_KIND, TRAINING,
                   HAS_EPS)
    offs = bh * Sq + offs_m
    tl.store(DELTA + offs, z * dz, mask=row_ok)
    if GATE_KIND != 0:
        tl.store(Z + offs, z, mask=row_ok)
        tl.store(DZ + offs, dz, mask=row_ok)
        if GATE_KIND == 3 and TRAINING:
            tl.store(DZE + offs, dz * eps, mask=row_ok)


@triton.jit
def _load_do(DO, Z, bh, b, h, offs_m, offs_d, sdb, sdm, sdh, sdd, Sq, D, GATED: tl.constexpr):
    """The incoming gradient dOg of a query block and the rows' gates z (1 without a gate). The ungated
    output's gradient is z * dOg: z is applied in fp32 to the products, so dOg itself is never re-rounded."""
    row_ok = offs_m < Sq
    do = tl.load(DO + b * sdb + offs_m[:, None] * sdm + h * sdh + offs_d[None, :] * sdd,
                 mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if GATED:
        z = tl.load(Z + bh * Sq + offs_m, mask=row_ok, other=0.0)
    else:
        z = tl.full([offs_m.shape[0]], 1.0, dtype=tl.float32)
    return do, z


@triton.jit
def _dkdv_kernel(Q, K, V, KPM, AM, DO, LSE, DELTA, Z, DK, DV,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, am_sb, am_sh, am_sm, am_sn,
                 sdb, sdm, sdh, sdd, Hq, Hkv, Sq, Sk, D, qk_scale, sm_scale,
                 CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr, GATED: tl.constexpr,
                 DOT_F32: tl.constexpr, PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    n_block, bhk, b, hk = _block_and_head(tl.cdiv(Sk, BLOCK_N), Hkv)
    start_n = (n_block * BLOCK_N).to(tl.int32)
    group = Hq // Hkv
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < Sk) & (offs_d[None, :] < D)
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if CAUSAL:  # query blocks entirely above the diagonal see none of these keys
        lo = tl.maximum(start_n - (Sk - Sq), 0) // BLOCK_M * BLOCK_M
    for r in range(0, group):  # the query heads sharing this KV head, in order: deterministic sums
        h = hk * group + r
        bh = b * Hq + h
        for start_m in range(lo, Sq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < Sq
            qt = tl.load(Q + b * sqb + h * sqh + offs_m[None, :] * sqm + offs_d[:, None] * sqd,
                         mask=row_ok[None, :] & (offs_d[:, None] < D), other=0.0)
            lse = tl.load(LSE + bh * Sq + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + bh * Sq + offs_m, mask=row_ok, other=0.0)
            st = _dot(k, qt, DOT_F32, PRECISION) * qk_scale  # [N, M], log2 units
            ok = _allowed(KPM, AM, b, h, offs_m[None, :], offs_n[:, None], Sq, Sk, am_sb, am_sh, am_sm, am_sn,
                          CAUSAL, HAS_KPM, HAS_AM)
            pt = tl.where(ok, tl.exp2(st - lse[None, :]), 0.0)
            do, z = _load_do(DO, Z, bh, b, h, offs_m, offs_d, sdb, sdm, sdh, sdd, Sq, D, GATED)
            dv += _dot(cast_out(pt * z[None, :], do.dtype, ROUND_BF16), do, DOT_F32, PRECISION)
            dpt = _dot(v, tl.trans(do), DOT_F32, PRECISION) * z[None, :]
            dst = pt * (dpt - delta[None, :])
            dk += _dot(cast_out(dst, qt.dtype, ROUND_BF16), tl.trans(qt), DOT_F32, PRECISION)
    offs = (bhk * Sk + offs_n[:, None]) * D + offs_d[None, :]
    tl.store(DK + offs, cast_out(dk * sm_scale, K.dtype.element_ty, ROUND_BF16), mask=kv_mask)
    tl.store(DV + offs, cast_out(dv, V.dtype.element_ty, ROUND_BF16), mask=kv_mask)


@triton.jit
def _dq_kernel(Q, K, V, KPM, AM, DO, LSE, DELTA, Z, DQ,
               sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, am_sb, am_sh, am_sm, am_sn,
               sdb, sdm, sdh, sdd, Hq, Hkv, Sq, Sk, D, qk_scale, sm_scale,
               CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr, GATED: tl.constexpr,
               DOT_F32: tl.constexpr, PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    m_block, bh, b, h = _block_and_head(tl.cdiv(Sq, BLOCK_M), Hq)
    start_m = (m_block * BLOCK_M).to(tl.int32)
    hk = h // (Hq // Hkv)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Sq
    d_ok = offs_d < D
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_mask, other=0.0)
    do, z = _load_do(DO, Z, bh, b, h, offs_m, offs_d, sdb, sdm, sdh, sdd, Sq, D, GATED)
    lse = tl.load(LSE + bh * Sq + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + bh * Sq + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = Sk
    if CAUSAL:
        hi = tl.minimum(Sk, start_m + BLOCK_M + Sk - Sq)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_mask = (cols[:, None] < Sk) & d_ok[None, :]
        k = tl.load(K + b * skb + hk * skh + cols[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
        vt = tl.load(V + b * svb + hk * svh + cols[None, :] * svn + offs_d[:, None] * svd,
                     mask=(cols[None, :] < Sk) & d_ok[:, None], other=0.0)
        s = _dot(q, tl.trans(k), DOT_F32, PRECISION) * qk_scale
        ok = _allowed(KPM, AM, b, h, offs_m[:, None], cols[None, :], Sq, Sk, am_sb, am_sh, am_sm, am_sn,
                      CAUSAL, HAS_KPM, HAS_AM)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        ds = p * (_dot(do, vt, DOT_F32, PRECISION) * z[:, None] - delta[:, None])
        dq += _dot(cast_out(ds, k.dtype, ROUND_BF16), k, DOT_F32, PRECISION)
    offs = (bh * Sq + offs_m[:, None]) * D + offs_d[None, :]
    tl.store(DQ + offs, cast_out(dq * sm_scale, Q.dtype.element_ty, ROUND_BF16), mask=q_mask)


# ----------------------------------------------------------------------------------------------------------
# launchers
def _gate_kind(head_gate, mu) -> int:
    if head_gate is not None:
        return UNIT_GATE if head_gate.dim() == 1 else ROW_GATE
    return NO_GATE if mu is None else VIB_GATE


def _mask_args(key_padding_mask, attn_mask):
    """uint8 views of the bool masks (same strides) and the dense mask's strides, 0 on broadcast dims."""
    kpm = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    if attn_mask is None:
        return kpm, None, (0, 0, 0, 0)
    strides = tuple(0 if attn_mask.shape[i] == 1 else attn_mask.stride(i) for i in range(4))
    return kpm, attn_mask.view(torch.uint8), strides


#: (BLOCK_M, BLOCK_N, num_warps, num_stages) on the GPU by (operand bytes, padded head dim, backward); fp32 tiles
#: hold twice the bytes, so they are smaller. Checked by bench/compile_check.py on sm_80 and sm_90: every tile
#: fits shared memory and the 16-bit ones do not spill (the gate's Philox noise and the dense-mask loads need
#: 8 warps where plain flash attention gets by with 4; the dK/dV kernel holds four [BLOCK_N, D] tiles, so its
#: BLOCK_N is 32 from head_dim 64 on).
_TILES = {
    (2, 64, False): (128, 64, 8, 3), (2, 64, True): (64, 32, 4, 2),
    (2, 128, False): (128, 64, 8, 3), (2, 128, True): (64, 32, 8, 2),
    (2, 256, False): (64, 32, 8, 2), (2, 256, True): (32, 16, 8, 1),
    (4, 64, False): (64, 64, 4, 2), (4, 64, True): (64, 32, 4, 2),
    (4, 128, False): (64, 32, 4, 2), (4, 128, True): (32, 32, 4, 2),
    (4, 256, False): (32, 32, 4, 2), (4, 256, True): (16, 32, 4, 1),
}


def _config(sq: int, sk: int, d: int, dtype, backward: bool = False) -> dict:
    block_d = max(16, triton.next_power_of_2(d))
    precision = launch.dot_precision(dtype)
    if launch.interpreted():  # the interpreter's cost is per program: few, big tiles
        block_m = max(16, min(triton.next_power_of_2(sq), 128))
        block_n = max(16, min(triton.next_power_of_2(sk), 128))
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DOT_F32=dtype == torch.bfloat16,
                    PRECISION=precision, ROUND_BF16=launch.round_bf16_by_hand(dtype))
    operand_bytes = 4 if dtype == torch.float32 else 2
    block_m, block_n, warps, stages = _TILES[(operand_bytes, max(64, block_d), backward)]
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DOT_F32=False, PRECISION=precision,
                ROUND_BF16=False, num_warps=warps, num_stages=stages)


def _qkv_strides(q, k, v):
    return (*q.stride(), *k.stride(), *v.stride())


def masked_attention(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale,
                     training):
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    kind = _gate_kind(head_gate, mu)
    g = gate_units(head_gate, mu) or 1
    out = torch.empty((b, sq, hq, d), dtype=q.dtype, device=q.device)
    o = torch.empty_like(out) if kind != NO_GATE else out.new_empty(0)
    lse = torch.empty((b, hq, sq), dtype=torch.float32, device=q.device)
    kpm, am, am_strides = _mask_args(key_padding_mask, attn_mask)
    lo, hi = split_seed(seed)
    cfg = _config(sq, sk, d, q.dtype)
    _forward_kernel[(triton.cdiv(sq, cfg["BLOCK_M"]) * b * hq,)](
        q, k, v, kpm, am, None if head_gate is None else head_gate.contiguous(), mu, log_sigma2,
        None if eps is None else eps.contiguous(), out, o if kind != NO_GATE else out, lse,
        *_qkv_strides(q, k, v), *am_strides, hq, hkv, g, sq, sk, d, scale * LOG2E, lo, hi,
        CAUSAL=causal, HAS_KPM=kpm is not None, HAS_AM=am is not None, GATE_KIND=kind, TRAINING=training,
        HAS_EPS=eps is not None, **cfg)
    return out, o, lse


def masked_attention_backward(grad, q, k, v, o, lse, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps,
                              seed, causal, scale, training):
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    kind = _gate_kind(head_gate, mu)
    g = gate_units(head_gate, mu) or 1
    gate_ptr = None if head_gate is None else head_gate.contiguous()
    eps = None if eps is None else eps.contiguous()
    lo, hi = split_seed(seed)
    f32 = dict(dtype=torch.float32, device=q.device)
    delta = torch.empty((b, hq, sq), **f32)
    z, dz, dze = (torch.empty((b, hq, sq), **f32) if kind != NO_GATE else None for _ in range(3))
    cfg = _config(sq, sk, d, q.dtype, backward=True)
    pre_block = max(16, min(triton.next_power_of_2(sq), 128)) if launch.interpreted() else 64
    _preprocess_kernel[(triton.cdiv(sq, pre_block) * b * hq,)](
        o, grad, gate_ptr, mu, log_sigma2, eps, delta, z, dz, dze, *grad.stride(), hq, g, sq, d, lo, hi,
        GATE_KIND=kind, TRAINING=training, HAS_EPS=eps is not None, BLOCK_M=pre_block, BLOCK_D=cfg["BLOCK_D"])
    kpm, am, am_strides = _mask_args(key_padding_mask, attn_mask)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    common = (*_qkv_strides(q, k, v), *am_strides, *grad.stride(), hq, hkv, sq, sk, d, scale * LOG2E, scale)
    flags = dict(CAUSAL=causal, HAS_KPM=kpm is not None, HAS_AM=am is not None, GATED=kind != NO_GATE, **cfg)
    _dkdv_kernel[(triton.cdiv(sk, cfg["BLOCK_N"]) * b * hkv,)](q, k, v, kpm, am, grad, lse, delta, z, dk, dv,
                                                                *common, **flags)
    _dq_kernel[(triton.cdiv(sq, cfg["BLOCK_M"]) * b * hq,)](q, k, v, kpm, am, grad, lse, delta, z, dq, *common,
                                                             **flags)
    return (dq, dk, dv, *_gate_grads(kind, dz, dze, mu, log_sigma2, training, g, lambda: delta.new_empty(0)))


def _gate_grads(kind, dz, dze, mu, log_sigma2, training, g, empty):
    """The per-(row, head) gate gradients dz [B, Hq, Sq] summed over each unit's heads (and rows): deterministic
    torch reductions of small tensors. Returns (d head_gate, d mu, d log_sigma2), ``empty()`` where absent."""
    if kind == NO_GATE:
        return empty(), empty(), empty()
    b, hq, sq = dz.shape
    per_row = dz.view(b, g, hq // g, sq).sum(dim=2).transpose(1, 2).reshape(b * sq, g)  # [B*Sq, G]
    if kind == ROW_GATE:
        return per_row, empty(), empty()
    if kind == UNIT_GATE:
        return per_row.sum(dim=0), empty(), empty()
    dmu = per_row.sum(dim=0)
    if not training:  # evaluation gate mu * keep: only kept units learn, log_sigma2 gets nothing
        return empty(), torch.where(mu * mu > torch.exp(log_sigma2), dmu, 0.0), torch.zeros_like(log_sigma2)
    noise = dze.view(b, g, hq // g, sq).sum(dim=(0, 2, 3))
    return empty(), dmu, 0.5 * torch.exp(0.5 * log_sigma2) * noise
