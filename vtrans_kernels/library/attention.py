"""Registry of the masked attention op: ``vtrans::masked_attention`` and its backward op.

The forward op returns three tensors: the gated output [B, Sq, Hq, D], the ungated output (same shape; an
empty tensor without a gate) and the fp32 log-sum-exp [B, Hq, Sq]. The last two are what the flash backward
needs (with the ungated output the gate gradient exists even where z = 0); they carry no gradient. q, k, v
go to the backends with their strides (transformers hands over transposed views).
"""
import math

import torch

from .. import _checks
from .common import define as _define, dispatch as _dispatch

OP = "masked_attention"
_GATE_ARGS = "Tensor? head_gate, Tensor? mu, Tensor? log_sigma2, Tensor? eps, SymInt? seed"
_FLAGS = "bool causal, float scale, bool training"
MAX_HEAD_DIM = 256


def _bool_mask(name, t, expected, what):
    if t is None:
        return
    if t.dtype != torch.bool:
        raise TypeError(f"vtrans.{OP}: {name} must be a bool tensor (True = attend), got {t.dtype}")
    if t.dim() != len(expected) or any(s != e and not (isinstance(e, tuple) and s in e)
                                       for s, e in zip(t.shape, expected)):
        raise ValueError(f"vtrans.{OP}: {name} must have shape {what}, got {tuple(t.shape)}")


def _gate_units(name, units, hq):
    if units == 0 or hq % units:
        raise ValueError(f"vtrans.{OP}: {name} has {units} gate units; expected a divisor of the {hq} query heads")


def check(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale, training):
    """Argument checks shared by the real and the fake kernel; errors name the argument."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.dtype_in(OP, name, t, _checks.ACTIVATION_DTYPES)
        if t.dim() != 4:
            raise ValueError(f"vtrans.{OP}: {name} must be 4-D [batch, heads, seq, head_dim], got {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"vtrans.{OP}: k and v must have q's dtype {q.dtype}, got {k.dtype} and {v.dtype}")
    _checks.same_device(OP, "q", q, k=k, v=v, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                        head_gate=head_gate, mu=mu, log_sigma2=log_sigma2, eps=eps)
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    _checks.same_shape(OP, "v", v, k.shape, "the shape of k")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"vtrans.{OP}: k must have shape [{b}, Hkv, Sk, {d}] (q's batch and head_dim), "
                         f"got {tuple(k.shape)}")
    if hkv == 0:
        raise ValueError(f"vtrans.{OP}: k and v must have at least one KV head (dim 1), got shape {tuple(k.shape)}")
    if hq % hkv:
        raise ValueError(f"vtrans.{OP}: the {hq} query heads must be a multiple of the {hkv} KV heads of k and v")
    if d == 0:
        raise ValueError(f"vtrans.{OP}: head_dim (the last dim of q, k and v) must be at least 1, got 0")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"vtrans.{OP}: head_dim must be at most {MAX_HEAD_DIM}, got {d}")
    if not math.isfinite(scale):
        raise ValueError(f"vtrans.{OP}: scale must be a finite number, got {scale}")
    _bool_mask("key_padding_mask", key_padding_mask, (b, sk), f"[{b}, {sk}] (batch, keys)")
    _bool_mask("attn_mask", attn_mask, ((1, b), (1, hq), sq, sk), f"[{b} or 1, {hq} or 1, {sq}, {sk}]")
    if head_gate is not None:
        if mu is not None or log_sigma2 is not None or eps is not None:
            raise ValueError(f"vtrans.{OP}: pass either head_gate or the VIB gate (mu, log_sigma2), not both")
        _checks.dtype_in(OP, "head_gate", head_gate, _checks.PARAMETER_DTYPES)
        if head_gate.dim() not in (1, 2) or (head_gate.dim() == 2 and head_gate.shape[0] != b * sq):
            raise ValueError(f"vtrans.{OP}: head_gate must have shape [G] or [{b * sq}, G] (batch*seq rows), "
                             f"got {tuple(head_gate.shape)}")
        _gate_units("head_gate", head_gate.shape[-1], hq)
    elif mu is not None or log_sigma2 is not None:
        if mu is None or log_sigma2 is None:
            raise ValueError(f"vtrans.{OP}: the VIB gate needs both mu and log_sigma2")
        _checks.vib_params(OP, mu, log_sigma2)
        if mu.dim() != 1:
            raise ValueError(f"vtrans.{OP}: mu and log_sigma2 must be 1-D [G], got {tuple(mu.shape)}")
        _gate_units("mu", mu.shape[0], hq)
        if training:
            _checks.noise_source(OP, "eps", eps, seed)
        if eps is not None:
            _checks.dtype_in(OP, "eps", eps, _checks.ACTIVATION_DTYPES)
            _checks.same_shape(OP, "eps", eps, torch.Size((b * sq, mu.shape[0])), "one normal per row and unit")
    elif eps is not None:
        raise ValueError(f"vtrans.{OP}: eps is given but there is no VIB gate (mu, log_sigma2)")


def _gated(head_gate, mu) -> bool:
    return head_gate is not None or mu is not None


def _outputs(q, gated):
    b, hq, sq, d = q.shape
    out = q.new_empty((b, sq, hq, d))
    return out, (torch.empty_like(out) if gated else q.new_empty(0)), q.new_empty((b, hq, sq), dtype=torch.float32)


def _forward(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale, training):
    check(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale, training)
    if q.numel() == 0 or k.numel() == 0:  # nothing to attend: every row outputs 0
        out, o, lse = _outputs(q, _gated(head_gate, mu))
        return out.zero_(), o.zero_(), lse.fill_(float("-inf"))
    fn = _dispatch(OP, q.device, q, head_gate if head_gate is not None else mu)
    return fn(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps if training else None, seed,
              causal, scale, training)


def _backward(grad, q, k, v, o, lse, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal,
              scale, training):
    if q.numel() == 0 or k.numel() == 0:
        return _zero_grads(q, k, v, head_gate, mu, log_sigma2)
    fn = _dispatch(f"{OP}_backward", q.device, q, head_gate if head_gate is not None else mu)
    return fn(grad.to(q.dtype), q, k, v, o, lse, key_padding_mask, attn_mask, head_gate, mu, log_sigma2,
              eps if training else None, seed, causal, scale, training)


def _no_grad(q):
    # a fresh empty tensor per absent gate gradient (outputs of a custom op must not alias each other)
    return q.new_empty(0, dtype=torch.float32)


def _zero_grads(q, k, v, head_gate, mu, log_sigma2):
    return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
            *(_no_grad(q) if t is None else torch.zeros_like(t) for t in (head_gate, mu, log_sigma2)))


def _grad_shapes(q, k, v, head_gate, mu, log_sigma2):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            *(_no_grad(q) if t is None else torch.empty_like(t) for t in (head_gate, mu, log_sigma2)))


masked_attention = _define(
    OP, f"(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? attn_mask, {_GATE_ARGS}, {_FLAGS})"
        " -> (Tensor, Tensor, Tensor)", _forward)
masked_attention_backward = _define(
    f"{OP}_backward",
    "(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor? key_padding_mask, Tensor? attn_mask, "
    f"{_GATE_ARGS}, {_FLAGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", _backward)


@masked_attention.register_fake
def _(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale, training):
    check(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale, training)
    return _outputs(q, _gated(head_gate, mu))


@masked_attention_backward.register_fake
def _(grad, q, k, v, o, lse, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale,
      training):
    return _grad_shapes(q, k, v, head_gate, mu, log_sigma2)


def _setup(ctx, inputs, output):
    q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale, training = inputs
    out, o, lse = output
    # the backward reads the ungated output: the op's own output when there is no gate
    ctx.save_for_backward(q, k, v, o if _gated(head_gate, mu) else out, lse, key_padding_mask, attn_mask,
                          head_gate, mu, log_sigma2, eps)
    ctx.args = (seed, causal, scale, training)
    ctx.mark_non_differentiable(o, lse)


def _grad(ctx, grad, _grad_o, _grad_lse):
    q, k, v, o, lse, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps = ctx.saved_tensors
    dq, dk, dv, dgate, dmu, dls2 = torch.ops.vtrans.masked_attention_backward(
        grad, q, k, v, o, lse, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, *ctx.args)
    return (dq, dk, dv, None, None, dgate if head_gate is not None else None, dmu if mu is not None else None,
            dls2 if log_sigma2 is not None else None, None, None, None, None, None)


masked_attention.register_autograd(_grad, setup_context=_setup)

#: forward op name -> its backward op name
OPS = {OP: f"{OP}_backward"}
