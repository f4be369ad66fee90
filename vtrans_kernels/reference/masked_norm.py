"""LayerNorm and RMSNorm whose statistics cover only the kept hidden dims (CoFi semantics, DESIGN 2.3).

``keep`` is a 0/1 vector over the last dim; pruned dims come out as exactly zero, so a model using these norms
computes what its compacted version (norms sliced to the kept dims) computes.
"""
from __future__ import annotations

import torch


def masked_layer_norm(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm of ``x`` (..., H) over the dims where ``keep`` (H,) is 1; zero on the others."""
    keep = keep.to(device=x.device, dtype=x.dtype)
    count = keep.sum()
    mean = (x * keep).sum(-1, keepdim=True) / count
    centered = (x - mean) * keep
    variance = centered.square().sum(-1, keepdim=True) / count
    y = centered * torch.rsqrt(variance + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * keep


def masked_rms_norm(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` (..., H) over the kept dims, computed in float32 like the transformers RMSNorms."""
    keep32 = keep.to(device=x.device, dtype=torch.float32)
    x32 = x.float() * keep32
    variance = x32.square().sum(-1, keepdim=True) / keep32.sum()
    y = (x32 * torch.rsqrt(variance + eps)).to(x.dtype)
    if weight is not None:
        y = weight * y
    return y * keep.to(device=x.device, dtype=y.dtype)
