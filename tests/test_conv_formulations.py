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
from bp_torch import _gemm as gemm
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


# Where the cost model picks each formulation (fast mode): real layers of the benchmark's models at batch 2 (the
# choice depends on channels, kernel, stride and map size, and on the batch only where the kernel's gradient is
# weighed against its operands, the same at batch 16 here), and small shapes with the same choice for gradcheck.
# (x shape, w shape, stride, padding, groups) -> {"input": ..., "weight": ...} in fast mode.
CHOSEN = {
    "lenet-C1": ((2, 1, 28, 28), (6, 1, 5, 5), 1, 0, 1, {"weight": "batch_as_channels"}),
    "lenet-C2": ((2, 6, 12, 12), (12, 6, 5, 5), 1, 0, 1, {"weight": "batch_as_channels"}),
    "vgg-256to512-8x8": ((2, 256, 8, 8), (512, 256, 3, 3), 1, 1, 1, {"weight": "output_channels_as_batch"}),
    "resnet-512-2x2": ((2, 512, 2, 2), (512, 512, 3, 3), 1, 1, 1, {"weight": "input_as_kernel"}),
    "squeezenet-16to64-3x3": ((2, 16, 15, 15), (64, 16, 3, 3), 1, 1, 1, {"weight": "batch_as_channels"}),
    "resnet-stem-7x7-s2": ((2, 3, 64, 64), (64, 3, 7, 7), 2, 3, 1, {"weight": "unfold_per_sample"}),
    "mobilenet-16to96-1x1": ((2, 16, 32, 32), (96, 16, 1, 1), 1, 0, 1, {"weight": "unfold_per_sample"}),
    "densenet-256to128-1x1": ((2, 256, 16, 16), (128, 256, 1, 1), 1, 0, 1, {"weight": "batch_as_channels"}),
    "resnet-1024to2048-1x1-s2": ((2, 1024, 4, 4), (2048, 1024, 1, 1), 2, 0, 1, {"weight": "unfold_gemm"}),
    "resnet-256to512-3x3-s2": ((2, 256, 4, 4), (512, 256, 3, 3), 2, 1, 1, {"weight": "unfold_gemm"}),
    "resnet-64to128-3x3-s2": ((2, 64, 16, 16), (128, 64, 3, 3), 2, 1, 1, {"weight": "batch_as_channels"}),
    "resnext-grouped-3x3": ((2, 128, 8, 8), (128, 4, 3, 3), 1, 1, 32, {"weight": "batch_as_channels"}),
    "mobilenet-depthwise-s2": ((2, 96, 32, 32), (96, 1, 3, 3), 2, 1, 96, {"weight": "depthwise"}),
    "efficientnet-depthwise-5x5-2x2": ((2, 96, 2, 2), (96, 1, 5, 5), 1, 2, 96, {"weight": "batch_as_channels"}),
    "small-1x1-per-sample": ((2, 2, 6, 5), (3, 2, 1, 1), 1, 0, 1, {"weight": "unfold_per_sample"}),
    "small-stem": ((2, 1, 7, 6), (8, 1, 3, 3), 2, 1, 1, {"weight": "unfold_per_sample"}),
    "small-1x1-gemm": ((2, 4, 2, 1), (5, 4, 1, 1), 1, 0, 1, {"weight": "unfold_gemm"}),
    "small-3x3": ((2, 2, 6, 6), (3, 2, 3, 3), 1, 1, 1, {"weight": "batch_as_channels"}),
    "small-3x3-16-channels": ((2, 16, 5, 4), (3, 16, 3, 2), 1, (2, 1), 1, {"weight": "output_channels_as_batch"}),
    "small-3x3-small-map": ((2, 16, 4, 3), (3, 16, 3, 3), 1, 1, 1, {"weight": "input_as_kernel"}),
    "small-depthwise": ((2, 3, 6, 6), (3, 1, 3, 3), 2, 1, 3, {"weight": "depthwise"}),
    "small-depthwise-padded-past": ((2, 3, 2, 3), (3, 1, 5, 5), 1, 2, 3, {"weight": "batch_as_channels"}),
}
SMALL = [name for name in CHOSEN if name.startswith(("small", "lenet-C2"))]
LITERAL = {"input": "flipped_correlation", "weight": "batch_as_channels"}


def _choices(x, w, stride, padding, groups) -> dict:
    out = torch.conv2d(x, w, None, stride, padding, 1, groups)
    options = (_pair(stride), _pair(padding), (1, 1), groups)
    return {
        "input": _conv.choose_input_grad(out, w, tuple(x.shape[2:]), *options),
        "weight": _conv.choose_weight_grad(x, out, tuple(w.shape[2:]), *options),
    }


@pytest.mark.parametrize("name", CHOSEN)
@pytest.mark.parametrize("mode", ["fast", "literal"])
def test_each_formulation_where_it_is_chosen(name, mode):
    """The cost model's pick on the shapes of the table in bp_torch/_conv.py, checked against native autograd there:
    float32 gradients, and float64 first and second derivatives (the second through our Functions again)."""
    *shapes, stride, padding, groups, fast = CHOSEN[name]
    with bp_torch.formulas(mode):
        x, w = (torch.randn(s, dtype=torch.float64) for s in shapes)
        chosen = _choices(x, w, stride, padding, groups)
        assert {k: chosen[k] for k in fast} == (fast if mode == "fast" else {k: LITERAL[k] for k in fast})
        assert chosen["input"] == ("transposed_convolution" if mode == "fast" else "flipped_correlation")
        for dtype in (torch.float32, torch.float64):
            x, w = (torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes)
            ours = BF.conv2d(x, w, None, stride, padding, 1, groups)
            native = F.conv2d(x, w, None, stride, padding, 1, groups)
            delta = torch.randn_like(native)
            order2 = dtype == torch.float64
            mine = torch.autograd.grad(ours, (x, w), delta, create_graph=order2)
            theirs = torch.autograd.grad(native, (x, w), delta, create_graph=order2)
            tol = {"rtol": 1e-4, "atol": 1e-3} if dtype == torch.float32 else {}  # float32: sums of up to 2·10^4 terms
            for a, b in zip(mine, theirs):
                torch.testing.assert_close(a, b, **tol)
            if order2:  # a second derivative: the gradients' own backward, again hand-written
                v = [torch.randn_like(g) for g in mine]
                kw = {"retain_graph": True, "allow_unused": True, "materialize_grads": True}  # ∂(∂e/∂x)/∂x = 0
                second = [torch.autograd.grad(g, (x, w), u, **kw) for g, u in zip(mine, v)]
                second_native = [torch.autograd.grad(g, (x, w), u, **kw) for g, u in zip(theirs, v)]
                for pair, pair_native in zip(second, second_native):
                    for a, b in zip(pair, pair_native):
                        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("mode", ["fast", "literal"])
def test_gradcheck_where_it_is_chosen(name, mode):
    *shapes, stride, padding, groups, _ = CHOSEN[name]
    x, w = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes)

    def f(x, w):
        return BF.conv2d(x, w, None, stride, padding, 1, groups)

    with bp_torch.formulas(mode):
        assert gradcheck(f, (x, w))
        assert gradgradcheck(f, (x, w))


def test_every_formulation_is_chosen_somewhere():
    """The table above covers every formulation: one added to _conv without a shape where it runs fails here."""
    picked = {kind: {LITERAL[kind]} for kind in LITERAL}
    for *_, fast in CHOSEN.values():
        for kind, name in fast.items():
            picked[kind].add(name)
    picked["input"].add("transposed_convolution")  # fast mode's, on every shape (checked above)
    assert picked == {"input": set(_conv.INPUT_GRAD), "weight": set(_conv.WEIGHT_GRAD)}
    assert set(SMALL) and all(CHOSEN[n][-1]["weight"] in _conv.WEIGHT_GRAD for n in SMALL)
    assert {CHOSEN[n][-1]["weight"] for n in SMALL} == set(_conv.WEIGHT_GRAD)


@pytest.mark.parametrize("mode", ["fast", "autotune"])
def test_autotune_times_each_formulation_once_per_shape(mode, monkeypatch):
    """Autotune picks the formulation that measured fastest, once per shape, then reuses it; fast never times."""
    timed = []
    monkeypatch.setattr(_conv, "TUNED", {})
    fake = {"unfold_gemm": 1.0, "unfold_per_sample": 3.0, "batch_as_channels": 2.0, "depthwise": 0.5}
    monkeypatch.setattr(_conv, "seconds", lambda f, args: timed.append(f.__name__) or fake.get(f.__name__, 9.0))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with bp_torch.formulas(mode):
        for _ in range(3):
            BF.conv2d(x, w, None, 1, 1).sum().backward()
    if mode == "fast":
        assert timed == [] and _conv.TUNED == {}
        return
    weight = ["batch_as_channels", "input_as_kernel", "output_channels_as_batch", "unfold_gemm", "unfold_per_sample"]
    assert sorted(timed) == sorted([*_conv.INPUT_GRAD, *weight])
    assert sorted(_conv.TUNED.values()) == ["flipped_correlation", "unfold_gemm"]  # input: both 9.0, the first


def test_autotune_falls_back_to_the_cost_model_under_vmap(monkeypatch):
    monkeypatch.setattr(_conv, "TUNED", {})
    monkeypatch.setattr(_conv, "seconds", lambda *a: pytest.fail("timed under vmap"))
    x, w = torch.randn(3, 2, 6, 6), torch.randn(4, 2, 3, 3)

    def loss(w, x):
        return BF.conv2d(x[None], w, None, 1, 1).sum()

    with bp_torch.formulas("autotune"):
        torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, x)
    assert _conv.TUNED == {}


@pytest.mark.parametrize("name", ["batch_as_channels", "output_channels_as_batch", "input_as_kernel"])
def test_one_sample_channels_last_corner(name, force):
    """A batch of one is the correlation's single input channel: oneDNN's channels_last kernel summed it wrongly here
    (δ taller than the padded input, a stride along the width), so those operands stay plainly laid out."""
    force("weight", name)
    x = torch.randn(1, 2, 1, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(1, 2, 2, 1).requires_grad_()
    options = {"padding": (2, 0), "dilation": (1, 2)}
    ours, native = BF.conv2d(x, w, **options), F.conv2d(x, w, **options)
    delta = torch.randn_like(native)
    for g, n in zip(torch.autograd.grad(ours, (x, w), delta), torch.autograd.grad(native, (x, w), delta)):
        torch.testing.assert_close(g, n, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "C_in, C_out, channel_product",
    [(256, 512, True), (600, 600, False)],  # ResNet18's 2^17-weight shortcut; a kernel past 2^18 and δ's size
)
def test_strided_1x1_scatter_by_kernel_size(C_in, C_out, channel_product, monkeypatch):
    """A strided 1x1 layer's ∂e/∂x is the channel product while its kernel is small; a large kernel's transposing
    copy costs more than the scatter saves, and the transposed convolution runs instead: the same values."""
    calls = []
    product = _conv._1x1_channel_product
    monkeypatch.setattr(_conv, "_1x1_channel_product", lambda *a: calls.append(1) or product(*a))
    x = torch.randn(2, C_in, 4, 4, requires_grad=True)
    w = torch.randn(C_out, C_in, 1, 1, requires_grad=True)
    ours, native = BF.conv2d(x, w, stride=2), F.conv2d(x, w, stride=2)
    delta = torch.randn_like(native)
    for g, n in zip(torch.autograd.grad(ours, (x, w), delta), torch.autograd.grad(native, (x, w), delta)):
        torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-4)
    assert bool(calls) == channel_product


@pytest.mark.parametrize(
    "x_shape, channels_last, per_sample",
    [((4, 24, 8, 8), False, True), ((4, 24, 2, 2), False, False), ((4, 24, 8, 8), True, False)],
    ids=["shufflenet-1x1", "map-of-4-positions", "channels-last"],
)
def test_small_1x1_input_gradient_as_one_product_per_sample(x_shape, channels_last, per_sample, monkeypatch):
    """A small stride-1 1x1 layer's ∂e/∂x is wᵀδ per sample (not on maps under 16 positions, nor for a δ that is not
    contiguous): torch's values, float32 and float64 to the second order."""
    calls = []
    products = _conv._1x1_per_sample_products
    monkeypatch.setattr(_conv, "_1x1_per_sample_products", lambda *a: calls.append(1) or products(*a))
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(x_shape, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        x, w = x.requires_grad_(), torch.randn(16, x_shape[1], 1, 1, dtype=dtype, requires_grad=True)
        ours, native = BF.conv2d(x, w), F.conv2d(x, w)
        delta = torch.randn_like(native)
        mine = torch.autograd.grad(ours, (x, w), delta, create_graph=True)
        theirs = torch.autograd.grad(native, (x, w), delta, create_graph=True)
        for g, n in zip(mine, theirs):
            torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-4)
            assert g.stride() == n.stride()
        v = torch.randn_like(mine[0])
        second = torch.autograd.grad(mine[0], w, v)
        torch.testing.assert_close(second, torch.autograd.grad(theirs[0], w, v), rtol=1e-4, atol=1e-4)
    assert bool(calls) == per_sample


ONEDNN_PRODUCT = {  # float32 layers whose ∂e/∂k is one product on oneDNN (bp_torch._gemm), and the choice without
    "1x1-many-products": ((2, 256, 8, 8), (128, 256, 1, 1), 1, 0, "batch_as_channels"),
    "3x3-192-outputs": ((2, 32, 8, 8), (192, 32, 3, 3), 1, 1, "output_channels_as_batch"),
    "small-stem": ((2, 3, 16, 16), (32, 3, 3, 3), 2, 1, "unfold_per_sample"),
    "strided-3x3": ((2, 64, 16, 16), (128, 64, 3, 3), 2, 1, "batch_as_channels"),
}


@pytest.mark.skipif(gemm._LINEAR is None, reason="torch built without oneDNN's matrix product")
@pytest.mark.parametrize("name", ONEDNN_PRODUCT)
def test_one_product_where_onednn_computes_it(name):
    """Where the im2col product runs on oneDNN it is the fast mode's choice, with native's float32 gradients; with
    oneDNN turned off (or in float64) the cost model's choice for torch's own product."""
    x_shape, w_shape, stride, padding, without = ONEDNN_PRODUCT[name]
    x, w = torch.randn(x_shape, requires_grad=True), torch.randn(w_shape, requires_grad=True)
    assert _choices(x.detach(), w.detach(), stride, padding, 1)["weight"] == "unfold_gemm"
    with torch.backends.mkldnn.flags(enabled=False):
        assert _choices(x.detach(), w.detach(), stride, padding, 1)["weight"] == without
    assert _choices(x.detach().double(), w.detach().double(), stride, padding, 1)["weight"] == without
    ours, native = BF.conv2d(x, w, None, stride, padding), F.conv2d(x, w, None, stride, padding)
    delta = torch.randn_like(native)
    for g, n in zip(torch.autograd.grad(ours, (x, w), delta), torch.autograd.grad(native, (x, w), delta)):
        torch.testing.assert_close(g, n, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(gemm._LINEAR is None, reason="torch built without oneDNN's matrix product")
def test_strided_layer_with_large_im2col_runs_a_few_samples_a_product(monkeypatch):
    """A strided 3x3 layer whose im2col columns outgrow 6·2^20 elements (ResNet's first strided 3x3 at 224x224, here
    4 samples of 112x112): ∂e/∂k a few samples a product on oneDNN, native's gradient; the correlation without it."""
    chunks = _count_chunks(monkeypatch)
    x, w = torch.randn(4, 64, 112, 112, requires_grad=True), torch.randn(128, 64, 3, 3, requires_grad=True)
    assert _choices(x.detach(), w.detach(), 2, 1, 1)["weight"] == "unfold_per_sample"
    with torch.backends.mkldnn.flags(enabled=False):
        assert _choices(x.detach(), w.detach(), 2, 1, 1)["weight"] == "batch_as_channels"
    _assert_native_gradients(x, w, 2, 1, atol=2e-3)
    assert chunks


def _count_chunks(monkeypatch) -> list:
    """A list that gets an item at each call of ``_conv._unfold_in_chunks``."""
    chunks = []
    in_chunks = _conv._unfold_in_chunks
    monkeypatch.setattr(_conv, "_unfold_in_chunks", lambda *a: chunks.append(1) or in_chunks(*a))
    return chunks


def _assert_native_gradients(x, w, stride, padding, atol):
    """Our conv2d's ∂e/∂x and ∂e/∂k are native's (float32 summation order aside); returns δ."""
    ours, native = BF.conv2d(x, w, None, stride, padding), F.conv2d(x, w, None, stride, padding)
    delta = torch.randn_like(native)
    for g, n in zip(torch.autograd.grad(ours, (x, w), delta), torch.autograd.grad(native, (x, w), delta)):
        torch.testing.assert_close(g, n, rtol=1e-4, atol=atol)
    return delta


@pytest.mark.skipif(gemm._LINEAR is None, reason="torch built without oneDNN's matrix product")
def test_stem_weight_gradient_in_chunks_of_samples(monkeypatch):
    """A float32 stem's ∂e/∂k on oneDNN, a few samples a product (here two, then the last one alone), summed: native's
    gradient; float64 runs the per-sample products as before."""
    chunks = _count_chunks(monkeypatch)
    x, w = torch.randn(3, 3, 32, 32, requires_grad=True), torch.randn(64, 3, 7, 7, requires_grad=True)
    assert _choices(x.detach(), w.detach(), 2, 3, 1)["weight"] == "unfold_per_sample"
    delta = _assert_native_gradients(x, w, 2, 3, atol=1e-3)
    assert chunks
    chunks.clear()
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double()
    torch.autograd.grad(BF.conv2d(x64, w64.requires_grad_(), None, 2, 3), w64, delta.double())
    assert not chunks


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
