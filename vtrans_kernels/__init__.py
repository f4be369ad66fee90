"""vtrans-kernels: structured pruning of transformers with VIB masks, on fused Triton/CUDA kernels.

Importing never fails for a missing extension or Triton: ops fall back to the PyTorch reference and say
so once. ``python -m vtrans_kernels.info`` reports which backend serves each op here.
"""
from . import library  # noqa: F401  (registers torch.ops.vtrans.*)
from . import ops
from .backends import use_backend

__version__ = "0.1.0"

# Names served from vtrans_kernels.hf on first use, so that `import vtrans_kernels` (and the ops) does not
# import transformers.
_HF_NAMES = ("CompactionPlan", "compact", "save_compacted", "load_compacted", "masked_by_plan", "attach", "detach",
             "masks_of")

__all__ = ["ops", "use_backend", "__version__", *_HF_NAMES]


def __getattr__(name: str):
    if name in _HF_NAMES:
        from . import hf
        return getattr(hf, name)
    raise AttributeError(f"module 'vtrans_kernels' has no attribute {name!r}")
