"""Multi-process mask training (torchrun, DDP-style gradient averaging or FSDP2): who am I, which rows are
mine, and the few collectives the pruner needs. Everything degrades to a no-op in a single process."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (0 and 1 without an initialised process group)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "DistContext":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, batch: dict) -> dict:
        """This rank's contiguous share of a global batch (rows split as evenly as possible)."""
        if not self.active:
            return batch
        rows = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
        if rows < self.world:
            raise ValueError(f"batch_size: a global batch of {rows} rows cannot feed {self.world} processes")
        start, stop = rows * self.rank // self.world, rows * (self.rank + 1) // self.world
        return {k: v[start:stop] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def average_gradients(self, params) -> None:
        """All-reduce the gradients of ``params`` to their mean over ranks (a rank without one sends zeros)."""
        if not self.active:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= self.world

    def average_metrics(self, metrics: dict) -> dict:
        """The mean over ranks of the float entries of ``metrics``."""
        if not self.active:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, float))
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return {**metrics, **{k: float(v) / self.world for k, v in zip(keys, values)}}

    def gather(self, obj) -> list:
        """``obj`` from every rank, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 manages the model's parameters (it then reduces their gradients itself)."""
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def fully_shard_model(model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
    """FSDP2: shard each transformer layer, then the rest of the model."""
    from torch.distributed.fsdp import fully_shard
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
