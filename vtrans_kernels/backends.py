"""Which implementation serves an op call: triton, cuda (extension), cpu (extension) or torch (reference).

Defaults: CUDA tensors use Triton, then the CUDA extension, then the reference; CPU tensors use the C++
extension, then the reference. fp64 inputs always go to the reference (the kernels compute in fp32).
A backend can also decline one call (a hidden size over its limit, a GPU too old for a dtype): its module's
``call_limits(op, args)`` lists the reasons, and the call falls back to the next backend with a one-time
warning per (device type, backend, reason). ``VTRANS_BACKEND=<name>`` or ``with vtrans_kernels.use_backend(<name>):``
forces one backend, and a forced backend that cannot serve a call raises with the reasons instead.
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
_warned: set = set()


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

    def reasons(self, op: str, device_type: str, dtype: torch.dtype, args: tuple | None = None) -> list[str]:
        """Every reason this backend cannot serve a call of ``op`` (empty: it can). With ``args`` (the backend
        function's arguments) the module's ``call_limits`` judges the call's shapes and device too."""
        reason = self.why_not(device_type, dtype) or _lacks(self.name, op)
        if reason is not None:
            return [reason]
        limits = getattr(self.load(), "call_limits", None)
        return list(limits(op, args)) if limits is not None and args is not None else []


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


def select(op: str, device: torch.device, dtype: torch.dtype, args: tuple | None = None):
    """The module whose function ``op`` serves a call on ``device`` with compute inputs of ``dtype``; with
    ``args`` (the backend function's arguments) a backend that declines this call is passed over."""
    forced = forced_backend()
    if forced is not None:
        reasons = BACKENDS[forced].reasons(op, device.type, dtype, args)
        if reasons:
            raise RuntimeError(f"vtrans.{op}: backend {forced!r} was forced but cannot serve {device.type} "
                               f"{dtype} tensors in this call: {'; '.join(reasons)}")
        return BACKENDS[forced].load()
    order = _DEFAULT_ORDER.get(device.type, ("torch",))
    declined = None  # (backend, reasons) when the preferred backend declines this call for a reason to report
    for name in order:
        reasons = BACKENDS[name].reasons(op, device.type, dtype, args)
        if not reasons:
            if declined is not None:
                _warn_fallback_once(device.type, op, *declined, name)
            return BACKENDS[name].load()
        if name == order[0] and not _by_design(name, op, device.type, dtype):
            declined = (name, reasons)
    return BACKENDS["torch"].load()


def run(op: str, device: torch.device, dtype: torch.dtype, args: tuple):
    """Call ``op`` with ``args`` on the backend that ``select`` picks for this call."""
    return getattr(select(op, device, dtype, args), op)(*args)


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


def limits(name: str) -> dict[str, list[str]]:
    """The documented per-call limits of backend ``name`` by op (its module's ``LIMITS``), for reports."""
    try:
        return dict(getattr(BACKENDS[name].load(), "LIMITS", {}))
    except Exception:  # an unimportable backend has no limits to report; why_not says why
        return {}


def _by_design(name: str, op: str, device_type: str, dtype: torch.dtype) -> bool:
    # fp64 always goes to the reference, and a backend without a kernel for an op is not a fallback to warn of
    return dtype == torch.float64 or (BACKENDS[name].why_not(device_type, dtype) is None and
                                      _lacks(name, op) is not None)


def _warn_fallback_once(device_type: str, op: str, name: str, reasons: list[str], used: str) -> None:
    # once per backend and reason (a missing backend warns once, not once per op), naming the first op it hit
    key = (device_type, name, tuple(reasons))
    if key not in _warned:
        _warned.add(key)
        target = "the PyTorch reference" if used == "torch" else f"the {used!r} backend"
        warnings.warn(f"vtrans_kernels: vtrans.{op} on {device_type} falls back from the {name!r} backend to "
                      f"{target}: {'; '.join(reasons)}", RuntimeWarning, stacklevel=4)
