"""The documented functional API: thin wrappers over ``torch.ops.vtrans.*``.

``masks.py``: mask sampling (VIB and hard-concrete gates); ``linear.py``: masked linear and SwiGLU FFN;
``attention.py``: masked flash attention; ``norm.py``: LayerNorm/RMSNorm over kept hidden dims.
"""
from .attention import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .masks import (hard_concrete_deterministic, hard_concrete_expected_l0, hard_concrete_sample, vib_gate,
                    vib_keep_prob, vib_kl)
from .norm import *  # noqa: F401,F403
from . import attention as _attention, linear as _linear, norm as _norm

__all__ = ["hard_concrete_sample", "hard_concrete_expected_l0", "hard_concrete_deterministic", "vib_gate",
           "vib_kl", "vib_keep_prob", *_linear.__all__, *_attention.__all__, *_norm.__all__]
