"""What the Triton backend cannot serve, per call: the dispatcher (``backends.select``) asks ``call_limits`` before
each call and falls back to the next backend (with a one-time warning) when it lists a reason."""
import functools

import torch

from .masked_norm import MAX_HIDDEN

_NORM_OPS = ("masked_layer_norm", "masked_rms_norm")
_DOT_OPS = ("masked_linear", "masked_swiglu", "masked_attention")

#: the per-call limits, by op (forward and backward share them), as ``vtrans info`` reports them
LIMITS = {
    **{op: [f"hidden size at most {MAX_HIDDEN} (one row per program)"] for op in _NORM_OPS},
    **{op: ["bf16 needs compute capability 8.0 or newer (tensor-core bf16 dots)"] for op in _DOT_OPS},
}
_MIN_CAPABILITY = (7, 0)


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    # asked on every op call (the dispatcher's hot path): one query per device
    return torch.cuda.get_device_capability(index)


def _first_tensor(args):
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def call_limits(op: str, args: tuple) -> list[str]:
    """The reasons this backend cannot serve ``op`` called with ``args`` (the backend function's arguments);
    empty when it can."""
    base = op.removesuffix("_backward")
    x = _first_tensor(args)
    if x is None:
        return []
    reasons = []
    if base in _NORM_OPS and x.shape[-1] > MAX_HIDDEN:
        reasons.append(f"hidden size {x.shape[-1]} exceeds the Triton norm's {MAX_HIDDEN}")
    if x.device.type == "cuda":
        capability = _capability(x.device.index if x.device.index is not None else torch.cuda.current_device())
        if capability < _MIN_CAPABILITY:
            reasons.append(f"compute capability {capability[0]}.{capability[1]} is below Triton's "
                           f"{_MIN_CAPABILITY[0]}.{_MIN_CAPABILITY[1]}")
        elif base in _DOT_OPS and x.dtype == torch.bfloat16 and capability < (8, 0):
            reasons.append(f"bf16 dots need compute capability 8.0, this GPU has {capability[0]}.{capability[1]}")
    return reasons
