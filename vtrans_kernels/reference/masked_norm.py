"""LayerNorm and RMSNorm whose statistics cover only the kept hidden dims (CoFi semantics, DESIGN 2.3).

``keep`` is a bool (or exact 0/1) vector over the last dim; pruned dims come out as exactly zero, so a model
using these norms computes what its compacted version (norms sliced to the kept dims) computes. An all-zero
keep gives zeros (the kept-dim count is clamped to 1). Pruned dims are excluded with selects, never multiplied
by 0: a NaN or inf there (in x, residual, weight, bias or the gate) changes nothing, while one in a kept dim
makes its row NaN, as in ``torch.nn.functional.layer_norm``.

Two layers live here:
- the math: ``layer_norm_kept(x, keep, weight, bias, eps)`` and ``rms_norm_kept(x, keep, weight, eps)``
  (plain differentiable PyTorch, what hf/gating.py applies);
- the ``torch`` backend of the fused ops ``vtrans.masked_layer_norm`` / ``vtrans.masked_rms_norm``
  (residual add, masked norm and optional hidden gate in one call; outputs y, h and the row statistics),
  with their ``*_backward`` functions from autograd. Backend forwards compute in fp32 (fp64 for fp64 inputs)
  and round once to the activation dtype.
"""
from __future__ import annotations

import torch

from .. import _checks
from . import vib

__all__ = ["masked_layer_norm", "masked_layer_norm_backward", "masked_rms_norm", "masked_rms_norm_backward"]

def _kept(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """keep as a bool mask on ``like``'s device (1 / True = kept)."""
    return (keep != 0).to(device=like.device)


def _select(kept: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` on kept dims, exactly 0 on pruned ones: a select, not a multiply by 0, so a NaN or inf in a pruned
    dim never reaches the statistics or the output (and gets an exact zero gradient)."""
    return torch.where(kept, t, torch.zeros((), dtype=t.dtype, device=t.device))


def _count(kept: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The number of kept dims, at least 1 (an all-pruned keep gives zero statistics and y = 0)."""
    return kept.sum().clamp(min=1).to(dtype)


def _layer_norm_normed(h, kept, eps):
    """(normalised h on kept dims (0 elsewhere), mean, rstd), computed in h's dtype; kept is a bool mask."""
    count = _count(kept, h.dtype)
    mean = _select(kept, h).sum(-1, keepdim=True) / count
    centered = _select(kept, h - mean)
    rstd = torch.rsqrt(centered.square().sum(-1, keepdim=True) / count + eps)
    return centered * rstd, mean, rstd


def _rms_norm_normed(h, kept, eps):
    """(h * rstd on kept dims (0 elsewhere), rstd) with rstd = rsqrt(mean of squares over kept dims + eps)."""
    h_kept = _select(kept, h)
    rstd = torch.rsqrt(h_kept.square().sum(-1, keepdim=True) / _count(kept, h.dtype) + eps)
    return h_kept * rstd, rstd


def _check_keep(op: str, keep: torch.Tensor, x: torch.Tensor) -> None:
    _checks.keep_mask(op, "keep", keep, x.shape[-1], f"one value per hidden dim, [{x.shape[-1]}]")


def layer_norm_kept(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None,
                    bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm of ``x`` (..., H) over the dims where ``keep`` (H,) is True / 1, in x's dtype; exactly zero
    elsewhere (whatever x, weight and bias hold there, NaN included). ``keep`` must be bool or exact 0/1."""
    _check_keep("layer_norm_kept", keep, x)
    kept = _kept(keep, x)
    y, _, _ = _layer_norm_normed(x, kept, eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return _select(kept, y)


def rms_norm_kept(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` (..., H) over the kept dims like transformers' LlamaRMSNorm: fp32 statistics, the
    normalised value cast back to x's dtype, then ``weight *``; exactly zero on pruned dims (NaN included).
    ``keep`` must be bool or exact 0/1."""
    _check_keep("rms_norm_kept", keep, x)
    kept = _kept(keep, x)
    y = _rms_norm_normed(x.float(), kept, eps)[0].to(x.dtype)
    if weight is not None:
        y = weight * y
    return _select(kept, y)


# ----------------------------------------------------------------------------------------------------------
# the fused ops' torch backend
def _norm(rms, h, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, training):
    """y (compute dtype: fp32, or fp64 for fp64 inputs) and the row statistics (mean or None, rstd), each
    shaped like h minus its last dim. ``noise`` is the explicit VIB noise (None for evaluation)."""
    ct = vib.compute_dtype(h, weight, bias, out_gate, mu)
    h = h.to(ct)
    kept = _kept(keep, h)
    # the per-dim parameters are read on kept dims only (their gradients there are 0 as before)
    weight, bias, out_gate, mu, log_sigma2 = (None if p is None else _select(kept, p.to(ct))
                                              for p in (weight, bias, out_gate, mu, log_sigma2))
    if rms:
        y, rstd = _rms_norm_normed(h, kept, eps)
        mean = None
    else:
        y, mean, rstd = _layer_norm_normed(h, kept, eps)
        mean = mean.squeeze(-1)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    if out_gate is not None:
        y = y * out_gate
    elif mu is not None:
        y = vib.vib_gate(y, mu, log_sigma2, noise, None, training)
    # pruned dims are exactly 0 whatever h, the affine parameters or the gate hold there (NaN included)
    return _select(kept, y), mean, rstd.squeeze(-1)


def _noise(x, mu, noise, seed, training):
    """The VIB noise the gate uses: explicit, or drawn from ``seed`` over x's [rows, H] view; None otherwise."""
    if mu is None or not training:
        return None
    return noise if noise is not None else vib.vib_noise(seed, x)


def _forward(rms, x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    h = x if residual is None else x + residual
    noise = _noise(x, mu, noise, seed, training)
    y, mean, rstd = _norm(rms, h, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, training)
    h_out = x.new_empty(0) if residual is None else h
    return y.to(x.dtype), h_out, mean, rstd


def _backward(rms, grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed,
              training):
    """(dh, dweight, dbias, dout_gate, dmu, dlog_sigma2); absent parameters get empty tensors. The statistics
    are recomputed under autograd, not read from ``mean`` / ``rstd``."""
    noise = _noise(h, mu, noise, seed, training)
    names = ("weight", "bias", "out_gate", "mu", "log_sigma2")
    given = {n: t for n, t in zip(names, (weight, bias, out_gate, mu, log_sigma2)) if t is not None}

    def y_of(h_, *params):
        p = dict(zip(given, params))
        return _norm(rms, h_, keep, p.get("weight"), p.get("bias"), eps, p.get("out_gate"), p.get("mu"),
                     p.get("log_sigma2"), noise, training)[0]

    ct = vib.compute_dtype(h, *given.values())
    _, pullback = torch.func.vjp(y_of, h.to(ct), *given.values())
    # (outputs of a custom op must not be views: clone what autograd hands back as one)
    grads = [g.clone() if g._base is not None else g for g in pullback(grad_y.to(ct))]
    dh = grads[0] if grad_h is None else grads[0] + grad_h.to(ct)
    by_name = dict(zip(given, grads[1:]))
    params = (weight, bias, out_gate, mu, log_sigma2)
    return (dh.to(h.dtype), *(by_name[n].to(t.dtype) if t is not None else h.new_empty(0)
                              for n, t in zip(names, params)))


def backend_functions(forward, backward):
    """The four backend functions of the ops (the op's argument lists) over one backend's shared
    ``forward(rms, x, residual, keep, weight, bias, eps, <gate>) -> (y, h, mean, rstd)`` and
    ``backward(rms, grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, <gate>) -> (dh, dweight, dbias,
    dout_gate, dmu, dlog_sigma2)``; the RMSNorm ones drop the mean and the bias."""

    def masked_layer_norm(x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
        return forward(False, x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training)

    def masked_layer_norm_backward(grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate, mu, log_sigma2,
                                   noise, seed, training):
        return backward(False, grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate, mu, log_sigma2,
                        noise, seed, training)

    def masked_rms_norm(x, residual, keep, weight, eps, out_gate, mu, log_sigma2, noise, seed, training):
        y, h, _, rstd = forward(True, x, residual, keep, weight, None, eps, out_gate, mu, log_sigma2, noise, seed,
                                training)
        return y, h, rstd

    def masked_rms_norm_backward(grad_y, grad_h, h, rstd, keep, weight, eps, out_gate, mu, log_sigma2, noise, seed,
                                 training):
        dh, dweight, _, *dgate = backward(True, grad_y, grad_h, h, None, rstd, keep, weight, None, eps, out_gate, mu,
                                          log_sigma2, noise, seed, training)
        return (dh, dweight, *dgate)

    return masked_layer_norm, masked_layer_norm_backward, masked_rms_norm, masked_rms_norm_backward


# the torch backend: (y, h, mean, rstd) with h empty without residual and fp32 statistics shaped x.shape[:-1]
masked_layer_norm, masked_layer_norm_backward, masked_rms_norm, masked_rms_norm_backward = backend_functions(
    _forward, _backward)
