"""Regression tests for the corners of issue 22, one small parametrized test per class of bug, each judged against
torch or a float64 reference (to be folded into the op table)."""

import itertools

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import bp_torch
from bp_torch import functional as BF


def _grads(fn, args, kwargs, requested, create_graph=False):
    """fn(*args, **kwargs) with only the args at ``requested`` requiring grad: the gradients of Σ out², then (with
    ``create_graph``) the second-order ones of Σ g²."""
    leaves = [t.detach().clone().requires_grad_(i in requested) if t is not None else None for i, t in enumerate(args)]
    out = fn(*leaves, **kwargs)
    wanted = [leaves[i] for i in requested]
    grads = torch.autograd.grad((out * out).sum(), wanted, create_graph=create_graph)
    if create_graph:
        grads += torch.autograd.grad(sum((g * g).sum() for g in grads), wanted, materialize_grads=True)
    return grads


def _bn_args(training):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    stats = (
        (None, None) if training else (torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5)
    )
    return [x, *stats, torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)], {"training": training}


def _conv_args():
    d = torch.float64
    return [torch.randn(2, 3, 5, 5, dtype=d), torch.randn(2, 3, 3, 3, dtype=d), torch.randn(2, dtype=d)], {}


def _ce_args():
    d = torch.float64
    target = torch.softmax(torch.randn(3, 4, dtype=d), 1)
    return [torch.randn(3, 4, dtype=d), target, torch.rand(4, dtype=d)], {"label_smoothing": 0.1}


def _mse_args():
    d = torch.float64
    return [torch.randn(3, 4, dtype=d), torch.randn(3, 4, dtype=d), torch.rand(3, 4, dtype=d)], {}


_SUBSET_CASES = {
    "batch_norm_train": ("batch_norm", lambda: _bn_args(True), (0, 3, 4)),
    "batch_norm_eval": ("batch_norm", lambda: _bn_args(False), (0, 3, 4)),
    "conv2d": ("conv2d", _conv_args, (0, 1, 2)),
    "linear": (
        "linear",
        lambda: ([torch.randn(4, 3).double(), torch.randn(2, 3).double(), torch.randn(2).double()], {}),
        (0, 1, 2),
    ),
    "cross_entropy": ("cross_entropy", _ce_args, (0, 1, 2)),
    "mse_loss": ("mse_loss", _mse_args, (0, 1, 2)),
}


def _positional(f, op):
    """mse_loss's weight by keyword (its third positional argument is size_average); other ops as they are."""
    return (lambda x, y, w, **kw: f(x, y, weight=w, **kw)) if op == "mse_loss" else f


def _subsets():
    for name, (_, _, differentiable) in _SUBSET_CASES.items():
        for r in range(1, len(differentiable) + 1):
            for requested in itertools.combinations(differentiable, r):
                yield pytest.param(name, requested, id=f"{name}-{'-'.join(map(str, requested))}")


@pytest.mark.parametrize("name, requested", list(_subsets()))
def test_any_subset_of_inputs_may_require_grad(name, requested):
    """A gradient the graph does not request is skipped: first and second order match torch for every subset."""
    op, make, _ = _SUBSET_CASES[name]
    args, kwargs = make()
    ours = _grads(_positional(getattr(BF, op), op), args, kwargs, requested, create_graph=True)
    theirs = _grads(_positional(getattr(F, op), op), args, kwargs, requested, create_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_fine_tuning_a_converted_resnet_with_a_frozen_stem():
    """convert()-ed torchvision resnet18 with conv1 frozen: batch_norm gets no input gradient request."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=4)
    bp_torch.nn.convert(model)
    model.conv1.requires_grad_(False)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.bn1.weight.grad is not None and model.conv1.weight.grad is None


# --- scalar arguments parsed as torch's argument parser parses them -------------------------------------------------

_SPELLINGS = [
    0.25,
    1,
    True,
    np.float64(0.25),
    np.float32(0.25),
    np.int64(1),
    np.bool_(True),
    np.array(0.25),
    torch.tensor(0.25),
    torch.tensor(1),
    torch.tensor(True),
    torch.tensor([0.25]),
    torch.tensor(0.25, requires_grad=True),
    "0.25",
    None,
    1 + 2j,
    1.5,
    -1,
    float("nan"),
    torch.float64,
    torch.tensor([1]),
]

_x, _t = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
_SCALAR_ARGUMENTS = {
    "batch_norm momentum": lambda M, v: M.batch_norm(_x, None, None, training=True, momentum=v),
    "batch_norm eps": lambda M, v: M.batch_norm(_x, None, None, training=True, eps=v),
    "batch_norm training": lambda M, v: M.batch_norm(_x, torch.zeros(3), torch.ones(3), training=v),
    "leaky_relu negative_slope": lambda M, v: M.leaky_relu(_x, v),
    "dropout training": lambda M, v: M.dropout(_x, 0.5, v),
    "dropout p": lambda M, v: M.dropout(_x, v),
    "nll_loss ignore_index": lambda M, v: M.nll_loss(_x, _t, ignore_index=v),
    "cross_entropy ignore_index": lambda M, v: M.cross_entropy(_x, _t, ignore_index=v),
    "cross_entropy label_smoothing": lambda M, v: M.cross_entropy(_x, _t, label_smoothing=v),
    "softmax dim": lambda M, v: M.softmax(_x, v),
    "log_softmax dim": lambda M, v: M.log_softmax(_x, v),
    "softmax dtype": lambda M, v: M.softmax(_x, 1, dtype=v),
    "log_softmax dtype": lambda M, v: M.log_softmax(_x, 1, dtype=v),
}


def _outcome(call, module, value):
    torch.manual_seed(0)
    try:
        return call(module, value)
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return type(error)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("argument", list(_SCALAR_ARGUMENTS))
def test_scalar_arguments_parse_as_torch_parses_them(argument):
    """Every spelling torch's parser accepts gives torch's value; every one it refuses, torch's exception type
    (ignore_index=1.5 is not class 1, dropout(training="no") and softmax(dtype=1) raise TypeError)."""
    call = _SCALAR_ARGUMENTS[argument]
    for value in _SPELLINGS:
        ours, theirs = _outcome(call, BF, value), _outcome(call, F, value)
        if isinstance(theirs, type):
            assert ours is theirs, f"{argument}={value!r}: ours {ours!r}, torch {theirs.__name__}"
        else:
            assert isinstance(ours, torch.Tensor), f"{argument}={value!r}: ours {ours!r}, torch accepts it"
            torch.testing.assert_close(ours, theirs, equal_nan=True, msg=f"{argument}={value!r}")


# --- valid calls torch accepts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_input_with_a_one_element_target(op, reduction):
    """A (C,) input with a (1,) target: torch's forward reads it as one target (its backward then fails on the
    sizes); ours is the batch of one, gradient included, as with the 0-d target torch differentiates."""
    x, weight = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    ours = _grads(lambda x: getattr(BF, op)(x, torch.tensor([1]), weight, reduction=reduction), [x], {}, (0,))
    theirs = _grads(lambda x: getattr(F, op)(x, torch.tensor(1), weight, reduction=reduction), [x], {}, (0,))
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(RuntimeError, match="size mismatch"):  # torch's own inconsistency, pinned
        _grads(lambda x: getattr(F, op)(x, torch.tensor([1]), weight, reduction=reduction), [x], {}, (0,))


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("input_shape, target_shape", [((3, 1), (1, 4)), ((4,), (3, 4)), ((3, 4), (4,))])
def test_mse_loss_weight_has_the_input_size(input_shape, target_shape, reduction):
    """The weight is checked against the input's own size (not the broadcast one) and broadcast by the product;
    its gradient sums over the copies. A weight of the broadcast size is refused, as by torch."""
    d = torch.float64
    args = [torch.randn(input_shape, dtype=d), torch.randn(target_shape, dtype=d), torch.rand(input_shape, dtype=d)]
    ours = _grads(_positional(BF.mse_loss, "mse_loss"), args, {"reduction": reduction}, (0, 1, 2), True)
    theirs = _grads(_positional(F.mse_loss, "mse_loss"), args, {"reduction": reduction}, (0, 1, 2), True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    broadcast = torch.broadcast_shapes(input_shape, target_shape)
    if broadcast != input_shape:
        for M in (BF, F):
            with pytest.raises(ValueError, match="same size"):
                M.mse_loss(args[0], args[1], weight=torch.rand(broadcast, dtype=d))


# --- corners: class weights, non-finite values, extreme arguments, cancellation -------------------------------------

_CLASS_WEIGHTS = {  # targets, weight, label_smoothing
    "negative weights": ([0, 1], [1.0, -0.5, 2.0], 0.0),
    "negative total": ([0, 1], [-1.0, -0.5, 2.0], 0.0),
    "negative total smoothed": ([0, 1], [-1.0, -0.5, 2.0], 0.1),
    "zero total": ([0, 1], [1.0, -1.0, 2.0], 0.0),
    "zero total smoothed": ([0, 1], [1.0, -1.0, 2.0], 0.1),
    "zero weights": ([0, 1], [0.0, 0.0, 2.0], 0.0),
    "one ignored": ([-100, 1], [1.0, 0.0, 2.0], 0.0),
    "all ignored": ([-100, -100], None, 0.0),
    "all ignored smoothed": ([-100, -100], None, 0.1),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "case, op",
    [
        (case, op)
        for case in _CLASS_WEIGHTS
        for op in ("cross_entropy", "nll_loss")
        if op == "cross_entropy" or not _CLASS_WEIGHTS[case][2]
    ],
)
def test_class_weights_of_any_sign_and_a_zero_total(case, op, reduction, both_formulas):
    """Negative class weights (a negative mean denominator) give torch's gradients, not ~1e307 from a clamp; a zero
    denominator gives non-finite gradients where torch's are (NaN loss), and an ignored position zero."""
    targets, weight, smoothing = _CLASS_WEIGHTS[case]
    d = torch.float64
    x, target = torch.randn(2, 3, dtype=d), torch.tensor(targets)
    weight = None if weight is None else torch.tensor(weight, dtype=d)
    kwargs = {"reduction": reduction, **({"label_smoothing": smoothing} if smoothing else {})}
    results = []
    for M in (BF, F):
        leaf = x.clone().requires_grad_()
        loss = getattr(M, op)(leaf, target, weight, **kwargs)
        loss.sum().backward()
        with fwAD.dual_level():  # forward mode, along x's tangent 1: torch's 0/0 is NaN there too
            tangent = fwAD.unpack_dual(getattr(M, op)(fwAD.make_dual(x, torch.ones_like(x)), target, weight, **kwargs))
        results.append((loss.detach(), leaf.grad, tangent.tangent))
    (loss, grad, tangent), (expected_loss, expected_grad, expected_tangent) = results
    torch.testing.assert_close(loss, expected_loss, equal_nan=True)
    for ours, torchs in ((grad, expected_grad), (tangent, expected_tangent)):
        if torch.isfinite(torchs).all():
            torch.testing.assert_close(ours, torchs)
        else:  # 0/0 and x/0: which non-finite value comes out depends on the order of operations
            assert torch.equal(torch.isfinite(ours), torch.isfinite(torchs)), (ours, torchs)


_NON_FINITE = torch.tensor([-1e3, -1.0, -0.0, 0.0, 1.0, 1e3, float("nan"), float("inf"), -float("inf")])
_ELEMENTWISE = {
    "relu": (BF.relu, F.relu),
    "leaky_relu": (lambda x: BF.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2)),
    "leaky_relu slope 3": (lambda x: BF.leaky_relu(x, 3.0), lambda x: F.leaky_relu(x, 3.0)),
    "leaky_relu slope 1e20": (lambda x: BF.leaky_relu(x, 1e20), lambda x: F.leaky_relu(x, 1e20)),
    "tanh": (BF.tanh, torch.tanh),
    "sigmoid": (BF.sigmoid, torch.sigmoid),
    "softmax": (lambda x: BF.softmax(x, 0), lambda x: torch.softmax(x, 0)),
    "log_softmax": (lambda x: BF.log_softmax(x, 0), lambda x: torch.log_softmax(x, 0)),
}


@pytest.mark.parametrize("upstream", [1.0, float("inf"), -float("inf"), float("nan")])
@pytest.mark.parametrize("name", list(_ELEMENTWISE))
def test_non_finite_inputs_and_upstream_gradients_propagate_as_in_torch(name, upstream, both_formulas):
    """relu at NaN passes δ, an infinite δ where the derivative is 0 gives 0 (a select, not 0·∞), tanh and sigmoid
    keep ∞ where their derivative is positive, leaky_relu's gradient is exact for any slope: torch's, bit for bit
    where it is not NaN."""
    ours, theirs = _ELEMENTWISE[name]
    finite_input = name in ("softmax", "log_softmax")  # one NaN or ∞ would make the whole softmax NaN
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 3.0]) if finite_input else _NON_FINITE
    delta = torch.ones_like(x)
    delta[1] = upstream
    grads = []
    for f in (ours, theirs):
        leaf = x.clone().requires_grad_()
        f(leaf).backward(delta)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], equal_nan=True, rtol=1e-6, atol=1e-6)  # float32 rounding


@pytest.mark.parametrize("output_size", [1, 2, (2, 3), 4])
def test_adaptive_avg_pool2d_infinite_gradient_reaches_its_window_alone(output_size, both_formulas):
    x = torch.randn(1, 2, 5, 7, requires_grad=True)
    out = BF.adaptive_avg_pool2d(x, output_size)
    delta = torch.ones_like(out)
    delta[0, 0, 0, 0] = float("inf")
    (ours,) = torch.autograd.grad(out, x, delta)
    (theirs,) = torch.autograd.grad(F.adaptive_avg_pool2d(x, output_size), x, delta)
    torch.testing.assert_close(ours, theirs, equal_nan=True)


def test_batch_norm_gradients_keep_their_digits_when_the_mean_dwarfs_the_spread(both_formulas):
    """|μ| ≫ σ: Σδx − μΣδ would cancel; within a few times torch's own float32 distance to the float64 truth."""
    x, delta = torch.randn(16, 3, 6, 6) * 0.01 + 1000, torch.randn(16, 3, 6, 6)
    w, b = torch.rand(3) + 0.5, torch.randn(3)

    def grads(f, dtype):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (x, w, b)]
        f(leaves[0], None, None, leaves[1], leaves[2], training=True).backward(delta.to(dtype))
        return [t.grad.double() for t in leaves]

    truth = grads(F.batch_norm, torch.float64)
    for ours, theirs, exact in zip(grads(BF.batch_norm, torch.float32), grads(F.batch_norm, torch.float32), truth):
        torch_error = (theirs - exact).abs().max()
        assert (ours - exact).abs().max() <= 4 * torch_error + 1e-6 * exact.abs().max()


_NORMS = {  # (ours, torch's) over a (16, 8, 6, 6) input: layer norm over the last two dimensions, 4 groups of 2
    "layer_norm": (lambda f, x, w, b: f(x, (6, 6), w.expand(6, 6), b.expand(6, 6))),
    "group_norm": (lambda f, x, w, b: f(x, 4, w.expand(8), b.expand(8))),
}


@pytest.mark.parametrize("name", list(_NORMS))
def test_layer_and_group_norm_gradients_keep_their_digits_when_the_mean_dwarfs_the_spread(name, both_formulas):
    """|μ| ≫ σ: the statistics' residual (torch's rounded μ) and the variance about it keep every digit of x − mean
    x; within a few times torch's own float32 distance to the float64 truth."""
    gen = torch.Generator().manual_seed(0)
    x, delta = torch.randn(16, 8, 6, 6, generator=gen) * 0.01 + 1000, torch.randn(16, 8, 6, 6, generator=gen)
    w, b = torch.rand(1, generator=gen) + 0.5, torch.randn(1, generator=gen)
    ours_f, theirs_f = getattr(BF, name), getattr(F, name)

    def grads(f, dtype):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (x, w, b)]
        _NORMS[name](f, *leaves).backward(delta.to(dtype))
        return [t.grad.double() for t in leaves]

    truth = grads(theirs_f, torch.float64)
    for ours, theirs, exact in zip(grads(ours_f, torch.float32), grads(theirs_f, torch.float32), truth):
        torch_error = (theirs - exact).abs().max()
        assert (ours - exact).abs().max() <= 4 * torch_error + 1e-6 * exact.abs().max()


# --- half precision computed in float32 ("opmath"), float32 as close to the truth as torch's ----------------------

_FROM_OUTPUT = {  # op, the exact backward in float64 from the saved output y and δ
    "tanh": (BF.tanh, lambda y, d: d * (1 - y * y)),
    "sigmoid": (BF.sigmoid, lambda y, d: d * y * (1 - y)),
    "softmax": (lambda x: BF.softmax(x, 1), lambda y, d: y * (d - (y * d).sum(1, keepdim=True))),
    # p = e^ℓ normalised (Σ e^ℓ = 1 for an exact log_softmax; a rounded ℓ's e^ℓ sums to 1 ± eps)
    "log_softmax": (lambda x: BF.log_softmax(x, 1), lambda y, d: d - y.softmax(1) * d.sum(1, keepdim=True)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("name", list(_FROM_OUTPUT))
def test_backward_from_the_output_rounds_once(name, dtype, both_formulas):
    """Given the saved output y, the gradient is the float64 formula rounded once: half precision computes in
    float32 (δ − (δy)y in bfloat16 was tens of percent off where tanh saturates), float32 keeps the digits 1 − y·y
    cancels (fast mode; literal mode computes the formula as written, as torch's kernel)."""
    op, exact = _FROM_OUTPUT[name]
    x = torch.linspace(-10, 10, 4096).view(64, 64).to(dtype).requires_grad_()  # through saturation, where |y| → 1
    out = op(x)
    delta = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, delta)
    truth = exact(out.detach().double(), delta.double())
    big = truth.abs() > 16 * torch.finfo(dtype).tiny  # normal numbers of the dtype: a relative error means something
    error = ((grad.double() - truth).abs() / truth.abs())[big].max()
    if dtype == torch.float32 and (both_formulas == "literal" or "softmax" in name):
        return  # as written, 1 − y·y cancels in float32 as it does in torch's kernel
    # half: one rounding to the dtype (half an ulp) after float32's own; float32: a few roundings
    bound = 4 * torch.finfo(dtype).eps if dtype == torch.float32 else torch.finfo(dtype).eps / 2 + 2e-6
    assert error <= bound, error


_HALF = {  # op of x, input shape
    "mse_loss": (lambda M, x: M.mse_loss(x, torch.linspace(-1, 1, x.numel()).view_as(x).to(x.dtype)), (16, 8)),
    "mse_loss weight": (
        lambda M, x: M.mse_loss(
            x, torch.zeros_like(x), weight=torch.linspace(0.1, 2, x.numel()).view_as(x).to(x.dtype)
        ),
        (16, 8),
    ),
    "nll_loss": (
        lambda M, x: M.nll_loss(x, torch.arange(8) % 4, torch.tensor([0.5, 1.0, 2.0, 1.5]).to(x.dtype)),
        (8, 4),
    ),
    "cross_entropy": (
        lambda M, x: M.cross_entropy(
            4 * x, torch.arange(8) % 4, torch.tensor([0.5, 1, 2, 1.5]).to(x.dtype), label_smoothing=0.1
        ),
        (8, 4),
    ),
    "avg_pool2d": (lambda M, x: M.avg_pool2d(x, 3, 1, 1), (2, 3, 9, 9)),
    "adaptive_avg_pool2d": (lambda M, x: M.adaptive_avg_pool2d(x, (4, 3)), (2, 3, 9, 7)),
    "max_pool2d": (lambda M, x: M.max_pool2d(x, 3, 1, 1), (2, 3, 9, 9)),
    "batch_norm": (lambda M, x: M.batch_norm(x, None, None, training=True), (4, 3, 5, 5)),
    "leaky_relu": (lambda M, x: M.leaky_relu(x, 0.3), (16, 8)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(_HALF))
def test_half_precision_gradients_as_close_to_the_truth_as_torch(name, dtype, both_formulas):
    """Every op's half-precision gradient within torch's own distance to the float64 gradient (torch sums and
    divides in float32; so do we, casting back once)."""
    f, shape = _HALF[name]
    x, delta = torch.randn(shape).to(dtype), None

    def grad(M, d):
        nonlocal delta
        leaf = x.to(d).clone().requires_grad_()
        out = f(M, leaf)
        delta = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        (g,) = torch.autograd.grad(out, leaf, delta.to(d))
        return g.double()

    truth, ours, theirs = grad(F, torch.float64), grad(BF, dtype), grad(F, dtype)
    scale = truth.abs().max()
    assert (ours - truth).abs().max() / scale <= 1.25 * (theirs - truth).abs().max() / scale + 1e-4


# --- gradient layouts: torch's, for channels_last, transposed and sliced inputs and upstream gradients --------------

_TARGET = torch.zeros(2, 4, 5, dtype=torch.long)
_LAYOUT_OPS = {
    "relu": lambda M, x: M.relu(x),
    "leaky_relu": lambda M, x: M.leaky_relu(x, 0.1),
    "tanh": lambda M, x: (M.tanh if M is BF else torch.tanh)(x),
    "sigmoid": lambda M, x: (M.sigmoid if M is BF else torch.sigmoid)(x),
    "softmax": lambda M, x: M.softmax(x, 1),
    "log_softmax": lambda M, x: M.log_softmax(x, 1),
    "mse_loss": lambda M, x: M.mse_loss(x, torch.ones(2, 3, 4, 5)),
    "mse_loss none": lambda M, x: M.mse_loss(x, torch.ones(2, 3, 4, 5), reduction="none"),
    "mse_loss weight": lambda M, x: M.mse_loss(x, torch.ones(2, 3, 4, 5), weight=torch.ones(2, 3, 4, 5)),
    "adaptive_avg_pool2d 1x1": lambda M, x: M.adaptive_avg_pool2d(x, 1),
    "adaptive_avg_pool2d 3x3": lambda M, x: M.adaptive_avg_pool2d(x, 3),
    "avg_pool2d overlapping": lambda M, x: M.avg_pool2d(x, 3, 1, 1),
    "max_pool2d overlapping": lambda M, x: M.max_pool2d(x, 3, 1, 1),
    "batch_norm": lambda M, x: M.batch_norm(x, None, None, training=True),
    "cross_entropy": lambda M, x: M.cross_entropy(x, _TARGET),
    "cross_entropy none": lambda M, x: M.cross_entropy(x, _TARGET, reduction="none"),
}


def _laid_out(shape, kind):
    if kind == "channels_last" and len(shape) == 4:
        return torch.randn(shape).contiguous(memory_format=torch.channels_last)
    if kind == "transposed" and len(shape) == 4:
        return torch.randn(*shape[:2], shape[3], shape[2]).transpose(2, 3)
    if kind == "sliced" and len(shape) == 4:
        return torch.randn(*shape[:3], 2 * shape[3])[..., ::2]
    return torch.randn(shape)


@pytest.mark.parametrize("delta_layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("input_layout", ["contiguous", "channels_last", "transposed", "sliced"])
@pytest.mark.parametrize("name", list(_LAYOUT_OPS))
def test_gradient_strides_are_torchs(name, input_layout, delta_layout, both_formulas):
    """tanh's and sigmoid's gradients follow δ (torch's TensorIterator puts δ first), log_softmax's and the
    unweighted squared error's are contiguous (torch's kernels allocate them so), adaptive pooling to 1×1 too."""
    f, x = _LAYOUT_OPS[name], _laid_out((2, 3, 4, 5), input_layout)
    strides = []
    for M in (BF, F):
        leaf = x.clone(memory_format=torch.preserve_format).requires_grad_()
        out = f(M, leaf)
        delta = _laid_out(tuple(out.shape), delta_layout)
        (grad,) = torch.autograd.grad(out, leaf, delta)
        strides.append(grad.stride())
    assert strides[0] == strides[1]


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("input_layout", ["channels_last", "transposed"])
def test_nll_loss_of_a_non_contiguous_input_differentiates(input_layout, reduction):
    """torch's nll_loss accepts a non-contiguous 4-D input, then its backward refuses it ("grad_input must be
    contiguous"); ours differentiates it, as its contiguous copy (pinned: README Limits)."""
    x = _laid_out((2, 3, 4, 5), input_layout).double()
    ours = _grads(lambda t: BF.nll_loss(t, _TARGET, reduction=reduction), [x], {}, (0,))
    theirs = _grads(lambda t: F.nll_loss(t, _TARGET, reduction=reduction), [x.contiguous()], {}, (0,))
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(RuntimeError, match="grad_input must be contiguous"):
        _grads(lambda t: F.nll_loss(t, _TARGET, reduction=reduction), [x], {}, (0,))


# --- PyTorch's own OpInfo samples ------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_of_an_empty_1d_input(training):
    """torch returns an empty 1-D input as it is (the parameters' gradients zero), whatever the statistics."""
    results = []
    for M in (BF, F):
        x, w, b = (
            torch.empty(0, requires_grad=True),
            torch.ones(3, requires_grad=True),
            torch.ones(3, requires_grad=True),
        )
        out = M.batch_norm(x, torch.empty(0), torch.empty(0), w, b, training=training)
        out.sum().backward()
        results.append((out, x.grad, w.grad, b.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["nn.functional.batch_norm", "nn.functional.cross_entropy"])
def test_torchs_opinfo_samples(name):
    """torch's own samples (common_methods_invocations.op_db): values, gradients and second order in float64."""
    common = pytest.importorskip("torch.testing._internal.common_methods_invocations")
    ours = getattr(BF, name.rsplit(".", 1)[1])
    for op in (o for o in common.op_db if o.name == name):
        for sample in op.sample_inputs("cpu", torch.float64, requires_grad=True):
            args, kwargs = (sample.input, *sample.args), sample.kwargs
            leaves = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
            expected, out = op(*args, **kwargs), ours(*args, **kwargs)
            torch.testing.assert_close(out, expected, equal_nan=True)
            delta = torch.randn_like(expected)
            first = [
                torch.autograd.grad(o, leaves, delta, create_graph=True, allow_unused=True) for o in (out, expected)
            ]
            for a, b in zip(*first):
                torch.testing.assert_close(a, b, equal_nan=True)
            connected = [
                i for i, (a, b) in enumerate(zip(*first)) if a is not None and a.requires_grad and b.requires_grad
            ]
            if connected:
                second = [
                    torch.autograd.grad(
                        sum((g[i] ** 2).sum() for i in connected), leaves, allow_unused=True, materialize_grads=True
                    )
                    for g in first
                ]
                for a, b in zip(*second):
                    torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.parametrize(
    "inplace",
    [
        BF.relu_, lambda x: BF.relu(x, inplace=True), BF.leaky_relu_, BF.hardtanh_,
        lambda x: BF.relu6(x, inplace=True), lambda x: BF.hardsigmoid(x, inplace=True),
        lambda x: BF.hardswish(x, inplace=True), lambda x: BF.silu(x, inplace=True),
        lambda x: BF.dropout(x, 0.5, True, inplace=True),
    ],
    ids=["relu_", "relu", "leaky_relu_", "hardtanh_", "relu6", "hardsigmoid", "hardswish", "silu", "dropout"],
)  # fmt: skip
def test_in_place_under_no_grad_returns_the_tensor_it_overwrote(inplace):
    """As torch's in-place ops: under no_grad (an optimiser's or an initialiser's update of a parameter), the call
    returns its input itself, still a leaf that requires grad."""
    weight = torch.tensor([-1.0, 2.0, 0.5], requires_grad=True)
    with torch.no_grad():
        out = inplace(weight)
    assert out is weight and out.requires_grad and out.is_leaf


@pytest.mark.parametrize("devices", [("meta", "cpu"), ("cpu", "meta")], ids="-".join)
def test_a_meta_tensor_beside_cpu_ones_computes_as_torchs(devices):
    """torch runs conv2d and linear with a meta input and CPU parameters (or the reverse) for their shapes alone,
    as a model's dry run uses it; ours did not, and raised on the devices."""
    x_device, w_device = devices
    x = torch.randn(2, 3, 8, 8, device=x_device)
    w, b, v = (torch.randn(*shape, device=w_device) for shape in ((4, 3, 3, 3), (4,), (5, 192)))
    for ours, theirs in (
        (BF.conv2d(x, w, b), F.conv2d(x, w, b)),
        (BF.linear(x.flatten(1), v), F.linear(x.flatten(1), v)),
    ):
        assert (ours.shape, ours.device) == (theirs.shape, theirs.device)
