"""Pure-PyTorch versions of every op: the test oracle, the fallback backend and the benchmark baseline.

Forward functions here are plain differentiable PyTorch; the ``torch`` backend (``backend.py``) gets its
backward passes from autograd over them, so the only hand-written gradients live in the kernels.
"""
from .hard_concrete import (hard_concrete_deterministic, hard_concrete_expected_l0, hard_concrete_sample,
                            hard_concrete_transform)
from .masked_attention import attention_math
from .masked_linear import linear_forward, swiglu_forward
from .masked_norm import layer_norm_kept, rms_norm_kept
from .vib import vib_gate, vib_keep_prob, vib_kl

__all__ = ["hard_concrete_sample", "hard_concrete_transform", "hard_concrete_expected_l0",
           "hard_concrete_deterministic", "vib_gate", "vib_kl", "vib_keep_prob", "linear_forward", "swiglu_forward",
           "attention_math", "layer_norm_kept", "rms_norm_kept"]
