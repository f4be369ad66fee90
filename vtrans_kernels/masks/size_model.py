"""Exact parameter and FLOPs model of a (pruned) transformer, used by the sparsity target and checked against
compacted models.

Counts are polynomials in the kept hidden size ``H``, the kept attention units per layer and the kept FFN
neurons per layer, so the same formulas take Python ints (exact counts of a compacted model) or tensors of
soft counts (the differentiable expected size of the objective). What is counted:

* parameters: every weight and bias of the embeddings (word, position, token type), the norms, the attention
  and FFN projections and the task head; a tied LM head is counted once (as the embedding). A removed
  sublayer (zero units) loses its output bias and, in pre-LN models, its own norm; post-LN norms stay.
* FLOPs: forward matrix-multiply FLOPs (2 per multiply-add) of one sequence of length ``S``: the projections
  of every token, ``Q K^T`` and ``P V`` over all ``S`` keys (what dense kernels compute, causal or not), and the
  head (per token for LM and decoder classification heads, once per sequence for pooled encoder heads).
  Embedding lookups, norms, activations and softmax are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

Count = Union[int, float, torch.Tensor]


@dataclass(frozen=True)
class ArchitectureSpec:
    """Shapes of a transformer that the size model needs; built by the transformers adapters."""

    hidden_size: int
    units_per_layer: tuple[int, ...]      # attention units (heads, or KV groups for GQA/MQA) per layer
    ffn_per_layer: tuple[int, ...]        # FFN neurons per layer
    q_heads_per_unit: int                 # query heads in one unit (the GQA group size; 1 for MHA)
    kv_heads_per_unit: int                # key/value heads in one unit (1)
    head_dim: int
    qkv_bias: bool
    o_bias: bool
    ffn_inputs: int                       # input projections per neuron: 1 (GELU MLP) or 2 (SwiGLU gate + up)
    ffn_in_bias: bool
    ffn_out_bias: bool
    norm_params: int                      # parameters per dim of one norm: 2 (LayerNorm) or 1 (RMSNorm)
    pre_ln: bool
    embedding_rows: int                   # vocab + positions + token types
    embedding_norm: bool
    final_norm: bool
    head_square_layers: int = 0           # hidden x hidden dense layers in the head (BERT pooler, ...)
    head_outputs: int = 0                 # output features of the head (labels, or vocab for an LM head)
    head_out_bias: bool = False
    head_tied: bool = False               # head weight shared with the word embedding
    head_per_token: bool = False          # head applied to every token (LM, decoder classifiers)

    @property
    def num_layers(self) -> int:
        return len(self.units_per_layer)


def _present(n: Count) -> Count:
    """1 when a sublayer has any units left (soft for tensors), else 0."""
    if isinstance(n, torch.Tensor):
        return n.clamp(0, 1)
    return 1 if n > 0 else 0


def _resolve(spec: ArchitectureSpec, hidden, units, ffn):
    hidden = spec.hidden_size if hidden is None else hidden
    units = spec.units_per_layer if units is None else units
    ffn = spec.ffn_per_layer if ffn is None else ffn
    if len(units) != spec.num_layers or len(ffn) != spec.num_layers:
        raise ValueError(f"size model: expected {spec.num_layers} per-layer counts, got units={len(units)}, "
                         f"ffn={len(ffn)}")
    return hidden, units, ffn


def layer_parameters(spec: ArchitectureSpec, hidden: Count, units: Count, ffn: Count) -> Count:
    """Parameters of one layer with ``units`` attention units and ``ffn`` neurons over ``hidden`` dims."""
    q = units * spec.q_heads_per_unit * spec.head_dim
    kv = units * spec.kv_heads_per_unit * spec.head_dim
    attention = hidden * (q + 2 * kv) + q * hidden + spec.qkv_bias * (q + 2 * kv)
    attention = attention + _present(units) * hidden * (spec.o_bias + spec.pre_ln * spec.norm_params)
    mlp = (spec.ffn_inputs + 1) * hidden * ffn + spec.ffn_in_bias * spec.ffn_inputs * ffn
    mlp = mlp + _present(ffn) * hidden * (spec.ffn_out_bias + spec.pre_ln * spec.norm_params)
    post_norms = 0 if spec.pre_ln else 2 * spec.norm_params * hidden
    return attention + mlp + post_norms


def count_parameters(spec: ArchitectureSpec, hidden: Count | None = None, units: Sequence[Count] | None = None,
                     ffn: Sequence[Count] | None = None, *, embeddings: bool = True) -> Count:
    """Parameters of the model with ``hidden`` kept dims and the given kept units/neurons per layer.

    Arguments left ``None`` take the unpruned values. ``embeddings=False`` leaves out the embedding tables and
    the task head (the layers and norms only). Ints in, an exact int out; tensors in, a differentiable count.
    """
    hidden, units, ffn = _resolve(spec, hidden, units, ffn)
    total = sum(layer_parameters(spec, hidden, u, f) for u, f in zip(units, ffn))
    norms = spec.norm_params * hidden * (spec.embedding_norm + spec.final_norm)
    total = total + norms
    if embeddings:
        head = spec.head_square_layers * (hidden * hidden + hidden)
        head = head + (0 if spec.head_tied else spec.head_outputs * hidden) + spec.head_out_bias * spec.head_outputs
        total = total + spec.embedding_rows * hidden + head
    return total


def count_flops(spec: ArchitectureSpec, seq_len: int, hidden: Count | None = None,
                units: Sequence[Count] | None = None, ffn: Sequence[Count] | None = None) -> Count:
    """Forward matmul FLOPs of one sequence of ``seq_len`` tokens (see the module docstring)."""
    if int(seq_len) < 1:
        raise ValueError(f"count_flops: seq_len must be >= 1, got {seq_len}")
    hidden, units, ffn = _resolve(spec, hidden, units, ffn)
    per_token = 0
    for u, f in zip(units, ffn):
        q = u * spec.q_heads_per_unit * spec.head_dim
        kv = u * spec.kv_heads_per_unit * spec.head_dim
        projections = hidden * (q + 2 * kv) + q * hidden + (spec.ffn_inputs + 1) * hidden * f
        per_token = per_token + 2 * projections + 4 * seq_len * q
    head = 2 * (spec.head_square_layers * hidden * hidden + spec.head_outputs * hidden)
    return seq_len * per_token + (seq_len * head if spec.head_per_token else head)


@dataclass(frozen=True)
class SizeMeasure:
    """What a sparsity target counts: ``"params"`` (parameters, see :func:`count_parameters`; with
    ``embeddings=False`` the layers and norms only) or ``"flops"`` (forward matmul FLOPs of one sequence of
    ``seq_len`` tokens, :func:`count_flops`). Sparsity is ``1 - size(kept) / size(unpruned)``."""

    spec: ArchitectureSpec
    kind: str = "params"
    seq_len: int = 128
    embeddings: bool = False

    def __post_init__(self):
        if self.kind not in ("params", "flops"):
            raise ValueError(f"target: expected 'params' or 'flops', got {self.kind!r}")
        if int(self.seq_len) < 1:
            raise ValueError(f"seq_len: expected a positive int, got {self.seq_len}")

    def size(self, hidden=None, units=None, ffn=None) -> Count:
        if self.kind == "flops":
            return count_flops(self.spec, self.seq_len, hidden, units, ffn)
        return count_parameters(self.spec, hidden, units, ffn, embeddings=self.embeddings)

    def sparsity(self, hidden=None, units=None, ffn=None) -> Count:
        """``1 - size(hidden, units, ffn) / size()``: a float for int counts, a tensor for soft counts."""
        return 1 - self.size(hidden, units, ffn) / self.size()
