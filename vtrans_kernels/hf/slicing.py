"""Physically smaller copies of the modules a transformer is made of, with gate scales folded in.

Each function returns a new module holding new parameters; the module passed in is not modified. Scales are
multiplied in float32 (float64 for float64 weights) and the result is cast back to the weight's dtype.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def _fold(weight: torch.Tensor, scale: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``weight`` multiplied by ``scale`` broadcast along ``dim``."""
    if scale is None:
        return weight
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    shape = [1] * weight.dim()
    shape[dim] = -1
    return (weight.to(work) * scale.to(device=weight.device, dtype=work).view(shape)).to(weight.dtype)


def _pick(tensor: torch.Tensor, index: torch.Tensor | None, dim: int) -> torch.Tensor:
    return tensor if index is None else tensor.index_select(dim, index.to(tensor.device))


def _parameter(data: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(data.contiguous().clone(), requires_grad=like.requires_grad)


def weight_dims(module: nn.Module) -> tuple[int, int]:
    """(output dim, input dim) of the weight of an ``nn.Linear`` (out, in) or a GPT-2 ``Conv1D`` (in, out)."""
    if isinstance(module, Conv1D):
        return 1, 0
    if isinstance(module, nn.Linear):
        return 0, 1
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A copy sharing everything but the parameter dict, so parameters can be replaced on the copy only."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    return new


def projection(module: nn.Module, *, out_index=None, in_index=None, out_scale=None, in_scale=None) -> nn.Module:
    """A sliced copy of an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2's transposed linear).

    ``out_index``/``in_index`` select output features (weight rows and bias) and input features;
    ``out_scale`` (one value per kept output) multiplies the rows and the bias, ``in_scale`` (one value per
    kept input) the columns. Dropping an index argument keeps that side whole.
    """
    out_dim, in_dim = weight_dims(module)
    weight = _pick(_pick(module.weight.detach(), out_index, out_dim), in_index, in_dim)
    weight = _fold(_fold(weight, out_scale, out_dim), in_scale, in_dim)
    bias = None
    if module.bias is not None:
        bias = _fold(_pick(module.bias.detach(), out_index, 0), out_scale, 0)
    n_out, n_in = weight.shape[out_dim], weight.shape[in_dim]
    if isinstance(module, Conv1D):
        new = Conv1D(n_out, n_in)
    else:
        new = nn.Linear(n_in, n_out, bias=bias is not None, device="meta")
    new.weight = _parameter(weight, module.weight)
    if bias is not None:
        new.bias = _parameter(bias, module.bias)
    return new


def embedding(module: nn.Embedding, index: torch.Tensor, scale: torch.Tensor | None = None) -> nn.Embedding:
    """An ``nn.Embedding`` keeping the embedding columns ``index``, each multiplied by ``scale``."""
    new = _shallow_copy(module)
    new.weight = _parameter(_fold(_pick(module.weight.detach(), index, 1), scale, 1), module.weight)
    new.embedding_dim = int(index.numel())
    return new


def norm(module: nn.Module, index: torch.Tensor, scale: torch.Tensor | None = None) -> nn.Module:
    """A LayerNorm/RMSNorm over the dims ``index`` only; ``scale`` multiplies its weight and bias.

    Works for ``nn.LayerNorm`` and the RMSNorm classes of transformers (a ``weight`` and an optional ``bias``).
    """
    new = _shallow_copy(module)
    for name in ("weight", "bias"):
        param = getattr(module, name, None)
        if isinstance(param, nn.Parameter):
            setattr(new, name, _parameter(_fold(_pick(param.detach(), index, 0), scale, 0), param))
    if hasattr(module, "normalized_shape"):
        new.normalized_shape = (int(index.numel()),)
    return new


def bias_shifted(module: nn.Module, shift: torch.Tensor) -> nn.Module:
    """A copy of an ``nn.Linear`` or ``Conv1D`` whose bias is ``bias + shift`` (added in float64, cast back to
    the bias dtype). The module must have a bias."""
    if module.bias is None:
        raise ValueError(f"bias_shifted: the {type(module).__name__} has no bias to shift")
    new = projection(module)
    bias = module.bias.detach()
    new.bias = _parameter((bias.double() + shift.to(device=bias.device, dtype=torch.float64)).to(bias.dtype),
                          module.bias)
    return new
