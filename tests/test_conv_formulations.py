"""Every formulation ``bp_torch._conv`` can pick computes the same gradient, to every order, and the choice is the
one its table says.

Each named formulation is forced in turn over the whole grid of ``cases.CONV_GRID`` (strides, paddings, dilations,
groups, non-square shapes): gradcheck and gradgradcheck in float64 through our Functions, and float32 values against
PyTorch's autograd. The default choices are covered by the parity and gradcheck suites, in both formula modes.
"""

import pytest
import torch
import torch.nn.functional as F
from cases import CONV_GRID, ConvCase
from torch.autograd import gradcheck, gradgradcheck

import bp_torch
from bp_torch import _conv
from bp_torch import functional as BF

FORMULATIONS = [("input", name) for name in _conv.INPUT_GRAD] + [("weight", name) for name in _conv.WEIGHT_GRAD]


def _applies(kind: str, name: str, case: ConvCase) -> bool:
    return name != "depthwise" or case.depthwise


PAIRS = [
    pytest.param(kind, name, case, id=f"{kind}-{name}-{case}")
    for kind, name in FORMULATIONS
    for case in CONV_GRID
    if _applies(kind, name, case)
]


@pytest.fixture
def force(monkeypatch):
    def force(kind: str, name: str) -> None:
        monkeypatch.setattr(_conv, f"choose_{kind}_grad", lambda *args: name)

    return force


@pytest.mark.parametrize("kind, name, case", PAIRS)
def test_gradcheck_and_gradgradcheck(kind, name, case, force):
    force(kind, name)
    x, w, b = case.tensors(torch.float64)

    def f(x, w, b):
        return BF.conv2d(x, w, b, **case.options)

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("kind, name, case", PAIRS)
def test_matches_native_float32(kind, name, case, force):
    force(kind, name)
    x, w, b = case.tensors(torch.float32)
    ours, native = BF.conv2d(x, w, b, **case.options), F.conv2d(x, w, b, **case.options)
    delta = torch.randn_like(native)
    params = [t for t in (x, w, b) if t is not None]
    for g, n in zip(torch.autograd.grad(ours, params, delta), torch.autograd.grad(native, params, delta)):
        torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind, name", FORMULATIONS)
def test_forced_formulation_is_the_one_that_runs(kind, name, force, monkeypatch):
    """The forcing above is real: the named function, and only it, computes the gradient."""
    force(kind, name)
    table = _conv.INPUT_GRAD if kind == "input" else _conv.WEIGHT_GRAD
    calls = []
    for other, function in table.items():
        monkeypatch.setitem(table, other, lambda *a, f=function, n=other: calls.append(n) or f(*a))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, requires_grad=True)
    BF.conv2d(x, w, padding=1, groups=3).sum().backward()
    assert calls == [name]


@pytest.mark.parametrize(
    "x, w, options, fast, literal",
    [
        # Note B's C1 and C2 at batch 64, as the table in bp_torch/_conv.py names them
        ((64, 1, 28, 28), (6, 1, 5, 5), {}, {"weight": "batch_as_channels"}, {"weight": "batch_as_channels"}),
        ((64, 6, 12, 12), (12, 6, 5, 5), {}, {"input": "transposed_convolution", "weight": "batch_as_channels"},
         {"input": "flipped_correlation", "weight": "batch_as_channels"}),
        ((32, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, {"input": "flipped_correlation", "weight": "per_tap"},
         {"input": "flipped_correlation", "weight": "batch_as_channels"}),
        ((2, 8, 9, 9), (8, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 8},
         {"input": "transposed_convolution", "weight": "depthwise"},
         {"input": "flipped_correlation", "weight": "batch_as_channels"}),
    ],
    ids=["lenet-C1", "lenet-C2", "resnet-3x3", "depthwise-stride-2"],
)  # fmt: skip
def test_the_table_says_what_runs(x, w, options, fast, literal):
    x, w = torch.empty(x), torch.empty(w)
    stride, padding, dilation = (_pair(options.get(k, v)) for k, v in (("stride", 1), ("padding", 0), ("dilation", 1)))
    groups = options.get("groups", 1)
    out = F.conv2d(x, w, None, stride, padding, dilation, groups)
    for mode, expected in (("fast", fast), ("literal", literal)):
        with bp_torch.formulas(mode):
            chosen = {
                "input": _conv.choose_input_grad(tuple(w.shape[2:]), stride, padding, dilation),
                "weight": _conv.choose_weight_grad(x.shape, out.shape, tuple(w.shape[2:]), groups),
            }
        assert {k: chosen[k] for k in expected} == expected, mode


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def test_third_derivative_runs_through_our_functions():
    x, w, _ = CONV_GRID[5].tensors(torch.float64)

    def f(x, w):
        return BF.conv2d(x, w, None, 2, 1)

    # gradgradcheck of the first derivative is a check of the third
    def grad_x(x, w):
        (g,) = torch.autograd.grad(f(x, w).pow(2).sum(), x, create_graph=True)
        return g

    assert gradgradcheck(grad_x, (x, w))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", bp_torch._formulas.MODES)
def test_gradients_keep_layout_and_empty_batch(channels_last, mode):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for N in (0, 2):
        x = torch.randn(N, 4, 9, 9).contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(6, 2, 3, 3).contiguous(memory_format=fmt).requires_grad_()
        with bp_torch.formulas(mode):
            ours = BF.conv2d(x, w, None, 2, 1, 1, 2)
            native = F.conv2d(x, w, None, 2, 1, 1, 2)
            delta = torch.randn_like(native)
            mine = torch.autograd.grad(ours, (x, w), delta)
        for g, n, t in zip(mine, torch.autograd.grad(native, (x, w), delta), (x, w)):
            torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-4)
            assert g.is_contiguous(memory_format=fmt) or t.numel() == 0


@pytest.mark.parametrize("mode", bp_torch._formulas.MODES)
def test_vmap_per_sample_gradients(mode):
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 2, dtype=torch.float64)

    def loss(w, x, f):
        return f(x[None], w, None, 2, 1).sigmoid().sum()

    with bp_torch.formulas(mode):
        ours = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(w, x, BF.conv2d)
    native = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(w, x, F.conv2d)
    torch.testing.assert_close(ours, native)
