"""bp_torch against PyTorch's own autograd: forward and every gradient, in float32 and float64, any layout."""

import pytest
import torch
import torch.nn.functional as F
from cases import CHECK_CASES as CASES
from cases import conv_cases, pool_cases
from hypothesis import given, settings
from hypothesis import strategies as st

from bp_torch import functional as BF
from bp_torch.check import Case, compare_with_native

# float32 sums in another order than the native kernels: differences of a few ulps of the largest term
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}

pytestmark = pytest.mark.usefixtures("both_formulas")  # every test, fast and literal formulations


def _assert_close(case, device, dtype, **kwargs):
    forward_error, grad_errors = compare_with_native(case, device, dtype, **kwargs)
    assert forward_error <= TOLERANCE[dtype], f"forward differs by {forward_error}"
    for index, error in grad_errors.items():
        assert error <= TOLERANCE[dtype], f"gradient of argument {index} differs by {error}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_native_autograd(case: Case, dtype, device):
    _assert_close(case, device, dtype)


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a transposed (non-contiguous) layout (a scalar, a reduced loss's, as it is)."""
    if t.dim() == 0:
        return t
    if t.dim() < 2:
        return t.repeat(2)[::2]
    return t.transpose(0, -1).contiguous().transpose(0, -1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_non_contiguous_grad_output(case: Case, device):
    _assert_close(case, device, torch.float32, grad_output_transform=_non_contiguous)


MAPS = ("conv2d", "avg_pool2d", "max_pool2d", "adaptive_avg_pool2d", "batch_norm")
BATCHED_MAPS = [c for c in CASES if c.name.split()[0] in MAPS and c.inputs("cpu", torch.float32)[0].dim() == 4]


@pytest.mark.parametrize("case", BATCHED_MAPS, ids=lambda c: c.name)
def test_channels_last(case: Case, device):
    """channels_last inputs give outputs and input gradients in native's layouts (channels_last but for a 1×1
    adaptive pooling's gradient)."""
    args = case.inputs(device, torch.float32, requires_grad=False)
    x = args[0].to(memory_format=torch.channels_last).requires_grad_()
    rest = tuple(a.requires_grad_() for a in args[1:])
    x_native = x.detach().clone(memory_format=torch.channels_last).requires_grad_()
    out = case.manual(x, *rest, **case.options)
    native = case.native(x_native, *(a.detach().clone().requires_grad_() for a in rest), **case.options)
    torch.testing.assert_close(out, native, atol=TOLERANCE[torch.float32], rtol=0)
    assert out.is_contiguous(memory_format=torch.channels_last) == native.is_contiguous(
        memory_format=torch.channels_last
    )
    grad = torch.randn_like(native)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gx_native,) = torch.autograd.grad(native, x_native, grad)
    torch.testing.assert_close(gx, gx_native, atol=TOLERANCE[torch.float32], rtol=0)
    # native's layout: channels_last, but contiguous for adaptive pooling to 1×1 (torch's mean over H and W)
    assert gx.is_contiguous(memory_format=torch.channels_last) == gx_native.is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_half_precision(case: Case, dtype, device):
    """float16/bfloat16 run and keep their dtype; values as close as the format allows."""
    manual_in = case.inputs(device, dtype)
    native_in = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in manual_in)
    out, native = case.manual(*manual_in, **case.options), case.native(*native_in, **case.options)
    assert out.dtype == native.dtype == dtype
    grad = torch.randn_like(native)
    grads = torch.autograd.grad(out, [a for a in manual_in if a.requires_grad], grad)
    native_grads = torch.autograd.grad(native, [a for a in native_in if a.requires_grad], grad)
    # half formats keep 8-11 bits: compare relative to the largest value, at a few of their ulps
    for mine, theirs in zip((out, *grads), (native, *native_grads)):
        assert mine.dtype == theirs.dtype
        scale = theirs.abs().max().float().clamp(min=1)
        assert (mine.float() - theirs.float()).abs().max() <= 3e-2 * scale


EMPTY = [
    (lambda x, w: BF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), (0, 3, 5, 5), (4, 3, 3, 3)),
    (lambda x, w: BF.linear(x, w), lambda x, w: F.linear(x, w), (0, 5), (4, 5)),
    (lambda x, w: BF.linear(x, w), lambda x, w: F.linear(x, w), (2, 0, 5), (4, 5)),
]


@pytest.mark.parametrize("manual, native, x_shape, w_shape", EMPTY)
def test_empty_batches(manual, native, x_shape, w_shape, device):
    x = torch.randn(x_shape, device=device, requires_grad=True)
    w = torch.randn(w_shape, device=device, requires_grad=True)
    out = manual(x, w)
    assert out.shape == native(x, w).shape
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_empty_pool_and_sigmoid(device):
    x = torch.randn(0, 2, 4, 4, device=device, requires_grad=True)
    BF.sigmoid(BF.avg_pool2d(x, 2)).sum().backward()
    assert x.grad.shape == x.shape


@settings(max_examples=30, deadline=None)
@given(case=conv_cases(max_channels=3), channels_last=st.booleans())
def test_conv2d_random_configs_match_native(case, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, w, b = case.tensors(torch.float32, requires_grad=False, memory_format=fmt)
    tensors = lambda d, t: tuple(a.to(d, t) for a in (x, w, b) if a is not None)  # noqa: E731
    _assert_close(Case("conv2d", BF.conv2d, F.conv2d, tensors, case.options), "cpu", torch.float32)


@settings(max_examples=30, deadline=None)
@given(pool_cases())
def test_avg_pool2d_random_configs_match_native(case):
    tensors = lambda d, t: (case.input(t, d, requires_grad=False),)  # noqa: E731
    _assert_close(Case("avg_pool2d", BF.avg_pool2d, F.avg_pool2d, tensors, case.options), "cpu", torch.float64)
