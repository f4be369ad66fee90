"""The ``triton`` backend: raw Triton kernels, one file per kernel family, with their launchers.

Importing this package imports Triton; ``backends.py`` does so lazily and reports why when it cannot.
Set ``TRITON_INTERPRET=1`` before the first import to run the kernels on CPU tensors (how CI tests them).
"""
from .hard_concrete import (hard_concrete_deterministic, hard_concrete_deterministic_backward,
                            hard_concrete_expected_l0, hard_concrete_expected_l0_backward, hard_concrete_sample,
                            hard_concrete_sample_backward)
from .vib import (vib_gate, vib_gate_backward, vib_keep_prob, vib_keep_prob_backward, vib_kl, vib_kl_backward)
# fused op families: each module's __all__ lists its launchers (forward and *_backward per op)
from .masked_attention import *  # noqa: E402,F401,F403
from .masked_linear import *  # noqa: E402,F401,F403
from .masked_norm import *  # noqa: E402,F401,F403
# per-call limits the dispatcher checks before each call (backends.select)
from .limits import LIMITS, call_limits  # noqa: E402,F401
