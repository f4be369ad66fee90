"""The ``torch`` backend: forward passes are the reference functions, backward passes come from autograd.

Every backend exposes the same functions (one forward and one ``*_backward`` per op, with the op's
arguments); ``library.py`` picks a backend per call.
"""
import torch

from . import hard_concrete as hc
from . import vib


def _vjp(fn, primals: tuple[torch.Tensor, ...], grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # torch.func works inside a custom op's implementation, where the autograd dispatch key is excluded
    # (outputs of a custom op must not be views, and autograd may hand back views of its buffers)
    _, pullback = torch.func.vjp(fn, *primals)
    return tuple(g.clone() if g._base is not None else g for g in pullback(grad))


def hard_concrete_sample(log_alpha, u, seed, beta, limit_l, limit_r):
    return hc.hard_concrete_sample(log_alpha, u, seed, beta, limit_l, limit_r)


def hard_concrete_sample_backward(grad, log_alpha, u, seed, beta, limit_l, limit_r):
    (d_log_alpha,) = _vjp(lambda la: hc.hard_concrete_sample(la, u, seed, beta, limit_l, limit_r), (log_alpha,), grad)
    return d_log_alpha


def hard_concrete_expected_l0(log_alpha, beta, limit_l, limit_r):
    return hc.hard_concrete_expected_l0(log_alpha, beta, limit_l, limit_r)


def hard_concrete_expected_l0_backward(grad, log_alpha, beta, limit_l, limit_r):
    (d_log_alpha,) = _vjp(lambda la: hc.hard_concrete_expected_l0(la, beta, limit_l, limit_r), (log_alpha,), grad)
    return d_log_alpha


def hard_concrete_deterministic(log_alpha, beta, limit_l, limit_r):
    return hc.hard_concrete_deterministic(log_alpha, beta, limit_l, limit_r)


def hard_concrete_deterministic_backward(grad, log_alpha, beta, limit_l, limit_r):
    (d_log_alpha,) = _vjp(lambda la: hc.hard_concrete_deterministic(la, beta, limit_l, limit_r), (log_alpha,), grad)
    return d_log_alpha


def vib_gate(x, mu, log_sigma2, eps, seed, training):
    return vib.vib_gate(x, mu, log_sigma2, eps, seed, training)


def vib_gate_backward(grad, x, mu, log_sigma2, eps, seed, training):
    if eps is None and training:
        eps = vib.vib_noise(seed, x)  # drawn once, not once per autograd call
    ct = vib.compute_dtype(x, mu)
    dx, dmu, dls2 = _vjp(lambda x_, m, s: vib.vib_gate(x_, m, s, eps, None, training),
                         (x.to(ct), mu, log_sigma2), grad.to(ct))
    return dx.to(x.dtype), dmu, dls2


def vib_kl(mu, log_sigma2):
    return vib.vib_kl(mu, log_sigma2)


def vib_kl_backward(grad, mu, log_sigma2):
    return _vjp(vib.vib_kl, (mu, log_sigma2), grad)


def vib_keep_prob(mu, log_sigma2, temperature):
    return vib.vib_keep_prob(mu, log_sigma2, temperature)


def vib_keep_prob_backward(grad, mu, log_sigma2, temperature):
    return _vjp(lambda m, s: vib.vib_keep_prob(m, s, temperature), (mu, log_sigma2), grad)


# fused op families: each reference module's __all__ lists its backend functions (forward and *_backward)
from .masked_attention import *  # noqa: E402,F401,F403
from .masked_linear import *  # noqa: E402,F401,F403
from .masked_norm import *  # noqa: E402,F401,F403
