"""max_pool2d, adaptive_avg_pool2d and batch_norm (eq. M1–M12) against torch: random configurations, the running
statistics bit for bit, forward-mode AD, zero sizes, layouts, dtypes and the transforms. The shared grid
(bp_torch.check.CASES) runs through test_parity.py and test_gradcheck.py too."""

import pytest
import torch
import torch.nn.functional as F
from cases import adaptive_pool_cases, max_pool_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacfwd, jacrev, vmap

import bp_torch
from bp_torch import functional as BF
from bp_torch import nn as bnn
from bp_torch.check import Case, passes_gradcheck

pytestmark = pytest.mark.usefixtures("both_formulas")  # every test, fast and literal formulations


def _grads(f, inputs, grad_output):
    return torch.autograd.grad(f(*inputs), [t for t in inputs if t.requires_grad], grad_output)


# ---------------------------------------------------------------------------------------------------------------
# max pooling (eq. M1–M3)


@settings(max_examples=40, deadline=None)
@given(case=max_pool_cases(), channels_last=st.booleans())
def test_max_pool2d_random_configs_match_native(case, channels_last):
    """Same output and indices (torch's own picks), the same gradient to the bit (δ routed, not recomputed)."""
    x = case.input(requires_grad=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out, indices = BF.max_pool2d(x, **case.options, return_indices=True)
    native, native_indices = F.max_pool2d(x, **case.options, return_indices=True)
    assert torch.equal(out, native) and torch.equal(indices, native_indices)
    assert out.is_contiguous(memory_format=torch.channels_last) == native.is_contiguous(
        memory_format=torch.channels_last
    )
    grad = torch.randn_like(native)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gx_native,) = torch.autograd.grad(native, x, grad)
    assert torch.equal(gx, gx_native)
    assert _same_layout(gx, gx_native) or min(x.shape[1:]) == 1  # a size-1 dim: both layouts at once


@settings(max_examples=30, deadline=None)
@given(max_pool_cases())
def test_max_pool2d_random_configs_gradcheck(case):
    pool = Case(
        "max_pool2d random", BF.max_pool2d, None, lambda d, t: (case.input(t, d, requires_grad=False),), case.options
    )
    assert passes_gradcheck(pool)
    assert passes_gradcheck(pool, second_order=True)


def test_max_pool2d_ties_nan_and_overlap_route_as_torch():
    """Ties go to the first maximum in scan order and NaN wins, as torch's forward picks; where overlapping windows
    pick the same input, their δ add up (eq. M2)."""
    x = torch.tensor([[[[1.0, 1.0, 0.0], [1.0, 5.0, 0.0], [float("nan"), 0.0, 2.0]]]], requires_grad=True)
    for options in [dict(kernel_size=2, stride=1), dict(kernel_size=2, stride=1, padding=1, ceil_mode=True)]:
        out, native = BF.max_pool2d(x, **options), F.max_pool2d(x, **options)
        torch.testing.assert_close(out, native, equal_nan=True)
        grad = torch.arange(1.0, native.numel() + 1).reshape(native.shape)
        ours, theirs = (_grads(lambda x, f=f, o=options: f.max_pool2d(x, **o), [x], grad)[0] for f in (BF, F))
        assert torch.equal(ours, theirs)
    (g,) = _grads(lambda x: BF.max_pool2d(x, 2, stride=1), [x], torch.ones(1, 1, 2, 2))
    assert g[0, 0, 1, 1] == 3  # the 5 is the maximum of three windows (the NaN takes the fourth)


@pytest.mark.parametrize(
    ("size", "options"),
    [
        ((1, 1), dict(kernel_size=(2, 1), padding=(1, 0), dilation=(2, 1))),
        ((3, 1), dict(kernel_size=(1, 2), padding=(0, 1), dilation=(1, 2))),
    ],
)
def test_max_pool2d_windows_that_miss_the_input(size, options):
    """Dilated taps that all fall in the padding: the window's maximum is −∞ and torch's index points past the
    plane (its δ dropped) or, past a row's end, into the next row (its δ added there): the same here."""
    x = torch.randn(1, 1, *size, requires_grad=True)
    out, indices = BF.max_pool2d(x, **options, return_indices=True)
    native, native_indices = F.max_pool2d(x, **options, return_indices=True)
    assert torch.equal(out, native) and torch.equal(indices, native_indices) and out.isinf().all()
    grad = torch.arange(1.0, out.numel() + 1).reshape(out.shape)
    assert torch.equal(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(native, x, grad)[0])
    tangent = torch.randn_like(x)
    # native's forward AD raises here (its gather runs past the plane): the tangent reads where the gradient goes
    (_, ours) = torch.func.jvp(lambda x: BF.max_pool2d(x, **options), (x,), (tangent,))
    inside = indices < x[0, 0].numel()
    assert torch.equal(ours, torch.where(inside, tangent.flatten()[indices * inside], 0))


def test_max_pool2d_with_indices_and_the_module():
    x = torch.randn(2, 3, 9, 9)
    out, indices = BF.max_pool2d_with_indices(x, 3, 2, 1)
    native, native_indices = F.max_pool2d_with_indices(x, 3, 2, 1)
    assert torch.equal(out, native) and torch.equal(indices, native_indices) and indices.dtype == torch.int64
    module = bnn.MaxPool2d(3, 2, 1, return_indices=True)
    assert all(torch.equal(a, b) for a, b in zip(module(x), (native, native_indices)))
    assert not module(x.requires_grad_())[1].requires_grad


def test_max_pool2d_second_derivatives_are_hand_written():
    """The gradient of eq. M2's scatter is the gather (M3) and the other way round, both our Functions."""
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    (gx,) = torch.autograd.grad(BF.max_pool2d(x, 3, 2, 1).pow(2).sum(), x, create_graph=True)
    names = _node_names(gx.grad_fn)
    assert "MaxPool2dInputGradFunctionBackward" in names and not any("MaxPool2DWithIndices" in n for n in names)
    (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x, create_graph=True)
    assert "MaxPool2dGatherFunctionBackward" in _node_names(ggx.grad_fn)


# ---------------------------------------------------------------------------------------------------------------
# adaptive mean pooling (eq. M4, M5)


@settings(max_examples=40, deadline=None)
@given(case=adaptive_pool_cases(), channels_last=st.booleans())
def test_adaptive_avg_pool2d_random_configs_match_native(case, channels_last):
    x = case.input(requires_grad=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out, native = BF.adaptive_avg_pool2d(x, **case.options), F.adaptive_avg_pool2d(x, **case.options)
    assert torch.equal(out, native)
    grad = torch.randn_like(native)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gx_native,) = torch.autograd.grad(native, x, grad)
    torch.testing.assert_close(gx, gx_native, rtol=0, atol=1e-14)  # float64; windows summed in another order
    # native's layout: the input's, but contiguous for a 1×1 output (torch's mean over H and W)
    assert _same_layout(gx, gx_native)


@settings(max_examples=30, deadline=None)
@given(adaptive_pool_cases())
def test_adaptive_avg_pool2d_random_configs_gradcheck(case):
    pool = Case(
        "adaptive_avg_pool2d random",
        BF.adaptive_avg_pool2d,
        None,
        lambda d, t: (case.input(t, d, requires_grad=False),),
        case.options,
    )
    assert passes_gradcheck(pool)
    assert passes_gradcheck(pool, second_order=True)


def test_adaptive_windows_follow_torchs_start_end_rule():
    """Output i averages rows ⌊i·H/H_out⌋ … ⌈(i+1)·H/H_out⌉ − 1: for 5 rows into 3, rows {0, 1}, {1, 2, 3}, {3, 4};
    the backward gives row 1 and row 3 a share of two windows each (eq. M5)."""
    x = torch.arange(5.0).reshape(1, 1, 5, 1).requires_grad_()
    out = BF.adaptive_avg_pool2d(x, (3, 1))
    assert out.flatten().tolist() == [0.5, 2.0, 3.5]
    out.sum().backward()
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2]))


# ---------------------------------------------------------------------------------------------------------------
# batch normalisation (eq. M6–M12)

SHAPES = [(6, 4), (4, 3, 7), (4, 3, 5, 6), (2, 3, 3, 4, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_batch_norm_matches_native_and_updates_running_stats_bit_for_bit(shape, training, affine, dtype):
    C = shape[1]
    x = (torch.randn(shape, dtype=dtype) * 3 + 1).requires_grad_()
    w, b = (torch.randn(C, dtype=dtype, requires_grad=True) for _ in range(2)) if affine else (None, None)
    stats = [torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 0.5]
    ours, theirs = [s.clone() for s in stats], [s.clone() for s in stats]
    out = BF.batch_norm(x, *ours, w, b, training, 0.2, 1e-3)
    native = F.batch_norm(x, *theirs, w, b, training, 0.2, 1e-3)
    assert torch.equal(out, native)  # torch's kernel runs the forward (eq. M6)
    assert all(torch.equal(a, c) for a, c in zip(ours, theirs))  # and the running statistics' update (eq. M7)
    assert training or all(torch.equal(a, c) for a, c in zip(ours, stats))
    inputs = [t for t in (x, w, b) if t is not None]
    grad = torch.randn_like(native)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-4}[dtype]  # sums over m values in another order
    for mine, native_grad in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(native, inputs, grad)):
        torch.testing.assert_close(mine, native_grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum 0.1", "cumulative average"])
def test_batch_norm2d_module_trains_and_evaluates_as_torch(momentum):
    """Five training steps (running statistics and num_batches_tracked bit for bit, momentum=None the cumulative
    moving average), then eval mode with the running statistics."""
    torch.manual_seed(0)
    native = torch.nn.BatchNorm2d(3, momentum=momentum)
    ours = bnn.BatchNorm2d(3, momentum=momentum)
    ours.load_state_dict(native.state_dict())
    for step in range(5):
        x = torch.randn(4, 3, 5, 5) * (step + 1) + step
        assert torch.equal(ours(x), native(x))
    for (name, a), (_, b) in zip(ours.state_dict().items(), native.state_dict().items()):
        assert torch.equal(a, b), name
    assert ours.num_batches_tracked.item() == 5
    ours.eval(), native.eval()
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(ours(x), native(x))


def test_batch_norm2d_without_running_stats_uses_batch_statistics_in_eval():
    native, ours = torch.nn.BatchNorm2d(3, track_running_stats=False), bnn.BatchNorm2d(3, track_running_stats=False)
    ours.load_state_dict(native.state_dict())
    ours.eval(), native.eval()
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    out, ref = ours(x), native(x)
    assert torch.equal(out, ref)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_half_input_with_float_parameters_as_under_autocast(training):
    """A bfloat16 map with float32 γ, β and running statistics (what autocast hands a BatchNorm after a conv):
    the output and δ stay bfloat16, ∂e/∂γ and ∂e/∂β float32, as native."""
    x = torch.randn(4, 3, 6, 6).bfloat16().requires_grad_()
    w, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    stats = [torch.zeros(3), torch.ones(3)], [torch.zeros(3), torch.ones(3)]
    out, native = BF.batch_norm(x, *stats[0], w, b, training), F.batch_norm(x, *stats[1], w, b, training)
    assert out.dtype == native.dtype == torch.bfloat16 and torch.equal(out, native)
    grad = torch.randn_like(native)
    for mine, theirs in zip(torch.autograd.grad(out, (x, w, b), grad), torch.autograd.grad(native, (x, w, b), grad)):
        assert mine.dtype == theirs.dtype
        # bfloat16 keeps 8 bits: compare relative to the largest value, at a few of its ulps
        assert (mine.float() - theirs.float()).abs().max() <= 2e-2 * theirs.abs().max().float().clamp(min=1)


def test_batch_norm_double_backward_sees_mean_and_variance_move():
    """create_graph: the backward recomputes μ, σ̂ from x, so second derivatives include their dependence on x."""
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def second(f):
        (gx,) = torch.autograd.grad(f.batch_norm(x, None, None, w, None, True).pow(3).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), (x, w))

    for ours, native in zip(second(BF), second(F)):
        torch.testing.assert_close(ours, native)


# ---------------------------------------------------------------------------------------------------------------
# all three: forward-mode AD, zero sizes, torch.func, torch.compile, autocast

OPS = {
    "max_pool2d": (lambda f, x: f.max_pool2d(x, 3, 2, 1, ceil_mode=True), (2, 3, 8, 7)),
    "adaptive_avg_pool2d": (lambda f, x: f.adaptive_avg_pool2d(x, (3, None)), (2, 3, 7, 5)),
    "adaptive_avg_pool2d 1x1": (lambda f, x: f.adaptive_avg_pool2d(x, 1), (2, 3, 4, 5)),
    "batch_norm training": (lambda f, x: f.batch_norm(x, None, None, training=True), (3, 2, 4, 5)),
    "batch_norm eval": (lambda f, x: f.batch_norm(x, torch.zeros(2, dtype=x.dtype) + 0.5,
                                                  torch.ones(2, dtype=x.dtype) * 2), (3, 2, 4, 5)),
}  # fmt: skip


@pytest.mark.parametrize("name", OPS)
def test_forward_mode_ad_is_hand_written_and_correct(name):
    """gradcheck's forward-AD check (the Jacobian from jvp against finite differences), and jvp against native's."""
    op, shape = OPS[name]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: op(BF, x),
        (x,),
        check_forward_ad=True,
        check_backward_ad=False,
        check_undefined_grad=False,
        check_batched_grad=False,
    )
    tangent = torch.randn_like(x)
    _, ours = torch.func.jvp(lambda x: op(BF, x), (x.detach(),), (tangent,))
    _, native = torch.func.jvp(lambda x: op(F, x), (x.detach(),), (tangent,))
    torch.testing.assert_close(ours, native)


def test_batch_norm_forward_mode_ad_with_affine_tangents():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w, b = (torch.randn(2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    stats = (torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5)
    for training in (True, False):

        def op(x, w, b, training=training):
            return BF.batch_norm(x, stats[0].clone(), stats[1].clone(), w, b, training)

        assert torch.autograd.gradcheck(
            op,
            (x, w, b),
            check_forward_ad=True,
            check_backward_ad=False,
            check_undefined_grad=False,
            check_batched_grad=False,
        )


@pytest.mark.parametrize("name", OPS)
def test_zero_batch(name):
    op, shape = OPS[name]
    x = torch.randn(0, *shape[1:], requires_grad=True)
    out, native = op(BF, x), op(F, x)
    assert out.shape == native.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_zero_sizes_batch_norm_parameters_and_adaptive_output():
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    w, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    BF.batch_norm(x, rm, rv, w, b, training=True).sum().backward()
    assert torch.equal(w.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(3))
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))  # nothing seen: nothing updated
    y = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = BF.adaptive_avg_pool2d(y, (0, 2))  # torch allows an empty output (its own backward then raises)
    assert out.shape == F.adaptive_avg_pool2d(y, (0, 2)).shape
    out.sum().backward()
    assert torch.equal(y.grad, torch.zeros_like(y))


@pytest.mark.parametrize("name", OPS)
def test_vmap_jacrev_jacfwd_and_hessian_match_native(name):
    op, shape = OPS[name]
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(vmap(lambda xi: op(BF, xi))(x[None]), op(F, x)[None])
    f, g = (lambda f: lambda x: op(f, x).pow(3).sum())(BF), (lambda f: lambda x: op(f, x).pow(3).sum())(F)
    torch.testing.assert_close(jacrev(f)(x), jacrev(g)(x))
    torch.testing.assert_close(jacfwd(f)(x), jacrev(g)(x))
    small = x[:2, :, :3, :3]
    torch.testing.assert_close(jacrev(jacrev(f))(small), jacrev(jacrev(g))(small))
    # forward over reverse: the Function's jvp under vmap over its vjp, pair arguments as bp_torch._function.Leaf
    torch.testing.assert_close(jacfwd(jacrev(f))(small), jacrev(jacrev(g))(small))


def test_per_sample_gradients_through_every_layer():
    """vmap(grad) over conv → batch norm (eval) → max pool → adaptive pool → linear equals a loop of grads."""
    torch.manual_seed(0)
    w, fc = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(2, 4 * 2 * 2, dtype=torch.float64)
    gamma, beta = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)

    def loss(w, gamma, xi):
        h = BF.batch_norm(BF.conv2d(xi[None], w, padding=1), rm, rv, gamma, beta)
        h = BF.adaptive_avg_pool2d(BF.max_pool2d(h, 3, 2, 1), 2)
        return BF.linear(h.flatten(1), fc).pow(2).sum()

    per_sample = vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0))(w, gamma, x)
    for i in range(x.shape[0]):
        for batched, single in zip(per_sample, torch.func.grad(loss, argnums=(0, 1))(w, gamma, x[i])):
            torch.testing.assert_close(batched[i], single)


def _block(f, x, w, gamma, beta, rm, rv):
    h = f.batch_norm(f.conv2d(x, w, padding=1), rm, rv, gamma, beta, training=True)
    return f.adaptive_avg_pool2d(f.max_pool2d(h.relu(), 3, 2, 1), 1).flatten(1)


def _block_args(dtype=torch.float32):
    make = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    return make(4, 3, 9, 9), make(5, 3, 3, 3), make(5), make(5), torch.zeros(5, dtype=dtype), torch.ones(5, dtype=dtype)


def test_torch_compile_fullgraph_matches_eager():
    """Traced with Dynamo in one graph (fullgraph): forward, the running-statistics update and the hand-written
    backward. aot_eager traces as torch.compile does, without compiling C++ on a CPU."""
    x, w, gamma, beta, rm, rv = _block_args()
    params = [t.requires_grad_() for t in (w, gamma, beta)]
    stats = [rm.clone(), rv.clone()]
    compiled = torch.compile(lambda *a: _block(BF, *a), fullgraph=True, backend="aot_eager")
    out = compiled(x, w, gamma, beta, *stats)
    eager = _block(BF, x, w, gamma, beta, rm, rv)
    torch.testing.assert_close(out, eager)
    assert all(torch.equal(a, b) for a, b in zip(stats, (rm, rv)))
    for a, b in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(eager.sum(), params)):
        torch.testing.assert_close(a, b)


def test_autocast_follows_torchs_rules():
    """Under CPU autocast the convolution runs in bfloat16 and the pools and batch norm keep what they are given
    (none is on autocast's lists), so each output's dtype and every gradient's dtype are native's."""
    args = _block_args()
    runs = []
    for f in (BF, F):
        x, w, gamma, beta, rm, rv = (a.clone() for a in args)
        params = [t.requires_grad_() for t in (w, gamma, beta)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _block(f, x, w, gamma, beta, rm, rv)
        runs.append((out, torch.autograd.grad(out.float().sum(), params), rm))
    (out, grads, rm), (native, native_grads, native_rm) = runs
    assert out.dtype == native.dtype == torch.bfloat16 and rm.dtype == native_rm.dtype == torch.float32
    # both in bfloat16 arithmetic, summed in another order: compare relative to the largest value
    torch.testing.assert_close(out.float(), native.float(), rtol=0, atol=3e-2 * native.abs().max().item())
    for g, n in zip(grads, native_grads):
        assert g.dtype == n.dtype == torch.float32
        assert (g - n).abs().max() <= 5e-2 * n.abs().max()


def test_literal_and_fast_formulations_agree():
    """The fast formulations (expanded Σδx̂, δ/(H·W) broadcast, upsampling) equal eq. M5 and M10 as written."""
    x = torch.randn(4, 3, 6, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for op in [
        lambda x: BF.batch_norm(x, None, None, w, None, True),
        lambda x: BF.adaptive_avg_pool2d(x, 1),
        lambda x: BF.adaptive_avg_pool2d(x, (3, 2)),
        lambda x: BF.adaptive_avg_pool2d(x, (4, 5)),
    ]:
        grad = torch.randn_like(op(x))
        with bp_torch.formulas("literal"):
            literal = _grads(op, [x], grad)
        with bp_torch.formulas("fast"):
            fast = _grads(op, [x], grad)
        torch.testing.assert_close(fast, literal, rtol=1e-12, atol=1e-12)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(
        a.is_contiguous(memory_format=f) == b.is_contiguous(memory_format=f)
        for f in (torch.contiguous_format, torch.channels_last)
    )


def _node_names(fn) -> set[str]:
    seen, stack = set(), [fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    return {type(node).__name__ for node in seen}
