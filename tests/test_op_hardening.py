"""Op hardening (issue 20): keep masks must be bool or exact 0/1, non-finite values follow each op's documented
NaN policy on every backend, and zero-size edge cases give a correct empty result or a clear error.

Every case runs on each backend serving the op here (the torch reference, the C++ extension where it has the
op, Triton under its interpreter on CPU) and compares against an oracle that never sees the bad values."""
import pytest
import torch
import torch.nn.functional as F

import vtrans_kernels
from vtrans_kernels import backends, ops
from vtrans_kernels.reference import hard_concrete as hc_reference
from vtrans_kernels.reference import masked_norm as norm_reference

from conftest import DEVICES, serving_backends

NAN, INF = float("nan"), float("inf")
DEVICE = DEVICES[-1]


def backends_with(op: str) -> list[str]:
    """The torch reference and every kernel backend that serves ``op`` on DEVICE here."""
    return ["torch"] + [b for b in serving_backends(DEVICE) if hasattr(backends.BACKENDS[b].load(), op)]


def _leaves(tensors: dict) -> dict:
    return {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in tensors.items()}


def _forward_backward(fn, tensors: dict, grads):
    """(outputs, {name: gradient}) of ``fn(**leaves)`` for fresh leaves of ``tensors`` and output grads."""
    leaves = _leaves(tensors)
    out = fn(**leaves)
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, grads[:len(outs)])
    return [o.detach() for o in outs], {k: v.grad for k, v in leaves.items() if v is not None}


# ----------------------------------------------------------------------------------------------------------
# keep masks: bool or exact 0/1
NORM_OPS = {"masked_layer_norm": lambda x, keep: ops.masked_layer_norm(x, keep),
            "masked_rms_norm": lambda x, keep: ops.masked_rms_norm(x, keep),
            "layer_norm_kept": lambda x, keep: norm_reference.layer_norm_kept(x, keep, None, None, 1e-5),
            "rms_norm_kept": lambda x, keep: norm_reference.rms_norm_kept(x, keep, None, 1e-6)}


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, NAN, INF])
@pytest.mark.parametrize("op", NORM_OPS)
def test_keep_must_be_bool_or_exactly_0_or_1(op, bad):
    x = torch.randn(3, 9)
    keep = (torch.arange(9) % 3 != 1).float()
    torch.testing.assert_close(NORM_OPS[op](x, keep), NORM_OPS[op](x, keep.bool()), rtol=0, atol=0)  # exact 0/1
    keep[4] = bad
    with pytest.raises(ValueError, match=rf"vtrans\.{op}: keep must be bool or exactly 0/1 .*index 4"):
        NORM_OPS[op](x, keep)


def test_keep_of_integer_dtype_is_refused():
    with pytest.raises(TypeError, match=r"vtrans\.masked_layer_norm: keep must be a bool tensor or a floating"):
        ops.masked_layer_norm(torch.randn(2, 4), torch.ones(4, dtype=torch.int64))


def test_keep_values_are_checked_under_torch_compile():
    """The fake kernel cannot read values; the compiled graph's real kernel then refuses them, as eager does."""
    fn = torch.compile(lambda x, keep: ops.masked_rms_norm(x, keep), backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 6)
    good = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    torch.testing.assert_close(fn(x, good), ops.masked_rms_norm(x, good.bool()))
    with pytest.raises(ValueError, match=r"vtrans\.masked_rms_norm: keep must be bool or exactly 0/1"):
        fn(x, good * 0.5)


# ----------------------------------------------------------------------------------------------------------
# masked norms: a NaN or inf in a pruned dim changes nothing
HIDDEN, ROWS = 37, (3, 5)


def _norm_inputs(rms: bool, gen: torch.Generator) -> tuple[dict, torch.Tensor]:
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    keep = torch.rand(HIDDEN, generator=gen) < 0.6
    keep[0], keep[1] = True, False
    t = dict(x=rnd(*ROWS, HIDDEN), residual=rnd(*ROWS, HIDDEN), weight=1 + 0.3 * rnd(HIDDEN),
             bias=None if rms else rnd(HIDDEN), out_gate=rnd(HIDDEN))
    return t, keep


def _poison(t: dict, keep: torch.Tensor, site: str) -> dict:
    """A copy of ``t`` with NaN and inf written into pruned dims of the tensors of ``site``."""
    pruned = (~keep).nonzero().flatten()
    bad = dict(t)
    names = {"x": ["x"], "residual": ["residual"], "params": ["weight", "bias", "out_gate"]}[site]
    for name in names:
        if t[name] is None:
            continue
        v = t[name].clone()
        v[..., pruned[0]] = NAN
        v[..., pruned[-1]] = -INF if name != "x" else INF
        if v.dim() > 1:
            v[1, 2, pruned[1:-1]] = NAN  # one whole row's pruned dims too
        bad[name] = v
    return bad


def _norm_oracle(rms: bool, t: dict, keep: torch.Tensor) -> torch.Tensor:
    """The norm of the kept slice of x + residual (fp64), scattered back, times the gate; 0 on pruned dims."""
    h = (t["x"] + t["residual"]).double()[..., keep]
    w = t["weight"].double()[keep]
    if rms:
        y = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-6) * w
    else:
        y = F.layer_norm(h, (h.shape[-1],), w, t["bias"].double()[keep], 1e-5)
    out = torch.zeros(*ROWS, HIDDEN, dtype=torch.float64)
    out[..., keep] = y * t["out_gate"].double()[keep]
    return out


def _norm_call(rms: bool, keep: torch.Tensor):
    def call(x, residual, weight, bias, out_gate):
        if rms:
            return ops.masked_rms_norm(x, keep, weight, 1e-6, residual=residual, out_gate=out_gate)
        return ops.masked_layer_norm(x, keep, weight, bias, 1e-5, residual=residual, out_gate=out_gate)
    return call


@pytest.mark.parametrize("site", ["x", "residual", "params"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("backend", backends_with("masked_layer_norm"))
def test_masked_norm_ignores_nan_in_pruned_dims(backend, norm, site):
    rms = norm == "rms"
    gen = torch.Generator().manual_seed(7)
    clean, keep = _norm_inputs(rms, gen)
    bad = _poison(clean, keep, site)
    grads = (torch.randn(*ROWS, HIDDEN, generator=gen), torch.randn(*ROWS, HIDDEN, generator=gen))
    on = lambda d: {k: None if v is None else v.to(DEVICE) for k, v in d.items()}  # noqa: E731
    with vtrans_kernels.use_backend(backend):
        call = _norm_call(rms, keep.to(DEVICE))
        (y, h), got = _forward_backward(call, on(bad), tuple(g.to(DEVICE) for g in grads))
        (_, _), want = _forward_backward(call, on(clean), tuple(g.to(DEVICE) for g in grads))
    y, h = y.cpu(), h.cpu()
    assert torch.isfinite(y).all(), f"{backend}: NaN/inf in pruned dims leaked into y"
    assert (y[..., ~keep] == 0).all()
    torch.testing.assert_close(y.double(), _norm_oracle(rms, clean, keep), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, bad["x"] + bad["residual"], equal_nan=True)  # the residual stream as given
    for name, g in got.items():
        assert torch.isfinite(g).all(), f"{backend}: the gradient of {name} is not finite"
        torch.testing.assert_close(g.cpu(), want[name].cpu(), rtol=1e-5, atol=1e-5, msg=f"{backend}: d{name}")


@pytest.mark.parametrize("helper", ["layer_norm_kept", "rms_norm_kept"])
def test_masked_norm_helpers_ignore_nan_in_pruned_dims(helper):
    gen = torch.Generator().manual_seed(3)
    clean, keep = _norm_inputs(helper == "rms_norm_kept", gen)
    bad = _poison(_poison(clean, keep, "x"), keep, "params")
    fn = getattr(norm_reference, helper)
    args = lambda t: (t["weight"],) if helper == "rms_norm_kept" else (t["weight"], t["bias"])  # noqa: E731
    y = fn(bad["x"], keep, *args(bad), 1e-5)
    assert torch.isfinite(y).all() and (y[..., ~keep] == 0).all()
    torch.testing.assert_close(y, fn(clean["x"], keep, *args(clean), 1e-5))


# ----------------------------------------------------------------------------------------------------------
# hard_concrete_deterministic: a NaN unit is pruned and changes nothing for the others
def _deterministic_without_nan(log_alpha: torch.Tensor) -> torch.Tensor:
    """Oracle: each row computed by the reference on its non-NaN units only, scattered back (NaN units 0)."""
    out = torch.zeros_like(log_alpha)
    for r in range(log_alpha.shape[0]):
        ok = ~torch.isnan(log_alpha[r])
        out[r, ok] = hc_reference.hard_concrete_deterministic(log_alpha[r, ok])
    return out


@pytest.mark.parametrize("backend", backends_with("hard_concrete_deterministic"))
def test_hard_concrete_deterministic_prunes_nan_units_only(backend):
    gen = torch.Generator().manual_seed(11)
    log_alpha = torch.randn(4, 29, generator=gen) * 3
    log_alpha[1, [0, 5, 17]] = NAN
    log_alpha[2, :] = NAN
    log_alpha[3, 28] = NAN
    grad = torch.randn(4, 29, generator=gen)
    with vtrans_kernels.use_backend(backend):
        (z,), got = _forward_backward(lambda log_alpha: ops.hard_concrete_deterministic(log_alpha),
                                      dict(log_alpha=log_alpha.to(DEVICE)), (grad.to(DEVICE),))
    want = _deterministic_without_nan(log_alpha)
    assert (want[1] > 0).sum() > 10  # the other units of a row with NaNs still keep their share
    torch.testing.assert_close(z.cpu(), want, rtol=1e-6, atol=1e-6)
    expected_grad = torch.zeros_like(log_alpha)
    for r in range(4):
        ok = ~torch.isnan(log_alpha[r])
        row = log_alpha[r, ok].clone().requires_grad_(True)
        hc_reference.hard_concrete_deterministic(row).backward(grad[r, ok])
        expected_grad[r, ok] = row.grad
    torch.testing.assert_close(got["log_alpha"].cpu(), expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", backends_with("hard_concrete_sample"))
def test_hard_concrete_sample_closes_nan_gates_only(backend):
    """A NaN log_alpha gives z = 0 and a zero gradient there (the kernels' clamps ignore NaN; so does the
    reference now), a NaN u counts as the lowest uniform; every other element is the clean reference's."""
    gen = torch.Generator().manual_seed(2)
    log_alpha, u = torch.randn(3, 19, generator=gen) * 2, torch.rand(3, 19, generator=gen)
    grad = torch.randn(3, 19, generator=gen)
    nan_alpha = torch.zeros(3, 19, dtype=torch.bool)
    nan_alpha[0, [1, 7]] = nan_alpha[2, 18] = True
    nan_u = torch.zeros(3, 19, dtype=torch.bool)
    nan_u[1, [0, 4]] = True
    clean_alpha = torch.where(nan_alpha, float("-inf"), log_alpha)
    clean_u = torch.where(nan_u, hc_reference.U_EPS, u)
    with vtrans_kernels.use_backend(backend):
        (z,), got = _forward_backward(lambda log_alpha: ops.hard_concrete_sample(log_alpha, u=u.masked_fill(
            nan_u, NAN).to(DEVICE)), dict(log_alpha=log_alpha.masked_fill(nan_alpha, NAN).to(DEVICE)),
            (grad.to(DEVICE),))
    leaf = clean_alpha.clone().requires_grad_(True)
    want = hc_reference.hard_concrete_transform(leaf, clean_u, 2 / 3, -0.1, 1.1)
    want.backward(grad)
    assert (z.cpu()[nan_alpha] == 0).all() and (got["log_alpha"].cpu()[nan_alpha] == 0).all()
    torch.testing.assert_close(z.cpu(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["log_alpha"].cpu(), torch.where(nan_alpha, 0.0, leaf.grad), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# the VIB evaluation gate: a unit with NaN parameters is pruned (gate 0), as the kernels always did
@pytest.mark.parametrize("backend", backends_with("vib_gate"))
def test_vib_eval_gate_prunes_units_with_nan_parameters(backend):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 13, generator=gen)
    mu, log_sigma2 = torch.randn(13, generator=gen), torch.randn(13, generator=gen) - 3
    mu[3], log_sigma2[8] = NAN, NAN
    with vtrans_kernels.use_backend(backend):
        y = ops.vib_gate(x.to(DEVICE), mu.to(DEVICE), log_sigma2.to(DEVICE), training=False).cpu()
    z = torch.where(mu * mu > log_sigma2.exp(), mu, 0.0)
    assert z[3] == 0 and z[8] == 0
    torch.testing.assert_close(y, x * z)


# ----------------------------------------------------------------------------------------------------------
# zero sizes: a correct empty result or a clear error, never an internal traceback
@pytest.mark.parametrize("rows,k,n,gate", [(3, 4, 0, g) for g in ("none", "vector", "vib")]
                         + [(3, 0, 0, g) for g in ("none", "vector", "vib")] + [(0, 4, 5, "vib")],
                         ids=["N0", "N0-vector", "N0-vib", "K0N0", "K0N0-vector", "K0N0-vib", "rows0-vib"])
@pytest.mark.parametrize("op", ["masked_linear", "masked_swiglu"])
def test_linear_zero_sizes_give_empty_results(op, rows, k, n, gate):
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = dict(x=rnd(rows, k), w1=rnd(n, k), w2=rnd(n, k) if op == "masked_swiglu" else None, b=rnd(n),
             out_gate=rnd(n) if gate == "vector" else None, mu=rnd(n) if gate == "vib" else None,
             log_sigma2=rnd(n) if gate == "vib" else None)
    seed = 3 if gate == "vib" else None

    def call(x, w1, w2, b, out_gate, mu, log_sigma2):
        if op == "masked_linear":
            return ops.masked_linear(x, w1, b, activation="gelu", out_gate=out_gate, mu=mu, log_sigma2=log_sigma2,
                                     seed=seed)
        return ops.masked_swiglu(x, w1, w2, b, None, out_gate=out_gate, mu=mu, log_sigma2=log_sigma2, seed=seed)

    (y,), grads = _forward_backward(call, t, (torch.ones(rows, n),))
    assert y.shape == (rows, n)
    assert grads.keys() == {name for name, v in t.items() if v is not None}
    for name, g in grads.items():
        assert g.shape == t[name].shape and (g == 0).all(), name


@pytest.mark.parametrize("backend", backends_with("masked_attention"))
def test_attention_head_dim_0_is_a_clear_error(backend):
    q = torch.randn(2, 4, 3, 0, device=DEVICE)
    with vtrans_kernels.use_backend(backend), pytest.raises(
            ValueError, match=r"vtrans\.masked_attention: head_dim \(the last dim of q, k and v\) must be at least 1"):
        ops.masked_attention(q, q, q)


def test_attention_without_kv_heads_or_with_a_non_finite_scale_is_a_clear_error():
    q, none = torch.randn(1, 2, 3, 8), torch.randn(1, 0, 3, 8)
    with pytest.raises(ValueError, match=r"vtrans\.masked_attention: k and v must have at least one KV head"):
        ops.masked_attention(q, none, none)
    for scale in (NAN, INF):
        with pytest.raises(ValueError, match=r"vtrans\.masked_attention: scale must be a finite number"):
            ops.masked_attention(q, q, q, scale=scale)
