"""Masked linear layer and masked SwiGLU FFN (DESIGN 2.3): the reference math and the ``torch`` backend.

``masked_linear``: ``y = gate_out(act(gate_in(x) @ weight^T + bias))``; ``masked_swiglu``:
``y = act(x w_gate^T + b_gate) * (x w_up^T + b_up) * z``. The output gate ``z`` is a plain per-column vector
(``out_gate``, e.g. a hard-concrete sample), a VIB gate (``mu``, ``log_sigma2`` with noise ``eps`` or ``seed``;
evaluation uses ``mu * keep``, as ``vib_gate``) or absent. Numerics follow what a PyTorch model in the input
dtype does: the GEMM in the input dtype (fp32 accumulation), its result rounded to that dtype, then the
activation and the gate in fp32 (fp64 for fp64 inputs) and one rounding of the output.

The backend functions return the output plus what the kernels save for backward (the pre-activations), so the
torch and triton backends are interchangeable; the torch backward recomputes the forward under ``torch.func``.
"""
import math

import torch
import torch.nn.functional as F

from .vib import compute_dtype, gate_value
from . import rng

__all__ = ["masked_linear", "masked_linear_backward", "masked_swiglu", "masked_swiglu_backward"]

#: activation name -> the id the Triton kernels take as a constexpr
ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "silu": 4}


def activation_id(name: str, op: str = "masked_linear") -> int:
    """The kernel id of activation ``name``; a clear ValueError for an unknown name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"vtrans.{op}: activation must be one of {tuple(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def act(h: torch.Tensor, name: str) -> torch.Tensor:
    """The activation ``name`` applied to ``h`` (gelu is the exact erf form, gelu_tanh the tanh approximation)."""
    if name == "none":
        return h
    if name == "gelu":
        return F.gelu(h)
    if name == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if name == "relu":
        return F.relu(h)
    if name == "silu":
        return F.silu(h)
    raise ValueError(f"unknown activation {name!r}")


def gate_noise(seed: int, rows: int, cols: int, device) -> torch.Tensor:
    """The VIB noise for an output of ``rows`` x ``cols``: exactly what ``vib_gate`` draws for ``seed`` on it."""
    return rng.normal(seed, rows, cols, device=device)


def scaled_input(x: torch.Tensor, in_gate: torch.Tensor | None) -> torch.Tensor:
    """``x`` with its columns scaled by ``in_gate`` ([G] or [rows, G], block width K // G), computed in fp32 and
    rounded to x's dtype (the GEMM operand the kernel builds tile by tile)."""
    if in_gate is None:
        return x
    k, g = x.shape[-1], in_gate.shape[-1]
    rows = math.prod(x.shape[:-1])
    ct = compute_dtype(x, in_gate)
    blocks = x.reshape(rows, g, k // g).to(ct) * in_gate.to(ct).reshape(-1, g, 1)
    return blocks.reshape(x.shape).to(x.dtype)


def _gated(a: torch.Tensor, z: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    # a: [rows, N] in the compute dtype
    return (a if z is None else a * z).to(out_dtype)


def linear_forward(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training):
    """``(y, h)``: the masked linear output and its pre-activation, both shaped [..., N] in x's dtype."""
    n = weight.shape[0]
    h = F.linear(scaled_input(x, in_gate), weight, bias)
    ct = compute_dtype(x, mu, out_gate, in_gate)
    h2 = h.reshape(math.prod(h.shape[:-1]), n)  # (not -1: ambiguous when N or the rows are 0)
    z = gate_value(h2.shape[0], n, out_gate, mu, log_sigma2, eps, seed, training, ct)
    return _gated(act(h2.to(ct), activation), z, x.dtype).reshape(h.shape), h


def swiglu_forward(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training):
    """``(y, h_gate, h_up)``: the masked SwiGLU output and its two pre-activations, [..., N] in x's dtype."""
    n = w_gate.shape[0]
    hg, hu = F.linear(x, w_gate, b_gate), F.linear(x, w_up, b_up)
    ct = compute_dtype(x, mu, out_gate)
    rows = math.prod(hg.shape[:-1])
    hg2, hu2 = hg.reshape(rows, n), hu.reshape(rows, n)
    z = gate_value(hg2.shape[0], n, out_gate, mu, log_sigma2, eps, seed, training, ct)
    a = act(hg2.to(ct), activation) * hu2.to(ct)
    return _gated(a, z, x.dtype).reshape(hg.shape), hg, hu


def needs_preactivation(activation: str, has_out_gate: bool) -> bool:
    """Whether the backward needs the pre-activation: for act'(h), or for a = act(h) in the gate gradients."""
    return activation != "none" or has_out_gate


# ----------------------------------------------------------------------------------------------------------
# torch backend: forward = the reference; backward = autograd (torch.func) through it
def masked_linear(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training):
    y, h = linear_forward(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training)
    return y, (h if needs_preactivation(activation, out_gate is not None or mu is not None) else y.new_empty(0))


def _train_noise(rows, n, mu, eps, seed, training, device):
    # the noise drawn once for the whole vjp (None when there is none)
    if mu is None or not training:
        return None
    return eps.reshape(rows, n) if eps is not None else gate_noise(seed, rows, n, device)


def _vjp_grads(fn, primals: dict, needs, grad):
    """Gradients of ``fn(**primals)`` for each primal (None entries and unneeded ones give empty tensors)."""
    names = [k for k, v in primals.items() if v is not None]
    fixed = {k: v for k, v in primals.items() if v is None}

    def call(*tensors):
        return fn(**fixed, **dict(zip(names, tensors)))

    _, pullback = torch.func.vjp(call, *(primals[k] for k in names))
    got = dict(zip(names, pullback(grad)))
    out = []
    for (name, value), need in zip(primals.items(), needs):
        g = got.get(name)
        # custom-op outputs must not alias: clone views that autograd may hand back
        out.append(g.clone() if need and g is not None else primals["x"].new_empty(0))
    return tuple(out)


def _eval_ls2_grad(grads, log_sigma2, training, needs):
    # evaluation: the keep decision is a step function, so log_sigma2 gets an exact zero gradient
    if log_sigma2 is not None and not training and needs[-1]:
        grads = (*grads[:-1], torch.zeros_like(log_sigma2))
    return grads


def masked_linear_backward(grad, saved, x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed,
                           training, needs):
    n = weight.shape[0]
    rows = math.prod(x.shape[:-1])
    noise = _train_noise(rows, n, mu, eps, seed, training, x.device)

    def fn(x, weight, bias, in_gate, out_gate, mu, log_sigma2):
        return linear_forward(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, noise, None,
                              training)[0]

    primals = dict(x=x, weight=weight, bias=bias, in_gate=in_gate, out_gate=out_gate, mu=mu, log_sigma2=log_sigma2)
    return _eval_ls2_grad(_vjp_grads(fn, primals, needs, grad), log_sigma2, training, needs)


def masked_swiglu(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training):
    return swiglu_forward(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training)


def masked_swiglu_backward(grad, h_gate, h_up, x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2,
                           eps, seed, training, needs):
    n = w_gate.shape[0]
    rows = math.prod(x.shape[:-1])
    noise = _train_noise(rows, n, mu, eps, seed, training, x.device)

    def fn(x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2):
        return swiglu_forward(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, noise, None,
                              training)[0]

    primals = dict(x=x, w_gate=w_gate, w_up=w_up, b_gate=b_gate, b_up=b_up, out_gate=out_gate, mu=mu,
                   log_sigma2=log_sigma2)
    return _eval_ls2_grad(_vjp_grads(fn, primals, needs, grad), log_sigma2, training, needs)
