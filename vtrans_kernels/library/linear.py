"""Registry of the fused masked linear layer and masked SwiGLU FFN (DESIGN 2.3, 3.1).

``vtrans::masked_linear`` returns ``(y, saved)`` and ``vtrans::masked_swiglu`` returns ``(y, h_gate, h_up)``: the
extra outputs are what the backward op needs (the pre-activations, or an empty tensor when nothing is needed),
so no noise and no post-activation copy is ever stored. The backward ops take a ``needs`` list (from autograd's
``needs_input_grad``): a frozen weight (Faster-VTrans trains masks only) skips its whole dW GEMM.
Gradients that are not wanted, or whose input is None, come back from the backward op as empty tensors.
"""
import math

import torch

from .. import _checks
from ..reference import backend as _reference_backend, masked_linear as _ref
from .common import contiguous as _contiguous, define as _define, dispatch as _dispatch

_GATES = "Tensor? out_gate, Tensor? mu, Tensor? log_sigma2, Tensor? eps, SymInt? seed, bool training"


# ----------------------------------------------------------------------------------------------------------
# argument checks, shared by the real and the fake kernels
def _check_operands(op, x, weights: dict, biases: dict):
    _checks.dtype_in(op, "x", x, _checks.ACTIVATION_DTYPES)
    if x.dim() == 0:
        raise ValueError(f"vtrans.{op}: x must have at least one dimension (features last), got a 0-d tensor")
    k = x.shape[-1]
    first = next(iter(weights))
    n = weights[first].shape[0] if weights[first].dim() == 2 else None
    for name, w in weights.items():
        if w.dtype != x.dtype:
            raise TypeError(f"vtrans.{op}: {name} must have x's dtype {x.dtype}, got {w.dtype}")
        if w.dim() != 2 or w.shape[1] != k or w.shape[0] != n:
            raise ValueError(f"vtrans.{op}: {name} must have shape [N, {k}] (nn.Linear layout, in_features = "
                             f"x.shape[-1]{', same N for all weights' if len(weights) > 1 else ''}), "
                             f"got {tuple(w.shape)}")
    for name, b in biases.items():
        if b is None:
            continue
        if b.dtype != x.dtype:
            raise TypeError(f"vtrans.{op}: {name} must have x's dtype {x.dtype}, got {b.dtype}")
        _checks.same_shape(op, name, b, torch.Size([n]), "one bias per output feature")
    _checks.same_device(op, "x", x, **weights, **biases)
    return n


def _check_out_gate(op, x, n, out_gate, mu, log_sigma2, eps, seed, training):
    rows = math.prod(x.shape[:-1])
    _checks.same_device(op, "x", x, out_gate=out_gate, mu=mu, log_sigma2=log_sigma2, eps=eps)
    _checks.output_gate(op, n, "one gate per output feature", out_gate, mu, log_sigma2, "eps", eps, seed, training,
                        (torch.Size([rows, n]), torch.Size([*x.shape[:-1], n])))


def _check_in_gate(op, x, in_gate):
    if in_gate is None:
        return
    _checks.dtype_in(op, "in_gate", in_gate, _checks.PARAMETER_DTYPES)
    _checks.same_device(op, "x", x, in_gate=in_gate)
    k, rows = x.shape[-1], math.prod(x.shape[:-1])
    groups = in_gate.shape[-1] if in_gate.dim() else 0
    if in_gate.dim() not in (1, 2) or groups == 0 or k % groups or (in_gate.dim() == 2 and in_gate.shape[0] != rows):
        raise ValueError(f"vtrans.{op}: in_gate must have shape [G] or [{rows}, G] (rows = x.numel() // "
                         f"x.shape[-1]) with G dividing in_features {k}, got {tuple(in_gate.shape)}")


def check_masked_linear(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training):
    """Raise a clear error (naming the argument) for any invalid masked_linear call."""
    op = "masked_linear"
    _ref.activation_id(activation, op)
    n = _check_operands(op, x, dict(weight=weight), dict(bias=bias))
    _check_in_gate(op, x, in_gate)
    _check_out_gate(op, x, n, out_gate, mu, log_sigma2, eps, seed, training)


def check_masked_swiglu(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training):
    """Raise a clear error (naming the argument) for any invalid masked_swiglu call."""
    op = "masked_swiglu"
    _ref.activation_id(activation, op)
    n = _check_operands(op, x, dict(w_gate=w_gate, w_up=w_up), dict(b_gate=b_gate, b_up=b_up))
    _check_out_gate(op, x, n, out_gate, mu, log_sigma2, eps, seed, training)


def _trivial(x, *weights) -> bool:
    # degenerate sizes have nothing to fuse (and K = 0 still gives act(bias)): the reference handles them
    return x.numel() == 0 or any(w.numel() == 0 for w in weights)


def _backend(op, x, trivial, *params):
    return getattr(_reference_backend, op) if trivial else _dispatch(op, x.device, x, *params)


def _noise_in_training(eps, training):
    # evaluation draws no noise: explicit eps is ignored there (as vib_gate does)
    return eps if training else None


# ----------------------------------------------------------------------------------------------------------
# masked_linear
def _saved_shape(x, n, activation, gated):
    return (*x.shape[:-1], n) if _ref.needs_preactivation(activation, gated) else (0,)


def _masked_linear(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training):
    check_masked_linear(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training)
    x, weight, bias, in_gate, out_gate, mu, log_sigma2, eps = _contiguous(
        x, weight, bias, in_gate, out_gate, mu, log_sigma2, _noise_in_training(eps, training))
    fn = _backend("masked_linear", x, _trivial(x, weight), x, mu, in_gate, out_gate)
    return fn(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training)


def _masked_linear_bwd(grad, saved, x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed,
                       training, needs):
    grad, saved, x, weight, bias, in_gate, out_gate, mu, log_sigma2, eps = _contiguous(
        grad.to(x.dtype), saved, x, weight, bias, in_gate, out_gate, mu, log_sigma2, _noise_in_training(eps, training))
    fn = _backend("masked_linear_backward", x, _trivial(x, weight), x, mu, in_gate, out_gate)
    return fn(grad, saved, x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training,
              needs)


masked_linear = _define(
    "masked_linear",
    f"(Tensor x, Tensor weight, Tensor? bias, str activation, Tensor? in_gate, {_GATES}) -> (Tensor, Tensor)",
    _masked_linear)
masked_linear_backward = _define(
    "masked_linear_backward",
    f"(Tensor grad, Tensor saved, Tensor x, Tensor weight, Tensor? bias, str activation, Tensor? in_gate, {_GATES}, "
    f"bool[] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", _masked_linear_bwd)


@masked_linear.register_fake
def _(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training):
    check_masked_linear(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training)
    n = weight.shape[0]
    return (x.new_empty((*x.shape[:-1], n)),
            x.new_empty(_saved_shape(x, n, activation, out_gate is not None or mu is not None)))


def _fake_grads(needs, x, tensors):
    """Fake gradients: shaped like the input when wanted and present, else an empty tensor of x's dtype."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if need and t is not None
                 else x.new_empty(0) for need, t in zip(needs, tensors))


@masked_linear_backward.register_fake
def _(grad, saved, x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training, needs):
    return _fake_grads(needs, x, (x, weight, bias, in_gate, out_gate, mu, log_sigma2))


_LINEAR_GRAD_INPUTS = (0, 1, 2, 4, 5, 6, 7)  # x, weight, bias, in_gate, out_gate, mu, log_sigma2


def _needs(ctx, inputs, positions) -> list[bool]:
    return [bool(ctx.needs_input_grad[i]) and inputs[i] is not None for i in positions]


def _as_grads(grads, needs, positions, count):
    """The autograd formula's answer: one entry per op input, None where no gradient was wanted."""
    out = [None] * count
    for g, need, i in zip(grads, needs, positions):
        out[i] = g if need else None
    return tuple(out)


def _masked_linear_setup(ctx, inputs, output):
    x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed, training = inputs
    ctx.save_for_backward(output[1], x, weight, bias, in_gate, out_gate, mu, log_sigma2, eps)
    ctx.args = (activation, seed, training)
    ctx.needs = _needs(ctx, inputs, _LINEAR_GRAD_INPUTS)


def _masked_linear_grad(ctx, grad, _grad_saved):
    saved, x, weight, bias, in_gate, out_gate, mu, log_sigma2, eps = ctx.saved_tensors
    activation, seed, training = ctx.args
    grads = torch.ops.vtrans.masked_linear_backward(grad, saved, x, weight, bias, activation, in_gate, out_gate, mu,
                                                    log_sigma2, eps, seed, training, ctx.needs)
    return _as_grads(grads, ctx.needs, _LINEAR_GRAD_INPUTS, 11)


masked_linear.register_autograd(_masked_linear_grad, setup_context=_masked_linear_setup)


# ----------------------------------------------------------------------------------------------------------
# masked_swiglu
def _masked_swiglu(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training):
    check_masked_swiglu(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training)
    x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2, eps = _contiguous(
        x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2, _noise_in_training(eps, training))
    fn = _backend("masked_swiglu", x, _trivial(x, w_gate), x, mu, out_gate)
    return fn(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training)


def _masked_swiglu_bwd(grad, h_gate, h_up, x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps,
                       seed, training, needs):
    grad, h_gate, h_up, x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2, eps = _contiguous(
        grad.to(x.dtype), h_gate, h_up, x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2, _noise_in_training(eps, training))
    fn = _backend("masked_swiglu_backward", x, _trivial(x, w_gate), x, mu, out_gate)
    return fn(grad, h_gate, h_up, x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed,
              training, needs)


masked_swiglu = _define(
    "masked_swiglu",
    f"(Tensor x, Tensor w_gate, Tensor w_up, Tensor? b_gate, Tensor? b_up, str activation, {_GATES}) "
    f"-> (Tensor, Tensor, Tensor)", _masked_swiglu)
masked_swiglu_backward = _define(
    "masked_swiglu_backward",
    f"(Tensor grad, Tensor h_gate, Tensor h_up, Tensor x, Tensor w_gate, Tensor w_up, Tensor? b_gate, Tensor? b_up, "
    f"str activation, {_GATES}, bool[] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _masked_swiglu_bwd)


@masked_swiglu.register_fake
def _(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training):
    check_masked_swiglu(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training)
    shape = (*x.shape[:-1], w_gate.shape[0])
    return x.new_empty(shape), x.new_empty(shape), x.new_empty(shape)


@masked_swiglu_backward.register_fake
def _(grad, h_gate, h_up, x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training,
      needs):
    return _fake_grads(needs, x, (x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2))


_SWIGLU_GRAD_INPUTS = (0, 1, 2, 3, 4, 6, 7, 8)  # x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2


def _masked_swiglu_setup(ctx, inputs, output):
    x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps, seed, training = inputs
    ctx.save_for_backward(output[1], output[2], x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2, eps)
    ctx.args = (activation, seed, training)
    ctx.needs = _needs(ctx, inputs, _SWIGLU_GRAD_INPUTS)


def _masked_swiglu_grad(ctx, grad, _grad_h_gate, _grad_h_up):
    h_gate, h_up, x, w_gate, w_up, b_gate, b_up, out_gate, mu, log_sigma2, eps = ctx.saved_tensors
    activation, seed, training = ctx.args
    grads = torch.ops.vtrans.masked_swiglu_backward(grad, h_gate, h_up, x, w_gate, w_up, b_gate, b_up, activation,
                                                    out_gate, mu, log_sigma2, eps, seed, training, ctx.needs)
    return _as_grads(grads, ctx.needs, _SWIGLU_GRAD_INPUTS, 12)


masked_swiglu.register_autograd(_masked_swiglu_grad, setup_context=_masked_swiglu_setup)

#: forward op name -> its backward op name
OPS = {"masked_linear": "masked_linear_backward", "masked_swiglu": "masked_swiglu_backward"}
