"""Argument checks shared by the real and fake kernels, so eager calls and torch.compile fail the same way.

Every error names the op, the argument and what was expected. Checks of tensor *values* (``keep_mask``) run
only on real tensors: under torch.compile the fake kernel sees tensors without data and skips them, and the
real kernel then runs the same check on the real inputs, so eager and compiled calls fail the same way.
"""
import torch
from torch._subclasses.fake_tensor import FakeTensor

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
PARAMETER_DTYPES = (torch.float32, torch.float64)


def _names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def dtype_in(op: str, name: str, t: torch.Tensor, allowed) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"vtrans.{op}: {name} must have dtype in ({_names(allowed)}), got {t.dtype}")


def same_device(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"vtrans.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                             f"expected all tensors on one device")


def same_shape(op: str, name: str, t: torch.Tensor | None, expected: torch.Size, what: str) -> None:
    if t is not None and t.shape != expected:
        raise ValueError(f"vtrans.{op}: {name} must have shape {tuple(expected)} ({what}), got {tuple(t.shape)}")


def noise_source(op: str, noise_name: str, noise: torch.Tensor | None, seed) -> None:
    if noise is not None and seed is not None:
        raise ValueError(f"vtrans.{op}: pass either {noise_name} or seed, not both")
    if noise is None and seed is None:
        raise ValueError(f"vtrans.{op}: training needs noise: pass {noise_name} (explicit) or seed (in-kernel)")


def scalar_in(op: str, name: str, value: float, low: float, high: float, what: str) -> None:
    if not (low < value < high):
        raise ValueError(f"vtrans.{op}: {name} must be {what}, got {value}")


def has_data(t: torch.Tensor) -> bool:
    """Whether ``t`` holds real values that a check may read (not a fake or meta tensor being traced)."""
    return not isinstance(t, FakeTensor) and t.device.type != "meta"


def keep_mask(op: str, name: str, keep: torch.Tensor, size: int, what: str) -> None:
    """A keep vector of ``size`` entries: bool, or floating with every value exactly 0 or 1 (1 = keep).

    Values such as 0.5, 2, -1 or NaN are refused instead of silently counting as "keep". The value check reads
    the tensor (a device sync on CUDA), so it runs only for floating keeps with data: bool keeps, the form the
    mask modules produce, cost nothing.
    """
    if keep.dtype != torch.bool and not keep.is_floating_point():
        raise TypeError(f"vtrans.{op}: {name} must be a bool tensor or a floating tensor of exact 0/1 values "
                        f"(1 = keep), got dtype {keep.dtype}")
    same_shape(op, name, keep, torch.Size([size]), what)
    if keep.dtype == torch.bool or keep.numel() == 0 or not has_data(keep):
        return
    bad = (keep != 0) & (keep != 1)  # NaN compares unequal to both
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(f"vtrans.{op}: {name} must be bool or exactly 0/1 (1 = keep), got {keep[index].item()} "
                         f"at index {index} ({int(bad.sum())} invalid values); pass a bool tensor such as "
                         f"`{name} > 0.5` to threshold soft values")


def hard_concrete(op: str, log_alpha: torch.Tensor, beta: float, limit_l: float, limit_r: float,
                  u: torch.Tensor | None = None) -> None:
    dtype_in(op, "log_alpha", log_alpha, PARAMETER_DTYPES)
    scalar_in(op, "beta", beta, 0.0, float("inf"), "positive")
    scalar_in(op, "limit_l", limit_l, float("-inf"), 0.0, "negative")
    scalar_in(op, "limit_r", limit_r, 1.0, float("inf"), "greater than 1")
    if u is not None:
        dtype_in(op, "u", u, ACTIVATION_DTYPES)
        same_device(op, "log_alpha", log_alpha, u=u)
        same_shape(op, "u", u, log_alpha.shape, "one uniform per log_alpha element")


def hard_concrete_sample(log_alpha, u, seed, beta, limit_l, limit_r) -> None:
    hard_concrete("hard_concrete_sample", log_alpha, beta, limit_l, limit_r, u)
    noise_source("hard_concrete_sample", "u", u, seed)


def vib_params(op: str, mu: torch.Tensor, log_sigma2: torch.Tensor) -> None:
    dtype_in(op, "mu", mu, PARAMETER_DTYPES)
    dtype_in(op, "log_sigma2", log_sigma2, PARAMETER_DTYPES)
    same_device(op, "mu", mu, log_sigma2=log_sigma2)
    same_shape(op, "log_sigma2", log_sigma2, mu.shape, "the shape of mu")


def vib_gate(x: torch.Tensor, mu: torch.Tensor, log_sigma2: torch.Tensor, eps: torch.Tensor | None, seed,
             training: bool) -> None:
    op = "vib_gate"
    dtype_in(op, "x", x, ACTIVATION_DTYPES)
    if x.dim() == 0:
        raise ValueError(f"vtrans.{op}: x must have at least one dimension (the gated one, last), got a 0-d tensor")
    vib_params(op, mu, log_sigma2)
    same_device(op, "x", x, mu=mu, log_sigma2=log_sigma2, eps=eps)
    if mu.dim() != 1 or mu.shape[0] != x.shape[-1]:
        raise ValueError(f"vtrans.{op}: mu and log_sigma2 must have shape [{x.shape[-1]}] (one unit per column "
                         f"of x's last dim), got {tuple(mu.shape)}")
    if training:
        noise_source(op, "eps", eps, seed)
    if eps is not None:
        dtype_in(op, "eps", eps, ACTIVATION_DTYPES)
        same_shape(op, "eps", eps, x.shape, "one noise value per element of x")


def output_gate(op: str, units: int, what: str, out_gate, mu, log_sigma2, noise_name: str, noise, seed,
                training: bool, noise_shapes: tuple[torch.Size, ...]) -> None:
    """An output gate over ``units`` columns, given as a plain vector ``out_gate`` [units] or as a VIB gate
    (``mu`` and ``log_sigma2`` [units] with noise ``noise_name`` in one of ``noise_shapes``, or ``seed``), or
    none; ``what`` says what one unit is."""
    if out_gate is not None:
        if mu is not None or log_sigma2 is not None:
            raise ValueError(f"vtrans.{op}: give either out_gate (a plain gate vector) or mu and log_sigma2 "
                             f"(a VIB gate), not both")
        dtype_in(op, "out_gate", out_gate, PARAMETER_DTYPES)
        same_shape(op, "out_gate", out_gate, torch.Size([units]), what)
    if (mu is None) != (log_sigma2 is None):
        raise ValueError(f"vtrans.{op}: a VIB gate needs both mu and log_sigma2")
    if mu is None:
        if noise is not None or seed is not None:
            raise ValueError(f"vtrans.{op}: {noise_name} and seed are the VIB gate's noise: they need mu and "
                             f"log_sigma2")
        return
    vib_params(op, mu, log_sigma2)
    same_shape(op, "mu", mu, torch.Size([units]), what)
    if training:
        noise_source(op, noise_name, noise, seed)
    if noise is not None:
        dtype_in(op, noise_name, noise, ACTIVATION_DTYPES)
        if noise.shape not in noise_shapes:
            raise ValueError(f"vtrans.{op}: {noise_name} must have shape "
                             f"{' or '.join(str(list(s)) for s in noise_shapes)} (one noise value per gated "
                             f"element), got {tuple(noise.shape)}")
