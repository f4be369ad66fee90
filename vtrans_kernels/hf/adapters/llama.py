"""LLaMA, Mistral and Qwen2 decoders (pre-LN RMSNorm; RoPE; SwiGLU; GQA with the KV group as the head unit)."""
from __future__ import annotations

from torch import nn

from ...masks.size_model import ArchitectureSpec
from ..removed import RemovedAttention, RemovedFeedForward
from .base import Adapter, LayerRoles, ModelUnits, get_module, set_module, uniform_or_max


class LlamaAdapter(Adapter):
    family = "llama"
    supported_classes = tuple(f"{arch}{head}" for arch in ("Llama", "Mistral", "Qwen2")
                              for head in ("Model", "ForCausalLM", "ForSequenceClassification"))
    pre_ln = True

    def layers_path(self) -> str:
        return self.prefix("layers")

    def layer_roles(self, index: int) -> LayerRoles:
        layer = self.layer_path(index)
        attn, mlp = f"{layer}.self_attn", f"{layer}.mlp"
        return LayerRoles(
            head_producers=(f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"),
            head_consumer=f"{attn}.o_proj",
            ffn_producers=(f"{mlp}.gate_proj", f"{mlp}.up_proj"), ffn_consumer=f"{mlp}.down_proj",
            attn_norm=f"{layer}.input_layernorm", ffn_norm=f"{layer}.post_attention_layernorm",
        )

    def q_heads_per_unit(self) -> int:
        original = self.original_config()
        kv_heads = original.get("num_key_value_heads") or original["num_attention_heads"]
        return original["num_attention_heads"] // kv_heads

    def embedding_tables(self) -> tuple[str, ...]:
        return (self.prefix("embed_tokens"),)

    def final_norm(self) -> str | None:
        return self.prefix("norm")

    def head_readers(self) -> tuple[str, ...]:
        return tuple(p for p in ("lm_head", "score") if self.has(p))

    def remove_attention(self, index: int) -> None:
        layer = self.layer_path(index)
        set_module(self.model, f"{layer}.self_attn", RemovedAttention(index))
        set_module(self.model, f"{layer}.input_layernorm", nn.Identity())

    def remove_ffn(self, index: int) -> None:
        layer = self.layer_path(index)
        set_module(self.model, f"{layer}.mlp", RemovedFeedForward())
        set_module(self.model, f"{layer}.post_attention_layernorm", nn.Identity())

    def attention_removed(self, index: int) -> bool:
        return isinstance(get_module(self.model, f"{self.layer_path(index)}.self_attn"), RemovedAttention)

    def ffn_removed(self, index: int) -> bool:
        return isinstance(get_module(self.model, f"{self.layer_path(index)}.mlp"), RemovedFeedForward)

    def update_config(self, units: ModelUnits) -> None:
        group = self.q_heads_per_unit()
        self.config.head_dim = self.head_dim()
        self.config.hidden_size = units.hidden
        self.config.num_key_value_heads = uniform_or_max(units.heads)
        self.config.num_attention_heads = self.config.num_key_value_heads * group
        self.config.intermediate_size = uniform_or_max(units.ffn)
        self.config.num_hidden_layers = len(units.heads)

    def spec(self) -> ArchitectureSpec:
        units = self.units()
        layers = range(self.num_layers())
        q_paths = [self.layer_roles(i).head_producers[0] for i in layers]
        o_paths = [self.layer_roles(i).head_consumer for i in layers]
        gate_paths = [self.layer_roles(i).ffn_producers[0] for i in layers]
        down_paths = [self.layer_roles(i).ffn_consumer for i in layers]
        readers = [get_module(self.model, p) for p in self.head_readers()]
        return ArchitectureSpec(
            hidden_size=units.hidden, units_per_layer=units.heads, ffn_per_layer=units.ffn,
            q_heads_per_unit=self.q_heads_per_unit(), kv_heads_per_unit=1, head_dim=self.head_dim(),
            qkv_bias=self.has_bias(q_paths), o_bias=self.has_bias(o_paths), ffn_inputs=2,
            ffn_in_bias=self.has_bias(gate_paths), ffn_out_bias=self.has_bias(down_paths),
            norm_params=1, pre_ln=True,
            embedding_rows=get_module(self.model, self.embedding_tables()[0]).num_embeddings,
            embedding_norm=False, final_norm=True,
            head_outputs=sum(m.out_features for m in readers),
            head_out_bias=any(m.bias is not None for m in readers),
            head_tied=self.lm_head_tied(), head_per_token=True,
        )
