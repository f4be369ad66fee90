"""Test setup: Triton runs in its interpreter on CPU tensors when no GPU is present (set before any import
of Triton kernels), and fixtures enumerate the backends that can serve each device here."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import vtrans_kernels  # noqa: E402
from vtrans_kernels import backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def serving_backends(device_type: str) -> list[str]:
    """Backends that can serve fp32 tensors on this device type here (the reference excluded)."""
    return [n for n in backends.NAMES
            if n != "torch" and backends.BACKENDS[n].why_not(device_type, torch.float32) is None]


KERNEL_CASES = [(d, b) for d in DEVICES for b in serving_backends(d)]


@pytest.fixture(params=KERNEL_CASES, ids=[f"{d}-{b}" for d, b in KERNEL_CASES])
def device_backend(request):
    """(device, backend name) for every kernel backend available here; the op calls run forced onto it."""
    device, name = request.param
    with vtrans_kernels.use_backend(name):
        yield device, name
