"""bp_torch against PyTorch's own autograd: forward and every gradient, in float32 and float64, any layout."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bp_torch import functional as BF
from bp_torch.check import CASES, Case, compare_with_native

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
    """The same values in a transposed (non-contiguous) layout."""
    if t.dim() < 2:
        return t.repeat(2)[::2]
    return t.transpose(0, -1).contiguous().transpose(0, -1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_non_contiguous_grad_output(case: Case, device):
    _assert_close(case, device, torch.float32, grad_output_transform=_non_contiguous)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name.split()[0] in ("conv2d", "avg_pool2d")], ids=lambda c: c.name
)
def test_channels_last(case: Case, device):
    """channels_last inputs give outputs and input gradients in channels_last, as native does."""
    args = case.inputs(device, torch.float32, requires_grad=False)
    if args[0].dim() != 4:
        pytest.skip("channels_last needs a 4-D input")
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
    assert gx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_half_precision(case: Case, dtype, device):
    """float16/bfloat16 run and keep their dtype; values as close as the format allows."""
    manual_in = case.inputs(device, dtype)
    native_in = tuple(a.detach().clone().requires_grad_() for a in manual_in)
    out, native = case.manual(*manual_in, **case.options), case.native(*native_in, **case.options)
    assert out.dtype == native.dtype == dtype
    grad = torch.randn_like(native)
    grads = torch.autograd.grad(out, manual_in, grad)
    native_grads = torch.autograd.grad(native, native_in, grad)
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
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    size=st.tuples(st.integers(5, 12), st.integers(5, 12)),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.integers(1, 3),
    padding=st.sampled_from([0, 1, 2, "same", "valid"]),
    dilation=st.integers(1, 2),
    depthwise=st.booleans(),
    channels_last=st.booleans(),
)
def test_conv2d_random_configs_match_native(
    batch, channels, size, kernel, stride, padding, dilation, depthwise, channels_last
):
    if padding == "same":
        stride = 1
    reach = [dilation * (k - 1) + 1 for k in kernel]
    pad = 0 if isinstance(padding, str) else padding
    if any(s + 2 * pad < r for s, r in zip(size, reach)) and padding != "same":
        return  # kernel larger than the padded input: covered by the error tests
    groups = channels if depthwise else 1
    c_out = channels * 2 if depthwise else 3
    x = torch.randn(batch, channels, *size)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.randn(c_out, channels // groups, *kernel), torch.randn(c_out)
    case = Case("conv2d", BF.conv2d, F.conv2d, lambda d, t: (x.to(d, t), w.to(d, t), b.to(d, t)),
                dict(stride=stride, padding=padding, dilation=dilation, groups=groups))  # fmt: skip
    _assert_close(case, "cpu", torch.float32)


@settings(max_examples=30, deadline=None)
@given(
    size=st.tuples(st.integers(3, 11), st.integers(3, 11)),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.one_of(st.none(), st.integers(1, 4)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    divisor_override=st.sampled_from([None, 1, 7]),
)
def test_avg_pool2d_random_configs_match_native(
    size, kernel, stride, pad, ceil_mode, count_include_pad, divisor_override
):
    padding = tuple(min(p, k // 2) for p, k in zip(pad, kernel))
    if any(s + 2 * p < k for s, p, k in zip(size, padding, kernel)):
        return  # no window fits: covered by the error tests
    options = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                   count_include_pad=count_include_pad, divisor_override=divisor_override)  # fmt: skip
    case = Case(
        "avg_pool2d", BF.avg_pool2d, F.avg_pool2d, lambda d, t: (torch.randn(2, 3, *size, device=d, dtype=t),), options
    )
    _assert_close(case, "cpu", torch.float64)
