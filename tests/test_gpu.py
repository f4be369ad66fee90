"""GPU-only checks (skipped without CUDA): a seed names the same noise on the GPU backends as on the CPU,
and a full training step agrees across devices. The per-op comparisons with the reference run on CUDA
through the device_backend fixture of the other test files."""
import pytest
import torch

import vtrans_kernels
from vtrans_kernels import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_step_matches_cpu(backend, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(257, 1536, generator=gen).to(dtype)
    mu, ls2 = torch.randn(1536, generator=gen), torch.randn(1536, generator=gen) - 3
    log_alpha = torch.randn(6, 12, generator=gen)

    def step(device):
        leaves = [t.to(device).requires_grad_(True) for t in (x, mu, ls2, log_alpha)]
        loss = (ops.vib_gate(*leaves[:3], seed=77).float().square().mean() + ops.vib_kl(*leaves[1:3])
                + ops.hard_concrete_sample(leaves[3], seed=77).sum())
        loss.backward()
        return [loss.detach().cpu()] + [t.grad.cpu() for t in leaves]

    with vtrans_kernels.use_backend("torch"):
        expected = step("cpu")
    with vtrans_kernels.use_backend(backend):
        got = step("cuda")
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.float(), b.float(), **tol)
