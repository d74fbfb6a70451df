"""Gradient layouts as torch's on CPU: when either conv2d operand is channels_last both gradients are (torch's rule,
read from strides as Tensor.suggest_memory_format does); complex ones never; avg_pool2d's follows its input."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from bp_torch import functional as BF
from bp_torch._function import is_channels_last

pytestmark = pytest.mark.usefixtures("both_formulas")

CL = torch.channels_last


def _laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of ``t`` in one of the layouts torch tells apart."""
    if layout == "channels_last":
        return t.contiguous(memory_format=CL)
    if layout == "sliced channels_last":  # channels_last strides, not dense: every other column of a wider map
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype).contiguous(memory_format=CL)
        return wide[..., ::2].copy_(t)
    if layout == "transposed":  # neither format
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t.contiguous()


def _layout(t):
    # the two flags; where both hold (size-1 dimensions: a 1x1 kernel, a depthwise weight) torch's own strides vary
    # with its backend (float32 and float64 differ), so which format those strides suggest is not compared
    return t.is_contiguous(), t.is_contiguous(memory_format=CL)


LAYOUTS = ["contiguous", "channels_last", "sliced channels_last", "transposed"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex128]
# (x shape, w shape, options): plain, strided, depthwise, 1x1, a single input channel
CONVS = [
    ((2, 3, 7, 6), (4, 3, 3, 3), {}),
    ((2, 3, 7, 7), (4, 3, 3, 3), {"stride": 2, "padding": 1}),
    ((2, 3, 6, 6), (3, 1, 3, 3), {"groups": 3, "padding": 1}),
    ((2, 3, 5, 5), (4, 3, 1, 1), {}),
    ((2, 1, 6, 6), (4, 1, 3, 3), {}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_layout, w_layout", list(itertools.product(LAYOUTS, LAYOUTS)))
@pytest.mark.parametrize("x_shape, w_shape, options", CONVS, ids=["plain", "strided", "depthwise", "1x1", "one-in"])
def test_conv2d_gradients_laid_out_as_torch(x_shape, w_shape, options, x_layout, w_layout, dtype):
    x = _laid_out(torch.randn(x_shape, dtype=dtype), x_layout).requires_grad_()
    w = _laid_out(torch.randn(w_shape, dtype=dtype), w_layout).requires_grad_()
    xn, wn = (_laid_out(t.detach().clone(), layout).requires_grad_() for t, layout in ((x, x_layout), (w, w_layout)))
    out, native = BF.conv2d(x, w, **options), F.conv2d(xn, wn, **options)
    assert _layout(out) == _layout(native)
    grad = torch.randn_like(native)
    for g, n in zip(torch.autograd.grad(out, (x, w), grad), torch.autograd.grad(native, (xn, wn), grad)):
        assert _layout(g) == _layout(n), f"{_layout(g)} vs torch's {_layout(n)}"


@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("options", [{"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1}])
def test_avg_pool2d_gradient_laid_out_as_torch(options, x_layout, grad_layout):
    x = _laid_out(torch.randn(2, 3, 8, 8), x_layout).requires_grad_()
    xn = _laid_out(x.detach().clone(), x_layout).requires_grad_()
    out, native = BF.avg_pool2d(x, **options), F.avg_pool2d(xn, **options)
    assert _layout(out) == _layout(native)
    grad = _laid_out(torch.randn_like(native), grad_layout)
    ((g,), (n,)) = torch.autograd.grad(out, x, grad), torch.autograd.grad(native, xn, grad)
    assert _layout(g) == _layout(n)
    torch.testing.assert_close(g, n)


def test_either_operand_channels_last_makes_both_gradients_channels_last():
    """The issue's report, written out: a channels_last weight alone makes the input's gradient channels_last."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3).contiguous(memory_format=CL).requires_grad_()
    gx, gw = torch.autograd.grad(BF.conv2d(x, w).sum(), (x, w))
    assert gx.is_contiguous(memory_format=CL) and not gx.is_contiguous()
    assert gw.is_contiguous(memory_format=CL)


def test_is_channels_last_reads_strides_as_torchs_suggest_memory_format():
    """bp_torch._function.is_channels_last (plain Python, on every forward) against torch's own rule, on tensors
    permuted, sliced, with empty and size-1 dimensions."""
    generator = torch.Generator().manual_seed(0)
    pick = lambda *options: options[torch.randint(len(options), (), generator=generator)]  # noqa: E731
    for _ in range(3000):
        t = torch.empty(*(pick(1, 2, 3, 5) for _ in range(4))).permute(*torch.randperm(4, generator=generator))
        t = t[tuple(slice(0, pick(0, 1, 2, 3, None), pick(1, 2)) for _ in range(4))]
        if pick(True, False, False):
            t = t.contiguous(memory_format=pick(CL, torch.contiguous_format))
        assert is_channels_last(t) == (suggest_memory_format(t) == CL), (t.shape, t.stride())


_ELEMENTWISE_LAYOUT = {  # ours, torch's: activations whose backward is one of torch's elementwise kernels
    "relu": (BF.relu, F.relu),
    "leaky_relu": (lambda x: BF.leaky_relu(x, 0.1), lambda x: F.leaky_relu(x, 0.1)),
    "relu6": (BF.relu6, F.relu6),
    "hardsigmoid": (BF.hardsigmoid, F.hardsigmoid),
    "hardswish": (BF.hardswish, F.hardswish),
    "silu": (BF.silu, F.silu),
    "gelu": (BF.gelu, F.gelu),
    "sigmoid": (BF.sigmoid, torch.sigmoid),
    "tanh": (BF.tanh, torch.tanh),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("upstream", ["expanded", "transposed"])
@pytest.mark.parametrize("name", list(_ELEMENTWISE_LAYOUT))
def test_elementwise_gradients_come_in_torchs_layout(name, upstream, dtype):
    """δ of a summed output (expanded: no layout of its own) over a channels_last x, or a transposed δ over a plain
    x: the gradient laid out as torch's backward kernel lays it out (threshold_backward and leaky_relu_backward
    follow x first, the others δ), in half precision too, where the formula computes in float32."""
    ours, theirs = _ELEMENTWISE_LAYOUT[name]
    x = torch.randn(2, 3, 4, 5).to(dtype)
    if upstream == "expanded":
        x, delta = x.contiguous(memory_format=torch.channels_last), torch.ones((), dtype=dtype).expand(x.shape)
    else:
        delta = torch.randn(5, 4, 3, 2).to(dtype).permute(3, 2, 1, 0)
    grads = []
    for f in (ours, theirs):
        leaf = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(f(leaf), leaf, delta)[0])
    assert grads[0].stride() == grads[1].stride()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2)


def test_elementwise_layout_is_decided_once_per_layout():
    """The layout decision for a δ laid out unlike x (a channel slice of a concatenation's gradient, as in
    shufflenet's and densenet's ReLUs) is read off torch once per shape and strides, not on every backward: the
    meta product it reads costs far more than a small ReLU's whole backward."""
    from bp_torch._function import _elementwise_strides

    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    delta = torch.randn(2, 12, 4, 4)[:, 6:]  # a slice of a wider gradient
    _elementwise_strides.cache_clear()
    for _ in range(3):
        (grad,) = torch.autograd.grad(BF.relu(x), x, delta)
        assert grad.stride() == torch.ops.aten.threshold_backward(delta, torch.relu(x.detach()), 0).stride()
    info = _elementwise_strides.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_attention_gradients_come_in_torchs_layout():
    """scaled_dot_product_attention on 2-D to 5-D operands, features of the value unlike the query's, masks: the
    gradients of Q, K and V laid out as torch's (on its math path, ∂e/∂K is ∂e/∂Kᵀ's product transposed back for a
    batch of matrices, and plain for one matrix)."""
    import random

    rng = random.Random(0)
    for i in range(60):
        batch = [rng.randint(1, 2) for _ in range(rng.choice([0, 1, 2, 3]))]
        L, S, E, Ev = (rng.randint(1, 4) for _ in range(4))
        mask = rng.choice([None, "bool", "float"])
        grads = []
        for f in (F.scaled_dot_product_attention, BF.scaled_dot_product_attention):
            g = torch.Generator().manual_seed(i)
            q, k, v = (torch.randn(*batch, n, c, generator=g, dtype=torch.float64).requires_grad_()
                       for n, c in ((L, E), (S, E), (S, Ev)))  # fmt: skip
            m = None if mask is None else torch.randn(L, S, generator=g, dtype=torch.float64)
            m = m > 0 if mask == "bool" else m
            grads.append(torch.autograd.grad(f(q, k, v, m).sum(), (q, k, v)))
        for name, ours, theirs in zip("QKV", grads[1], grads[0]):
            assert ours.stride() == theirs.stride(), f"draw {i}: ∂e/∂{name}"
            torch.testing.assert_close(ours, theirs)


_EINSUMS = ["bij,bjk->kbi", "bhqk,bkhd->bqhd", "ij,jk->ki", "ij,ij->ji", "i,j->ji", "ij,jk->k", "ijk,jil->kl"]


@pytest.mark.parametrize("equation", _EINSUMS)
def test_einsum_output_and_gradients_come_in_torchs_layout(equation):
    """einsum lowered as torch lowers it: an output in another order than the product's is the product's view
    permuted (not a plain copy), nothing contracted is an elementwise product laid out as its operands, and the
    gradients follow; over transposed, expanded and size-1 operands."""
    import random

    rng = random.Random(equation)
    terms = equation.split("->")[0].split(",")
    for i in range(30):
        size = {label: rng.randint(2, 4) for label in set("".join(terms))}
        operands = []
        for term in terms:
            x = torch.randn([size[c] if rng.random() > 0.15 else 1 for c in term], dtype=torch.float64)
            if x.dim() > 1 and rng.random() < 0.4:
                x = x.transpose(0, -1).contiguous().transpose(0, -1)
            elif rng.random() < 0.2:
                x = x[..., :1].expand(x.shape)
            operands.append(x)
        results = []
        for f in (torch.einsum, BF.einsum):
            leaves = [x.detach().requires_grad_() for x in operands]
            y = f(equation, *leaves)
            results.append((y, *torch.autograd.grad(y, leaves, torch.ones_like(y))))
        for name, ours, theirs in zip(["output", *terms], results[1], results[0]):
            assert ours.stride() == theirs.stride() or ours.numel() <= 1, f"draw {i}: {name}"
            torch.testing.assert_close(ours, theirs)
