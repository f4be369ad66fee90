"""Fused masked linear layer and masked SwiGLU FFN (DESIGN 2.3, 3.1): the GEMM, bias, activation and the mask
gates in one kernel, with autograd and fake kernels (``torch.compile(fullgraph=True)`` works).

Output gates (pick at most one): ``out_gate`` [N], a plain per-feature multiplier with a gradient (a
hard-concrete sample or a deterministic mask), or a VIB gate ``mu``, ``log_sigma2`` [N]: in training
``z[r, j] = mu[j] + exp(log_sigma2[j] / 2) * eps[r, j]`` per output row (token), with ``eps`` explicit or drawn
in-kernel from ``seed`` (exactly the noise ``ops.vib_gate`` draws for that seed on the [rows, N] output, and
regenerated in backward, never stored); in evaluation ``z[j] = mu[j] * (mu[j]^2 > exp(log_sigma2[j]))``.
With neither eps nor seed in training, a seed is drawn from torch's global generator (pass ``seed`` yourself
under torch.compile). Inside ``torch.autocast`` the GEMM operands (x, weights, biases) are cast to the
autocast dtype, as ``F.linear`` would be; the gate parameters stay in fp32.

Zero sizes: no rows, no output features (N = 0) or no input features (K = 0, giving ``act(bias)``) give the
correct (possibly empty) result and zero gradients. NaN policy: as an unfused ``F.linear`` + activation +
gate: a NaN in a row of x spreads over that output row, one in a weight row or output gate over that output
column; in VIB evaluation a unit whose mu or log_sigma2 is NaN is pruned (gate 0, which still multiplies).
"""
import torch

from .. import library  # noqa: F401  (registers torch.ops.vtrans)
from .masks import draw_seed

__all__ = ["masked_linear", "masked_swiglu"]


def _seed(mu, eps, seed, training):
    if mu is not None and training and eps is None and seed is None:
        return draw_seed()
    return seed


def _autocast(*operands: torch.Tensor | None) -> tuple:
    # custom ops get no autocast rule of their own: cast the GEMM operands the way autocast casts F.linear's
    device = operands[0].device.type
    if not torch.is_autocast_enabled(device):
        return operands
    dtype = torch.get_autocast_dtype(device)
    return tuple(None if t is None else t.to(dtype) for t in operands)


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  activation: str = "none", in_gate: torch.Tensor | None = None,
                  out_gate: torch.Tensor | None = None, mu: torch.Tensor | None = None,
                  log_sigma2: torch.Tensor | None = None, eps: torch.Tensor | None = None, seed: int | None = None,
                  training: bool = True) -> torch.Tensor:
    """``y = gate_out(act(gate_in(x) @ weight^T + bias))`` in one fused kernel.

    Args:
        x: [..., K] float32/float16/bfloat16 (float64 runs on the reference); any leading dims, rows = x.numel() // K.
        weight: [N, K] (nn.Linear layout), x's dtype. bias: optional [N], x's dtype.
        activation: "none", "gelu" (exact erf), "gelu_tanh", "relu" or "silu".
        in_gate: optional float32 scale of x's columns: [G] (shared by all rows) or [rows, G] (per row, e.g. VIB
            head gates per token), G dividing K; column k is scaled by gate (k // (K // G)). G = K gates each
            input feature, G = heads gates each head's block in front of an output projection.
        out_gate: optional float32 [N] multiplier of the output features (with gradient).
        mu, log_sigma2: optional float32 [N] VIB gate parameters (not together with out_gate).
        eps: optional explicit VIB noise [..., N] (or [rows, N]), no gradient; seed: optional int for in-kernel
            noise. Training needs exactly one of them (a seed is drawn when both are None).
        training: VIB training (noisy gate) or evaluation (``mu * keep``).
    Returns:
        y [..., N] in x's dtype (GEMM accumulated in fp32; the pre-activation rounded to x's dtype as an unfused
        model has it). Gradients flow to x, weight, bias, in_gate, out_gate, mu and log_sigma2 (not in evaluation).
    """
    seed = _seed(mu, eps, seed, training)
    x, weight, bias = _autocast(x, weight, bias)
    return torch.ops.vtrans.masked_linear(x, weight, bias, activation, in_gate, out_gate, mu, log_sigma2, eps, seed,
                                          training)[0]


def masked_swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, b_gate: torch.Tensor | None = None,
                  b_up: torch.Tensor | None = None, *, activation: str = "silu", out_gate: torch.Tensor | None = None,
                  mu: torch.Tensor | None = None, log_sigma2: torch.Tensor | None = None,
                  eps: torch.Tensor | None = None, seed: int | None = None, training: bool = True) -> torch.Tensor:
    """The gated FFN input half of a LLaMA-style MLP with an FFN mask:
    ``y = act(x w_gate^T + b_gate) * (x w_up^T + b_up) * z`` per intermediate neuron, in one kernel (two
    accumulators over the same x tiles); feed y to down_proj.

    Args:
        x: [..., K] float32/float16/bfloat16; w_gate, w_up: [N, K] in x's dtype; b_gate, b_up: optional [N].
        activation: "silu" (default), "gelu_tanh", "gelu" or "relu" on the gate projection.
        out_gate, mu, log_sigma2, eps, seed, training: the output gate z over the N neurons, as in
            ``masked_linear``.
    Returns:
        y [..., N] in x's dtype; gradients for x, both weights and biases, and the gate parameters.
    """
    seed = _seed(mu, eps, seed, training)
    x, w_gate, w_up, b_gate, b_up = _autocast(x, w_gate, w_up, b_gate, b_up)
    return torch.ops.vtrans.masked_swiglu(x, w_gate, w_up, b_gate, b_up, activation, out_gate, mu, log_sigma2, eps,
                                          seed, training)[0]
