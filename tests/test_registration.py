"""The ops as torch.library ops: opcheck, torch.compile(fullgraph=True) against eager, gradcheck of the
reference in fp64, and one dispatch path per backend."""
import pytest
import torch

import vtrans_kernels
from vtrans_kernels import ops, reference

from conftest import KERNEL_CASES


def _sample_calls(device="cpu"):
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    leaf = lambda t: t.requires_grad_(True)  # noqa: E731
    hc = (2 / 3, -0.1, 1.1)
    return {
        "hard_concrete_sample/u": (torch.ops.vtrans.hard_concrete_sample,
                                   (leaf(rnd(5, 7)), torch.rand(5, 7, generator=gen).to(device), None, *hc)),
        "hard_concrete_sample/seed": (torch.ops.vtrans.hard_concrete_sample, (leaf(rnd(13)), None, 3, *hc)),
        "hard_concrete_expected_l0": (torch.ops.vtrans.hard_concrete_expected_l0, (leaf(rnd(4, 9)), *hc)),
        "hard_concrete_deterministic": (torch.ops.vtrans.hard_concrete_deterministic, (leaf(rnd(4, 9)), *hc)),
        "vib_gate/eps": (torch.ops.vtrans.vib_gate, (leaf(rnd(3, 5, 7)), leaf(rnd(7)), leaf(rnd(7) - 2),
                                                     rnd(3, 5, 7), None, True)),
        "vib_gate/seed": (torch.ops.vtrans.vib_gate, (leaf(rnd(6, 7)), leaf(rnd(7)), leaf(rnd(7) - 2), None, 9,
                                                      True)),
        "vib_gate/eval": (torch.ops.vtrans.vib_gate, (leaf(rnd(6, 7)), leaf(rnd(7)), leaf(rnd(7) - 2), None, None,
                                                      False)),
        "vib_kl": (torch.ops.vtrans.vib_kl, (leaf(rnd(11)), leaf(rnd(11)))),
        "vib_keep_prob": (torch.ops.vtrans.vib_keep_prob, (leaf(rnd(11)), leaf(rnd(11)), 10.0)),
    }


@pytest.mark.parametrize("case", list(_sample_calls()))
@pytest.mark.parametrize("device,backend", KERNEL_CASES, ids=[f"{d}-{b}" for d, b in KERNEL_CASES])
def test_opcheck(case, device, backend):
    op, args = _sample_calls(device)[case]
    with vtrans_kernels.use_backend(backend):
        torch.library.opcheck(op, args)


def _all_ops(x, mu, log_sigma2, log_alpha, seed):
    return (ops.vib_gate(x, mu, log_sigma2, seed=seed).float().square().sum()
            + ops.vib_kl(mu, log_sigma2) + ops.vib_keep_prob(mu, log_sigma2).sum()
            + ops.hard_concrete_sample(log_alpha, seed=seed).sum()
            + ops.hard_concrete_expected_l0(log_alpha).sum()
            + ops.hard_concrete_deterministic(log_alpha).sum())


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(33, 97, generator=gen, dtype=torch.float32).requires_grad_(True),
            torch.randn(97, generator=gen).requires_grad_(True),
            (torch.randn(97, generator=gen) - 3).requires_grad_(True),
            torch.randn(2, 12, generator=gen).requires_grad_(True)]


def _value_and_grads(fn, seed):
    leaves = _inputs()
    value = fn(*leaves, seed)
    value.backward()
    return value.detach(), [t.grad for t in leaves]


def test_compile_fullgraph_matches_eager_without_recompiling_per_seed():
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(_all_ops, fullgraph=True)
    for seed in (1, 2, 3, 4):
        eager_value, eager_grads = _value_and_grads(_all_ops, seed)
        value, grads = _value_and_grads(compiled, seed)
        torch.testing.assert_close(value, eager_value)
        for a, b in zip(grads, eager_grads):
            torch.testing.assert_close(a, b)
    # the seed is a SymInt: after the first recompile marks it dynamic, new seeds reuse the graph
    assert counters["stats"]["unique_graphs"] <= 2


def test_gradcheck_reference_in_fp64():
    gen = torch.Generator().manual_seed(0)
    d = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(True)  # noqa: E731
    eps = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    u = torch.rand(9, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    torch.autograd.gradcheck(lambda x, m, s: reference.vib_gate(x, m, s, eps=eps), (d(4, 6), d(6), d(6)))
    torch.autograd.gradcheck(lambda m, s: reference.vib_gate(torch.ones(4, 6, dtype=torch.float64), m, s,
                                                             training=False), (d(6), d(6)))
    torch.autograd.gradcheck(reference.vib_kl, (d(6), d(6)))
    torch.autograd.gradcheck(reference.vib_keep_prob, (d(6), d(6) * 0.1))
    torch.autograd.gradcheck(lambda la: reference.hard_concrete_sample(la, u), (d(9),))
    torch.autograd.gradcheck(reference.hard_concrete_expected_l0, (d(9),))
    torch.autograd.gradcheck(reference.hard_concrete_deterministic, (d(3, 9),))


def test_fp64_runs_on_the_reference_and_matches_fp32():
    gen = torch.Generator().manual_seed(0)
    x, mu, ls2 = torch.randn(5, 8, generator=gen), torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    y64 = ops.vib_gate(x.double(), mu.double(), ls2.double(), seed=4)
    y32 = ops.vib_gate(x, mu, ls2, seed=4)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-5, atol=1e-5)


def test_empty_inputs():
    x = torch.empty(0, 7, requires_grad=True)
    mu, ls2 = torch.zeros(7, requires_grad=True), torch.zeros(7, requires_grad=True)
    ops.vib_gate(x, mu, ls2, seed=1).sum().backward()
    assert mu.grad.shape == (7,) and x.grad.shape == (0, 7)
    assert ops.vib_kl(torch.zeros(0), torch.zeros(0)).item() == 0
