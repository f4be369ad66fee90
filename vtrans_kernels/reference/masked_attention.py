"""Masked attention with head gates (DESIGN 2.3): explicit-softmax PyTorch math (the test oracle) and the
``torch`` backend functions of op ``masked_attention``.

Semantics shared by every backend:
- q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D]; query head h reads KV head ``h // (Hq // Hkv)``.
- causal is bottom-right aligned: query i attends key j iff ``j <= i + Sk - Sq``; ``key_padding_mask`` [B, Sk]
  and ``attn_mask`` [B or 1, 1 or Hq, Sq, Sk] are bool, True = attend. A query row that attends no key outputs 0
  (zero gradients).
- The output is [B, Sq, Hq, D], each head's output scaled by its unit's gate ``z[b*Sq + s, h // (Hq // G)]``.
"""
import torch

from . import rng
from .vib import gate_value

__all__ = ["masked_attention", "masked_attention_backward"]


def gate_units(head_gate, mu) -> int | None:
    """The number of gate units G, or None without a gate."""
    if head_gate is not None:
        return head_gate.shape[-1]
    return None if mu is None else mu.shape[0]


def allowed_keys(q, k, causal, key_padding_mask, attn_mask) -> torch.Tensor | None:
    """Bool [B or 1, 1 or Hq, Sq, Sk]: which keys each query attends (None: all)."""
    sq, sk = q.shape[2], k.shape[2]
    allowed = None
    if causal:
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        allowed = (j <= i + (sk - sq))[None, None]
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, None, :]
        allowed = kp if allowed is None else allowed & kp
    if attn_mask is not None:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    return allowed


def attention_math(q, k, v, *, causal=False, key_padding_mask=None, attn_mask=None, scale=None, head_gate=None,
                   mu=None, log_sigma2=None, eps=None, seed=None, training=True, return_lse=False):
    """The oracle: explicit softmax attention with the op's semantics, differentiable by autograd.

    Matmuls run in q's dtype, softmax and gate in fp32 (fp64 for fp64 inputs), like PyTorch's own attention.
    Returns the gated output [B, Sq, Hq, D] (and, with ``return_lse``, the ungated output and the fp32
    log-sum-exp [B, Hq, Sq], -inf for rows attending no key).
    """
    b, hq, sq, d = q.shape
    hkv = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scores = (q @ k.transpose(-1, -2)).to(ct) * scale
    allowed = allowed_keys(q, k, causal, key_padding_mask, attn_mask)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    total = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(total == 0, torch.ones_like(total), total)
    o = (probs.to(q.dtype) @ v).transpose(1, 2)  # [B, Sq, Hq, D]
    out = o
    z = gate_value(b * sq, gate_units(head_gate, mu), head_gate, mu, log_sigma2, eps, seed, training, ct)
    if z is not None:
        g = z.shape[-1]
        z = z.reshape(-1, g).expand(b * sq, g).reshape(b, sq, g, 1, 1)
        out = (o.reshape(b, sq, g, hq // g, d).to(ct) * z).reshape(b, sq, hq, d).to(q.dtype)
    out = out.contiguous()
    if not return_lse:
        return out
    lse = (row_max + torch.log(total)).squeeze(-1).to(torch.float32)
    return out, o.contiguous(), lse


def _empty(like):
    return like.new_empty(0)


def masked_attention(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps, seed, causal, scale,
                     training):
    """Backend forward: (gated out [B, Sq, Hq, D], ungated out (or an empty tensor without a gate), lse)."""
    out, o, lse = attention_math(q, k, v, causal=causal, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                 scale=scale, head_gate=head_gate, mu=mu, log_sigma2=log_sigma2, eps=eps, seed=seed,
                                 training=training, return_lse=True)
    return out, (o if gate_units(head_gate, mu) is not None else _empty(out)), lse


def masked_attention_backward(grad, q, k, v, o, lse, key_padding_mask, attn_mask, head_gate, mu, log_sigma2, eps,
                              seed, causal, scale, training):
    """Backend backward: (dq, dk, dv, d head_gate, d mu, d log_sigma2), absent gate gradients as empty tensors."""
    if mu is not None and training and eps is None:
        eps = rng.normal(seed, q.shape[0] * q.shape[2], mu.shape[0], device=q.device)  # drawn once
    names = ["q", "k", "v"] + [n for n, t in (("head_gate", head_gate), ("mu", mu), ("log_sigma2", log_sigma2))
                               if t is not None]
    fixed = dict(q=q, k=k, v=v, head_gate=head_gate, mu=mu, log_sigma2=log_sigma2)

    def fn(*primals):
        args = {**fixed, **dict(zip(names, primals))}
        return attention_math(args.pop("q"), args.pop("k"), args.pop("v"), causal=causal,
                              key_padding_mask=key_padding_mask, attn_mask=attn_mask, scale=scale, eps=eps,
                              training=training, **args)

    _, pullback = torch.func.vjp(fn, *(fixed[n] for n in names))
    grads = dict(zip(names, pullback(grad.to(q.dtype))))
    # outputs of a custom op must be fresh tensors, and autograd may hand back views or zero-strided expands
    result = [grads[n].contiguous().clone() for n in ("q", "k", "v")]
    for n in ("head_gate", "mu", "log_sigma2"):
        result.append(grads[n].clone() if n in grads else _empty(grad.float()))
    return tuple(result)
