"""Loads the compiled extension ``vtrans_kernels._C`` if it was built; never raises.

``ext`` is the module or None; ``load_error`` says why it is missing; ``build_info`` is what ``setup.py``
recorded at build time (torch and CUDA versions, archs, which kernels were compiled).
"""
import json
from pathlib import Path

try:
    import torch  # noqa: F401  (the extension links against libtorch, which must be loaded first)
    from . import _C as ext
    load_error = None
except ImportError as err:  # not built (VTRANS_SKIP_EXT=1, or a source checkout without a build)
    ext = None
    load_error = f"{type(err).__name__}: {err}"

_INFO_FILE = Path(__file__).with_name("_build_info.json")
build_info = json.loads(_INFO_FILE.read_text()) if _INFO_FILE.is_file() else {}


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return ext is not None and bool(ext.compiled_with_cuda())
