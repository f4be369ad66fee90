"""Latency targets: per-layer latency tables measured on the device at hand (:func:`profile_latency`), the
differentiable latency they predict for the masks, and plans rounded to the widths the table shows are fast."""
from .curves import Curve, isotonic
from .table import LatencyTable

__all__ = ["Curve", "LatencyTable", "isotonic", "profile_latency"]


def __getattr__(name: str):
    if name == "profile_latency":  # imports the transformers integration; loaded on first use
        from .profile import profile_latency
        return profile_latency
    raise AttributeError(f"module 'vtrans_kernels.latency' has no attribute {name!r}")
