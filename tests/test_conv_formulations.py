"""Every formulation ``bp_torch._conv`` can pick computes the same gradient, to every order.

The per-shape choice is forced both ways (one convolution over all taps / one matmul per tap) so each is checked
over strides, paddings, dilations, groups and non-square shapes: gradcheck and gradgradcheck in float64 through
our Functions, and float32 values against PyTorch's autograd.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from bp_torch import _conv
from bp_torch import functional as BF

# (C_in, C_out, groups, kernel, input HxW): plain, grouped, depthwise, 1x1; non-square kernels and maps
LAYERS = [(2, 3, 1, (3, 2), (7, 6)), (4, 2, 2, (2, 3), (6, 7)), (3, 3, 3, (3, 3), (6, 6)), (2, 4, 1, (1, 1), (5, 4))]
OPTIONS = [  # (stride, padding, dilation)
    (1, 0, 1),
    (1, 1, 1),
    (1, "same", 2),
    (2, 1, 1),
    ((3, 2), (2, 1), (1, 2)),
    (2, 2, 2),
]
FORMULATIONS = {"one_conv": 1 << 62, "tap_matmul": 0}

pytestmark = pytest.mark.usefixtures("both_formulas")  # every test, fast and literal formulations


@pytest.fixture(params=list(FORMULATIONS))
def formulation(request, monkeypatch):
    monkeypatch.setattr(_conv, "TAP_MATMUL_MIN_MACS", FORMULATIONS[request.param])
    return request.param


def _fits(layer, option) -> bool:
    (_, _, _, (kh, kw), (H, W)), (stride, padding, dilation) = layer, option
    if padding == "same" and stride != 1:
        return False
    pad = (0, 0) if padding == "same" else torch.nn.modules.utils._pair(padding)
    dil = torch.nn.modules.utils._pair(dilation)
    return H + 2 * pad[0] >= dil[0] * (kh - 1) + 1 and W + 2 * pad[1] >= dil[1] * (kw - 1) + 1


CASES = [(lay, opt) for lay, opt in itertools.product(LAYERS, OPTIONS) if _fits(lay, opt)]


def _tensors(layer, dtype, bias):
    C_in, C_out, G, k, hw = layer
    x = torch.randn(2, C_in, *hw, dtype=dtype, requires_grad=True)
    w = torch.randn(C_out, C_in // G, *k, dtype=dtype, requires_grad=True)
    b = torch.randn(C_out, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("layer,option", CASES)
def test_gradcheck_and_gradgradcheck(layer, option, formulation):
    x, w, b = _tensors(layer, torch.float64, bias=True)
    stride, padding, dilation = option

    def f(x, w, b):
        return BF.conv2d(x, w, b, stride, padding, dilation, layer[2])

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("layer,option", CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_native_float32(layer, option, bias, formulation):
    x, w, b = _tensors(layer, torch.float32, bias)
    stride, padding, dilation = option
    args = (stride, padding, dilation, layer[2])
    ours, native = BF.conv2d(x, w, b, *args), F.conv2d(x, w, b, *args)
    delta = torch.randn_like(native)
    params = [t for t in (x, w, b) if t is not None]
    for g, n in zip(torch.autograd.grad(ours, params, delta), torch.autograd.grad(native, params, delta)):
        torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-4)


def test_third_derivative_runs_through_our_functions(formulation):
    x, w, _ = _tensors(LAYERS[0], torch.float64, bias=False)

    def f(x, w):
        return BF.conv2d(x, w, None, 2, 1)

    # gradgradcheck of the first derivative is a check of the third
    def grad_x(x, w):
        (g,) = torch.autograd.grad(f(x, w).pow(2).sum(), x, create_graph=True)
        return g

    assert gradgradcheck(grad_x, (x, w))


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_keep_layout_and_empty_batch(channels_last, formulation):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for N in (0, 2):
        x = torch.randn(N, 4, 9, 9).contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(6, 2, 3, 3).contiguous(memory_format=fmt).requires_grad_()
        ours = BF.conv2d(x, w, None, 2, 1, 1, 2)
        native = F.conv2d(x, w, None, 2, 1, 1, 2)
        delta = torch.randn_like(native)
        pairs = zip(torch.autograd.grad(ours, (x, w), delta), torch.autograd.grad(native, (x, w), delta), (x, w))
        for g, n, t in pairs:
            torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-4)
            assert g.is_contiguous(memory_format=fmt) or t.numel() == 0


def test_vmap_per_sample_gradients(formulation):
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 2, dtype=torch.float64)

    def loss(w, x, f):
        return f(x[None], w, None, 2, 1).sigmoid().sum()

    ours = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(w, x, BF.conv2d)
    native = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(w, x, F.conv2d)
    torch.testing.assert_close(ours, native)
