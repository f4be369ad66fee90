"""GPT-2 (pre-LN; Conv1D projections; fused q|k|v; learned positions; tied LM head)."""
from __future__ import annotations

import torch
from torch import nn

from ...masks.size_model import ArchitectureSpec
from ..removed import RemovedAttention, RemovedFeedForward
from .base import Adapter, LayerRoles, ModelUnits, get_module, set_module, uniform_or_max, unit_columns


class GPT2Adapter(Adapter):
    family = "gpt2"
    supported_classes = ("GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification")
    pre_ln = True

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
            attn_norm=f"{layer}.ln_1", ffn_norm=f"{layer}.ln_2",
        )

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

    def head_readers(self) -> tuple[str, ...]:
        return tuple(p for p in ("lm_head", "score") if self.has(p))

    def config_expresses(self, units: ModelUnits) -> bool:
        # The attention modules derive the head size as hidden_size // num_heads.
        return units.hidden == units.heads[0] * self.head_dim()

    def set_head_count(self, index: int, q_heads: int) -> None:
        attention = get_module(self.model, f"{self.layer_path(index)}.attn")
        attention.num_heads = q_heads
        attention.split_size = q_heads * attention.head_dim

    def remove_attention(self, index: int) -> None:
        layer = self.layer_path(index)
        set_module(self.model, f"{layer}.attn", RemovedAttention(index))
        set_module(self.model, f"{layer}.ln_1", nn.Identity())

    def remove_ffn(self, index: int) -> None:
        layer = self.layer_path(index)
        set_module(self.model, f"{layer}.mlp", RemovedFeedForward())
        set_module(self.model, f"{layer}.ln_2", nn.Identity())

    def attention_removed(self, index: int) -> bool:
        return isinstance(get_module(self.model, f"{self.layer_path(index)}.attn"), RemovedAttention)

    def ffn_removed(self, index: int) -> bool:
        return isinstance(get_module(self.model, f"{self.layer_path(index)}.mlp"), RemovedFeedForward)

    def update_config(self, units: ModelUnits) -> None:
        self.config.n_embd = units.hidden
        self.config.n_head = uniform_or_max(units.heads)
        self.config.n_inner = uniform_or_max(units.ffn)
        self.config.n_layer = len(units.heads)

    def spec(self) -> ArchitectureSpec:
        units = self.units()
        readers = [get_module(self.model, p) for p in self.head_readers()]
        return ArchitectureSpec(
            hidden_size=units.hidden, units_per_layer=units.heads, ffn_per_layer=units.ffn,
            q_heads_per_unit=1, kv_heads_per_unit=1, head_dim=self.head_dim(),
            qkv_bias=True, o_bias=True, ffn_inputs=1, ffn_in_bias=True, ffn_out_bias=True,
            norm_params=2, pre_ln=True,
            embedding_rows=sum(get_module(self.model, p).num_embeddings for p in self.embedding_tables()),
            embedding_norm=False, final_norm=True,
            head_outputs=sum(m.out_features for m in readers),
            head_out_bias=any(m.bias is not None for m in readers),
            head_tied=self.lm_head_tied(), head_per_token=True,
        )
