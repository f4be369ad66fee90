"""The documented functional API: thin wrappers over ``torch.ops.vtrans.*`` (see ``masks.py``)."""
from .masks import (hard_concrete_deterministic, hard_concrete_expected_l0, hard_concrete_sample, vib_gate,
                    vib_keep_prob, vib_kl)

__all__ = ["hard_concrete_sample", "hard_concrete_expected_l0", "hard_concrete_deterministic", "vib_gate",
           "vib_kl", "vib_keep_prob"]
