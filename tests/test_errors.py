"""Bad input gets an error that names the argument and what was expected."""
import pytest
import torch

import vtrans_kernels
from vtrans_kernels import ops


def test_vib_gate_rejects_bad_arguments():
    x, mu, ls2 = torch.randn(4, 7), torch.zeros(7), torch.zeros(7)
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.vib_gate(torch.ones(4, 7, dtype=torch.int64), mu, ls2, seed=1)
    with pytest.raises(TypeError, match="mu must have dtype"):
        ops.vib_gate(x, mu.half(), ls2, seed=1)
    with pytest.raises(ValueError, match=r"mu and log_sigma2 must have shape \[7\]"):
        ops.vib_gate(x, torch.zeros(6), torch.zeros(6), seed=1)
    with pytest.raises(ValueError, match="log_sigma2 must have shape"):
        ops.vib_gate(x, mu, torch.zeros(6), seed=1)
    with pytest.raises(ValueError, match="eps must have shape"):
        ops.vib_gate(x, mu, ls2, eps=torch.randn(4, 6))
    with pytest.raises(ValueError, match="either eps or seed"):
        ops.vib_gate(x, mu, ls2, eps=torch.randn(4, 7), seed=3)
    with pytest.raises(ValueError, match="training needs noise"):
        torch.ops.vtrans.vib_gate(x, mu, ls2, None, None, True)
    with pytest.raises(ValueError, match="mu is on meta"):
        ops.vib_gate(x, torch.zeros(7, device="meta"), ls2, seed=1)
    with pytest.raises(ValueError, match="at least one dimension"):
        ops.vib_gate(torch.tensor(1.0), torch.zeros(1), torch.zeros(1), seed=1)


def test_hard_concrete_rejects_bad_arguments():
    la = torch.zeros(5)
    with pytest.raises(TypeError, match="log_alpha must have dtype"):
        ops.hard_concrete_sample(torch.zeros(5, dtype=torch.int32), seed=1)
    with pytest.raises(ValueError, match="u must have shape"):
        ops.hard_concrete_sample(la, u=torch.rand(4))
    with pytest.raises(ValueError, match="either u or seed"):
        ops.hard_concrete_sample(la, u=torch.rand(5), seed=2)
    with pytest.raises(ValueError, match="beta must be positive"):
        ops.hard_concrete_expected_l0(la, beta=0.0)
    with pytest.raises(ValueError, match="limit_l must be negative"):
        ops.hard_concrete_deterministic(la, limit_l=0.1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        ops.vib_keep_prob(la, la, temperature=-1.0)


def test_forced_backend_that_cannot_serve_raises():
    with vtrans_kernels.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="backend 'cuda' was forced but cannot serve cpu"):
            ops.vib_kl(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="name must be one of"):
        with vtrans_kernels.use_backend("nope"):
            pass


def test_bad_backend_environment_variable(monkeypatch):
    monkeypatch.setenv("VTRANS_BACKEND", "fast")
    with pytest.raises(ValueError, match="VTRANS_BACKEND"):
        ops.vib_kl(torch.zeros(3), torch.zeros(3))


def test_environment_variable_forces_the_backend(monkeypatch):
    monkeypatch.setenv("VTRANS_BACKEND", "torch")
    from vtrans_kernels import backends
    assert backends.select("vib_kl", torch.device("cpu"), torch.float32).__name__.endswith("reference.backend")
