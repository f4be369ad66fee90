"""Registry of the fused masked norms: ``vtrans.masked_layer_norm`` and ``vtrans.masked_rms_norm``.

Residual add, LayerNorm/RMSNorm over the kept hidden dims (DESIGN 2.3) and an optional hidden gate on the
output, in one op. Schemas (the RMS op has no bias and no mean)::

    masked_layer_norm(x, residual?, keep, weight?, bias?, eps, out_gate?, mu?, log_sigma2?, noise?, seed?,
                      training) -> (y, h, mean, rstd)
    masked_rms_norm(x, residual?, keep, weight?, eps, out_gate?, mu?, log_sigma2?, noise?, seed?, training)
                      -> (y, h, rstd)

h = x + residual (an empty tensor without residual); mean/rstd are fp32 (fp64 for fp64 inputs) row
statistics shaped x.shape[:-1], saved for the backward and not differentiable. The backward ops take
(grad_y, grad_h?, h_or_x, [mean,] rstd, keep, weight?, [bias?,] eps, gate args...) and return dh (gradient of
x and of residual) and the parameter gradients (empty tensors for absent parameters).
"""
import torch

from .. import _checks
from .common import contiguous as _contiguous, define as _define, dispatch as _dispatch, empty as _empty

_GATE_ARGS = "Tensor? out_gate, Tensor? mu, Tensor? log_sigma2, Tensor? noise, SymInt? seed, bool training"


def _check(op, x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    """Argument checks shared by the real and the fake kernels."""
    _checks.dtype_in(op, "x", x, _checks.ACTIVATION_DTYPES)
    if x.dim() == 0:
        raise ValueError(f"vtrans.{op}: x must have at least one dimension (the hidden one, last), got a 0-d tensor")
    hidden = x.shape[-1]
    _checks.same_device(op, "x", x, residual=residual, keep=keep, weight=weight, bias=bias, out_gate=out_gate,
                        mu=mu, log_sigma2=log_sigma2, noise=noise)
    if residual is not None:
        _checks.same_shape(op, "residual", residual, x.shape, "the shape of x")
        if residual.dtype != x.dtype:
            raise TypeError(f"vtrans.{op}: residual must have x's dtype {x.dtype}, got {residual.dtype}")
    per_dim = f"one value per hidden dim, [{hidden}]"
    _checks.keep_mask(op, "keep", keep, hidden, per_dim)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            _checks.dtype_in(op, name, t, _checks.ACTIVATION_DTYPES)
            _checks.same_shape(op, name, t, torch.Size([hidden]), per_dim)
    _checks.scalar_in(op, "eps", eps, 0.0, float("inf"), "positive")
    _checks.output_gate(op, hidden, per_dim, out_gate, mu, log_sigma2, "noise", noise, seed, training, (x.shape,))


def _stat_dtype(*tensors):
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _outputs(rms, x, residual, *params):
    """Empty outputs of the right shapes: (y, h, [mean,] rstd)."""
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    h = x.new_empty(0) if residual is None else torch.empty_like(y)
    stats = [x.new_empty(x.shape[:-1], dtype=_stat_dtype(x, *params)) for _ in range(1 if rms else 2)]
    return (y, h, *stats)


def _grads_like(h, params):
    """Empty backward outputs: dh, then one per parameter (empty where the parameter is absent)."""
    return (torch.empty_like(h, memory_format=torch.contiguous_format),
            *(h.new_empty(0) if p is None else torch.empty_like(p) for p in params))


def _forward(op, rms, x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    _check(op, x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training)
    if _empty(x):
        return tuple(t.zero_() for t in _outputs(rms, x, residual, weight, bias, out_gate, mu))
    if mu is None or not training:
        noise, seed = None, None
    x, residual, keep, weight, bias, out_gate, mu, log_sigma2, noise = _contiguous(
        x, residual, keep, weight, bias, out_gate, mu, log_sigma2, noise)
    fn = _dispatch(op, x.device, x, weight, bias, out_gate, mu, log_sigma2)
    norm_args = (weight,) if rms else (weight, bias)
    return fn(x, residual, keep, *norm_args, eps, out_gate, mu, log_sigma2, noise, seed, training)


def _backward(op, rms, grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed,
              training):
    params = (weight,) if rms else (weight, bias)
    params += (out_gate, mu, log_sigma2)
    if _empty(h):
        return tuple(t.zero_() for t in _grads_like(h, params))
    if mu is None or not training:
        noise, seed = None, None
    grad_y = grad_y.to(h.dtype)
    grad_h = None if grad_h is None else grad_h.to(h.dtype)
    grad_y, grad_h, h, mean, rstd, keep, weight, bias, out_gate, mu, log_sigma2, noise = _contiguous(
        grad_y, grad_h, h, mean, rstd, keep, weight, bias, out_gate, mu, log_sigma2, noise)
    fn = _dispatch(f"{op}_backward", h.device, h, weight, bias, out_gate, mu, log_sigma2)
    head = (grad_y, grad_h, h, rstd, keep, weight) if rms else (grad_y, grad_h, h, mean, rstd, keep, weight, bias)
    return fn(*head, eps, out_gate, mu, log_sigma2, noise, seed, training)


# ----------------------------------------------------------------------------------------------------------
# masked_layer_norm
def _ln(x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    return _forward("masked_layer_norm", False, x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2,
                    noise, seed, training)


def _ln_bwd(grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    return _backward("masked_layer_norm", False, grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate,
                     mu, log_sigma2, noise, seed, training)


masked_layer_norm = _define(
    "masked_layer_norm",
    f"(Tensor x, Tensor? residual, Tensor keep, Tensor? weight, Tensor? bias, float eps, {_GATE_ARGS})"
    " -> (Tensor, Tensor, Tensor, Tensor)", _ln)
masked_layer_norm_backward = _define(
    "masked_layer_norm_backward",
    "(Tensor grad_y, Tensor? grad_h, Tensor h, Tensor mean, Tensor rstd, Tensor keep, Tensor? weight, Tensor? bias,"
    f" float eps, {_GATE_ARGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", _ln_bwd)


@masked_layer_norm.register_fake
def _(x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    _check("masked_layer_norm", x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training)
    return _outputs(False, x, residual, weight, bias, out_gate, mu)


@masked_layer_norm_backward.register_fake
def _(grad_y, grad_h, h, mean, rstd, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training):
    return _grads_like(h, (weight, bias, out_gate, mu, log_sigma2))


# ----------------------------------------------------------------------------------------------------------
# masked_rms_norm
def _rms(x, residual, keep, weight, eps, out_gate, mu, log_sigma2, noise, seed, training):
    return _forward("masked_rms_norm", True, x, residual, keep, weight, None, eps, out_gate, mu, log_sigma2, noise,
                    seed, training)


def _rms_bwd(grad_y, grad_h, h, rstd, keep, weight, eps, out_gate, mu, log_sigma2, noise, seed, training):
    return _backward("masked_rms_norm", True, grad_y, grad_h, h, None, rstd, keep, weight, None, eps, out_gate, mu,
                     log_sigma2, noise, seed, training)


masked_rms_norm = _define(
    "masked_rms_norm",
    f"(Tensor x, Tensor? residual, Tensor keep, Tensor? weight, float eps, {_GATE_ARGS}) -> (Tensor, Tensor, Tensor)",
    _rms)
masked_rms_norm_backward = _define(
    "masked_rms_norm_backward",
    f"(Tensor grad_y, Tensor? grad_h, Tensor h, Tensor rstd, Tensor keep, Tensor? weight, float eps, {_GATE_ARGS})"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor)", _rms_bwd)


@masked_rms_norm.register_fake
def _(x, residual, keep, weight, eps, out_gate, mu, log_sigma2, noise, seed, training):
    _check("masked_rms_norm", x, residual, keep, weight, None, eps, out_gate, mu, log_sigma2, noise, seed, training)
    return _outputs(True, x, residual, weight, out_gate, mu)


@masked_rms_norm_backward.register_fake
def _(grad_y, grad_h, h, rstd, keep, weight, eps, out_gate, mu, log_sigma2, noise, seed, training):
    return _grads_like(h, (weight, out_gate, mu, log_sigma2))


# ----------------------------------------------------------------------------------------------------------
# autograd: d x = d residual = dh (the gradient through y plus the incoming gradient of h)
def _register_autograd(op, backward_op, rms: bool):
    n_stats = 1 if rms else 2

    def setup(ctx, inputs, output):
        if rms:
            x, residual, keep, weight, eps, out_gate, mu, log_sigma2, noise, seed, training = inputs
            bias = None
        else:
            x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2, noise, seed, training = inputs
        _, h, *stats = output
        ctx.mark_non_differentiable(*stats)
        if residual is None:
            ctx.mark_non_differentiable(h)
        ctx.save_for_backward(x if residual is None else h, *stats, keep, weight, bias, out_gate, mu, log_sigma2,
                              noise)
        ctx.args = (eps, seed, training)
        ctx.has_residual = residual is not None

    def grad_fn(ctx, grad_y, grad_h, *_stat_grads):
        h, *rest = ctx.saved_tensors
        stats, (keep, weight, bias, out_gate, mu, log_sigma2, noise) = rest[:n_stats], rest[n_stats:]
        eps, seed, training = ctx.args
        if grad_y is None:
            grad_y = torch.zeros_like(h)
        grad_h = grad_h if ctx.has_residual else None
        norm_params = (weight,) if rms else (weight, bias)
        dh, *dparams = backward_op(grad_y, grad_h, h, *stats, keep, *norm_params, eps, out_gate, mu, log_sigma2,
                                   noise, seed, training)
        grads = [None if p is None else d for p, d in zip((*norm_params, out_gate, mu, log_sigma2), dparams)]
        k = len(norm_params)
        # inputs: x, residual, keep, weight, [bias,] eps, out_gate, mu, log_sigma2, noise, seed, training
        return (dh, dh if ctx.has_residual else None, None, *grads[:k], None, *grads[k:], None, None, None)

    op.register_autograd(grad_fn, setup_context=setup)


_register_autograd(masked_layer_norm, torch.ops.vtrans.masked_layer_norm_backward, rms=False)
_register_autograd(masked_rms_norm, torch.ops.vtrans.masked_rms_norm_backward, rms=True)

#: forward op name -> its backward op name
OPS = {"masked_layer_norm": "masked_layer_norm_backward", "masked_rms_norm": "masked_rms_norm_backward"}
