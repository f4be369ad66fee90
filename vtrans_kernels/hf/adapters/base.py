"""What every architecture adapter provides, and the compaction steps that only need those accessors.

An adapter names the modules of one transformers architecture family by their role (the projections that
produce and consume attention heads, FFN neurons and the residual stream; the norms; embeddings; the task
head). Compaction, the masked-model reference and the size model are written once against those roles.
Module locations are dotted paths relative to the model, so a module can be read and replaced.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...masks.size_model import ArchitectureSpec
from ..slicing import weight_dims

# Config attribute holding the compaction record (original config, per-layer shapes, rounding changes).
RECORD_KEY = "vtrans_compaction"


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (``root`` itself for an empty path)."""
    return root.get_submodule(path) if path else root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path``."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(root, parent_path), name, module)


@dataclass(frozen=True)
class LayerRoles:
    """Dotted paths (relative to the model) of one layer's modules, by role."""

    head_producers: tuple[str, ...]   # projections whose output rows are per head (q, k, v or fused qkv)
    head_consumer: str                # output projection reading the heads (o_proj)
    ffn_producers: tuple[str, ...]    # projections producing FFN neurons (up, gate)
    ffn_consumer: str                 # projection reading the neurons (down)
    attn_norm: str                    # pre-LN: the branch's input norm; post-LN: the norm after the residual add
    ffn_norm: str


@dataclass(frozen=True)
class ModelUnits:
    """Unit counts of a model as it is now: kept hidden dims, attention units and FFN neurons per layer."""

    hidden: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]


class Adapter:
    """Base class of the per-family adapters. Subclasses fill in the role accessors and the few operations
    that differ between families (head count attributes, removed-sublayer stand-ins, config fields)."""

    family: str = ""
    supported_classes: tuple[str, ...] = ()
    pre_ln: bool = True
    # True when the attention modules derive the head size as hidden_size // num_heads (BERT, GPT-2).
    head_size_from_hidden: bool = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    def check(self) -> None:
        """Raise ``ValueError`` for configurations of a supported class that the adapter cannot handle."""

    # ---- roles a family describes ---------------------------------------------------------------------
    def layers_path(self) -> str:
        raise NotImplementedError

    def layer_roles(self, index: int) -> LayerRoles:
        raise NotImplementedError

    def embedding_tables(self) -> tuple[str, ...]:
        """Embedding tables summed into the residual stream (word, position, token type)."""
        raise NotImplementedError

    def ffn_block(self, index: int) -> tuple[str, str] | None:
        """The module computing a layer's FFN neurons and its form, for the fused wiring: ``"swiglu"`` (an MLP
        act(gate) * up -> down) or ``"act"`` (act(dense), the down projection elsewhere); None: no fused form."""
        return None

    def embedding_norm(self) -> str | None:
        """Norm applied to the summed embeddings (BERT), or ``None``."""
        return None

    def embedding_output(self) -> str | None:
        """A module whose output is the summed embeddings, when the family has one without a norm (GPT-2's
        dropout); masks then gate the sum once instead of each table."""
        return None

    def final_norm(self) -> str | None:
        """Norm after the last layer (pre-LN models), or ``None``."""
        return None

    def head_square(self) -> tuple[str, ...]:
        """Hidden -> hidden dense layers of the task head (BERT pooler, RoBERTa classifier.dense)."""
        return ()

    def head_readers(self) -> tuple[str, ...]:
        """Head projections that read hidden-sized features (classifier, LM head, score)."""
        return ()

    def original_config(self) -> dict:
        """The config of the model before any compaction (from the compaction record when there is one)."""
        record = getattr(self.config, RECORD_KEY, None)
        return record["original"] if record else self.config.to_dict()

    def head_dim(self) -> int:
        original = self.original_config()
        return original.get("head_dim") or original["hidden_size"] // original["num_attention_heads"]

    def q_heads_per_unit(self) -> int:
        """Query heads in one attention unit (the GQA group size; 1 when the unit is a head)."""
        return 1

    def kv_heads_per_unit(self) -> int:
        return 1

    def spec(self) -> ArchitectureSpec:
        """The size-model description of this model, for its current shapes."""
        raise NotImplementedError

    # ---- family-specific operations -------------------------------------------------------------------
    def head_producer_rows(self, index: int, path: str, units: torch.Tensor) -> torch.Tensor:
        """Output rows of head producer ``path`` that belong to ``units`` (q and k/v differ under GQA)."""
        per_unit = self.q_heads_per_unit() if path.endswith(("q_proj", "query")) else self.kv_heads_per_unit()
        return unit_columns(units, per_unit * self.head_dim())

    def set_head_count(self, index: int, q_heads: int) -> None:
        """Update the attributes the attention module reads at run time for ``q_heads`` query heads."""

    def output_bias_support(self, kind: str) -> str | None:
        """``None`` when the output projection of ``kind`` ("heads": attention, "ffn") can carry a bias that the
        config expresses, so a bias shift compacts exactly; else the reason it cannot."""
        return None

    def enable_output_bias(self, kind: str) -> str | None:
        """Give every present output projection of ``kind`` a bias (zeros where it had none, with whatever else
        the config then requires; extra zero biases change nothing). Returns the config field that was switched
        on, recorded so that :func:`~vtrans_kernels.load_compacted` rebuilds it, or ``None`` when nothing
        changed (families whose output projections always have a bias)."""
        return None

    def remove_attention(self, index: int) -> None:
        raise NotImplementedError

    def remove_ffn(self, index: int) -> None:
        raise NotImplementedError

    def attention_removed(self, index: int) -> bool:
        raise NotImplementedError

    def ffn_removed(self, index: int) -> bool:
        raise NotImplementedError

    def set_layer_index(self, layer: nn.Module, new_index: int) -> None:
        """Renumber a layer after others were dropped (the KV cache is indexed by it)."""
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index

    def update_config(self, units: ModelUnits) -> None:
        """Write the new shapes into ``model.config`` (those transformers reads at run time)."""
        raise NotImplementedError

    # ---- derived -----------------------------------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        return get_module(self.model, self.layers_path())

    def num_layers(self) -> int:
        return len(self.layers())

    def layer_path(self, index: int) -> str:
        return f"{self.layers_path()}.{index}"

    def hidden_size(self) -> int:
        return get_module(self.model, self.embedding_tables()[0]).embedding_dim

    def units(self) -> ModelUnits:
        """Unit counts read from the module shapes (so a compacted model reports its real sizes)."""
        heads, ffn = [], []
        unit_width = self.q_heads_per_unit() * self.head_dim()
        for i in range(self.num_layers()):
            roles = self.layer_roles(i)
            heads.append(0 if self.attention_removed(i) else
                         _in_features(get_module(self.model, roles.head_consumer)) // unit_width)
            ffn.append(0 if self.ffn_removed(i) else _in_features(get_module(self.model, roles.ffn_consumer)))
        return ModelUnits(self.hidden_size(), tuple(heads), tuple(ffn))

    def plain_loadable(self) -> bool:
        """Whether transformers' own ``from_pretrained`` can rebuild this model from its config alone: no removed
        sublayers, the same shapes in every layer, and shapes the config can express."""
        units = self.units()
        uniform = len(set(units.heads)) == 1 and len(set(units.ffn)) == 1 and min(units.heads + units.ffn) > 0
        return uniform and self.config_expresses(units)

    def config_expresses(self, units: ModelUnits) -> bool:
        """Whether the family's config fields can describe ``units`` (uniform per layer)."""
        return not self.head_size_from_hidden or units.hidden == units.heads[0] * self.head_dim()

    def hidden_norms(self) -> list[str]:
        """Every norm over the residual stream that is still present."""
        paths = [p for p in (self.embedding_norm(), self.final_norm()) if p]
        for i in range(self.num_layers()):
            roles = self.layer_roles(i)
            if not (self.pre_ln and self.attention_removed(i)):
                paths.append(roles.attn_norm)
            if not (self.pre_ln and self.ffn_removed(i)):
                paths.append(roles.ffn_norm)
        return paths

    def prefix(self, path: str) -> str:
        """``path`` under the backbone (``bert.``, ``model.``, ...) unless the model is the backbone itself."""
        base = getattr(self.model, "base_model", self.model)
        if base is self.model:
            return path
        return f"{self.model.base_model_prefix}.{path}"

    def has(self, path: str) -> bool:
        try:
            get_module(self.model, path)
        except AttributeError:
            return False
        return True

    def has_bias(self, paths) -> bool:
        """Whether the first of ``paths`` that exists has a bias (False when none exists)."""
        for path in paths:
            if self.has(path):
                return get_module(self.model, path).bias is not None
        return False

    def lm_head_tied(self) -> bool:
        output = getattr(self.model, "get_output_embeddings", lambda: None)()
        word = get_module(self.model, self.embedding_tables()[0])
        return output is not None and output.weight is word.weight


def uniform_or_max(counts) -> int:
    """The per-layer count when every present sublayer has the same one, else the largest (0 if none)."""
    present = [c for c in counts if c > 0]
    return max(present) if present else 0


def unit_columns(units: torch.Tensor, width: int) -> torch.Tensor:
    """Feature indices covered by ``units`` when each unit spans ``width`` consecutive features."""
    return (units.view(-1, 1) * width + torch.arange(width).view(1, -1)).reshape(-1)


def _in_features(module: nn.Module) -> int:
    return module.weight.shape[weight_dims(module)[1]]

