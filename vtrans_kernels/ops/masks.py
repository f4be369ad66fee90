"""Mask-sampling ops (DESIGN 2.1, 2.2, 3.1). Each is ``torch.ops.vtrans.<name>`` with autograd and a fake
kernel, so it works in any trainer and under ``torch.compile(fullgraph=True)``.

Noise: pass it explicitly (``u`` / ``eps``: exactly checkable) or pass ``seed``; then the kernel draws it
from (seed, row, column) with Philox and redraws the same values in backward instead of storing them.
With neither, a seed is drawn from torch's global generator (``torch.manual_seed`` makes it repeatable;
under torch.compile pass ``seed`` yourself, since drawing it is a graph break).

NaN policy (the same on every backend): a gate whose parameter is NaN is closed (hard-concrete samples and
deterministic masks, the VIB evaluation gate), without touching the other units; the penalties and soft counts
(``hard_concrete_expected_l0``, ``vib_kl``, ``vib_keep_prob``) and the VIB training gate are elementwise and let
the NaN through, so a diverged parameter shows up in the loss instead of being hidden. Scalar arguments (beta,
limits, temperature) must be finite and in range, else a ValueError naming them.
"""
import torch

from .. import library  # noqa: F401  (registers torch.ops.vtrans)

BETA, LIMIT_L, LIMIT_R = 2.0 / 3.0, -0.1, 1.1


def draw_seed() -> int:
    """A fresh 62-bit seed from torch's default CPU generator."""
    return int(torch.randint(0, 2**62, (1,)).item())


def hard_concrete_sample(log_alpha: torch.Tensor, *, u: torch.Tensor | None = None, seed: int | None = None,
                         beta: float = BETA, limit_l: float = LIMIT_L, limit_r: float = LIMIT_R) -> torch.Tensor:
    """Sample hard-concrete gates ``z = clamp(sigmoid((log u - log(1-u) + log_alpha)/beta)*(r-l) + l, 0, 1)``.

    Args:
        log_alpha: float32/float64 parameters, any shape (one gate per element; usually [units]).
        u: optional uniforms, same shape as log_alpha (clamped to [1e-6, 1 - 1e-6]); no gradient.
        seed: optional int; noise drawn in-kernel. Give at most one of ``u`` and ``seed``.
        beta, limit_l, limit_r: temperature and stretch limits (l < 0 < 1 < r).
    Returns:
        z with log_alpha's shape and dtype, in [0, 1]; differentiable w.r.t. log_alpha.

    NaN policy: elementwise; a NaN log_alpha gives a closed gate (z = 0, zero gradient) for that element only,
    as ``hard_concrete_deterministic`` prunes it; a NaN in ``u`` is clamped like any out-of-range value (to
    1e-6). ``+inf`` gives 1, ``-inf`` 0.
    """
    if u is None and seed is None:
        seed = draw_seed()
    return torch.ops.vtrans.hard_concrete_sample(log_alpha, u, seed, beta, limit_l, limit_r)


def hard_concrete_expected_l0(log_alpha: torch.Tensor, *, beta: float = BETA, limit_l: float = LIMIT_L,
                              limit_r: float = LIMIT_R) -> torch.Tensor:
    """Per-gate probability of being nonzero, ``sigmoid(log_alpha - beta*log(-l/r))``, shaped like log_alpha.
    Sum it for the expected L0 norm. NaN policy: elementwise (a NaN log_alpha gives NaN there, so the summed
    L0 penalty turns NaN and the divergence is visible)."""
    return torch.ops.vtrans.hard_concrete_expected_l0(log_alpha, beta, limit_l, limit_r)


def hard_concrete_deterministic(log_alpha: torch.Tensor, *, beta: float = BETA, limit_l: float = LIMIT_L,
                                limit_r: float = LIMIT_R) -> torch.Tensor:
    """Evaluation-time gates, per row of the last dim: the ``floor(sum P(z != 0) + 0.5)`` units with the
    largest log_alpha (ties go to the lower index) get ``sigmoid(0.8 * log_alpha / beta)``, the others 0.
    Shaped like log_alpha; the gradient flows to the kept units' values.

    NaN policy: a NaN log_alpha is a pruned unit: its gate and gradient are 0, it adds nothing to the kept
    count and ranks below every number, so the other units of its row get exactly what they would get without
    it (before, one NaN made the count NaN and zeroed the whole row). ``+inf`` counts 1 and ranks first (gate 1),
    ``-inf`` counts 0 and is never kept."""
    return torch.ops.vtrans.hard_concrete_deterministic(log_alpha, beta, limit_l, limit_r)


def vib_gate(x: torch.Tensor, mu: torch.Tensor, log_sigma2: torch.Tensor, *, eps: torch.Tensor | None = None,
             seed: int | None = None, training: bool = True) -> torch.Tensor:
    """Multiply the last dim of ``x`` by VIB gates.

    Training: ``z[r, j] = mu[j] + exp(log_sigma2[j] / 2) * eps[r, j]`` with a fresh normal per element (per row,
    i.e. per token). Evaluation (``training=False``): ``z[j] = mu[j] if mu[j]^2 > exp(log_sigma2[j]) else 0``.

    Args:
        x: [..., C] float32/float16/bfloat16 (float64 runs on the reference); any strides.
        mu, log_sigma2: [C] float32 (or float64) gate parameters on x's device.
        eps: optional explicit standard normals shaped like x (no gradient).
        seed: optional int for in-kernel noise; give at most one of ``eps`` and ``seed``.
    Returns:
        ``x * z`` with x's shape and dtype (computed in fp32); gradients for x, mu and log_sigma2.

    NaN policy: training is elementwise (a NaN in x, mu, log_sigma2 or eps makes the elements it touches NaN,
    a NaN mu or log_sigma2 its whole column). In evaluation a unit whose mu or log_sigma2 is NaN is pruned
    (``z = 0``, the keep test ``mu^2 > exp(log_sigma2)`` is false); the gate multiplies, so ``x * 0`` is still
    NaN where x itself is NaN or infinite.
    """
    if training and eps is None and seed is None:
        seed = draw_seed()
    return torch.ops.vtrans.vib_gate(x, mu, log_sigma2, eps, seed, training)


def vib_kl(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """The VIB information penalty ``0.5 * sum log(1 + mu^2 / exp(log_sigma2))`` as a 0-d tensor; NaN when any
    parameter is NaN (a sum: the divergence shows in the loss)."""
    return torch.ops.vtrans.vib_kl(mu, log_sigma2)


def vib_keep_prob(mu: torch.Tensor, log_sigma2: torch.Tensor, *, temperature: float = 10.0) -> torch.Tensor:
    """Soft keep indicator per unit, ``sigmoid(T * (log mu^2 - log_sigma2))`` (0 with zero gradient at mu = 0);
    its sum is the differentiable kept-unit count used by the size model. NaN policy: elementwise (NaN in, NaN
    out for that unit)."""
    return torch.ops.vtrans.vib_keep_prob(mu, log_sigma2, temperature)
