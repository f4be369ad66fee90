"""Shape- and capability-aware dispatch: a backend that declines one call (its limits) is passed over with a
one-time warning naming the reason; a forced backend raises with the reason; ``vtrans info`` lists the limits."""
import warnings

import pytest
import torch

import vtrans_kernels
from vtrans_kernels import backends, info, ops
from vtrans_kernels.triton import limits
from vtrans_kernels.triton.masked_norm import MAX_HIDDEN

pytestmark = pytest.mark.skipif(backends.BACKENDS["triton"].why_not("cpu", torch.float32) is not None,
                                reason="needs the Triton interpreter on CPU")


def _wide_norm_inputs():
    gen = torch.Generator().manual_seed(0)
    hidden = MAX_HIDDEN + 8
    x = torch.randn(3, hidden, generator=gen)
    keep = torch.rand(hidden, generator=gen) > 0.3
    return x, keep, torch.randn(hidden, generator=gen)


def test_triton_declines_a_norm_wider_than_its_limit():
    x, keep, w = _wide_norm_inputs()
    assert limits.call_limits("masked_rms_norm", (x, None, keep, w)) == [
        f"hidden size {MAX_HIDDEN + 8} exceeds the Triton norm's {MAX_HIDDEN}"]
    assert limits.call_limits("masked_rms_norm", (x[:, :MAX_HIDDEN], None, keep[:MAX_HIDDEN], w[:MAX_HIDDEN])) == []
    assert limits.call_limits("masked_linear_backward", (x, x)) == []


def test_declined_call_falls_back_with_one_warning(monkeypatch):
    # make Triton the preferred CPU backend (as it is for CUDA tensors) so that the fallback path runs here
    monkeypatch.setitem(backends._DEFAULT_ORDER, "cpu", ("triton", "torch"))
    monkeypatch.setattr(backends, "_warned", set())
    x, keep, w = _wide_norm_inputs()
    x.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="falls back from the 'triton' backend to the PyTorch reference: hidden size 16392 exceeds"):
        y = ops.masked_rms_norm(x, keep, weight=w)
    y.sum().backward()
    with vtrans_kernels.use_backend("torch"):
        x_ref = x.detach().clone().requires_grad_(True)
        y_ref = ops.masked_rms_norm(x_ref, keep, weight=w)
        y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call of the same op and reason is silent
        ops.masked_rms_norm(x.detach(), keep, weight=w)
    # a call within the limit stays on Triton, without a warning
    narrow = slice(0, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.masked_rms_norm(x.detach()[:, narrow], keep[narrow], weight=w[narrow])


def test_forced_backend_raises_with_the_reason():
    x, keep, w = _wide_norm_inputs()
    with vtrans_kernels.use_backend("triton"):
        with pytest.raises(RuntimeError, match="backend 'triton' was forced but cannot serve cpu torch.float32 "
                                               "tensors in this call: hidden size"):
            ops.masked_rms_norm(x, keep, weight=w)


def test_info_lists_the_limits_per_op():
    text = info.report()
    assert f"triton  masked_layer_norm              hidden size at most {MAX_HIDDEN}" in text
    assert "masked_attention               bf16 needs compute capability 8.0" in text
