"""LLaMA, Mistral and Qwen2 decoders (pre-LN RMSNorm; RoPE; SwiGLU; GQA with the KV group as the head unit)."""
from __future__ import annotations

import torch
from torch import nn

from ...masks.size_model import ArchitectureSpec
from .base import LayerRoles, ModelUnits, get_module, uniform_or_max
from .pre_ln import PreLNDecoderAdapter


class LlamaAdapter(PreLNDecoderAdapter):
    family = "llama"
    supported_classes = tuple(f"{arch}{head}" for arch in ("Llama", "Mistral", "Qwen2")
                              for head in ("Model", "ForCausalLM", "ForSequenceClassification"))
    attention_name, mlp_name = "self_attn", "mlp"
    attention_norm_name, mlp_norm_name = "input_layernorm", "post_attention_layernorm"

    def layers_path(self) -> str:
        return self.prefix("layers")

    def layer_roles(self, index: int) -> LayerRoles:
        layer = self.layer_path(index)
        attn, mlp = f"{layer}.{self.attention_name}", f"{layer}.{self.mlp_name}"
        return LayerRoles(
            head_producers=(f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"),
            head_consumer=f"{attn}.o_proj",
            ffn_producers=(f"{mlp}.gate_proj", f"{mlp}.up_proj"), ffn_consumer=f"{mlp}.down_proj",
            attn_norm=f"{layer}.{self.attention_norm_name}", ffn_norm=f"{layer}.{self.mlp_norm_name}",
        )

    def ffn_block(self, index: int) -> tuple[str, str] | None:
        return f"{self.layer_path(index)}.{self.mlp_name}", "swiglu"

    # Config field of LLaMA that adds a bias to every projection of a sublayer, and those projections.
    _BIAS_FIELDS = {"heads": ("attention_bias", ("q_proj", "k_proj", "v_proj", "o_proj")),
                    "ffn": ("mlp_bias", ("gate_proj", "up_proj", "down_proj"))}

    def output_bias_support(self, kind: str) -> str | None:
        if self.config.model_type == "llama":
            return None
        projection = "o_proj" if kind == "heads" else "down_proj"
        return (f"{type(self.model).__name__}: transformers builds {projection} without a bias and the config has no "
                f"option to add one, so a bias shift cannot be expressed exactly")

    def enable_output_bias(self, kind: str) -> str | None:
        reason = self.output_bias_support(kind)
        if reason:
            raise ValueError(reason)
        field, names = self._BIAS_FIELDS[kind]
        if getattr(self.config, field, False):
            return None
        for i in range(self.num_layers()):
            removed = self.attention_removed(i) if kind == "heads" else self.ffn_removed(i)
            owner = f"{self.layer_path(i)}.{self.attention_name if kind == 'heads' else self.mlp_name}"
            for name in () if removed else names:
                module = get_module(self.model, f"{owner}.{name}")
                if module.bias is None:  # the config switch adds it to all of them, so all get one (zero)
                    module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                                           device=module.weight.device),
                                               requires_grad=module.weight.requires_grad)
        setattr(self.config, field, True)
        return field

    def q_heads_per_unit(self) -> int:
        original = self.original_config()
        kv_heads = original.get("num_key_value_heads") or original["num_attention_heads"]
        return original["num_attention_heads"] // kv_heads

    def embedding_tables(self) -> tuple[str, ...]:
        return (self.prefix("embed_tokens"),)

    def final_norm(self) -> str | None:
        return self.prefix("norm")

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
        return ArchitectureSpec(
            hidden_size=units.hidden, units_per_layer=units.heads, ffn_per_layer=units.ffn,
            q_heads_per_unit=self.q_heads_per_unit(), kv_heads_per_unit=1, head_dim=self.head_dim(),
            qkv_bias=self.has_bias(q_paths), o_bias=self.has_bias(o_paths), ffn_inputs=2,
            ffn_in_bias=self.has_bias(gate_paths), ffn_out_bias=self.has_bias(down_paths),
            norm_params=1, pre_ln=True,
            embedding_rows=get_module(self.model, self.embedding_tables()[0]).num_embeddings,
            embedding_norm=False, final_norm=True, **self.head_spec(),
        )
