"""masked_attention against the explicit-softmax reference: outputs and every gradient (q, k, v, gate, mu,
log_sigma2) on odd shapes, GQA, masks, all gate kinds, all dtypes (2x-PyTorch-error rule vs fp64), seeded
noise, SDPA equality with unit gates, opcheck, torch.compile and errors. Triton runs in its interpreter on CPU."""
import zlib

import pytest
import torch
import torch.nn.functional as F

import vtrans_kernels
from vtrans_kernels import backends, ops, reference
from vtrans_kernels.reference.masked_attention import attention_math

from conftest import DTYPES
from oracle import assert_close_to_oracle

HAS_TRITON = backends.BACKENDS["triton"].why_not("cpu", torch.float32) is None or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = (["triton"] if HAS_TRITON else []) + ["torch"]
GATE_PARAMS = ("head_gate", "mu", "log_sigma2")

# (B, Hq, Hkv, Sq, Sk, D), options: causal, mask kind, gate kind, whether q/k/v are transposed views
CASES = {
    "1x1": ((1, 1, 1, 1, 1, 32), dict(gate="unit")),
    "h3-causal-pad": ((2, 3, 3, 17, 17, 64), dict(causal=True, mask="pad", gate="vib", strided=True)),
    "h12": ((2, 12, 12, 17, 17, 32), dict(gate="row")),
    "gqa9/3-causal": ((1, 9, 3, 17, 17, 80), dict(causal=True, gate="vib")),
    "gqa8/2-sq<sk": ((2, 8, 2, 5, 17, 128), dict(causal=True, mask="pad", gate="unit", strided=True)),
    "s128-window": ((1, 3, 1, 128, 128, 64), dict(causal=True, mask="window", gate="vib-eval")),
    "empty-rows": ((2, 4, 2, 9, 9, 64), dict(mask="dense-empty", gate="row")),
    "sq>sk-causal": ((1, 2, 2, 9, 5, 32), dict(causal=True, gate="none")),
}


def _gen(key):
    return torch.Generator().manual_seed(zlib.crc32(str(key).encode()))


def make_inputs(shape, dtype, causal=False, mask=None, gate="none", strided=False, seed=None):
    """q, k, v, the op's keyword arguments (explicit eps for VIB) and an output gradient."""
    b, hq, hkv, sq, sk, d = shape
    gen = _gen((shape, mask, gate))

    def act(heads, seq):
        if strided:  # transformers' layout: [B, S, H, D] storage viewed as [B, H, S, D]
            return torch.randn(b, seq, heads, d, generator=gen).to(DEVICE, dtype).transpose(1, 2)
        return torch.randn(b, heads, seq, d, generator=gen).to(DEVICE, dtype)

    q, k, v = act(hq, sq), act(hkv, sk), act(hkv, sk)
    kw = dict(causal=causal)
    if mask == "pad":
        kpm = torch.ones(b, sk, dtype=torch.bool)
        kpm[-1, : sk // 3] = False
        kw["key_padding_mask"] = kpm.to(DEVICE)
    elif mask == "window":
        i, j = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
        kw["attn_mask"] = ((i - j) < 20).expand(b, 1, sq, sk).to(DEVICE)
    elif mask == "dense-empty":
        am = torch.rand(b, hq, sq, sk, generator=gen) > 0.4
        am[0, 1, 3] = False  # fully masked rows
        am[-1, :, -1] = False
        kw["attn_mask"] = am.to(DEVICE)
    g = hkv if gate != "row" else hq
    rows = b * sq
    if gate == "unit":
        kw["head_gate"] = torch.randn(g, generator=gen).to(DEVICE)
    elif gate == "row":
        kw["head_gate"] = torch.randn(rows, g, generator=gen).to(DEVICE)
    elif gate.startswith("vib"):
        mu = torch.randn(g, generator=gen)
        mu[::2] *= 0.01  # below the keep threshold: pruned in evaluation
        kw.update(mu=mu.to(DEVICE), log_sigma2=(torch.randn(g, generator=gen) - 3).to(DEVICE))
        if gate == "vib-eval":
            kw["training"] = False
        elif seed is None:
            kw["eps"] = torch.randn(rows, g, generator=gen).to(DEVICE)
        else:
            kw["seed"] = seed
    grad = torch.randn(b, sq, hq, d, generator=gen).to(DEVICE, dtype)
    return (q, k, v), kw, grad


def _leaves(qkv, kw, to=None):
    qkv = [(t if to is None else t.to(to)).detach().clone().requires_grad_(True) for t in qkv]
    kw = {n: (t.to(to if to is not None and t.is_floating_point() else t.dtype) if torch.is_tensor(t) else t)
          for n, t in kw.items()}
    for n in GATE_PARAMS:
        if n in kw:
            kw[n] = kw[n].detach().clone().requires_grad_(True)
    return qkv, kw


def forward_backward(fn, qkv, kw, grad, to=None):
    """(out, dq, dk, dv, gate-parameter gradients...) of ``fn(q, k, v, **kw)`` after ``out.backward(grad)``."""
    qkv, kw = _leaves(qkv, kw, to)
    out = fn(*qkv, **kw)
    out.backward(grad.to(out.dtype))
    params = [kw[n] for n in GATE_PARAMS if n in kw]
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in (*qkv, *params)]
    return [out.detach(), *grads]


def run_op(backend, qkv, kw, grad):
    ctx = vtrans_kernels.use_backend(backend) if backend else torch.enable_grad()
    with ctx:
        return forward_backward(ops.masked_attention, qkv, kw, grad)


NAMES = ["out", "dq", "dk", "dv", "dgate"]


def _gate_rounding_noise(qkv, kw, grad, exact_dtype, dtype):
    """Gate gradients sum ``dOg * O`` over rows, heads and head dims, and O exists only rounded to ``dtype`` on
    every backend: the sum carries random rounding noise of about ``eps * sqrt(sum (dOg * O)^2)``, which makes
    "2x PyTorch's error" a coin flip for these sums. This bound (x max |d z / d param|) is added to the floor."""
    _, o, _ = attention_math(*[t.to(exact_dtype) for t in qkv], key_padding_mask=kw.get("key_padding_mask"),
                             attn_mask=kw.get("attn_mask"), causal=kw["causal"], return_lse=True)
    noise = torch.finfo(dtype).eps * (grad.to(exact_dtype) * o).square().sum().sqrt().item()
    if "eps" in kw:
        noise *= max(1.0, (0.5 * torch.exp(0.5 * kw["log_sigma2"]) * kw["eps"]).abs().max().item())
    return noise


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, case, dtype):
    if backend == "torch" and dtype != torch.float32:
        pytest.skip("the torch backend is the reference itself; fp32 checks its dispatch")
    shape, opts = CASES[case]
    qkv, kw, grad = make_inputs(shape, dtype, **opts)
    got = run_op(backend, qkv, kw, grad)
    same_dtype = forward_backward(attention_math, qkv, kw, grad)
    exact = forward_backward(attention_math, qkv, kw, grad, to=torch.float64)
    names = NAMES[:4] + [n for n in GATE_PARAMS if n in kw]
    assert len(got) == len(names) == len(exact)
    gate_floor = _gate_rounding_noise(qkv, kw, grad, exact[0].dtype, dtype)
    for name, a, r, e in zip(names, got, same_dtype, exact):
        assert a.shape == e.shape and torch.isfinite(a).all(), name
        floor = 1e-6
        if name in GATE_PARAMS:
            floor = 1e-5 + gate_floor / max(1.0, e.abs().max().item())
        assert_close_to_oracle(a, r, e, f"{name} {case} {dtype} {backend}", floor)
    assert got[0].is_contiguous() and got[0].shape == (shape[0], shape[3], shape[1], shape[5])


def test_fully_masked_rows_are_zero_with_zero_grads():
    qkv, kw, grad = make_inputs((2, 4, 2, 9, 9, 64), torch.float32, mask="dense-empty", gate="none")
    for backend in BACKENDS:
        out, dq, *_ = run_op(backend, qkv, kw, grad)
        assert (out[0, 3, 1] == 0).all() and (out[-1, -1] == 0).all()
        assert (dq[0, 1, 3] == 0).all() and (dq[-1, :, -1] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_noise_is_the_reference_noise(backend):
    shape = (2, 6, 3, 5, 7, 32)
    qkv, kw, grad = make_inputs(shape, torch.float32, causal=True, gate="vib", seed=1234)
    seeded = run_op(backend, qkv, kw, grad)
    assert all(torch.equal(a, b) for a, b in zip(seeded, run_op(backend, qkv, kw, grad))), "not deterministic"
    eps = reference.rng.normal(1234, shape[0] * shape[3], shape[2])
    explicit = run_op(backend, qkv, {**{n: t for n, t in kw.items() if n != "seed"}, "eps": eps}, grad)
    for name, a, b in zip(NAMES[:4] + ["dmu", "dlog_sigma2"], seeded, explicit):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    other = run_op(backend, qkv, {**kw, "seed": 1235}, grad)
    assert not torch.equal(other[0], seeded[0])


def test_gqa_backward_is_deterministic():
    qkv, kw, grad = make_inputs((2, 8, 2, 17, 17, 32), torch.float32, causal=True, gate="unit")
    a, b = run_op(BACKENDS[0], qkv, kw, grad), run_op(BACKENDS[0], qkv, kw, grad)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("gate", ["none", "unit", "row", "vib"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unit_gates_equal_sdpa(backend, gate):
    b, hq, hkv, s, d = 2, 6, 3, 17, 64
    qkv, kw, grad = make_inputs((b, hq, hkv, s, s, d), torch.float32, causal=True)
    g = hkv
    ones = {"none": {}, "unit": dict(head_gate=torch.ones(g)), "row": dict(head_gate=torch.ones(b * s, g)),
            "vib": dict(mu=torch.ones(g), log_sigma2=torch.zeros(g), eps=torch.zeros(b * s, g))}[gate]
    got = run_op(backend, qkv, {**kw, **{n: t.to(DEVICE) for n, t in ones.items()}}, grad)

    def sdpa(q, k, v, causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True).transpose(1, 2)

    want = forward_backward(sdpa, qkv, kw, grad)
    for name, a, w in zip(NAMES, got, want):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5, msg=name)


def _opcheck_args():
    (q, k, v), kw, _ = make_inputs((1, 4, 2, 5, 7, 32), torch.float32, causal=True, mask="pad", gate="vib")
    leaf = lambda t: t.detach().clone().requires_grad_(True)  # noqa: E731
    return {
        "vib-eps": (leaf(q), leaf(k), leaf(v), kw["key_padding_mask"], None, None, leaf(kw["mu"]),
                    leaf(kw["log_sigma2"]), kw["eps"], None, True, 0.2, True),
        "vib-seed": (leaf(q), leaf(k), leaf(v), None, None, None, leaf(kw["mu"]), leaf(kw["log_sigma2"]), None,
                     7, False, 0.2, True),
        "row-gate-mask": (leaf(q), leaf(k), leaf(v), None, torch.rand(1, 4, 5, 7) > 0.3, leaf(torch.randn(5, 4)),
                          None, None, None, None, False, 0.2, True),
        "no-gate": (leaf(q), leaf(k), leaf(v), None, None, None, None, None, None, None, True, 0.2, True),
    }


@pytest.mark.parametrize("case", list(_opcheck_args()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, case):
    with vtrans_kernels.use_backend(backend):
        torch.library.opcheck(torch.ops.vtrans.masked_attention, _opcheck_args()[case])


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    qkv, kw, grad = make_inputs((2, 4, 2, 9, 9, 32), torch.float32, causal=True, mask="pad", gate="vib",
                                seed=11)

    def fn(q, k, v, **kw):
        return ops.masked_attention(q, k, v, **kw) * 2.0

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with vtrans_kernels.use_backend(backend):
        eager = forward_backward(fn, qkv, kw, grad)
        traced = forward_backward(compiled, qkv, kw, grad)
    for name, a, b in zip(NAMES[:4] + ["dmu", "dlog_sigma2"], eager, traced):
        torch.testing.assert_close(a, b, msg=name)


def _bad(**change):
    (q, k, v), kw, _ = make_inputs((2, 4, 2, 5, 7, 32), torch.float32, gate="vib")
    args = dict(q=q, k=k, v=v, **kw)
    args.update(change)
    return args


@pytest.mark.parametrize("change,error,match", [
    (dict(q=torch.randn(2, 4, 5)), ValueError, "q must be 4-D"),
    (dict(k=torch.randn(2, 3, 7, 32), v=torch.randn(2, 3, 7, 32)), ValueError, "multiple of the 3 KV heads"),
    (dict(v=torch.randn(2, 2, 6, 32)), ValueError, "v must have shape"),
    (dict(q=torch.randn(2, 4, 5, 32, dtype=torch.float16)), TypeError, "k and v must have q's dtype"),
    (dict(q=torch.randint(0, 3, (2, 4, 5, 32))), TypeError, "q must have dtype"),
    (dict(key_padding_mask=torch.ones(2, 7)), TypeError, "key_padding_mask must be a bool"),
    (dict(key_padding_mask=torch.ones(2, 5, dtype=torch.bool)), ValueError, "key_padding_mask must have shape"),
    (dict(attn_mask=torch.ones(2, 2, 5, 7, dtype=torch.bool)), ValueError, "attn_mask must have shape"),
    (dict(mu=torch.ones(3), log_sigma2=torch.ones(3), eps=torch.zeros(10, 3)), ValueError, "divisor of the 4"),
    (dict(eps=torch.zeros(10, 3)), ValueError, "eps must have shape"),
    (dict(eps=None, seed=3, training=True, head_gate=torch.ones(2)), ValueError, "either head_gate or"),
    (dict(seed=3), ValueError, "either eps or seed"),
    (dict(mu=None, log_sigma2=None, eps=None, head_gate=torch.ones(7, 2)), ValueError, "head_gate must have shape"),
    (dict(log_sigma2=None), ValueError, "needs both mu and log_sigma2"),
    (dict(q=torch.randn(2, 4, 5, 300), k=torch.randn(2, 2, 7, 300), v=torch.randn(2, 2, 7, 300)), ValueError,
     "head_dim must be at most 256"),
])
def test_errors(change, error, match):
    with pytest.raises(error, match=match):
        ops.masked_attention(**_bad(**change))
