"""Hard-concrete (L0) gates of Louizos et al. as used by CoFi: the reference math (DESIGN 2.2)."""
import math

import torch

from . import rng

#: uniforms are clamped to [U_EPS, 1 - U_EPS] so log(u) and log(1 - u) stay finite.
U_EPS = 1e-6


def hard_concrete_transform(log_alpha: torch.Tensor, u: torch.Tensor, beta: float, limit_l: float,
                            limit_r: float) -> torch.Tensor:
    """``clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) * (r - l) + l, 0, 1)``, u clamped first.

    The clamps ignore NaN as the kernels' ``fmax``/``fmin`` do: a NaN u counts as ``U_EPS``, and a NaN log_alpha
    gives a closed gate (0, zero gradient; it is replaced by -inf through a select, so no NaN reaches a gradient).
    """
    u = torch.nan_to_num(u.to(log_alpha.dtype), nan=U_EPS).clamp(U_EPS, 1.0 - U_EPS)
    log_alpha = torch.where(torch.isnan(log_alpha), float("-inf"), log_alpha)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (limit_r - limit_l) + limit_l).clamp(0.0, 1.0)


def hard_concrete_noise(seed: int, like: torch.Tensor) -> torch.Tensor:
    """The uniforms a kernel draws for ``seed`` over a tensor shaped like ``like`` (2-D view: last dim = cols)."""
    rows, cols = rng.rows_cols(like)
    return rng.uniform(seed, rows, cols, device=like.device).reshape(like.shape)


def hard_concrete_sample(log_alpha: torch.Tensor, u: torch.Tensor | None = None, seed: int | None = None,
                         beta: float = 2 / 3, limit_l: float = -0.1, limit_r: float = 1.1) -> torch.Tensor:
    """One hard-concrete sample per element of ``log_alpha`` from explicit ``u`` or from ``seed``."""
    if u is None:
        u = hard_concrete_noise(seed, log_alpha)
    return hard_concrete_transform(log_alpha, u, beta, limit_l, limit_r)


def hard_concrete_expected_l0(log_alpha: torch.Tensor, beta: float = 2 / 3, limit_l: float = -0.1,
                              limit_r: float = 1.1) -> torch.Tensor:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))`` per element."""
    return torch.sigmoid(log_alpha - beta * math.log(-limit_l / limit_r))


def hard_concrete_deterministic(log_alpha: torch.Tensor, beta: float = 2 / 3, limit_l: float = -0.1,
                                limit_r: float = 1.1) -> torch.Tensor:
    """Evaluation mask over the last dim: the top ``floor(sum P(z != 0) + 0.5)`` units by log_alpha (ties to
    the lower index) keep ``sigmoid(0.8 * log_alpha / beta)``, the rest are 0.

    NaN policy: a NaN unit is pruned (value 0, zero gradient), adds nothing to the expected count and ranks
    below every number, so the other units of its row get exactly what they would get without it. ``+inf``
    counts 1 and ranks first (value 1), ``-inf`` counts 0 and ranks last among numbers (value 0).
    """
    is_nan = torch.isnan(log_alpha)
    # a NaN unit becomes -inf (P(z != 0) = 0, value 0) through a select, so no NaN reaches a gradient either;
    # a -inf unit never falls within keep_count (each counted unit has P > 0 and ranks above it)
    safe = torch.where(is_nan, float("-inf"), log_alpha)
    keep_count = torch.floor(hard_concrete_expected_l0(safe, beta, limit_l, limit_r).sum(-1, keepdim=True) + 0.5)
    order = torch.sort(safe.detach(), dim=-1, descending=True, stable=True).indices
    rank = torch.argsort(order, dim=-1)
    keep = (rank < keep_count) & ~is_nan
    return torch.where(keep, torch.sigmoid(safe * (0.8 / beta)), 0.0)
