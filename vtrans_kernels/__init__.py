"""vtrans-kernels: structured pruning of transformers with VIB masks, on fused Triton/CUDA kernels.

Importing never fails for a missing extension or Triton: ops fall back to the PyTorch reference and say
so once. ``python -m vtrans_kernels.info`` reports which backend serves each op here.
"""
from . import library  # noqa: F401  (registers torch.ops.vtrans.*)
from . import ops
from .backends import use_backend

__version__ = "0.1.0"
__all__ = ["ops", "use_backend", "__version__"]
