"""What the pre-LN decoder families (GPT-2, LLaMA/Mistral/Qwen2) share: where a layer's attention, MLP and
their input norms live, how a removed sublayer is replaced, and the LM/score head."""
from __future__ import annotations

from torch import nn

from ..removed import RemovedAttention, RemovedFeedForward
from .base import Adapter, get_module, set_module


class PreLNDecoderAdapter(Adapter):
    pre_ln = True
    # Names of a layer's submodules, relative to the layer; set by each family.
    attention_name = ""
    mlp_name = ""
    attention_norm_name = ""
    mlp_norm_name = ""

    def head_readers(self) -> tuple[str, ...]:
        return tuple(p for p in ("lm_head", "score") if self.has(p))

    def remove_attention(self, index: int) -> None:
        layer = self.layer_path(index)
        set_module(self.model, f"{layer}.{self.attention_name}", RemovedAttention(index))
        set_module(self.model, f"{layer}.{self.attention_norm_name}", nn.Identity())

    def remove_ffn(self, index: int) -> None:
        layer = self.layer_path(index)
        set_module(self.model, f"{layer}.{self.mlp_name}", RemovedFeedForward())
        set_module(self.model, f"{layer}.{self.mlp_norm_name}", nn.Identity())

    def attention_removed(self, index: int) -> bool:
        module = get_module(self.model, f"{self.layer_path(index)}.{self.attention_name}")
        return isinstance(module, RemovedAttention)

    def ffn_removed(self, index: int) -> bool:
        return isinstance(get_module(self.model, f"{self.layer_path(index)}.{self.mlp_name}"), RemovedFeedForward)

    def head_spec(self) -> dict:
        """The head fields of the size model: per-token LM or score head, possibly tied to the embedding."""
        readers = [get_module(self.model, p) for p in self.head_readers()]
        return dict(head_outputs=sum(m.out_features for m in readers),
                    head_out_bias=any(m.bias is not None for m in readers),
                    head_tied=self.lm_head_tied(), head_per_token=True)
