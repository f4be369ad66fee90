"""Which implementation serves an op call: triton, cuda (extension), cpu (extension) or torch (reference).

Defaults: CUDA tensors use Triton, then the CUDA extension, then the reference; CPU tensors use the C++
extension, then the reference. fp64 inputs always go to the reference (the kernels compute in fp32).
``VTRANS_BACKEND=<name>`` or ``with vtrans_kernels.use_backend(<name>):`` forces one backend, and a forced
backend that cannot serve a call raises instead of falling back.
"""
import contextlib
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import _ext

NAMES = ("triton", "cuda", "cpu", "torch")
# Process-wide, not a ContextVar: autograd runs CUDA backward passes in its own worker threads, which must see
# the backend the forward was forced onto.
_forced: list[str] = []
_warned_fallback = False


@dataclass(frozen=True)
class Backend:
    """A named set of op implementations and the test of whether it can serve a device and dtype."""

    name: str
    load: Callable[[], object]
    unavailable: Callable[[str], str | None]  # device type -> reason it cannot serve there, or None

    def why_not(self, device_type: str, dtype: torch.dtype) -> str | None:
        """None when this backend can serve tensors of this device type and dtype, else the reason."""
        if self.name != "torch" and dtype == torch.float64:
            return "its kernels compute in fp32; fp64 inputs are served by the torch reference"
        return self.unavailable(device_type)


def _triton_module():
    return importlib.import_module("vtrans_kernels.triton")


def _triton_unavailable(device_type: str) -> str | None:
    try:
        _triton_module()
    except Exception as err:  # triton missing or broken: report, never crash the caller
        return f"triton does not import ({type(err).__name__}: {err})"
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        from .triton import launch
        return None if launch.interpreted() else "CPU tensors need TRITON_INTERPRET=1 set before the first import"
    return f"no Triton support for device type {device_type!r}"


def _extension_unavailable(want: str) -> Callable[[str], str | None]:
    def why(device_type: str) -> str | None:
        if _ext.ext is None:
            return f"the C++ extension is not built ({_ext.load_error})"
        if device_type != want:
            return f"it serves {want} tensors only"
        if want == "cuda" and not _ext.has_cuda_kernels():
            return "the extension was built without CUDA kernels"
        return None
    return why


def _reference_module():
    return importlib.import_module("vtrans_kernels.reference.backend")


BACKENDS = {
    "triton": Backend("triton", _triton_module, _triton_unavailable),
    "cuda": Backend("cuda", lambda: _ext.ext, _extension_unavailable("cuda")),
    "cpu": Backend("cpu", lambda: _ext.ext, _extension_unavailable("cpu")),
    "torch": Backend("torch", _reference_module, lambda device_type: None),
}
_DEFAULT_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` or ``VTRANS_BACKEND``, validated, or None."""
    name = (_forced[-1] if _forced else None) or os.environ.get("VTRANS_BACKEND") or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"VTRANS_BACKEND / use_backend: expected one of {NAMES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Force every vtrans op called inside the block onto backend ``name`` (one of ``NAMES``), in every thread,
    so that backward passes autograd runs in its worker threads use it too."""
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {NAMES}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def select(op: str, device: torch.device, dtype: torch.dtype):
    """The module whose function ``op`` serves a call on ``device`` with compute inputs of ``dtype``."""
    forced = forced_backend()
    if forced is not None:
        reason = BACKENDS[forced].why_not(device.type, dtype) or _lacks(forced, op)
        if reason is not None:
            raise RuntimeError(f"vtrans.{op}: backend {forced!r} was forced but cannot serve {device.type} "
                               f"{dtype} tensors: {reason}")
        return BACKENDS[forced].load()
    name = default_backend(device.type, dtype, op)
    if name == "torch" and dtype != torch.float64:
        _warn_fallback_once(device.type, op)
    return BACKENDS[name].load()


def _lacks(name: str, op: str | None) -> str | None:
    """Why backend ``name`` (already known to be available) cannot run ``op``, or None."""
    if op is None or hasattr(BACKENDS[name].load(), op):
        return None
    return f"it has no kernel for {op}"


def default_backend(device_type: str, dtype: torch.dtype = torch.float32, op: str | None = None) -> str:
    """The first backend in the default order that can serve this device type and dtype (torch serves all),
    and, when ``op`` is given, that implements ``op`` (the extension has kernels for the mask ops only)."""
    for name in _DEFAULT_ORDER.get(device_type, ("torch",)):
        if BACKENDS[name].why_not(device_type, dtype) is None and _lacks(name, op) is None:
            return name
    return "torch"


def _warn_fallback_once(device_type: str, op: str) -> None:
    global _warned_fallback
    first = _DEFAULT_ORDER.get(device_type, ("torch",))[0]
    reason = BACKENDS[first].why_not(device_type, torch.float32)
    if reason is None:
        return  # the preferred backend is there and simply has no kernel for this op: by design, no warning
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"vtrans_kernels: {device_type} ops run on the PyTorch reference because the {first!r} "
                      f"backend is unavailable: {reason}", RuntimeWarning, stacklevel=3)
