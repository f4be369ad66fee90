"""GPT-2 (pre-LN; Conv1D projections; fused q|k|v; learned positions; tied LM head)."""
from __future__ import annotations

import torch

from ...masks.size_model import ArchitectureSpec
from .base import LayerRoles, ModelUnits, get_module, uniform_or_max, unit_columns
from .pre_ln import PreLNDecoderAdapter


class GPT2Adapter(PreLNDecoderAdapter):
    family = "gpt2"
    supported_classes = ("GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification")
    head_size_from_hidden = True
    attention_name, mlp_name, attention_norm_name, mlp_norm_name = "attn", "mlp", "ln_1", "ln_2"

    def check(self) -> None:
        if getattr(self.config, "add_cross_attention", False):
            raise ValueError("vtrans: GPT-2 with cross-attention is not supported")

    def layers_path(self) -> str:
        return self.prefix("h")

    def layer_roles(self, index: int) -> LayerRoles:
        layer = self.layer_path(index)
        return LayerRoles(
            head_producers=(f"{layer}.attn.c_attn",), head_consumer=f"{layer}.attn.c_proj",
            ffn_producers=(f"{layer}.mlp.c_fc",), ffn_consumer=f"{layer}.mlp.c_proj",
            attn_norm=f"{layer}.{self.attention_norm_name}", ffn_norm=f"{layer}.{self.mlp_norm_name}",
        )

    def embedding_output(self) -> str | None:
        return self.prefix("drop")

    def head_dim(self) -> int:
        original = self.original_config()
        return original["n_embd"] // original["n_head"]

    def head_producer_rows(self, index: int, path: str, units: torch.Tensor) -> torch.Tensor:
        # c_attn's output is [q | k | v], each (current heads x head_dim) wide.
        width = get_module(self.model, path).weight.shape[1] // 3
        rows = unit_columns(units, self.head_dim())
        return torch.cat([rows, rows + width, rows + 2 * width])

    def embedding_tables(self) -> tuple[str, ...]:
        return (self.prefix("wte"), self.prefix("wpe"))

    def final_norm(self) -> str | None:
        return self.prefix("ln_f")

    def set_head_count(self, index: int, q_heads: int) -> None:
        attention = get_module(self.model, f"{self.layer_path(index)}.{self.attention_name}")
        attention.num_heads = q_heads
        attention.split_size = q_heads * attention.head_dim

    def update_config(self, units: ModelUnits) -> None:
        self.config.n_embd = units.hidden
        self.config.n_head = uniform_or_max(units.heads)
        self.config.n_inner = uniform_or_max(units.ffn)
        self.config.n_layer = len(units.heads)

    def spec(self) -> ArchitectureSpec:
        units = self.units()
        return ArchitectureSpec(
            hidden_size=units.hidden, units_per_layer=units.heads, ffn_per_layer=units.ffn,
            q_heads_per_unit=1, kv_heads_per_unit=1, head_dim=self.head_dim(),
            qkv_bias=True, o_bias=True, ffn_inputs=1, ffn_in_bias=True, ffn_out_bias=True,
            norm_params=2, pre_ln=True,
            embedding_rows=sum(get_module(self.model, p).num_embeddings for p in self.embedding_tables()),
            embedding_norm=False, final_norm=True, **self.head_spec(),
        )
