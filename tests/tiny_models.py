"""Tiny random transformers models of every supported family, and random compaction plans for them."""
from __future__ import annotations

import torch
import transformers as tf

from vtrans_kernels.hf import CompactionPlan, adapter_for

VOCAB = 61


def _bert_like(config_class, model_class, **extra):
    config = config_class(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=40, num_labels=3,
                          attn_implementation="eager", **extra)
    return model_class(config)


def _llama_like(config_class, model_class, **extra):
    config = config_class(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=3, num_attention_heads=6,
                          intermediate_size=37, pad_token_id=0, attn_implementation="eager", **extra)
    return model_class(config)


BUILDERS = {
    "bert": lambda: _bert_like(tf.BertConfig, tf.BertForSequenceClassification),
    "bert-base": lambda: _bert_like(tf.BertConfig, tf.BertModel),
    "roberta": lambda: _bert_like(tf.RobertaConfig, tf.RobertaForSequenceClassification, pad_token_id=1),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=VOCAB, n_embd=24, n_layer=3, n_head=4, n_inner=37, n_positions=40, bos_token_id=0,
        eos_token_id=0, attn_implementation="eager")),
    "gpt2-cls": lambda: tf.GPT2ForSequenceClassification(tf.GPT2Config(
        vocab_size=VOCAB, n_embd=24, n_layer=3, n_head=4, n_positions=40, num_labels=2, pad_token_id=0,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager")),
    "llama-gqa": lambda: _llama_like(tf.LlamaConfig, tf.LlamaForCausalLM, num_key_value_heads=2,
                                     tie_word_embeddings=True),
    "llama-bias": lambda: _llama_like(tf.LlamaConfig, tf.LlamaForCausalLM, num_key_value_heads=6,
                                      attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
    "llama-cls": lambda: _llama_like(tf.LlamaConfig, tf.LlamaForSequenceClassification, num_key_value_heads=3,
                                     num_labels=4),
    "qwen2": lambda: _llama_like(tf.Qwen2Config, tf.Qwen2ForCausalLM, num_key_value_heads=3),
    "mistral": lambda: _llama_like(tf.MistralConfig, tf.MistralForCausalLM, num_key_value_heads=2,
                                   sliding_window=5),
}
DECODERS = ("gpt2", "llama-gqa", "llama-bias", "qwen2", "mistral")


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny model ``name`` with random weights, and random biases and norm parameters too: transformers
    initialises biases to 0 and norms to 1, which would hide a bias or norm that compaction or an export
    forgets to slice or scale."""
    torch.manual_seed(seed)
    model = BUILDERS[name]()
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.nn.Parameter):
                bias.normal_(0.0, 0.1)
            if "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None),
                                                                        torch.nn.Parameter):
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def random_plan(model, seed: int, *, hidden=True, scales=True, removals=True) -> CompactionPlan:
    """A plan keeping a random subset of every structure; with ``removals``, layer 1 loses its attention and
    the last layer its FFN (in pre-LN models layer 1 then also loses its FFN, so the whole layer goes)."""
    gen = torch.Generator().manual_seed(seed)
    units = adapter_for(model).units()

    def subset(total, low=1):
        count = int(torch.randint(low, total + 1, (), generator=gen))
        return sorted(torch.randperm(total, generator=gen)[:count].tolist())

    def scale(total):
        return (torch.rand(total, generator=gen) + 0.5).tolist() if scales else None

    n_layers = len(units.heads)
    heads = {i: subset(units.heads[i]) for i in range(n_layers)}
    ffn = {i: subset(units.ffn[i]) for i in range(n_layers)}
    if removals:
        heads[1] = []
        ffn[n_layers - 1] = []
        if adapter_for(model).pre_ln:
            ffn[1] = []
    return CompactionPlan(
        hidden=subset(units.hidden, low=units.hidden // 2) if hidden else None,
        heads=heads, ffn=ffn,
        hidden_scale=scale(units.hidden) if hidden else None,
        head_scale={i: scale(units.heads[i]) for i in range(n_layers)} if scales else {},
        ffn_scale={i: scale(units.ffn[i]) for i in range(n_layers)} if scales else {},
    )


def inputs(model, seed: int = 0, batch: int = 2, seq: int = 11) -> dict:
    """Token ids (never the pad id) and an attention mask with one padded row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, : seq // 3] = 0 if adapter_for(model).pre_ln else 1
    mask[-1, -(seq // 3):] = 0 if not adapter_for(model).pre_ln else 1
    return {"input_ids": ids, "attention_mask": mask}


def output(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def greedy(model, prompt: torch.Tensor, new_tokens: int, plan=None) -> torch.Tensor:
    """Greedy ``generate`` with the KV cache; with ``plan``, of the masked model of that plan."""
    from contextlib import nullcontext

    from vtrans_kernels import masked_by_plan

    masking = masked_by_plan(model, plan) if plan is not None else nullcontext()
    with torch.no_grad(), masking:
        return model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
