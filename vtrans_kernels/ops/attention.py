"""Masked flash attention with a per-head output gate (DESIGN 2.3, 3.1): ``torch.ops.vtrans.masked_attention``."""
import torch

from .. import library  # noqa: F401  (registers torch.ops.vtrans)
from .masks import draw_seed

__all__ = ["masked_attention"]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                     scale: float | None = None, head_gate: torch.Tensor | None = None,
                     mu: torch.Tensor | None = None, log_sigma2: torch.Tensor | None = None,
                     eps: torch.Tensor | None = None, seed: int | None = None, training: bool = True) -> torch.Tensor:
    """Flash attention (no N x N matrix in memory) whose per-head outputs are scaled by gates.

    Args:
        q: [B, Hq, Sq, D] float32/float16/bfloat16 (float64 runs on the reference), any strides; D <= 256.
        k, v: [B, Hkv, Sk, D], q's dtype, Hq % Hkv == 0: query head h reads KV head ``h // (Hq // Hkv)`` (GQA/MQA).
        causal: query i attends key j iff ``j <= i + Sk - Sq`` (bottom-right aligned, as with a KV cache).
        key_padding_mask: optional bool [B, Sk], True = attend.
        attn_mask: optional bool [B or 1, Hq or 1, Sq, Sk], True = attend (sliding windows, packed sequences).
            All masks combine; a query row attending no key outputs exactly 0, with zero gradients.
        scale: softmax scale, default ``1 / sqrt(D)``.
        head_gate: optional fp32 gate over G units (Hq % G == 0; unit u covers heads ``u*Hq/G .. (u+1)*Hq/G - 1``,
            G = Hkv gives KV-group units), shape [G] or [B*Sq, G] (per token: row ``b*Sq + s``); differentiable.
        mu, log_sigma2: optional fp32 [G] VIB gate (instead of head_gate). Training:
            ``z[r, u] = mu[u] + exp(log_sigma2[u] / 2) * eps[r, u]`` with eps [B*Sq, G] explicit or drawn in-kernel
            from ``seed`` (exactly ``reference.rng.normal(seed, B*Sq, G)``, what ``ops.vib_gate`` draws over a
            [B*Sq, G] tensor; regenerated in backward, never stored). With neither, a seed is drawn from torch's
            generator. Evaluation (``training=False``): ``z[u] = mu[u] * (mu[u]^2 > exp(log_sigma2[u]))``.
    Returns:
        out [B, Sq, Hq, D] contiguous in q's dtype (the layout an output projection consumes), each head's output
        times its unit's gate; gradients for q, k, v and the gate parameters.

    Zero sizes: B, Hq, Sq or Sk of 0 give the correct (empty or all-zero) result; head_dim 0 or no KV heads is a
    ValueError naming the dim. ``scale`` must be finite. NaN policy: as softmax attention computed in fp32 (a
    NaN in q, k or v spreads over the query rows that read it). q, k and v must be finite at masked-out
    positions too (padding, the causal future): their probability is 0, but ``0 * NaN`` in the probability-
    times-v product is still NaN, on every backend (as in PyTorch's own attention). The gate follows
    ``ops.vib_gate`` (a NaN VIB parameter prunes its unit in evaluation).
    """
    if mu is not None and training and eps is None and seed is None:
        seed = draw_seed()
    if scale is None:
        scale = q.shape[-1] ** -0.5 if q.shape[-1] > 0 else 1.0  # head_dim 0: the op's check raises the error
    out, _, _ = torch.ops.vtrans.masked_attention(q, k, v, key_padding_mask, attn_mask, head_gate, mu, log_sigma2,
                                                  eps, seed, causal, float(scale), training)
    return out
