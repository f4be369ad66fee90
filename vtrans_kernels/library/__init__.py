"""THE op registry of namespace ``vtrans``: every ``torch.ops.vtrans.*`` schema, fake kernel, autograd formula
and per-device implementation, one module per op family (mask sampling, masked linear/FFN, masked attention,
masked norms).

Each op is a ``torch.library.custom_op`` whose implementation asks ``backends.select`` for the backend serving
the call's op, device and dtype, and calls that backend's function of the same name with contiguous inputs.
Each forward op has a ``*_backward`` op (registered too, with a fake kernel) that its autograd formula calls,
so torch.compile traces the backward as well. Seeds are ``SymInt``: a training loop under torch.compile can
pass a new seed every step without recompiling.
"""
from . import attention, linear, masks, norm

#: forward op name -> its backward op name, for tools (info, tests) that walk the registry
OPS = {**masks.OPS, **linear.OPS, **attention.OPS, **norm.OPS}
