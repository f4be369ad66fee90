"""Registry of the mask-sampling ops (hard-concrete and VIB gates).

Each op is a ``torch.library.custom_op`` whose implementation asks ``backends.select`` for the backend
serving the call's device and dtype, and calls that backend's function of the same name with contiguous
inputs. Each forward op has a ``*_backward`` op (also registered, with a fake kernel) that its autograd
formula calls, so torch.compile traces the backward as well. Seeds are ``SymInt``: a training loop under
torch.compile can pass a new seed every step without recompiling.
"""
import torch

from .. import _checks
from .common import contiguous as _contiguous, define as _define, dispatch as _dispatch, empty as _empty

_HC_ARGS = "float beta, float limit_l, float limit_r"


# ----------------------------------------------------------------------------------------------------------
# hard_concrete_sample
def _hc_sample(log_alpha, u, seed, beta, limit_l, limit_r):
    _checks.hard_concrete_sample(log_alpha, u, seed, beta, limit_l, limit_r)
    if _empty(log_alpha):
        return torch.empty_like(log_alpha)
    log_alpha, u = _contiguous(log_alpha, u)
    return _dispatch("hard_concrete_sample", log_alpha.device, log_alpha)(log_alpha, u, seed, beta, limit_l, limit_r)


def _hc_sample_bwd(grad, log_alpha, u, seed, beta, limit_l, limit_r):
    if _empty(log_alpha):
        return torch.zeros_like(log_alpha)
    grad, log_alpha, u = _contiguous(grad.to(log_alpha.dtype), log_alpha, u)
    return _dispatch("hard_concrete_sample_backward", log_alpha.device, log_alpha)(
        grad, log_alpha, u, seed, beta, limit_l, limit_r)


hard_concrete_sample = _define(
    "hard_concrete_sample", f"(Tensor log_alpha, Tensor? u, SymInt? seed, {_HC_ARGS}) -> Tensor", _hc_sample)
hard_concrete_sample_backward = _define(
    "hard_concrete_sample_backward",
    f"(Tensor grad, Tensor log_alpha, Tensor? u, SymInt? seed, {_HC_ARGS}) -> Tensor", _hc_sample_bwd)


@hard_concrete_sample.register_fake
def _(log_alpha, u, seed, beta, limit_l, limit_r):
    _checks.hard_concrete_sample(log_alpha, u, seed, beta, limit_l, limit_r)
    return torch.empty_like(log_alpha)


@hard_concrete_sample_backward.register_fake
def _(grad, log_alpha, u, seed, beta, limit_l, limit_r):
    return torch.empty_like(log_alpha)


def _hc_sample_setup(ctx, inputs, output):
    log_alpha, u, seed, beta, limit_l, limit_r = inputs
    ctx.save_for_backward(log_alpha, u)
    ctx.args = (seed, beta, limit_l, limit_r)


def _hc_sample_grad(ctx, grad):
    log_alpha, u = ctx.saved_tensors
    seed, beta, limit_l, limit_r = ctx.args
    d_log_alpha = torch.ops.vtrans.hard_concrete_sample_backward(grad, log_alpha, u, seed, beta, limit_l, limit_r)
    return d_log_alpha, None, None, None, None, None


hard_concrete_sample.register_autograd(_hc_sample_grad, setup_context=_hc_sample_setup)


# ----------------------------------------------------------------------------------------------------------
# hard_concrete_expected_l0 and hard_concrete_deterministic: functions of log_alpha alone
def _define_log_alpha_op(name: str):
    """Registers op ``name`` (log_alpha, beta, limit_l, limit_r) -> Tensor shaped like log_alpha, its backward
    op and its autograd formula."""

    def forward(log_alpha, beta, limit_l, limit_r):
        _checks.hard_concrete(name, log_alpha, beta, limit_l, limit_r)
        if _empty(log_alpha):
            return torch.empty_like(log_alpha)
        (log_alpha,) = _contiguous(log_alpha)
        return _dispatch(name, log_alpha.device, log_alpha)(log_alpha, beta, limit_l, limit_r)

    def backward(grad, log_alpha, beta, limit_l, limit_r):
        if _empty(log_alpha):
            return torch.zeros_like(log_alpha)
        grad, log_alpha = _contiguous(grad.to(log_alpha.dtype), log_alpha)
        return _dispatch(f"{name}_backward", log_alpha.device, log_alpha)(grad, log_alpha, beta, limit_l, limit_r)

    fwd_op = _define(name, f"(Tensor log_alpha, {_HC_ARGS}) -> Tensor", forward)
    bwd_op = _define(f"{name}_backward", f"(Tensor grad, Tensor log_alpha, {_HC_ARGS}) -> Tensor", backward)

    def fake(log_alpha, beta, limit_l, limit_r):
        _checks.hard_concrete(name, log_alpha, beta, limit_l, limit_r)
        return torch.empty_like(log_alpha)

    fwd_op.register_fake(fake)
    bwd_op.register_fake(lambda grad, log_alpha, beta, limit_l, limit_r: torch.empty_like(log_alpha))

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.args = inputs[1:]

    def grad_fn(ctx, grad):
        (log_alpha,) = ctx.saved_tensors
        return getattr(torch.ops.vtrans, f"{name}_backward")(grad, log_alpha, *ctx.args), None, None, None

    fwd_op.register_autograd(grad_fn, setup_context=setup)
    return fwd_op, bwd_op


hard_concrete_expected_l0, hard_concrete_expected_l0_backward = _define_log_alpha_op("hard_concrete_expected_l0")
hard_concrete_deterministic, hard_concrete_deterministic_backward = _define_log_alpha_op("hard_concrete_deterministic")


# ----------------------------------------------------------------------------------------------------------
# vib_gate
def _vib_gate(x, mu, log_sigma2, eps, seed, training):
    _checks.vib_gate(x, mu, log_sigma2, eps, seed, training)
    if _empty(x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    x, mu, log_sigma2, eps = _contiguous(x, mu, log_sigma2, eps)
    return _dispatch("vib_gate", x.device, x, mu)(x, mu, log_sigma2, eps if training else None, seed, training)


def _vib_gate_bwd(grad, x, mu, log_sigma2, eps, seed, training):
    if _empty(x):
        return torch.zeros_like(x), torch.zeros_like(mu), torch.zeros_like(log_sigma2)
    grad, x, mu, log_sigma2, eps = _contiguous(grad.to(x.dtype), x, mu, log_sigma2, eps)
    return _dispatch("vib_gate_backward", x.device, x, mu)(grad, x, mu, log_sigma2, eps if training else None,
                                                           seed, training)


vib_gate = _define("vib_gate", "(Tensor x, Tensor mu, Tensor log_sigma2, Tensor? eps, SymInt? seed, bool training)"
                               " -> Tensor", _vib_gate)
vib_gate_backward = _define(
    "vib_gate_backward",
    "(Tensor grad, Tensor x, Tensor mu, Tensor log_sigma2, Tensor? eps, SymInt? seed, bool training)"
    " -> (Tensor, Tensor, Tensor)", _vib_gate_bwd)


@vib_gate.register_fake
def _(x, mu, log_sigma2, eps, seed, training):
    _checks.vib_gate(x, mu, log_sigma2, eps, seed, training)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@vib_gate_backward.register_fake
def _(grad, x, mu, log_sigma2, eps, seed, training):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(mu),
            torch.empty_like(log_sigma2))


def _vib_gate_setup(ctx, inputs, output):
    x, mu, log_sigma2, eps, seed, training = inputs
    ctx.save_for_backward(x, mu, log_sigma2, eps)
    ctx.args = (seed, training)


def _vib_gate_grad(ctx, grad):
    x, mu, log_sigma2, eps = ctx.saved_tensors
    dx, dmu, dls2 = torch.ops.vtrans.vib_gate_backward(grad, x, mu, log_sigma2, eps, *ctx.args)
    return dx, dmu, dls2, None, None, None


vib_gate.register_autograd(_vib_gate_grad, setup_context=_vib_gate_setup)


# ----------------------------------------------------------------------------------------------------------
# vib_kl and vib_keep_prob: per-unit functions of (mu, log_sigma2)
def _vib_param_inputs(op, mu, log_sigma2):
    _checks.vib_params(op, mu, log_sigma2)
    return _contiguous(mu, log_sigma2)


def _vib_kl(mu, log_sigma2):
    mu, log_sigma2 = _vib_param_inputs("vib_kl", mu, log_sigma2)
    if _empty(mu):
        return mu.new_zeros(())
    return _dispatch("vib_kl", mu.device, mu, log_sigma2)(mu, log_sigma2)


def _vib_kl_bwd(grad, mu, log_sigma2):
    if _empty(mu):
        return torch.zeros_like(mu), torch.zeros_like(log_sigma2)
    mu, log_sigma2 = _contiguous(mu, log_sigma2)
    return _dispatch("vib_kl_backward", mu.device, mu, log_sigma2)(grad.to(mu.dtype), mu, log_sigma2)


vib_kl = _define("vib_kl", "(Tensor mu, Tensor log_sigma2) -> Tensor", _vib_kl)
vib_kl_backward = _define("vib_kl_backward", "(Tensor grad, Tensor mu, Tensor log_sigma2) -> (Tensor, Tensor)",
                          _vib_kl_bwd)


@vib_kl.register_fake
def _(mu, log_sigma2):
    _checks.vib_params("vib_kl", mu, log_sigma2)
    return mu.new_empty(())


vib_kl_backward.register_fake(lambda grad, mu, log_sigma2: (torch.empty_like(mu), torch.empty_like(log_sigma2)))


def _vib_kl_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _vib_kl_grad(ctx, grad):
    return torch.ops.vtrans.vib_kl_backward(grad, *ctx.saved_tensors)


vib_kl.register_autograd(_vib_kl_grad, setup_context=_vib_kl_setup)


def _vib_keep_prob(mu, log_sigma2, temperature):
    mu, log_sigma2 = _vib_param_inputs("vib_keep_prob", mu, log_sigma2)
    _checks.scalar_in("vib_keep_prob", "temperature", temperature, 0.0, float("inf"), "positive")
    if _empty(mu):
        return torch.empty_like(mu)
    return _dispatch("vib_keep_prob", mu.device, mu, log_sigma2)(mu, log_sigma2, temperature)


def _vib_keep_prob_bwd(grad, mu, log_sigma2, temperature):
    if _empty(mu):
        return torch.zeros_like(mu), torch.zeros_like(log_sigma2)
    grad, mu, log_sigma2 = _contiguous(grad.to(mu.dtype), mu, log_sigma2)
    return _dispatch("vib_keep_prob_backward", mu.device, mu, log_sigma2)(grad, mu, log_sigma2, temperature)


vib_keep_prob = _define("vib_keep_prob", "(Tensor mu, Tensor log_sigma2, float temperature) -> Tensor",
                        _vib_keep_prob)
vib_keep_prob_backward = _define(
    "vib_keep_prob_backward", "(Tensor grad, Tensor mu, Tensor log_sigma2, float temperature) -> (Tensor, Tensor)",
    _vib_keep_prob_bwd)


@vib_keep_prob.register_fake
def _(mu, log_sigma2, temperature):
    _checks.vib_params("vib_keep_prob", mu, log_sigma2)
    return torch.empty_like(mu)


vib_keep_prob_backward.register_fake(
    lambda grad, mu, log_sigma2, temperature: (torch.empty_like(mu), torch.empty_like(log_sigma2)))


def _vib_keep_prob_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.temperature = inputs[2]


def _vib_keep_prob_grad(ctx, grad):
    dmu, dls2 = torch.ops.vtrans.vib_keep_prob_backward(grad, *ctx.saved_tensors, ctx.temperature)
    return dmu, dls2, None


vib_keep_prob.register_autograd(_vib_keep_prob_grad, setup_context=_vib_keep_prob_setup)

#: forward op name -> its backward op name
OPS = {name: f"{name}_backward" for name in (
    "hard_concrete_sample", "hard_concrete_expected_l0", "hard_concrete_deterministic",
    "vib_gate", "vib_kl", "vib_keep_prob")}
