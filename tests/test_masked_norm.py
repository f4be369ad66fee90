"""masked_layer_norm / masked_rms_norm (residual add + norm over kept dims + hidden gate) on the torch and triton
backends: outputs and all gradients against an independent oracle (norm of the kept-dim slice, scattered back),
odd shapes, all dtypes, every gate form, keep forms, seeds, opcheck, torch.compile and errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import vtrans_kernels
from vtrans_kernels import backends, ops
from vtrans_kernels.reference import masked_norm as reference
from vtrans_kernels.reference.vib import vib_noise

from conftest import DTYPES, KERNEL_CASES
from oracle import assert_close_to_oracle

# the device under test (the GPU when there is one), the torch reference and every kernel backend serving that
# device that has these ops (the C++ extension has none)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch"] + [b for d, b in KERNEL_CASES
                        if d == DEVICE and hasattr(backends.BACKENDS[b].load(), "masked_layer_norm")]
NORMS = ["layer", "rms"]
EPS = {"layer": 1e-5, "rms": 1e-6}
GATES = ["none", "vector", "vib_eps", "vib_seed", "vib_eval"]
SEED = 1234567


def _make(norm, rows, hidden, dtype, *, residual=True, weight=True, bias=True, gate="vib_eps", keep="mixed",
          seed=0):
    """Inputs of one call: tensors (x, residual, weight, bias, out_gate, mu, log_sigma2), keep, noise, grads."""
    gen = torch.Generator().manual_seed(seed)
    shape = rows if isinstance(rows, tuple) else (rows,)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = {"x": rnd(*shape, hidden).to(dtype) * 2 + 0.5,
         "residual": rnd(*shape, hidden).to(dtype) if residual else None,
         "weight": (1 + 0.5 * rnd(hidden)).to(dtype) if weight else None,
         "bias": rnd(hidden).to(dtype) if bias and norm == "layer" else None,
         "out_gate": rnd(hidden) if gate == "vector" else None,
         "mu": rnd(hidden) if gate.startswith("vib") else None,
         "log_sigma2": rnd(hidden) - 2 if gate.startswith("vib") else None}
    if t["mu"] is not None:
        t["mu"][::3] *= 0.01  # some units below the VIB keep threshold
    keep_t = {"mixed": torch.rand(hidden, generator=gen) < 0.7, "ones": torch.ones(hidden, dtype=torch.bool),
              "zeros": torch.zeros(hidden, dtype=torch.bool)}[keep]
    if keep == "mixed":
        keep_t[0] = True  # at least one kept dim
    noise = rnd(*shape, hidden) if gate == "vib_eps" else None
    grads = (rnd(*shape, hidden).to(dtype), rnd(*shape, hidden).to(dtype) if residual else None)
    on_device = lambda v: None if v is None else v.to(DEVICE)  # noqa: E731
    return ({k: on_device(v) for k, v in t.items()}, on_device(keep_t), on_device(noise),
            tuple(on_device(g) for g in grads))


def _call_op(norm, t, keep, noise, gate):
    """(y or (y, h), {name: leaf}) through ops.* on fresh leaves."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items() if v is not None}
    kw = {k: leaves.get(k) for k in ("residual", "out_gate", "mu", "log_sigma2")}
    kw.update(eps_noise=noise, seed=SEED if gate == "vib_seed" else None, training=gate != "vib_eval")
    if norm == "layer":
        out = ops.masked_layer_norm(leaves["x"], keep, leaves.get("weight"), leaves.get("bias"), EPS[norm], **kw)
    else:
        out = ops.masked_rms_norm(leaves["x"], keep, leaves.get("weight"), EPS[norm], **kw)
    return out, leaves


def _run(norm, t, keep, noise, gate, backend, grads):
    """Forward and backward through ops.*: ([y, h], {name: gradient})."""
    with vtrans_kernels.use_backend(backend):  # the backward too runs on the backend
        out, leaves = _call_op(norm, t, keep, noise, gate)
        return _backward(out, grads, leaves)


def _backward(out, grads, leaves):
    y, h = out if isinstance(out, tuple) else (out, None)
    outs, gs = [y], [grads[0]]
    if h is not None:
        outs.append(h)
        gs.append(grads[1])
    torch.autograd.backward(outs, gs)
    return [y.detach()] + ([h.detach()] if h is not None else []), {k: v.grad for k, v in leaves.items()}


def oracle(norm, t, keep, noise, gate, grads, compute):
    """Independent answer: the norm of the kept-dim slice (F.layer_norm / LlamaRMSNorm math) in ``compute``
    dtype, scattered into zeros, times the gate; activations keep their dtype outside the norm (fp64: all)."""
    exact = compute == torch.float64
    leaves = {k: (v.detach().double() if exact else v.detach().clone()).requires_grad_(True)
              for k, v in t.items() if v is not None}
    x = leaves["x"]
    h = x if "residual" not in leaves else x + leaves["residual"]
    idx = keep.nonzero().squeeze(-1)
    part = h.to(compute).index_select(-1, idx)
    w = leaves["weight"].to(compute).index_select(0, idx) if "weight" in leaves else None
    if norm == "layer":
        b = leaves["bias"].to(compute).index_select(0, idx) if "bias" in leaves else None
        part = F.layer_norm(part, (idx.numel(),), w, b, EPS[norm])
    else:
        part = part * torch.rsqrt(part.square().mean(-1, keepdim=True) + EPS[norm])
        part = part if w is None else part * w
    y = torch.zeros(h.shape, dtype=compute).index_copy(-1, idx, part)
    if "out_gate" in leaves:
        y = y * leaves["out_gate"].to(compute)
    elif "mu" in leaves:
        mu, ls2 = leaves["mu"].to(compute), leaves["log_sigma2"].to(compute)
        if gate == "vib_eval":
            y = y * (mu * (mu * mu > torch.exp(ls2)))
        else:
            eps = noise if noise is not None else vib_noise(SEED, x)
            y = y * (mu + torch.exp(0.5 * ls2) * eps.to(compute))
    y = y.to(x.dtype)
    out = y if "residual" not in leaves else (y, h)
    got, g = _backward(out, [None if v is None else v.to(x.dtype) for v in grads], leaves)
    return got, {k: torch.zeros_like(leaves[k]) if v is None else v for k, v in g.items()}


def check(norm, backend, rows, hidden, dtype, **config):
    t, keep, noise, grads = _make(norm, rows, hidden, dtype, **config)
    gate = config.get("gate", "vib_eps")
    got_out, got_grads = _run(norm, t, keep, noise, gate, backend, grads)
    same_out, same_grads = oracle(norm, t, keep, noise, gate, grads, torch.float32)
    exact_out, exact_grads = oracle(norm, t, keep, noise, gate, grads, torch.float64)
    what = f"{norm} {backend} {rows}x{hidden} {dtype} {config}"
    n_rows = t["x"].numel() // hidden
    for name, a, b, c in zip(("y", "h"), got_out, same_out, exact_out):
        assert a.dtype == dtype and a.shape == t["x"].shape, name
        assert_close_to_oracle(a, b, c, f"{name} {what}")
    for name, a in got_grads.items():
        assert a.dtype == t[name].dtype and torch.isfinite(a).all(), name
        # parameter gradients are fp32 sums over rows: accumulation error grows like sqrt(rows)
        floor = 1e-6 if name in ("x", "residual") else max(1e-6, 1e-6 * math.sqrt(n_rows))
        assert_close_to_oracle(a, same_grads[name], exact_grads[name], f"d{name} {what}", floor)
    assert (got_out[0][..., ~keep] == 0).all(), "pruned dims must be exactly 0"


# ----------------------------------------------------------------------------------------------------------
SHAPES = [(1, 7), (33, 97), (257, 384), (33, 1536), ((2, 3), 97)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, norm, dtype, shape):
    check(norm, backend, *shape, dtype)


CONFIGS = {
    "plain": dict(residual=False, weight=False, bias=False, gate="none"),
    "affine": dict(residual=False, gate="none"),
    "residual_only": dict(weight=False, bias=False, gate="none"),
    "vector_gate": dict(gate="vector"),
    "vib_seed": dict(gate="vib_seed"),
    "vib_eval": dict(gate="vib_eval"),
    "vib_no_residual": dict(residual=False, gate="vib_eps"),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_configurations(backend, norm, dtype, config):
    check(norm, backend, 33, 97, dtype, **CONFIGS[config])


@pytest.mark.parametrize("norm", NORMS)
def test_fp64_on_the_reference(norm):
    check(norm, "torch", 5, 13, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ones_keep_equals_plain_norms(backend):
    t, keep, _, _ = _make("layer", 9, 97, torch.float32, residual=False, gate="none", keep="ones")
    with vtrans_kernels.use_backend(backend):
        y = ops.masked_layer_norm(t["x"], keep, t["weight"], t["bias"], 1e-5)
        y_rms = ops.masked_rms_norm(t["x"], keep.float(), t["weight"], 1e-6)
    torch.testing.assert_close(y, F.layer_norm(t["x"], (97,), t["weight"], t["bias"], 1e-5))
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    rms = LlamaRMSNorm(97, eps=1e-6)
    rms.weight.data.copy_(t["weight"])
    torch.testing.assert_close(y_rms, rms(t["x"]))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_keep_gives_zeros(backend, norm):
    t, keep, noise, grads = _make(norm, 5, 12, torch.float32, gate="vib_eps", keep="zeros")
    (y, h), g = _run(norm, t, keep, noise, "vib_eps", backend, grads)
    assert (y == 0).all()
    torch.testing.assert_close(h, t["x"] + t["residual"])
    for name, d in g.items():
        assert torch.isfinite(d).all(), name
        if name not in ("x", "residual"):
            assert (d == 0).all(), name
    torch.testing.assert_close(g["x"], grads[1])  # only the gradient of h reaches x


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_bool_and_float_agree(backend, norm):
    t, keep, noise, grads = _make(norm, 6, 40, torch.float32)
    bool_out = _run(norm, t, keep, noise, "vib_eps", backend, grads)
    float_out = _run(norm, t, keep.float(), noise, "vib_eps", backend, grads)
    for a, b in zip(bool_out[0], float_out[0]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_is_deterministic_and_names_the_vib_gate_noise(backend, norm):
    t, keep, _, grads = _make(norm, (3, 11), 97, torch.float32, gate="vib_seed")
    runs = [_run(norm, t, keep, None, "vib_seed", backend, grads) for _ in range(2)]
    for a, b in zip(runs[0][0], runs[1][0]):
        assert torch.equal(a, b)
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k
    explicit = _run(norm, t, keep, vib_noise(SEED, t["x"]), "vib_eps", backend, grads)
    torch.testing.assert_close(runs[0][0][0], explicit[0][0])
    for k in explicit[1]:
        torch.testing.assert_close(runs[0][1][k], explicit[1][k])
    with vtrans_kernels.use_backend(backend):
        other = ops.masked_layer_norm(t["x"], keep, mu=t["mu"], log_sigma2=t["log_sigma2"], seed=SEED + 1)
        same = ops.masked_layer_norm(t["x"], keep, mu=t["mu"], log_sigma2=t["log_sigma2"], seed=SEED)
    assert not torch.equal(other, same)


@pytest.mark.parametrize("norm", NORMS)
def test_unused_h_output(norm):
    # only y feeds the loss: the gradient of h arrives empty and must count as zero on every backend
    t, keep, noise, grads = _make(norm, 9, 40, torch.float32)
    results = []
    for backend in BACKENDS:
        with vtrans_kernels.use_backend(backend):
            (y, _), leaves = _call_op(norm, t, keep, noise, "vib_eps")
            torch.autograd.backward(y, grads[0])
        results.append({k: v.grad for k, v in leaves.items()})
    exact = oracle(norm, t, keep, noise, "vib_eps", (grads[0], torch.zeros_like(grads[1])), torch.float64)[1]
    for got in results:
        for k in exact:
            torch.testing.assert_close(got[k].double(), exact[k], rtol=1e-4, atol=1e-5)


def test_triton_seeded_noise_equals_reference():
    if "triton" not in BACKENDS:
        pytest.skip("no triton backend here")
    t, keep, _, _ = _make("layer", 17, 97, torch.float32, gate="vib_seed")
    outs = []
    for backend in ("torch", "triton"):
        with vtrans_kernels.use_backend(backend):
            outs.append(ops.masked_layer_norm(t["x"], keep, t["weight"], t["bias"], residual=t["residual"],
                                              mu=t["mu"], log_sigma2=t["log_sigma2"], seed=SEED)[0])
    torch.testing.assert_close(outs[0], outs[1])


def test_math_functions_equal_the_ops():
    """hf/gating.py applies the plain math functions; they must compute what the ops compute."""
    t, keep, _, _ = _make("layer", 4, 10, torch.float32, residual=False, gate="none")
    y = reference.layer_norm_kept(t["x"], keep, t["weight"], t["bias"], 1e-5)
    torch.testing.assert_close(y, ops.masked_layer_norm(t["x"], keep, t["weight"], t["bias"], 1e-5))
    y_rms = reference.rms_norm_kept(t["x"], keep, t["weight"], 1e-6)
    torch.testing.assert_close(y_rms, ops.masked_rms_norm(t["x"], keep, t["weight"], 1e-6))


# ----------------------------------------------------------------------------------------------------------
def _op_args(norm, gate):
    t, keep, noise, _ = _make(norm, 5, 12, torch.float32, gate=gate)
    for k in ("x", "residual", "weight", "bias", "out_gate", "mu", "log_sigma2"):
        if t[k] is not None:
            t[k].requires_grad_(True)
    gates = (t["out_gate"], t["mu"], t["log_sigma2"], noise, SEED if gate == "vib_seed" else None,
             gate != "vib_eval")
    if norm == "layer":
        return torch.ops.vtrans.masked_layer_norm, (t["x"], t["residual"], keep, t["weight"], t["bias"], 1e-5, *gates)
    return torch.ops.vtrans.masked_rms_norm, (t["x"], t["residual"], keep, t["weight"], 1e-6, *gates)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, norm, gate):
    op, args = _op_args(norm, gate)
    with vtrans_kernels.use_backend(backend):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_matches_eager(backend):
    def fn(x, residual, keep, w, b, mu, ls2, seed):
        y, h = ops.masked_layer_norm(x, keep, w, b, residual=residual, mu=mu, log_sigma2=ls2, seed=seed)
        y2, _ = ops.masked_rms_norm(y, keep, w, residual=h)
        return y2.square().sum() + h.sum()

    t, keep, _, _ = _make("layer", 7, 24, torch.float32, gate="vib_seed")
    names = ("x", "residual", "weight", "bias", "mu", "log_sigma2")

    def value_and_grads(f):
        leaves = [t[k].detach().clone().requires_grad_(True) for k in names]
        value = f(*leaves[:2], keep, *leaves[2:], SEED)
        value.backward()
        return value.detach(), [leaf.grad for leaf in leaves]

    torch._dynamo.reset()
    with vtrans_kernels.use_backend(backend):
        eager = value_and_grads(fn)
        compiled = value_and_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled[0], eager[0])
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b)


def test_errors_name_the_argument():
    x = torch.randn(4, 8)
    keep = torch.ones(8, dtype=torch.bool)
    cases = [
        (lambda: ops.masked_layer_norm(x, torch.ones(7)), "keep"),
        (lambda: ops.masked_layer_norm(x, torch.ones(8, dtype=torch.int64)), "keep"),
        (lambda: ops.masked_layer_norm(x, keep, torch.ones(7)), "weight"),
        (lambda: ops.masked_layer_norm(x, keep, None, torch.ones(8, dtype=torch.int32)), "bias"),
        (lambda: ops.masked_layer_norm(x, keep, residual=torch.randn(4, 7)), "residual"),
        (lambda: ops.masked_layer_norm(x, keep, residual=x.half()), "residual"),
        (lambda: ops.masked_layer_norm(x, keep, eps=0.0), "eps"),
        (lambda: ops.masked_layer_norm(x.long(), keep), "x"),
        (lambda: ops.masked_rms_norm(x, keep, out_gate=torch.ones(8), mu=torch.ones(8),
                                     log_sigma2=torch.ones(8), seed=1), "out_gate"),
        (lambda: ops.masked_rms_norm(x, keep, out_gate=torch.ones(8, dtype=torch.float16)), "out_gate"),
        (lambda: ops.masked_rms_norm(x, keep, mu=torch.ones(8), seed=1), "log_sigma2"),
        (lambda: ops.masked_rms_norm(x, keep, mu=torch.ones(8), log_sigma2=torch.ones(8),
                                     eps_noise=torch.randn(4, 8), seed=1), "seed"),
        (lambda: ops.masked_rms_norm(x, keep, mu=torch.ones(8), log_sigma2=torch.ones(8),
                                     eps_noise=torch.randn(4, 9)), "noise"),
        (lambda: ops.masked_rms_norm(x, keep, mu=torch.ones(9), log_sigma2=torch.ones(9), seed=1), "mu"),
        (lambda: ops.masked_rms_norm(x, keep, seed=1), "seed"),
        (lambda: ops.masked_rms_norm(torch.tensor(1.0), keep), "x"),
    ]
    for fn, name in cases:
        with pytest.raises((ValueError, TypeError), match=name):
            fn()
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="keep"):
            ops.masked_layer_norm(x.cuda(), keep)
