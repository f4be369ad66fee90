"""Helpers every op family's registration uses: defining a custom op and dispatching a call to a backend."""
import torch

from .. import backends


def define(name: str, schema: str, impl):
    """Register ``impl`` as the functional custom op ``vtrans::<name>`` with an explicit schema."""
    return torch.library.custom_op(f"vtrans::{name}", impl, mutates_args=(), schema=schema)


def contiguous(*tensors):
    """The tensors made contiguous (None passes through): backends take dense row-major inputs."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def dispatch(op: str, device: torch.device, *dtype_inputs: torch.Tensor | None):
    """A function that runs ``op`` for tensors on ``device`` on the backend that serves the call it is given
    (``backends.run``: a backend may decline a call's shapes); fp64 anywhere in ``dtype_inputs`` selects the
    fp64-capable reference."""
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in dtype_inputs) else torch.float32

    def call(*args):
        return backends.run(op, device, dtype, args)
    return call


def empty(t: torch.Tensor) -> bool:
    return t.numel() == 0
