"""The counter-based noise: a known Philox answer, seeds, and sample statistics on a million draws."""
import pytest
import torch

from vtrans_kernels import ops
from vtrans_kernels.reference import rng


def test_philox_known_answer():
    # Random123's published answer for Philox4x32-10 with zero key and counter
    words = rng.philox4x32(0, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))[0]
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_uniforms_stay_strictly_inside_the_unit_interval():
    assert rng.word_to_uniform(torch.tensor([0])).item() > 0
    assert rng.word_to_uniform(torch.tensor([2**32 - 1])).item() < 1


def _noise(seed, device, shape=(64, 97)):
    x = torch.ones(shape, device=device)
    zeros = torch.zeros(shape[-1], device=device)
    return ops.vib_gate(x, zeros, zeros, seed=seed)


def test_same_seed_same_noise_other_seed_other_noise(device_backend):
    device, _ = device_backend
    log_alpha = torch.zeros(3, 97, device=device)
    assert torch.equal(ops.hard_concrete_sample(log_alpha, seed=11), ops.hard_concrete_sample(log_alpha, seed=11))
    assert not torch.equal(ops.hard_concrete_sample(log_alpha, seed=11),
                           ops.hard_concrete_sample(log_alpha, seed=12))
    assert torch.equal(_noise(7, device), _noise(7, device))
    assert not torch.equal(_noise(7, device), _noise(8, device))


def test_unseeded_calls_follow_torch_manual_seed():
    torch.manual_seed(0)
    first = ops.hard_concrete_sample(torch.zeros(50))
    torch.manual_seed(0)
    assert torch.equal(first, ops.hard_concrete_sample(torch.zeros(50)))
    assert not torch.equal(first, ops.hard_concrete_sample(torch.zeros(50)))


def test_normal_statistics_on_a_million_draws(device_backend):
    device, _ = device_backend
    x = torch.ones(1000, 1000, device=device)
    zeros = torch.zeros(1000, device=device)
    eps = ops.vib_gate(x, zeros, zeros, seed=2024).double().cpu()
    assert abs(eps.mean().item()) < 0.005  # std of the mean is 0.001
    assert abs(eps.var().item() - 1.0) < 0.01  # std of the variance is 0.0014
    assert abs((eps.abs() > 1.96).double().mean().item() - 0.05) < 0.002
    # neighbouring columns share a Philox block (cos/sin pairs): they must still be uncorrelated
    for lag in (1, 2, 3, 4):
        corr = (eps[:, :-lag] * eps[:, lag:]).mean().item()
        assert abs(corr) < 0.005, f"lag {lag} correlation {corr}"
    assert abs((eps[:-1] * eps[1:]).mean().item()) < 0.005  # neighbouring rows


@pytest.mark.parametrize("log_alpha_value", [-2.0, 0.0, 2.0])
def test_hard_concrete_zero_probability_on_a_million_draws(device_backend, log_alpha_value):
    device, _ = device_backend
    log_alpha = torch.full((1000, 1000), log_alpha_value, device=device)
    z = ops.hard_concrete_sample(log_alpha, seed=99).cpu()
    p_zero = (z == 0).double().mean().item()
    expected = 1.0 - ops.hard_concrete_expected_l0(log_alpha[:1, :1]).item()
    assert abs(p_zero - expected) < 0.0025  # std is at most 0.0005
