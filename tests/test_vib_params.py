"""vib_kl and vib_keep_prob against the reference on every kernel backend."""
import pytest
import torch

from vtrans_kernels import ops, reference

from oracle import assert_close_to_oracle


def _params(n, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, generator=gen)
    mu[::5] = 0.0
    return mu.to(device), (torch.randn(n, generator=gen) * 4 - 2).to(device)


def _with_grads(fn, mu, log_sigma2, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in (mu, log_sigma2)]
    out = fn(*leaves)
    out.backward(grad)
    return out.detach(), *(torch.zeros_like(x) if x.grad is None else x.grad for x in leaves)


@pytest.mark.parametrize("n", [1, 7, 97, 3072, 20000])
def test_kl_matches_reference(device_backend, n):
    device, _ = device_backend
    mu, log_sigma2 = _params(n, device)
    grad = torch.tensor(1.7, device=device)
    got = _with_grads(ops.vib_kl, mu, log_sigma2, grad)
    same = _with_grads(reference.vib_kl, mu, log_sigma2, grad)
    exact = _with_grads(reference.vib_kl, mu.double(), log_sigma2.double(), grad.double())
    assert got[0].shape == ()
    for name, a, b, c in zip(("kl", "dmu", "dlog_sigma2"), got, same, exact):
        assert_close_to_oracle(a, b, c, f"{name} n={n}", rtol_floor=2e-6)


@pytest.mark.parametrize("n", [1, 7, 97, 3072])
@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_keep_prob_matches_reference(device_backend, n, temperature):
    device, _ = device_backend
    mu, log_sigma2 = _params(n, device)
    grad = torch.randn(n).to(device)
    fn = lambda m, s: ops.vib_keep_prob(m, s, temperature=temperature)  # noqa: E731
    ref = lambda m, s: reference.vib_keep_prob(m, s, temperature)  # noqa: E731
    got = _with_grads(fn, mu, log_sigma2, grad)
    same = _with_grads(ref, mu, log_sigma2, grad)
    exact = _with_grads(ref, mu.double(), log_sigma2.double(), grad.double())
    for name, a, b, c in zip(("p", "dmu", "dlog_sigma2"), got, same, exact):
        assert_close_to_oracle(a, b, c, f"{name} n={n} T={temperature}", rtol_floor=2e-6)


def test_keep_prob_sum_counts_kept_units():
    mu = torch.tensor([1.0, 1.0, 1e-3, 0.0])
    log_sigma2 = torch.tensor([-9.0, -9.0, -9.0, -9.0])
    assert ops.vib_keep_prob(mu, log_sigma2).sum().item() == pytest.approx(2.0, abs=1e-6)
