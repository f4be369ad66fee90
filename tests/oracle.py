"""Comparison helpers: the 2x-PyTorch-error rule of DESIGN section 5."""
import torch


def assert_close_to_oracle(actual: torch.Tensor, torch_same_dtype: torch.Tensor, exact: torch.Tensor, what: str,
                           rtol_floor: float = 1e-6) -> None:
    """``actual``'s max error against the fp64 ``exact`` answer is at most twice PyTorch's own max error in the
    same dtype (``torch_same_dtype``), plus a floor: ``rtol_floor`` of the answer's scale (fp32 rounding of
    intermediates) and half an ulp of ``actual``'s dtype at that scale (one final rounding that went the
    other way, which decides the max error of a small tensor)."""
    exact = exact.double()
    kernel_err = (actual.double() - exact).abs().max().item()
    torch_err = (torch_same_dtype.double() - exact).abs().max().item()
    scale = max(1.0, exact.abs().max().item())
    floor = (rtol_floor + 0.5 * torch.finfo(actual.dtype).eps) * scale
    assert kernel_err <= 2 * torch_err + floor, (
        f"{what}: kernel error {kernel_err:.3g} > 2 x torch error {torch_err:.3g} + {floor:.3g}")
