"""Argument spellings and exception types as torch's parser has them: numpy integers and one-element integer tensors
wherever torch takes an int; linear's biases exactly where torch accepts them; TypeError for a wrong type."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bp_torch import functional as BF

x4 = torch.randn(2, 4, 8, 8)
w = torch.randn(4, 2, 3, 3)

INTEGERS = [np.int64(2), np.int32(2), torch.tensor(2), torch.tensor([2]), torch.tensor(2, dtype=torch.int32)]
PAIRS = [(np.int64(2), np.int64(2)), [torch.tensor(2), 2], torch.Size([2, 2]), (2, True), [2]]


@pytest.mark.parametrize("value", INTEGERS + PAIRS, ids=repr)
@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
def test_conv2d_int_pair_spellings(name, value):
    expected = F.conv2d(x4, w, groups=2, **{name: value})
    torch.testing.assert_close(BF.conv2d(x4, w, groups=2, **{name: value}), expected)


@pytest.mark.parametrize("value", INTEGERS, ids=repr)
def test_conv2d_groups_spellings(value):
    torch.testing.assert_close(BF.conv2d(x4, w, groups=value), F.conv2d(x4, w, groups=value))


@pytest.mark.parametrize("value", INTEGERS + PAIRS, ids=repr)
@pytest.mark.parametrize("name", ["kernel_size", "stride", "padding"])
def test_avg_pool2d_int_pair_spellings(name, value):
    kwargs = {"kernel_size": 4, name: value}
    torch.testing.assert_close(BF.avg_pool2d(x4, **kwargs), F.avg_pool2d(x4, **kwargs))


@pytest.mark.parametrize("value", [np.int64(3), torch.tensor(3), torch.tensor(3, dtype=torch.int16)], ids=repr)
def test_avg_pool2d_divisor_override_spellings(value):
    torch.testing.assert_close(BF.avg_pool2d(x4, 2, divisor_override=value), F.avg_pool2d(x4, 2, divisor_override=3))


# (argument, value) pairs torch refuses with a TypeError; the issue names the first ones
TYPE_ERRORS = [
    ("ceil_mode", "no"), ("ceil_mode", 1), ("ceil_mode", 0.0), ("ceil_mode", np.bool_(True)), ("ceil_mode", None),
    ("count_include_pad", "yes"), ("count_include_pad", 0), ("count_include_pad", torch.tensor(True)),
    ("divisor_override", True), ("divisor_override", False), ("divisor_override", 2.0),
    ("divisor_override", torch.tensor([2])), ("divisor_override", torch.tensor(2.0)),
    ("kernel_size", (2, 2.0)), ("kernel_size", (2.0, 2)), ("kernel_size", (True, 2)), ("kernel_size", 2.0),
    ("kernel_size", True), ("kernel_size", range(2, 4)), ("kernel_size", np.array([2, 2])),
    ("stride", (2, 2.0)), ("stride", "2"), ("padding", (0, 1.0)), ("padding", np.float64(1)),
]  # fmt: skip


@pytest.mark.parametrize("name, value", TYPE_ERRORS, ids=lambda v: repr(v))
def test_avg_pool2d_wrong_types_raise_type_error_as_torch(name, value):
    kwargs = {"kernel_size": 2, name: value}
    with pytest.raises(TypeError):
        F.avg_pool2d(x4, **kwargs)
    with pytest.raises(TypeError, match=name):
        BF.avg_pool2d(x4, **kwargs)


@pytest.mark.parametrize(
    "name, value",
    [("stride", (2, 2.0)), ("padding", (1.0, 1)), ("dilation", (True, 1)), ("groups", True), ("groups", 2.0),
     ("stride", range(1, 3)), ("dilation", np.float64(1)), ("padding", None), ("groups", [2])],
    ids=lambda v: repr(v),
)  # fmt: skip
def test_conv2d_wrong_types_raise_type_error_as_torch(name, value):
    with pytest.raises(TypeError):
        F.conv2d(x4, w, **{name: value})
    with pytest.raises(TypeError, match=name):
        BF.conv2d(x4, w, **{name: value})


def test_a_type_error_comes_before_any_value_error_as_in_torch():
    """torch's parser reads every argument's type before an operator checks a value."""
    for call in (lambda f: f.conv2d(torch.randn(5), w, stride=2.0), lambda f: f.avg_pool2d(torch.randn(5), 0, 2.0)):
        for f in (F, BF):
            with pytest.raises(TypeError):
                call(f)


# linear's biases: (input shape, weight shape, bias shape)
ACCEPTED_BIASES = [
    ((3, 4), (5, 4), ()), ((3, 4), (5, 4), (1,)), ((3, 4), (5, 4), (1, 5)), ((3, 4), (5, 4), (3, 5)),
    ((3, 4), (5, 4), (3, 1)), ((2, 3, 4), (5, 4), (3, 5)), ((2, 3, 4), (5, 4), (2, 1, 5)), ((4,), (5, 4), (1, 5)),
    ((2, 3, 4), (4,), ()), ((4,), (4,), ()),
]  # fmt: skip
REFUSED_BIASES = [
    ((3, 4), (4,), ()),
    ((3, 4), (5, 4), (4,)),
    ((3, 4), (5, 4), (2, 5)),
    ((3, 4), (5, 4), (1, 3, 5)),
    ((4,), (5, 4), (2, 5)),
    ((2, 3, 4), (4,), (3,)),
]


@pytest.mark.parametrize("x_shape, w_shape, b_shape", ACCEPTED_BIASES, ids=str)
def test_linear_accepts_the_biases_torch_accepts_with_its_gradients(x_shape, w_shape, b_shape):
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in (x_shape, w_shape, b_shape)]
    native_args = [a.detach().clone().requires_grad_() for a in args]
    out, native = BF.linear(*args), F.linear(*native_args)
    torch.testing.assert_close(out, native)
    grad = torch.randn_like(native)
    for g, n in zip(torch.autograd.grad(out, args, grad), torch.autograd.grad(native, native_args, grad)):
        torch.testing.assert_close(g, n)  # the bias's: δ summed over what it was broadcast along
    assert torch.autograd.gradcheck(BF.linear, args)


@pytest.mark.parametrize("x_shape, w_shape, b_shape", REFUSED_BIASES, ids=str)
def test_linear_refuses_the_biases_torch_refuses(x_shape, w_shape, b_shape):
    args = [torch.randn(s) for s in (x_shape, w_shape, b_shape)]
    with pytest.raises(RuntimeError):
        F.linear(*args)
    with pytest.raises(RuntimeError, match=rf"bias of size \[{', '.join(map(str, b_shape))}\]"):
        BF.linear(*args)
