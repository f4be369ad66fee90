"""LayerNorm and RMSNorm over the kept hidden dims (CoFi semantics, DESIGN 2.3), fused with the residual add and
an optional hidden gate on the output.

Statistics cover only the dims where ``keep`` is nonzero and pruned dims come out as exactly 0, so a masked
model computes what its compacted version computes. All of this runs in one pass per row (Triton on CUDA).

Hidden gate on the output (at most one form):
- ``out_gate`` [H] fp32: a plain multiplier with a gradient;
- VIB (``mu``, ``log_sigma2`` [H] fp32): training multiplies by ``mu + exp(log_sigma2 / 2) * noise`` with
  per-row noise, explicit (``eps_noise``, shaped like x) or drawn in-kernel from ``seed`` (exactly what
  ``ops.vib_gate`` draws for that seed on a tensor shaped like x); evaluation multiplies by ``mu * keep_vib``
  (``keep_vib = mu^2 > exp(log_sigma2)``). Gradients as ``ops.vib_gate``. With neither ``eps_noise`` nor
  ``seed`` in training a seed is drawn from torch's generator (pass ``seed`` under torch.compile).
The noise argument is called ``eps_noise`` because ``eps`` is the norm's epsilon.

``keep`` must be a bool tensor (free) or a floating one of exact 0/1 values (checked, one device sync per call);
0.5, 2, -1 or NaN is a ValueError naming the op and ``keep``: threshold soft masks yourself (``keep > 0.5``).

NaN policy: pruned dims are never read (selects, not multiplications by 0), so a NaN or inf there, in x,
residual, weight, bias or the gate, leaves y and every gradient unchanged (y is exactly 0 there; h = x + residual
still carries it, being the residual stream as given). A NaN or inf in a kept dim makes its row of y NaN, as
with ``torch.nn.functional.layer_norm``. ``eps`` must be positive and finite.
"""
import torch

from .masks import draw_seed

__all__ = ["masked_layer_norm", "masked_rms_norm"]


def _noise_args(mu, eps_noise, seed, training):
    if mu is not None and training and eps_noise is None and seed is None:
        seed = draw_seed()
    return eps_noise, seed


def masked_layer_norm(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, eps: float = 1e-5, *, residual: torch.Tensor | None = None,
                      out_gate: torch.Tensor | None = None, mu: torch.Tensor | None = None,
                      log_sigma2: torch.Tensor | None = None, eps_noise: torch.Tensor | None = None,
                      seed: int | None = None, training: bool = True):
    """LayerNorm of ``h = x + residual`` (or of x) over the kept hidden dims, then the optional hidden gate.

    Args:
        x: [..., H] fp32/fp16/bf16 (fp64 runs on the reference).
        keep: [H] bool or exact 0/1 float, no gradient: the dims the statistics cover; the others output 0
            (whatever x holds there, NaN included). All-zero keep gives y = 0. Other values: ValueError.
        weight, bias: optional [H] affine parameters (activation dtype or fp32).
        eps: added to the kept-dim variance.
        residual: optional [..., H], x's dtype: the residual stream added before the norm.
        out_gate / mu, log_sigma2 / eps_noise / seed / training: the hidden gate (module docstring).
    Returns:
        y [..., H] in x's dtype; ``(y, h)`` when residual is given (h = x + residual, the next residual stream
        of a pre-LN block; gradients through both reach x and residual).
    """
    eps_noise, seed = _noise_args(mu, eps_noise, seed, training)
    y, h, _, _ = torch.ops.vtrans.masked_layer_norm(x, residual, keep, weight, bias, eps, out_gate, mu, log_sigma2,
                                                    eps_noise, seed, training)
    return y if residual is None else (y, h)


def masked_rms_norm(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *,
                    residual: torch.Tensor | None = None, out_gate: torch.Tensor | None = None,
                    mu: torch.Tensor | None = None, log_sigma2: torch.Tensor | None = None,
                    eps_noise: torch.Tensor | None = None, seed: int | None = None, training: bool = True):
    """RMSNorm (transformers' LlamaRMSNorm: fp32 statistics, ``weight * h * rsqrt(mean(h^2) + eps)``) of
    ``h = x + residual`` (or of x) with the mean of squares over the kept hidden dims, then the optional gate.

    Args and returns as ``masked_layer_norm`` (no bias). The result is rounded once to x's dtype (LlamaRMSNorm
    rounds the normalised value before the weight multiply; the difference is within one rounding).
    """
    eps_noise, seed = _noise_args(mu, eps_noise, seed, training)
    y, h, _ = torch.ops.vtrans.masked_rms_norm(x, residual, keep, weight, eps, out_gate, mu, log_sigma2, eps_noise,
                                               seed, training)
    return y if residual is None else (y, h)
