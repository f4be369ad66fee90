"""BERT and RoBERTa encoders (post-LN; one unit per head; GELU FFN; a pooled classification head)."""
from __future__ import annotations

from torch import nn

from ...masks.size_model import ArchitectureSpec
from ..removed import PostNormOnlyAttention, PostNormOnlyOutput
from .base import Adapter, LayerRoles, ModelUnits, get_module, set_module, uniform_or_max


class BertAdapter(Adapter):
    family = "bert"
    supported_classes = ("BertModel", "BertForSequenceClassification",
                         "RobertaModel", "RobertaForSequenceClassification")
    pre_ln = False
    head_size_from_hidden = True

    def check(self) -> None:
        if getattr(self.config, "is_decoder", False) or getattr(self.config, "add_cross_attention", False):
            raise ValueError("vtrans: BERT/RoBERTa used as a decoder or with cross-attention is not supported; "
                             "use the encoder (is_decoder=False)")

    def layers_path(self) -> str:
        return self.prefix("encoder.layer")

    def layer_roles(self, index: int) -> LayerRoles:
        layer = self.layer_path(index)
        attn_norm = (f"{layer}.attention.norm" if self.attention_removed(index)
                     else f"{layer}.attention.output.LayerNorm")
        ffn_norm = f"{layer}.output.norm" if self.ffn_removed(index) else f"{layer}.output.LayerNorm"
        self_attn = f"{layer}.attention.self"
        return LayerRoles(
            head_producers=(f"{self_attn}.query", f"{self_attn}.key", f"{self_attn}.value"),
            head_consumer=f"{layer}.attention.output.dense",
            ffn_producers=(f"{layer}.intermediate.dense",),
            ffn_consumer=f"{layer}.output.dense",
            attn_norm=attn_norm,
            ffn_norm=ffn_norm,
        )

    def embedding_tables(self) -> tuple[str, ...]:
        names = ("word_embeddings", "position_embeddings", "token_type_embeddings")
        return tuple(p for p in (self.prefix(f"embeddings.{n}") for n in names) if self.has(p))

    def ffn_block(self, index: int) -> tuple[str, str] | None:
        return f"{self.layer_path(index)}.intermediate", "act"

    def embedding_norm(self) -> str | None:
        return self.prefix("embeddings.LayerNorm")

    def head_square(self) -> tuple[str, ...]:
        paths = [self.prefix("pooler.dense"), "classifier.dense"]
        return tuple(p for p in paths if self._is_linear(p))

    def head_readers(self) -> tuple[str, ...]:
        return tuple(p for p in ("classifier", "classifier.out_proj") if self._is_linear(p))

    def _is_linear(self, path: str) -> bool:
        return self.has(path) and isinstance(get_module(self.model, path), nn.Linear)

    def set_head_count(self, index: int, q_heads: int) -> None:
        attention = get_module(self.model, f"{self.layer_path(index)}.attention.self")
        attention.num_attention_heads = q_heads
        attention.all_head_size = q_heads * attention.attention_head_size

    def remove_attention(self, index: int) -> None:
        layer = self.layer_path(index)
        norm = get_module(self.model, f"{layer}.attention.output.LayerNorm")
        set_module(self.model, f"{layer}.attention", PostNormOnlyAttention(norm))

    def remove_ffn(self, index: int) -> None:
        layer = self.layer_path(index)
        norm = get_module(self.model, f"{layer}.output.LayerNorm")
        set_module(self.model, f"{layer}.intermediate", nn.Identity())
        set_module(self.model, f"{layer}.output", PostNormOnlyOutput(norm))

    def attention_removed(self, index: int) -> bool:
        return isinstance(get_module(self.model, f"{self.layer_path(index)}.attention"), PostNormOnlyAttention)

    def ffn_removed(self, index: int) -> bool:
        return isinstance(get_module(self.model, f"{self.layer_path(index)}.output"), PostNormOnlyOutput)

    def update_config(self, units: ModelUnits) -> None:
        self.config.hidden_size = units.hidden
        self.config.num_attention_heads = uniform_or_max(units.heads)
        self.config.intermediate_size = uniform_or_max(units.ffn)

    def spec(self) -> ArchitectureSpec:
        units = self.units()
        rows = sum(get_module(self.model, p).num_embeddings for p in self.embedding_tables())
        readers = [get_module(self.model, p) for p in self.head_readers()]
        return ArchitectureSpec(
            hidden_size=units.hidden, units_per_layer=units.heads, ffn_per_layer=units.ffn,
            q_heads_per_unit=1, kv_heads_per_unit=1, head_dim=self.head_dim(),
            qkv_bias=True, o_bias=True, ffn_inputs=1, ffn_in_bias=True, ffn_out_bias=True,
            norm_params=2, pre_ln=False, embedding_rows=rows, embedding_norm=True, final_norm=False,
            head_square_layers=len(self.head_square()),
            head_outputs=sum(m.out_features for m in readers), head_out_bias=bool(readers),
            head_per_token=False,
        )

