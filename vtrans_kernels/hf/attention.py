"""The ``"vtrans"`` attention implementation for transformers v5: ``ops.masked_attention`` (flash-style, GQA-native,
with the head gate fused in) behind ``transformers.AttentionInterface``.

Usage::

    from vtrans_kernels.hf.attention import register
    register()                                  # idempotent; importing vtrans_kernels.hf.attention is enough
    model.set_attn_implementation("vtrans")     # or from_pretrained(..., attn_implementation="vtrans")

Masks come from transformers' sdpa mask builder (registered under the same name with ``AttentionMaskInterface``):
a causal batch without padding arrives as ``None`` and runs as ``causal=True``; padded, sliding-window or packed
batches arrive as a bool [B, 1, Sq, Sk] mask (True = attend).

Gate: an attention module may carry ``vtrans_head_gate``, a callable ``(rows: int) -> dict`` returning the
gate keyword arguments of ``ops.masked_attention`` (``head_gate``, or ``mu``/``log_sigma2``/``seed``/``eps``/
``training``) for ``rows = batch * query_len``; the gate scales each head's output before ``o_proj``.
"""
import torch
import transformers
from transformers.masking_utils import sdpa_mask

from .. import ops

NAME = "vtrans"
_UNSUPPORTED = ("softcap", "position_bias", "s_aux")


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    # an additive float mask (0 = attend, dtype-min = masked); other biases are not expressible as a bool mask
    return mask > torch.finfo(mask.dtype).min / 2


def vtrans_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, Hq, Sq, D], key/value [B, Hkv, Sk, D] -> ([B, Sq, Hq, D], None)."""
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"attn_implementation='{NAME}' does not support {name}; use 'eager' for this model")
    if dropout:
        raise ValueError(f"attn_implementation='{NAME}' has no attention dropout (got p={dropout}); set the model's "
                         "attention dropout probability to 0 for mask training, or call model.eval()")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(is_causal) and attention_mask is None and query.shape[2] > 1
    sq = query.shape[2]
    if causal and key.shape[2] > sq:
        # transformers leaves the mask out here only when the extra keys are an empty static cache's tail,
        # relying on SDPA's top-left causal alignment (see integrations/sdpa_attention.py): drop them
        key, value = key[:, :, :sq], value[:, :, :sq]
    attn_mask = None if attention_mask is None else _bool_mask(attention_mask)
    gate_fn = getattr(module, "vtrans_head_gate", None)
    gate = gate_fn(query.shape[0] * sq) if gate_fn is not None else {}
    out = ops.masked_attention(query, key, value, causal=causal, attn_mask=attn_mask, scale=scaling, **gate)
    return out, None


def register() -> None:
    """Register ``"vtrans"`` with transformers' AttentionInterface and AttentionMaskInterface (idempotent)."""
    transformers.AttentionInterface.register(NAME, vtrans_attention_forward)
    transformers.AttentionMaskInterface.register(NAME, sdpa_mask)


register()
