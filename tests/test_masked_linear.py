"""masked_linear and masked_swiglu against the reference on every backend that has them: outputs and all
gradients (2x-PyTorch-error rule vs fp64) on odd shapes, each dtype, activation and gate form; seeded noise
(deterministic, equal to vib_gate's, the same in forward and backward); gates of one equal the plain
PyTorch layer; opcheck; torch.compile; errors."""
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

import vtrans_kernels
from vtrans_kernels import backends, ops
from vtrans_kernels.reference import masked_linear as ref
from vtrans_kernels.reference.vib import vib_noise

from conftest import DEVICES, DTYPES
from oracle import assert_close_to_oracle

ACTIVATIONS = ["none", "gelu", "gelu_tanh", "relu", "silu"]
GATES = ["none", "in_gate", "in_gate_rows", "out_gate", "vib_eps", "vib_seed", "vib_eval"]
# (rows, K, N, groups of a [G] / [rows, G] input gate): rows 1, 33, 257; features 7, 97, 384
SHAPES = [(1, 7, 97, 1), (33, 97, 7, 97), (257, 384, 97, 6)]
SEED = 2**40 + 123


def _op_cases():
    # backends with these kernels (the C++ extension has none) on each device, plus the default choice
    cases = [(d, b) for d in DEVICES for b in backends.NAMES
             if b != "torch" and backends.BACKENDS[b].why_not(d, torch.float32) is None
             and hasattr(backends.BACKENDS[b].load(), "masked_linear")]
    return cases


KERNELS = _op_cases()


@pytest.fixture(params=KERNELS, ids=[f"{d}-{b}" for d, b in KERNELS])
def kernel(request):
    """(device, backend) for each kernel backend serving the fused ops here; calls run forced onto it."""
    device, name = request.param
    with vtrans_kernels.use_backend(name):
        yield device


@pytest.fixture(params=[None, *(b for _, b in KERNELS)], ids=["default", *(f"{d}-{b}" for d, b in KERNELS)])
def any_backend(request):
    """Every path an op call can take here: the default choice (reference on CPU) and each kernel backend."""
    if request.param is None:
        yield "cpu"  # the reference there (on CUDA the default is triton, covered by the kernel cases)
        return
    with vtrans_kernels.use_backend(request.param):
        yield next(d for d, b in KERNELS if b == request.param)


# ----------------------------------------------------------------------------------------------------------
# inputs and the oracle
def _gen(*key):
    # crc32, not hash(): str hashes change from process to process, and the inputs must not
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _gate_params(n, gen):
    mu = torch.randn(n, generator=gen)
    mu[::3] *= 0.01  # some units below the keep threshold: evaluation prunes them
    return mu, torch.randn(n, generator=gen) - 3.0


def make_inputs(device, dtype, lead, k, n, gate, groups=1, swiglu=False, key=()):
    """(tensors for the op: differentiable ones and eps, static kwargs, the noise the oracle uses, grad)."""
    gen = _gen(lead, k, n, gate, groups, swiglu, key)
    rows = math.prod(lead)
    t = dict(x=torch.randn(*lead, k, generator=gen))
    scale = 1.0 / math.sqrt(k)
    names = ("w_gate", "w_up", "b_gate", "b_up") if swiglu else ("weight", "bias")
    for name in names:
        shape = (n, k) if name.startswith("w") else (n,)
        t[name] = torch.randn(*shape, generator=gen) * (scale if name.startswith("w") else 0.5)
    t = {name: v.to(device, dtype) for name, v in t.items()}
    static = dict(activation="silu" if swiglu else "none", training=gate != "vib_eval")
    noise = None
    if gate in ("in_gate", "in_gate_rows"):
        shape = (groups,) if gate == "in_gate" else (rows, groups)
        t["in_gate"] = (torch.rand(shape, generator=gen) * 1.5).masked_fill(torch.rand(shape, generator=gen) < 0.2, 0)
    elif gate == "out_gate":
        t["out_gate"] = torch.rand(n, generator=gen).masked_fill(torch.rand(n, generator=gen) < 0.2, 0)
    elif gate.startswith("vib"):
        t["mu"], t["log_sigma2"] = _gate_params(n, gen)
        if gate == "vib_eps":
            t["eps"] = noise = torch.randn(*lead, n, generator=gen)
        elif gate == "vib_seed":
            static["seed"] = SEED
            noise = ref.gate_noise(SEED, rows, n, "cpu").reshape(*lead, n)
    t = {name: v.to(device) for name, v in t.items()}
    grad = torch.randn(*lead, n, generator=gen).to(device, dtype)
    return t, static, noise, grad


def forward_backward(fn, tensors, static, grad):
    """fn's output and the gradient of every differentiable input (zeros where autograd gives none)."""
    leaves = {name: v.detach().clone().requires_grad_(name != "eps") for name, v in tensors.items()}
    y = fn(**leaves, **static)
    y.backward(grad)
    out = dict(y=y.detach())
    for name, v in leaves.items():
        if name != "eps":
            out[f"d{name}"] = v.grad if v.grad is not None else torch.zeros_like(v)
    return out


def _reference_fn(swiglu, noise):
    def fn(x, activation, training, eps=None, seed=None, **kw):
        e = None if noise is None else noise.to(x.device, torch.float64 if x.dtype == torch.float64 else None)
        gates = dict(out_gate=kw.get("out_gate"), mu=kw.get("mu"), log_sigma2=kw.get("log_sigma2"), eps=e,
                     seed=None, training=training)
        if swiglu:
            return ref.swiglu_forward(x, kw["w_gate"], kw["w_up"], kw.get("b_gate"), kw.get("b_up"), activation,
                                      **gates)[0]
        return ref.linear_forward(x, kw["weight"], kw.get("bias"), activation, kw.get("in_gate"), **gates)[0]
    return fn


def check_against_reference(tensors, static, noise, grad, swiglu=False, what=""):
    fn = ops.masked_swiglu if swiglu else ops.masked_linear
    got = forward_backward(fn, tensors, static, grad)
    oracle = _reference_fn(swiglu, noise)
    cpu = {name: v.cpu() for name, v in tensors.items()}
    same = forward_backward(oracle, cpu, static, grad.cpu())
    exact = forward_backward(oracle, {name: v.double() for name, v in cpu.items()}, static, grad.cpu().double())
    x = tensors["x"]
    rows, k = x.numel() // x.shape[-1], x.shape[-1]
    for name, value in got.items():
        assert torch.isfinite(value).all(), f"{name} {what}"
        assert value.shape == same[name].shape and value.dtype == same[name].dtype, f"{name} {what}"
        # fp32 sums over rows (and over K for the input gate) differ in order from torch's: a floor for that
        floor = 1e-6 if name in ("y", "dx") else 1e-6 * math.sqrt(rows * k)
        assert_close_to_oracle(value.cpu(), same[name], exact[name], f"{name} {what}", floor)
    return got


# ----------------------------------------------------------------------------------------------------------
# masked_linear against the reference
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])))
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_gates(kernel, shape, gate, dtype):
    rows, k, n, groups = shape
    if rows == 257 and dtype == torch.float16 and kernel == "cpu":
        pytest.skip("interpreter time: the big shape runs in fp32 and bf16 (the interpreter-specific dot path)")
    tensors, static, noise, grad = make_inputs(kernel, dtype, (rows,), k, n, gate, groups)
    static["activation"] = "gelu_tanh"
    check_against_reference(tensors, static, noise, grad, what=f"{shape} {gate} {dtype}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_activations(kernel, activation, dtype):
    tensors, static, noise, grad = make_inputs(kernel, dtype, (33,), 97, 97, "vib_seed")
    static["activation"] = activation
    check_against_reference(tensors, static, noise, grad, what=f"{activation} {dtype}")


@pytest.mark.parametrize("gate", ["in_gate_rows", "vib_eps", "vib_seed"])
def test_linear_3d_input(kernel, gate):
    tensors, static, noise, grad = make_inputs(kernel, torch.float32, (3, 11), 96, 7, gate, groups=12)
    static["activation"] = "gelu"
    got = check_against_reference(tensors, static, noise, grad, what=f"3-D {gate}")
    assert got["y"].shape == (3, 11, 7) and got["dx"].shape == (3, 11, 96)


def test_linear_wide_output(kernel):
    tensors, static, noise, grad = make_inputs(kernel, torch.float32, (33,), 384, 1536, "vib_seed")
    static["activation"] = "gelu"
    check_against_reference(tensors, static, noise, grad, what="33x384->1536")


# ----------------------------------------------------------------------------------------------------------
# masked_swiglu against the reference
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu", "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_swiglu_activations(kernel, activation, dtype):
    tensors, static, noise, grad = make_inputs(kernel, dtype, (33,), 97, 7, "vib_seed", swiglu=True)
    static["activation"] = activation
    check_against_reference(tensors, static, noise, grad, swiglu=True, what=f"swiglu {activation} {dtype}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])))
@pytest.mark.parametrize("gate", ["none", "out_gate", "vib_eps", "vib_seed", "vib_eval"])
def test_swiglu_gates(kernel, shape, gate):
    rows, k, n, _ = shape
    tensors, static, noise, grad = make_inputs(kernel, torch.float32, (rows,), k, n, gate, swiglu=True)
    check_against_reference(tensors, static, noise, grad, swiglu=True, what=f"swiglu {shape} {gate}")


def test_swiglu_3d_without_biases(kernel):
    tensors, static, noise, grad = make_inputs(kernel, torch.bfloat16, (2, 5), 97, 33, "vib_eps", swiglu=True)
    del tensors["b_gate"], tensors["b_up"]
    check_against_reference(tensors, static, noise, grad, swiglu=True, what="swiglu 3-D no bias")


# ----------------------------------------------------------------------------------------------------------
# seeded noise
def _vib_layer(device, lead=(33,), k=97, n=97):
    tensors, static, _, grad = make_inputs(device, torch.float32, lead, k, n, "vib_seed")
    return tensors, grad


def test_seeded_noise_is_deterministic(kernel):
    tensors, grad = _vib_layer(kernel)
    first = forward_backward(ops.masked_linear, tensors, dict(activation="gelu", seed=7), grad)
    again = forward_backward(ops.masked_linear, tensors, dict(activation="gelu", seed=7), grad)
    other = forward_backward(ops.masked_linear, tensors, dict(activation="gelu", seed=8), grad)
    for name in first:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
    assert not torch.allclose(first["y"], other["y"])


def test_seed_equals_explicit_reference_noise(kernel):
    tensors, grad = _vib_layer(kernel, lead=(3, 11))
    seeded = forward_backward(ops.masked_linear, tensors, dict(activation="silu", seed=SEED), grad)
    eps = vib_noise(SEED, torch.empty(3, 11, 97)).to(kernel)
    explicit = forward_backward(ops.masked_linear, {**tensors, "eps": eps}, dict(activation="silu"), grad)
    for name in seeded:
        torch.testing.assert_close(seeded[name], explicit[name], rtol=1e-5, atol=1e-5)


def test_backward_redraws_the_forward_noise(kernel):
    # mu = 0, sigma = 1, no activation: y = h * eps, so the forward output reveals the noise it drew, and
    # d log_sigma2 = 0.5 * sum_r g * h * eps must use that same noise
    x = torch.randn(37, 16, device=kernel)
    weight = torch.randn(101, 16, device=kernel)
    mu = torch.zeros(101, device=kernel, requires_grad=True)
    log_sigma2 = torch.zeros(101, device=kernel, requires_grad=True)
    y = ops.masked_linear(x, weight, mu=mu, log_sigma2=log_sigma2, seed=99)
    grad = torch.randn_like(y)
    y.backward(grad)
    h = F.linear(x, weight)
    eps = y.detach() / h
    torch.testing.assert_close(eps.cpu(), ref.gate_noise(99, 37, 101, "cpu"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_sigma2.grad, 0.5 * (grad * h * eps).sum(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mu.grad, (grad * h).sum(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lead", [(33,), (3, 11)], ids=str)
def test_equals_vib_gate_of_linear(any_backend, lead):
    tensors, grad = _vib_layer(any_backend, lead=lead)
    x, weight, bias, mu, log_sigma2 = (tensors[k] for k in ("x", "weight", "bias", "mu", "log_sigma2"))
    fused = ops.masked_linear(x, weight, bias, mu=mu, log_sigma2=log_sigma2, seed=SEED)
    composed = ops.vib_gate(F.linear(x, weight, bias), mu, log_sigma2, seed=SEED)
    torch.testing.assert_close(fused, composed, rtol=1e-5, atol=1e-5)
    fused = ops.masked_swiglu(x, weight, weight.flip(0), mu=mu, log_sigma2=log_sigma2, seed=SEED)
    composed = ops.vib_gate(F.silu(F.linear(x, weight)) * F.linear(x, weight.flip(0)), mu, log_sigma2, seed=SEED)
    torch.testing.assert_close(fused, composed, rtol=1e-5, atol=1e-5)


def test_draws_a_seed_when_none_given(kernel):
    tensors, _ = _vib_layer(kernel)
    kw = dict(mu=tensors["mu"], log_sigma2=tensors["log_sigma2"])
    torch.manual_seed(0)
    first = ops.masked_linear(tensors["x"], tensors["weight"], **kw)
    torch.manual_seed(0)
    torch.testing.assert_close(first, ops.masked_linear(tensors["x"], tensors["weight"], **kw), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# gates of one: the plain PyTorch layer
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_unit_gates_equal_plain_linear(any_backend, activation):
    device = any_backend
    gen = _gen("ones", activation)
    x = torch.randn(2, 9, 64, generator=gen).to(device)
    weight, bias = torch.randn(33, 64, generator=gen).to(device) / 8, torch.randn(33, generator=gen).to(device)
    plain = forward_backward(lambda x, weight, bias: ref.act(F.linear(x, weight, bias), activation),
                             dict(x=x, weight=weight, bias=bias), {}, torch.ones(2, 9, 33, device=device))
    ones = torch.ones(33, device=device)
    for gates in (dict(), dict(in_gate=torch.ones(64, device=device)), dict(in_gate=torch.ones(18, 4, device=device)),
                  dict(out_gate=ones), dict(mu=ones, log_sigma2=torch.full_like(ones, -300.0), seed=1),
                  dict(mu=ones, log_sigma2=torch.full_like(ones, -300.0), training=False)):
        got = forward_backward(lambda x, weight, bias: ops.masked_linear(x, weight, bias, activation=activation,
                                                                         **gates),
                               dict(x=x, weight=weight, bias=bias), {}, torch.ones(2, 9, 33, device=device))
        for name in plain:
            torch.testing.assert_close(got[name], plain[name], rtol=1e-5, atol=1e-5, msg=f"{name} {gates}")


def test_unit_gates_equal_plain_swiglu(any_backend):
    device = any_backend
    gen = _gen("ones-swiglu")
    x, w_gate, w_up = (torch.randn(*s, generator=gen).to(device) / 4 for s in ((17, 48), (40, 48), (40, 48)))
    plain = forward_backward(lambda x, w_gate, w_up: F.silu(F.linear(x, w_gate)) * F.linear(x, w_up),
                             dict(x=x, w_gate=w_gate, w_up=w_up), {}, torch.ones(17, 40, device=device))
    got = forward_backward(lambda x, w_gate, w_up: ops.masked_swiglu(x, w_gate, w_up, out_gate=torch.ones(
        40, device=device)), dict(x=x, w_gate=w_gate, w_up=w_up), {}, torch.ones(17, 40, device=device))
    for name in plain:
        torch.testing.assert_close(got[name], plain[name], rtol=1e-5, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------------------------------------
# saved tensors, frozen weights, odd layouts and sizes
def test_saves_only_the_preactivation(kernel):
    tensors, _ = _vib_layer(kernel)
    x, weight = tensors["x"], tensors["weight"]
    y, saved = torch.ops.vtrans.masked_linear(x, weight, None, "none", None, None, None, None, None, None, True)
    assert saved.numel() == 0  # nothing to save: the gradient passes straight to the GEMMs
    y, saved = torch.ops.vtrans.masked_linear(x, weight, None, "gelu", None, None, tensors["mu"],
                                              tensors["log_sigma2"], None, 5, True)
    torch.testing.assert_close(saved, F.linear(x, weight))  # h, not the noise or the activation
    _, h_gate, h_up = torch.ops.vtrans.masked_swiglu(x, weight, weight * 2, None, None, "silu", None, None, None,
                                                     None, None, True)
    torch.testing.assert_close(h_up, 2 * h_gate)


def test_frozen_weight_gets_no_gradient(kernel):
    tensors, grad = _vib_layer(kernel)
    x = tensors["x"].clone().requires_grad_(True)
    mu = tensors["mu"].clone().requires_grad_(True)
    y = ops.masked_linear(x, tensors["weight"], tensors["bias"], activation="relu", mu=mu,
                          log_sigma2=tensors["log_sigma2"], seed=4)
    y.backward(grad)
    assert x.grad is not None and mu.grad is not None
    full = forward_backward(ops.masked_linear, tensors, dict(activation="relu", seed=4), grad)
    torch.testing.assert_close(x.grad, full["dx"])
    torch.testing.assert_close(mu.grad, full["dmu"])


def test_non_contiguous_input(kernel):
    base = torch.randn(97, 33, device=kernel, requires_grad=True)
    weight = torch.randn(20, 97, device=kernel)
    in_gate = torch.rand(97, device=kernel)
    y = ops.masked_linear(base.t(), weight, activation="gelu", in_gate=in_gate)
    y.sum().backward()
    dense = base.detach().t().contiguous().requires_grad_(True)
    expected = ops.masked_linear(dense, weight, activation="gelu", in_gate=in_gate)
    expected.sum().backward()
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(base.grad.t(), dense.grad)


@pytest.mark.parametrize("shape", [(0, 16), (4, 0)], ids=str)
def test_degenerate_sizes(kernel, shape):
    x = torch.randn(shape, device=kernel, requires_grad=True)
    weight = torch.randn(5, shape[1], device=kernel, requires_grad=True)
    bias = torch.randn(5, device=kernel, requires_grad=True)
    y = ops.masked_linear(x, weight, bias, activation="silu", out_gate=torch.ones(5, device=kernel))
    torch.testing.assert_close(y, F.silu(F.linear(x, weight, bias)))
    y.sum().backward()
    assert x.grad.shape == x.shape and bias.grad.shape == bias.shape


# ----------------------------------------------------------------------------------------------------------
# registration: opcheck and torch.compile
def _op_args(device, swiglu, gate, rows=5, k=24, n=16):
    tensors, static, _, _ = make_inputs(device, torch.float32, (rows,), k, n, gate, groups=4, swiglu=swiglu)
    for name, v in tensors.items():
        v.requires_grad_(name != "eps")
    g = tensors.get
    gates = (g("out_gate"), g("mu"), g("log_sigma2"), g("eps"), static.get("seed"), static["training"])
    if swiglu:
        return (g("x"), g("w_gate"), g("w_up"), g("b_gate"), g("b_up"), "silu", *gates)
    return (g("x"), g("weight"), g("bias"), "gelu", g("in_gate"), *gates)


@pytest.mark.parametrize("swiglu,gate", [(False, "in_gate_rows"), (False, "vib_seed"), (False, "none"),
                                         (True, "vib_eps"), (True, "vib_eval")])
def test_opcheck(any_backend, swiglu, gate):
    op = torch.ops.vtrans.masked_swiglu if swiglu else torch.ops.vtrans.masked_linear
    torch.library.opcheck(op.default, _op_args(any_backend, swiglu, gate))


@pytest.mark.parametrize("swiglu,gate", [(False, "in_gate"), (False, "vib_seed"), (True, "vib_eval")])
def test_opcheck_backward_ops(kernel, swiglu, gate):
    # kernel backends only: the reference backward runs torch.func.vjp, which opcheck's modes cannot look inside
    # (its backward ops are covered by the forward ops' opcheck, torch.compile and gradcheck below)
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in _op_args(kernel, swiglu, gate))
    forward = torch.ops.vtrans.masked_swiglu if swiglu else torch.ops.vtrans.masked_linear
    saved = forward(*args)[1:]
    grad = torch.randn_like(forward(*args)[0])
    needs = [a is not None for a in args if not isinstance(a, (str, bool, int))][:8 if swiglu else 7]
    backward = torch.ops.vtrans.masked_swiglu_backward if swiglu else torch.ops.vtrans.masked_linear_backward
    torch.library.opcheck(backward.default, (grad, *saved, *args, needs))


@pytest.mark.parametrize("swiglu,gate", [(False, "in_gate_rows"), (False, "vib_eps"), (True, "out_gate")])
def test_gradcheck_fp64(swiglu, gate):
    # fp64 runs on the reference: this checks its backward op and the autograd wiring (which input gets which
    # gradient) against finite differences
    args = _op_args("cpu", swiglu, gate, rows=3, k=8, n=4)
    args = tuple(a.double().detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for a in args)
    op = torch.ops.vtrans.masked_swiglu if swiglu else torch.ops.vtrans.masked_linear
    assert torch.autograd.gradcheck(lambda *a: op(*a)[0], args)


def test_compile_fullgraph_matches_eager(any_backend):
    device = any_backend
    tensors, grad = _vib_layer(device, lead=(3, 11))
    in_gate = torch.rand(33, 1, device=device)  # one gate per token

    def layer(x, weight, bias, mu, log_sigma2, seed):
        h = ops.masked_linear(x, weight, bias, activation="gelu", in_gate=in_gate, mu=mu, log_sigma2=log_sigma2,
                              seed=seed)
        return ops.masked_swiglu(h, weight, weight.flip(0), out_gate=mu.abs())

    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    names = ("x", "weight", "bias", "mu", "log_sigma2")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for seed in (11, 12, 13):
        eager = forward_backward(lambda **kw: layer(**kw, seed=seed), {k: tensors[k] for k in names}, {}, grad)
        traced = forward_backward(lambda **kw: compiled(**kw, seed=seed), {k: tensors[k] for k in names}, {}, grad)
        for name in eager:
            torch.testing.assert_close(traced[name], eager[name], rtol=1e-6, atol=1e-6, msg=f"{name} seed {seed}")
    # the seed is a SymInt: once marked dynamic, new seeds reuse the graph
    assert counters["stats"]["unique_graphs"] <= 2


# ----------------------------------------------------------------------------------------------------------
# errors name the argument and what was expected
def _error_cases():
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    mu, ls2 = torch.zeros(6), torch.zeros(6)
    return [
        (lambda: ops.masked_linear(x, w, activation="tanh"), ValueError, "activation must be one of"),
        (lambda: ops.masked_linear(x, torch.randn(6, 7)), ValueError, "weight must have shape"),
        (lambda: ops.masked_linear(x, w.half()), TypeError, "weight must have x's dtype"),
        (lambda: ops.masked_linear(x, w, torch.randn(5)), ValueError, "bias must have shape"),
        (lambda: ops.masked_linear(x.int(), w), TypeError, "x must have dtype"),
        (lambda: ops.masked_linear(x, w, in_gate=torch.ones(3)), ValueError, "in_gate must have shape"),
        (lambda: ops.masked_linear(x, w, in_gate=torch.ones(5, 4)), ValueError, "in_gate must have shape"),
        (lambda: ops.masked_linear(x, w, in_gate=torch.ones(8).half()), TypeError, "in_gate must have dtype"),
        (lambda: ops.masked_linear(x, w, out_gate=torch.ones(6), mu=mu, log_sigma2=ls2), ValueError, "not both"),
        (lambda: ops.masked_linear(x, w, out_gate=torch.ones(5)), ValueError, "out_gate must have shape"),
        (lambda: ops.masked_linear(x, w, mu=torch.zeros(5), log_sigma2=torch.zeros(5), seed=1), ValueError,
         "mu must have shape"),
        (lambda: ops.masked_linear(x, w, mu=mu, log_sigma2=ls2, eps=torch.randn(4, 5)), ValueError,
         "eps must have shape"),
        (lambda: ops.masked_linear(x, w, mu=mu, log_sigma2=ls2, eps=torch.randn(4, 6), seed=1), ValueError,
         "either eps or seed"),
        (lambda: torch.ops.vtrans.masked_linear(x, w, None, "none", None, None, mu, ls2, None, None, True),
         ValueError, "training needs noise"),
        (lambda: ops.masked_linear(x, w, seed=3, eps=torch.randn(4, 6)), ValueError, "need mu and log_sigma2"),
        (lambda: ops.masked_swiglu(x, w, torch.randn(5, 8)), ValueError, "w_up must have shape"),
        (lambda: ops.masked_swiglu(x, w, w, activation="gelu_erf"), ValueError, "activation must be one of"),
    ]


@pytest.mark.parametrize("case", range(len(_error_cases())))
def test_errors(case):
    call, error, message = _error_cases()[case]
    with pytest.raises(error, match=message):
        call()


def test_errors_under_compile():
    x, w = torch.randn(4, 8), torch.randn(6, 7)
    with pytest.raises(Exception, match="weight must have shape"):
        torch.compile(lambda: ops.masked_linear(x, w), fullgraph=True, backend="eager")()


def test_autocast_casts_the_gemm_operands_like_f_linear():
    """Under torch.autocast the fused ops compute in the autocast dtype, as F.linear would; the gates stay fp32."""
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(5, 16, generator=gen), torch.randn(12, 16, generator=gen), torch.randn(12, generator=gen)
    mu, ls2 = torch.randn(12, generator=gen), torch.randn(12, generator=gen) - 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.masked_linear(x, w, b, activation="gelu", mu=mu, log_sigma2=ls2, seed=4)
        y_swiglu = ops.masked_swiglu(x, w, w.flip(0), out_gate=mu)
        assert F.linear(x, w, b).dtype == y.dtype == y_swiglu.dtype == torch.bfloat16
    bf = lambda t: t.to(torch.bfloat16)  # noqa: E731
    torch.testing.assert_close(y, ops.masked_linear(bf(x), bf(w), bf(b), activation="gelu", mu=mu, log_sigma2=ls2,
                                                    seed=4))
    torch.testing.assert_close(y_swiglu, ops.masked_swiglu(bf(x), bf(w), bf(w.flip(0)), out_gate=mu))
