"""Masks the way CoFi and TVA-Prune apply them: plain PyTorch multiplies after each module (the baseline).

The same VIB gates as ``vtrans_kernels.attach`` at the same places (DESIGN 2.3), written the eager way:
``z = mu + exp(0.5 * log_sigma2) * randn(rows, units)`` drawn in fp32 and multiplied onto the activation by
forward hooks, the hidden gate drawn once per forward and shared by all its sites. Unlike ``attach`` the
norms keep their statistics over all hidden dims (as in CoFi); at the start of training every dim is kept, so
both compute the same function. Benchmark use only: the gates are sampled in every forward.
"""
import torch
from torch import nn

from vtrans_kernels.hf import adapter_for
from vtrans_kernels.hf.adapters.base import get_module


class _Gate(nn.Module):
    """VIB gate parameters of ``units`` units (initialised as in DESIGN 2.1)."""

    def __init__(self, units: int, device):
        super().__init__()
        self.mu = nn.Parameter(1 + 0.01 * torch.randn(units, device=device))
        self.log_sigma2 = nn.Parameter(-9 + 0.01 * torch.randn(units, device=device))

    def sample(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        eps = torch.randn(rows, self.mu.numel(), device=self.mu.device)
        return (self.mu + torch.exp(0.5 * self.log_sigma2) * eps).to(dtype)

    def kl(self) -> torch.Tensor:
        return 0.5 * torch.log1p(self.mu.square() / self.log_sigma2.exp()).sum()


class EagerMasks(nn.Module):
    """Hidden, per-layer head (KV group) and per-layer FFN gates on ``model``, applied by forward hooks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        adapter = adapter_for(model)
        spec = adapter.spec()
        device = next(model.parameters()).device
        self.hidden = _Gate(spec.hidden_size, device)
        self.heads = nn.ModuleList(_Gate(n, device) for n in spec.units_per_layer)
        self.ffn = nn.ModuleList(_Gate(n, device) for n in spec.ffn_per_layer)
        self._hidden_z = None
        model.register_forward_pre_hook(self._new_forward)
        embeddings = adapter.embedding_norm() or adapter.embedding_output()
        hidden_sites = [embeddings] if embeddings else list(adapter.embedding_tables())
        width = adapter.q_heads_per_unit() * adapter.head_dim()
        for i in range(adapter.num_layers()):
            roles = adapter.layer_roles(i)
            get_module(model, roles.head_consumer).register_forward_pre_hook(self._unit_hook(self.heads[i], width))
            get_module(model, roles.ffn_consumer).register_forward_pre_hook(self._unit_hook(self.ffn[i], 1))
            hidden_sites += [roles.head_consumer, roles.ffn_consumer]
        for path in hidden_sites:
            get_module(model, path).register_forward_hook(self._hidden_hook)

    def kl(self) -> torch.Tensor:
        """Sum of the gates' VIB information penalties."""
        return sum(gate.kl() for gate in [self.hidden, *self.heads, *self.ffn])

    def _new_forward(self, module, args):
        self._hidden_z = None

    def _hidden_hook(self, module, args, out):
        rows = out.numel() // out.shape[-1]
        if self._hidden_z is None:
            self._hidden_z = self.hidden.sample(rows, out.dtype)
        return out * self._hidden_z.view(*out.shape)

    @staticmethod
    def _unit_hook(gate: _Gate, width: int):
        def hook(module, args):
            x = args[0]
            z = gate.sample(x.numel() // x.shape[-1], x.dtype)
            gated = x.reshape(z.shape[0], z.shape[1], width) * z.unsqueeze(-1)
            return (gated.view(x.shape),) + tuple(args[1:])
        return hook
