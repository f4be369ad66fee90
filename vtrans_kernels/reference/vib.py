"""Variational-information-bottleneck gates (VTrans, DESIGN 2.1): the reference math."""
import torch

from . import rng


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 when any input is fp64, otherwise fp32: gates always compute at least in fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def vib_noise(seed: int, like: torch.Tensor) -> torch.Tensor:
    """The standard normals a kernel draws for ``seed`` over ``like`` viewed as [rows, last dim]."""
    rows, cols = rng.rows_cols(like)
    return rng.normal(seed, rows, cols, device=like.device).reshape(like.shape)


def vib_keep(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """The keep decision ``mu^2 > sigma^2`` (log alpha < 0); False where mu or log_sigma2 is NaN."""
    return mu * mu > torch.exp(log_sigma2)


def eval_gate(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """The evaluation gate ``mu * keep`` as a select: a pruned unit's gate is exactly 0 (a NaN mu or log_sigma2
    prunes its unit), as the kernels compute it."""
    return torch.where(vib_keep(mu, log_sigma2), mu, torch.zeros((), dtype=mu.dtype, device=mu.device))


def gate_value(rows: int, units: int, gate: torch.Tensor | None, mu: torch.Tensor | None,
               log_sigma2: torch.Tensor | None, eps: torch.Tensor | None, seed: int | None, training: bool,
               dtype: torch.dtype) -> torch.Tensor | None:
    """The gate ``z`` a fused op applies over ``units`` columns of a [rows, units] view, in ``dtype``: a plain
    ``gate`` ([units] or [rows, units]) as given; a VIB gate ``mu + sigma * eps`` ([rows, units]; eps explicit,
    any shape with rows * units elements, or ``rng.normal(seed, rows, units)``: the noise ``vib_gate`` draws
    on a [rows, units] tensor) in training, ``mu * keep`` ([units]) in evaluation; None without a gate."""
    if gate is not None:
        return gate.to(dtype)
    if mu is None:
        return None
    mu_c, ls2_c = mu.to(dtype), log_sigma2.to(dtype)
    if not training:
        return eval_gate(mu_c, ls2_c)
    if eps is None:
        eps = rng.normal(seed, rows, units, device=mu.device)
    return mu_c + torch.exp(0.5 * ls2_c) * eps.reshape(rows, units).to(dtype)


def vib_gate(x: torch.Tensor, mu: torch.Tensor, log_sigma2: torch.Tensor, eps: torch.Tensor | None = None,
             seed: int | None = None, training: bool = True) -> torch.Tensor:
    """``x * z`` over the last dim; training: ``z = mu + exp(log_sigma2 / 2) * eps`` per element, eps explicit
    or drawn from ``seed``; evaluation: ``z = mu * keep``. Computes in fp32 (fp64 for fp64 inputs)."""
    ct = compute_dtype(x, mu)
    mu_c, ls2_c = mu.to(ct), log_sigma2.to(ct)
    if training:
        if eps is None:
            eps = vib_noise(seed, x)
        z = mu_c + torch.exp(0.5 * ls2_c) * eps.to(ct)
    else:
        z = eval_gate(mu_c, ls2_c)
    return (x.to(ct) * z).to(x.dtype)


def vib_kl(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum log(1 + mu^2 / sigma^2)`` as a 0-d tensor."""
    return 0.5 * torch.log1p(mu * mu * torch.exp(-log_sigma2)).sum()


def vib_keep_prob(mu: torch.Tensor, log_sigma2: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """Soft keep indicator ``sigmoid(T * (log mu^2 - log_sigma2))`` per unit; exactly 0 (gradient 0) at mu = 0."""
    zero = mu == 0
    safe_mu = torch.where(zero, torch.ones_like(mu), mu)
    p = torch.sigmoid(temperature * (2.0 * torch.log(safe_mu.abs()) - log_sigma2))
    return torch.where(zero, torch.zeros_like(p), p)
