"""Hard-concrete ops against the reference on every kernel backend: outputs and gradients, odd shapes,
explicit and seeded uniforms, the deterministic top-k mask with ties."""
import math

import pytest
import torch

from vtrans_kernels import ops, reference
from vtrans_kernels.reference.hard_concrete import hard_concrete_noise

from oracle import assert_close_to_oracle

SHAPES = [(1,), (7,), (97,), (3072,), (12, 97), (3, 5, 7)]


def _log_alpha(shape, device, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(device)


def _with_grad(fn, log_alpha, grad):
    leaf = log_alpha.detach().clone().requires_grad_(True)
    out = fn(leaf)
    out.backward(grad)
    return out.detach(), leaf.grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("noise", ["u", "seed"])
def test_sample_matches_reference(device_backend, shape, noise):
    device, _ = device_backend
    log_alpha = _log_alpha(shape, device)
    grad = torch.randn(shape).to(device)
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(shape, generator=gen).to(device) if noise == "u" else None
    seed = 2**33 + 5 if noise == "seed" else None
    got = _with_grad(lambda la: ops.hard_concrete_sample(la, u=u, seed=seed), log_alpha, grad)
    used_u = u if u is not None else hard_concrete_noise(seed, log_alpha)
    same = _with_grad(lambda la: reference.hard_concrete_sample(la, used_u), log_alpha, grad)
    exact = _with_grad(lambda la: reference.hard_concrete_sample(la, used_u.double()), log_alpha.double(),
                       grad.double())
    for name, a, b, c in zip(("z", "dlog_alpha"), got, same, exact):
        assert_close_to_oracle(a, b, c, f"{name} {shape} {noise}", rtol_floor=2e-6)
    assert ((got[0] >= 0) & (got[0] <= 1)).all()


def test_seeded_uniforms_are_the_reference_uniforms(device_backend):
    # with log_alpha = 0, z is a strictly monotone function of u wherever it is not clamped
    device, _ = device_backend
    log_alpha = torch.zeros(5, 37, device=device)
    z = ops.hard_concrete_sample(log_alpha, seed=42)
    expected = reference.hard_concrete_sample(log_alpha.cpu(), hard_concrete_noise(42, log_alpha.cpu()))
    torch.testing.assert_close(z.cpu(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_expected_l0_matches_reference(device_backend, shape):
    device, _ = device_backend
    log_alpha = _log_alpha(shape, device)
    grad = torch.randn(shape).to(device)
    got = _with_grad(ops.hard_concrete_expected_l0, log_alpha, grad)
    same = _with_grad(reference.hard_concrete_expected_l0, log_alpha, grad)
    exact = _with_grad(reference.hard_concrete_expected_l0, log_alpha.double(), grad.double())
    for name, a, b, c in zip(("p", "dlog_alpha"), got, same, exact):
        assert_close_to_oracle(a, b, c, f"{name} {shape}")


@pytest.mark.parametrize("shape", [(1,), (7,), (97,), (1536,), (12, 97), (3, 5, 7)], ids=str)
def test_deterministic_matches_reference(device_backend, shape):
    device, _ = device_backend
    log_alpha = _log_alpha(shape, device, seed=3)
    grad = torch.randn(shape).to(device)
    got = _with_grad(ops.hard_concrete_deterministic, log_alpha, grad)
    same = _with_grad(reference.hard_concrete_deterministic, log_alpha, grad)
    exact = _with_grad(reference.hard_concrete_deterministic, log_alpha.double(), grad.double())
    assert torch.equal(got[0] != 0, same[0] != 0), "kept units differ from the reference"
    for name, a, b, c in zip(("mask", "dlog_alpha"), got, same, exact):
        assert_close_to_oracle(a, b, c, f"{name} {shape}")


def test_deterministic_keeps_expected_count_and_breaks_ties_by_index(device_backend):
    device, _ = device_backend
    log_alpha = torch.tensor([[1.0, 3.0, 1.0, 1.0, -5.0, 1.0, 3.0]], device=device)
    mask = ops.hard_concrete_deterministic(log_alpha)
    expected_count = math.floor(ops.hard_concrete_expected_l0(log_alpha).sum().item() + 0.5)
    kept = (mask[0] != 0).nonzero().flatten().tolist()
    assert len(kept) == expected_count
    ranked = [1, 6, 0, 2, 3, 5, 4]  # by log_alpha, ties to the lower index
    assert kept == sorted(ranked[:expected_count])


def test_extremes_stay_finite(device_backend):
    device, _ = device_backend
    log_alpha = torch.tensor([-20.0, -20.0, 20.0, 20.0, 0.0, 0.0], device=device, requires_grad=True)
    u = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], device=device)
    total = (ops.hard_concrete_sample(log_alpha, u=u).sum() + ops.hard_concrete_expected_l0(log_alpha).sum()
             + ops.hard_concrete_deterministic(log_alpha).sum())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(log_alpha.grad).all()
