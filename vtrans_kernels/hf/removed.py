"""Stand-ins for sublayers that compaction removed (DESIGN 2.3: the branch contributes exactly zero).

They hold no projection weights and cost one scalar add, and they keep the call signatures of the modules
they replace, so the transformers layer code around them runs unchanged (including ``generate`` with a KV
cache: a removed attention still advances its cache layer by the right number of positions).
"""
from __future__ import annotations

import torch
from torch import nn


class RemovedAttention(nn.Module):
    """Pre-LN attention sublayer that was pruned away: returns a zero residual update."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, cache=None, past_key_values=None, **kwargs):
        # transformers 5.24 renamed the attention's ``past_key_values`` argument to ``cache``; accept both.
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            # transformers reads the cache length from layer 0 and counts an empty cache as length 0, so the
            # stand-in caches one position per token: a single key/value head of width 1 (negligible memory).
            phantom = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            getattr(cache, "self_attention_cache", cache).update(phantom, phantom, self.layer_idx)
        return hidden_states.new_zeros(()), None

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}"


class RemovedFeedForward(nn.Module):
    """Pre-LN FFN sublayer that was pruned away: returns a zero residual update."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states.new_zeros(())


class PostNormOnlyAttention(nn.Module):
    """Post-LN attention sublayer (BERT) that was pruned away: only ``norm(0 + residual)`` remains."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.norm(hidden_states), None


class PostNormOnlyOutput(nn.Module):
    """Post-LN FFN output (BERT) whose FFN was pruned away: ``norm(0 + residual)``."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, intermediate: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.norm(input_tensor)
