"""The Lagrangian that drives the expected sparsity to its target (DESIGN 2.4)."""
from __future__ import annotations

import torch
from torch import nn


class Lagrangian(nn.Module):
    """``lambda1 * (s - t) + lambda2 * (s - t)^2`` with learned multipliers and a target ramp.

    The multipliers are trained by gradient *ascent*: their gradients are negated by hooks, so any ordinary
    optimizer that minimises the loss maximises over lambda (the min-max problem of CoFi and VTrans).
    The target ``t`` ramps linearly from ``initial`` to ``target`` over ``warmup_steps`` steps, then holds.
    """

    def __init__(self, target: float, warmup_steps: int, initial: float = 0.0):
        super().__init__()
        if not 0.0 < float(target) < 1.0:
            raise ValueError(f"target_sparsity: expected a value in (0, 1), got {target}")
        if int(warmup_steps) < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {warmup_steps}")
        self.target, self.warmup_steps, self.initial = float(target), int(warmup_steps), float(initial)
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))
        self.register_buffer("side", torch.zeros((), dtype=torch.int64))  # of the target, at the last step
        for param in (self.lambda1, self.lambda2):
            param.register_hook(torch.neg)

    def target_at(self, step: int) -> float:
        """The target after ``step`` optimizer steps."""
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.target
        return self.initial + (self.target - self.initial) * step / self.warmup_steps

    def forward(self, expected_sparsity: torch.Tensor, step: int) -> torch.Tensor:
        gap = expected_sparsity - self.target_at(step)
        return self.lambda1 * gap + self.lambda2 * gap.square()

    def crossed(self, gap: float) -> bool:
        """Record which side of the target the expected sparsity is on (``gap`` = sparsity - target); True when
        it is on the other side than at the last call."""
        side = (gap > 0) - (gap < 0)
        crossed = bool(side * int(self.side) < 0)
        if side:
            self.side.fill_(side)
        return crossed

    def extra_repr(self) -> str:
        return f"target={self.target}, warmup_steps={self.warmup_steps}, initial={self.initial:.4f}"
