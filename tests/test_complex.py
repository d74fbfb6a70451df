"""Complex tensors: PyTorch's (Wirtinger) gradients, each backward the real formula with the other operand
conjugated; gradcheck and gradgradcheck in complex128; avg_pool2d refuses complex input on CPU, as torch."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from bp_torch import functional as BF
from bp_torch._function import apply
from bp_torch.autograd import Conv2dInputGradFunction, Conv2dWeightGradFunction

pytestmark = pytest.mark.usefixtures("both_formulas")  # every test, fast and literal formulations

C = torch.complex128


def _c(*shape):
    return torch.randn(*shape, dtype=C, requires_grad=True)


# (name, our call, torch's call, tensor shapes)
CASES = [
    ("conv2d", lambda f, x, w, b: f.conv2d(x, w, b), [(2, 3, 6, 5), (4, 3, 3, 2), (4,)]),
    ("conv2d strided", lambda f, x, w, b: f.conv2d(x, w, b, stride=2, padding=1), [(1, 2, 7, 7), (3, 2, 3, 3), (3,)]),
    ("conv2d groups dilation", lambda f, x, w: f.conv2d(x, w, None, 1, "same", 2, 2), [(1, 4, 6, 6), (2, 2, 3, 3)]),
    ("conv2d 1x1", lambda f, x, w: f.conv2d(x, w), [(2, 3, 4, 4), (5, 3, 1, 1)]),
    ("sigmoid", lambda f, x: f.sigmoid(x), [(3, 4)]),
    ("linear", lambda f, x, w, b: f.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)]),
    ("linear 1-D weight", lambda f, x, w: f.linear(x, w), [(3, 4), (4,)]),
]  # fmt: skip
NATIVE = type("native", (), {"conv2d": F.conv2d, "sigmoid": torch.sigmoid, "linear": F.linear})


@pytest.mark.parametrize("call, shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradcheck_and_gradgradcheck_complex128(call, shapes):
    inputs = [_c(*s) for s in shapes]
    fn = lambda *a: call(BF, *a)  # noqa: E731
    assert gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("call, shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradients_equal_torchs_conjugate_gradients(call, shapes):
    inputs = [_c(*s) for s in shapes]
    native_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out, native = call(BF, *inputs), call(NATIVE, *native_inputs)
    torch.testing.assert_close(out, native)
    grad = torch.randn_like(native)
    ours, theirs = torch.autograd.grad(out, inputs, grad), torch.autograd.grad(native, native_inputs, grad)
    for g, n in zip(ours, theirs):
        torch.testing.assert_close(g, n)


def test_linear_conjugates_the_other_operand():
    """Written out: ∂e/∂x = δ·conj(W), ∂e/∂W = δᵀ·conj(x) — without the conjugates both would differ."""
    x, w = _c(3, 4), _c(5, 4)
    delta = torch.randn(3, 5, dtype=C)
    gx, gw = torch.autograd.grad(BF.linear(x, w), (x, w), delta)
    torch.testing.assert_close(gx, delta @ w.detach().conj())
    torch.testing.assert_close(gw, delta.T @ x.detach().conj())
    assert not torch.allclose(gx, delta @ w.detach())


@pytest.mark.parametrize("function", [Conv2dInputGradFunction, Conv2dWeightGradFunction], ids=lambda f: f.__name__)
def test_gradient_functions_complex128(function):
    delta, other = _c(2, 3, 3, 3), _c(2, 2, 5, 5) if function is Conv2dWeightGradFunction else _c(3, 2, 2, 2)
    options = ((1, 1), (0, 0), (1, 1), 1)
    if function is Conv2dInputGradFunction:
        fn = lambda d, w: apply(function, d, w, (4, 4), *options)  # noqa: E731
        inputs = (delta, other)
    else:
        fn = lambda x, d: apply(function, x, d, (3, 3), *options)  # noqa: E731
        inputs = (other, delta)
    assert gradcheck(fn, inputs, check_forward_ad=True)
    assert gradgradcheck(fn, inputs)


def test_avg_pool2d_refuses_complex_as_torch():
    x = _c(1, 2, 4, 4)
    with pytest.raises(NotImplementedError):
        F.avg_pool2d(x, 2)
    with pytest.raises(NotImplementedError):
        BF.avg_pool2d(x, 2)
