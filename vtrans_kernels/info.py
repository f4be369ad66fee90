"""``python -m vtrans_kernels.info``: versions, devices, build info, and which backend serves each op here.

For every op and backend the report says "available", or why not (extension not built, no GPU, Triton
not importable...), and marks the backend a call would use by default on each device.
"""
import platform

import torch

from . import _ext, backends, library


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
        return getattr(module, "__version__", "unknown")
    except Exception as err:  # report any import failure, never raise from the report
        return f"not importable ({type(err).__name__})"


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def report() -> str:
    """The full report as text."""
    lines = ["vtrans-kernels backends report", ""]
    lines.append(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
                 f"triton {_version('triton')}, transformers {_version('transformers')}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"device cuda:{i}: {torch.cuda.get_device_name(i)}")
    else:
        lines.append("devices: cpu only (no CUDA device visible)")
    if _ext.ext is None:
        lines.append(f"extension vtrans_kernels._C: not loaded ({_ext.load_error})")
    else:
        lines.append(f"extension vtrans_kernels._C: loaded, CUDA kernels {'built' if _ext.has_cuda_kernels() else 'not built'}")
    if _ext.build_info:
        lines.append("build info: " + ", ".join(f"{k}={v}" for k, v in _ext.build_info.items()))
    forced = backends.forced_backend()
    if forced:
        lines.append(f"forced backend: {forced}")
    lines.append("")
    for device_type in _devices():
        default = backends.default_backend(device_type)
        lines.append(f"[{device_type}] default backend: {default}")
        for name in backends.NAMES:
            reason = backends.BACKENDS[name].why_not(device_type, torch.float32)
            lines.append(f"  {name:<7} {'available' if reason is None else 'unavailable: ' + reason}")
    lines.append("")
    lines.append("per-call limits (a call over one falls back to the next backend with a one-time warning; "
                 "a forced backend raises):")
    for name in backends.NAMES:
        for op, items in sorted(backends.limits(name).items()):
            lines.append(f"  {name:<7} {op:<30} {'; '.join(items)}")
    lines.append("")
    lines.append("ops (torch.ops.vtrans.*; every op has a backward op, a fake kernel and autograd):")
    for op, backward in library.OPS.items():
        lines.append(f"  {op:<30} backward: {backward}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
