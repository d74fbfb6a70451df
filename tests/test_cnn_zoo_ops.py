"""The CNN zoo's operations (hardtanh/relu6, hardsigmoid, hardswish, silu, mul, div, sum, mean) against torch:
values and gradients in float64/float32/bfloat16, gradcheck and gradgradcheck, forward mode, in-place calls, errors;
and bp_torch.routing, which sends a model's functional calls to them."""

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import bp_torch
from bp_torch import functional as BF
from bp_torch import nn as bnn
from bp_torch.audit import audit

KINKS = (-6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0)


def _away_from_kinks(t: torch.Tensor) -> torch.Tensor:
    """Move entries within 0.05 of a kink of the piecewise activations, where a finite difference is meaningless."""
    for k in KINKS:
        t = torch.where((t - k).abs() < 0.05, t + 0.1, t)
    return t


# (name, ours, torch's, input generator, extra args): one-input ops
UNARY = [
    ("hardtanh", BF.hardtanh, F.hardtanh, ()),
    ("hardtanh_range", BF.hardtanh, F.hardtanh, (-0.5, 2.0)),
    ("relu6", BF.relu6, F.relu6, ()),
    ("hardsigmoid", BF.hardsigmoid, F.hardsigmoid, ()),
    ("hardswish", BF.hardswish, F.hardswish, ()),
    ("silu", BF.silu, F.silu, ()),
    ("sum_all", BF.sum, torch.sum, ()),
    ("sum_dims", BF.sum, torch.sum, ((1, -1),)),
    ("sum_keepdim", BF.sum, torch.sum, (1, True)),
    ("mean_all", BF.mean, torch.mean, ()),
    ("mean_dims", BF.mean, torch.mean, ([2, 3],)),
    ("mean_keepdim", BF.mean, torch.mean, ((0, 2), True)),
]
IDS = [u[0] for u in UNARY]


def _input(dtype=torch.float64):
    return _away_from_kinks(torch.randn(2, 3, 4, 5, dtype=torch.float64) * 4).to(dtype).requires_grad_()


@pytest.mark.parametrize(("name", "ours", "native", "args"), UNARY, ids=IDS)
def test_unary_gradcheck_and_gradgradcheck(name, ours, native, args):
    x = _input()
    assert gradcheck(lambda t: ours(t, *args), (x,))
    assert gradgradcheck(lambda t: ours(t, *args), (x,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("name", "ours", "native", "args"), UNARY, ids=IDS)
def test_unary_equals_torch(name, ours, native, args, dtype, both_formulas):
    """Values and gradients as torch's, in torch's dtype; half precision against the float64 truth no further than
    torch's own (both compute the derivative in float32)."""
    x = _input(dtype)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x, *args), native(x_ref, *args)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    if dtype in (torch.bfloat16, torch.float16):
        x64 = x.detach().double().requires_grad_()
        (truth,) = torch.autograd.grad(native(x64, *args), x64, g.double())
        ours_err, torch_err = (dx.double() - truth).abs().max(), (dx_ref.double() - truth).abs().max()
        assert ours_err <= torch_err * 1.01 + 1e-6, (ours_err, torch_err)
    else:
        torch.testing.assert_close(dx, dx_ref)


@pytest.mark.parametrize("op", ["hardtanh", "relu6", "hardsigmoid", "hardswish", "silu"])
def test_activations_at_their_kinks_as_torch(op, both_formulas):
    """Exactly at the kinks (±3, ±1, 0, 6) each derivative takes torch's value, in both formula modes."""
    x = torch.tensor(KINKS + (-7.0, 2.0, 7.0), requires_grad=True)
    (ours,) = torch.autograd.grad(getattr(BF, op)(x * 1).sum(), x)
    (native,) = torch.autograd.grad(getattr(F, op)(x * 1).sum(), x)
    torch.testing.assert_close(ours, native)


@pytest.mark.parametrize(("name", "ours", "native", "args"), UNARY, ids=IDS)
def test_unary_forward_mode(name, ours, native, args):
    x, t = _input().detach(), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    _, ours_t = torch.func.jvp(lambda v: ours(v, *args), (x,), (t,))
    _, native_t = torch.func.jvp(lambda v: native(v, *args), (x,), (t,))
    torch.testing.assert_close(ours_t, native_t)


@pytest.mark.parametrize("op", ["hardtanh", "relu6", "hardsigmoid", "hardswish", "silu"])
@pytest.mark.parametrize("view", [False, True], ids=["tensor", "view"])
def test_inplace_activations_equal_torch_and_stay_derived(op, view):
    """In place on an intermediate (and on a view of one, whose CopySlices node bp_torch marks structural)."""
    x = _input(torch.float32)
    runs = []
    for fn in (getattr(BF, op), getattr(F, op)):
        base = BF.mul(x, 1.0)
        target = base[:, 1:] if view else base
        out = fn(target, inplace=True)
        assert out is target
        (dx,) = torch.autograd.grad(base.sum(), x)
        runs.append((base.detach(), dx, base))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1])
    assert audit(BF.sum(runs[0][2])).all_derived
    assert not audit(BF.sum(runs[1][2])).all_derived  # torch's own in-place op: a native node, seen


BROADCASTS = [((2, 3, 4, 5), (2, 3, 1, 1)), ((2, 1, 1, 1), (2, 3, 4, 5)), ((3, 1), (4,)), ((2, 3), ())]


@pytest.mark.parametrize("op", ["mul", "div"])
@pytest.mark.parametrize(("a_shape", "b_shape"), BROADCASTS)
def test_binary_gradcheck_and_broadcasting(op, a_shape, b_shape):
    a = torch.randn(a_shape, dtype=torch.float64, requires_grad=True)
    b = (torch.rand(b_shape, dtype=torch.float64) + 0.5).requires_grad_()
    fn = getattr(BF, op)
    assert gradcheck(fn, (a, b)) and gradgradcheck(fn, (a, b))
    out = fn(a, b)
    torch.testing.assert_close(out, getattr(torch, op)(a, b))
    (da, db) = torch.autograd.grad(out.sum(), (a, b))
    assert da.shape == a.shape and db.shape == b.shape  # eq. E3: summed back to each operand's shape
    primals, tangents = (a.detach(), b.detach()), (torch.randn_like(a), torch.randn_like(b))
    _, tangent = torch.func.jvp(fn, primals, tangents)
    _, native_tangent = torch.func.jvp(getattr(torch, op), primals, tangents)
    torch.testing.assert_close(tangent, native_tangent)


@pytest.mark.parametrize("op", ["mul", "div"])
@pytest.mark.parametrize(
    ("a_dtype", "b"),
    [(torch.float32, 0.5), (torch.bfloat16, 3), (torch.float32, torch.tensor(2.0, dtype=torch.float64))],
    ids=["float-scalar", "bf16-int", "f32-0d-f64"],
)
def test_binary_dtypes_and_scalars_as_torch(op, a_dtype, b):
    """torch's type promotion (a 0-d float64 tensor does not promote a float32 one), gradients in each operand's
    own dtype."""
    a = torch.randn(3, 4, dtype=a_dtype, requires_grad=True)
    b_ours = b.clone().requires_grad_() if isinstance(b, torch.Tensor) else b
    b_ref = b.clone().requires_grad_() if isinstance(b, torch.Tensor) else b
    a_ref = a.detach().clone().requires_grad_()
    y, y_ref = getattr(BF, op)(a, b_ours), getattr(torch, op)(a_ref, b_ref)
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y, y_ref)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)
    if isinstance(b, torch.Tensor):
        assert b_ours.grad.dtype == b_ref.grad.dtype
        torch.testing.assert_close(b_ours.grad, b_ref.grad)


def test_errors_are_torchs():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        BF.hardtanh(x, 2.0, 1.0)
    with pytest.raises(TypeError, match="other"):
        BF.mul(x, "2")
    with pytest.raises(TypeError):
        BF.silu([1.0])
    with pytest.raises(RuntimeError):  # torch's: a mean needs a floating or complex dtype
        BF.mean(torch.arange(3))
    with pytest.raises(IndexError):  # torch's: dimension out of range
        BF.sum(x * 1, 3)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        BF.silu(x, inplace=True)


def test_sum_and_mean_with_dtype():
    x = torch.randn(2, 3, requires_grad=True)
    y = BF.sum(x, 1, dtype=torch.float64)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert x.grad.dtype == torch.float32 and torch.equal(x.grad, torch.ones(2, 3))
    assert BF.mean(torch.ones(2, 3, requires_grad=True), dim=()).shape == torch.Size([])


# --- routing ---------------------------------------------------------------------------------------------------------


def test_routed_sends_functional_calls_and_methods_to_bp_torch():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    w = torch.randn(2, 3, 1, 1, requires_grad=True)
    with bp_torch.routed():
        y = F.relu(x) * w
        y = torch.sigmoid(y).mean([2, 3]) / 2.0
        y = F.silu(y).sum() + (F.gelu(x).flatten(1) @ torch.ones(48, 2)).sum()
    report = audit(y)
    assert report.all_derived, str(report)
    names = {n.name for n in report.nodes}
    assert {"ReluFunctionBackward", "MulFunctionBackward", "MeanFunctionBackward", "DivFunctionBackward"} <= names
    assert {"GeluFunctionBackward", "MatmulFunctionBackward"} <= names  # the transformer's (eq. T) too
    assert not torch.overrides._get_current_function_mode_stack()  # the mode is off again


def test_routed_operators_take_numpy_scalars_and_refuse_as_torch():
    x = torch.randn(3, requires_grad=True)
    with bp_torch.routed():
        assert (x * np.int64(2)).grad_fn.name() == "MulFunctionBackward"
        assert (np.float32(0.5) * x).grad_fn.name() == "MulFunctionBackward"
        with pytest.raises(TypeError):  # the operator returns NotImplemented, and Python raises, as without routing
            x * "a"


class Net(torch.nn.Module):
    """Functional calls bp_torch has (relu, max_pool2d, mean, ``*``) and one it has not (softplus)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.conv(x)), 2)
        return F.softplus(y).mean([2, 3]) * 2


class InPlace(torch.nn.Module):
    """In-place calls that stay native: an exponential written over its input."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        y.exp_()
        return y.flatten()


def test_converted_model_names_in_place_calls_that_stay_native():
    """An in-place call moves its input's node to the one it made: that node is the call's, and named."""
    model, summary = bnn.convert(InPlace())
    model(torch.randn(2, 4))
    assert summary.native_calls == {"Tensor.exp_": "ExpBackward0"}


def test_converted_model_routes_and_names_what_stays_native():
    model, summary = bnn.convert(Net())
    assert summary.native_calls == {}
    out = model(torch.randn(2, 3, 8, 8))
    assert summary.native_calls == {"torch.nn.functional.softplus": "SoftplusBackward0"}
    assert "torch.nn.functional.softplus (SoftplusBackward0)" in str(summary)
    assert [n.name for n in audit(BF.sum(out)).native] == ["SoftplusBackward0"]
    restored = torch.load(io.BytesIO(_saved(model)), weights_only=False)  # pickled whole, hooks and all
    assert restored(torch.randn(1, 3, 8, 8)).grad_fn.name() == "MulFunctionBackward"
    twin = copy.deepcopy(model)
    bnn.to_native(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert model(torch.randn(1, 3, 8, 8)).grad_fn.name() == "MulBackward0"
    assert twin(torch.randn(1, 3, 8, 8)).grad_fn.name() == "MulFunctionBackward"


def _saved(model) -> bytes:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


def test_a_forward_that_raises_leaves_no_mode_on():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("broken")

    model, _ = bnn.convert(Broken())
    with pytest.raises(ValueError, match="broken"):
        model(torch.randn(2))
    assert not torch.overrides._get_current_function_mode_stack()


def test_converted_model_compiles_in_one_graph():
    """Under torch.compile the routing hooks stand aside (the swapped modules keep their Functions): one graph, and
    eager's outputs and gradients."""
    model, _ = bnn.convert(Net())
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, reference = compiled(x), model(x)
    torch.testing.assert_close(out, reference)
    (grad,) = torch.autograd.grad(out.sum(), model.conv.weight)
    (grad_reference,) = torch.autograd.grad(reference.sum(), model.conv.weight)
    torch.testing.assert_close(grad, grad_reference)


class Windows(torch.nn.Module):
    """swin's moves: a constant pad, a roll, slices and a table read at a repeated index — and a reflect pad, which
    bp_torch leaves to torch."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(5))
        self.register_buffer("index", torch.tensor([[0, 4], [4, 4]]))

    def forward(self, x):
        x = torch.roll(F.pad(x, (1, 1, 0, 2)), shifts=(1, -1), dims=(2, 3))
        x = x[..., 0::2, 1::2] + self.table[self.index]
        return F.pad(x, (1, 1, 1, 0), mode="reflect")


def test_converted_model_routes_index_roll_and_pad():
    model, summary = bnn.convert(Windows())
    x = torch.randn(1, 2, 2, 2, requires_grad=True)
    out = model(x)
    names = {n.name for n in audit(BF.sum(out)).nodes if n.kind == "derived"}
    assert {"GetItemFunctionBackward", "RollFunctionBackward", "ConstantPadFunctionBackward"} <= names
    # the reflect pad is torch's own: named as the other calls left native are
    assert summary.native_calls == {"torch.nn.functional.pad": "ReflectionPad2DBackward0"}
    grads = torch.autograd.grad(out.sum(), (x, model.table))
    native = bnn.to_native(copy.deepcopy(model))[0]
    expected = torch.autograd.grad(native(x).sum(), (x, native.table))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


class WritesThroughViews(torch.nn.Module):
    """Writes through basic-indexing views in place, and ReLU(inplace=True) after a Linear on a 4-D input (swin_v2's
    relative position MLP): drop-in means these run as they do natively."""

    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(inplace=True), torch.nn.Linear(8, 3))

    def forward(self, x):
        y = self.mlp(x)  # (1, 4, 4, 3)
        y[..., 0] += 1
        y[:, :2].mul_(2)
        return y[:, torch.tensor([0, 0, 3])]  # an index tensor: bp_torch's getitem


def test_converted_model_writes_through_views_as_native():
    torch.manual_seed(0)
    model, _ = bnn.convert(WritesThroughViews())
    native = bnn.to_native(copy.deepcopy(model))[0]
    x = torch.randn(1, 4, 4, 2, requires_grad=True)
    out, expected = model(x), native(x)
    torch.testing.assert_close(out, expected)
    assert "GetItemFunctionBackward" in {n.name for n in audit(BF.sum(out)).nodes}
    grads = torch.autograd.grad(out.sum(), (x, *model.parameters()))
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), (x, *native.parameters()))):
        torch.testing.assert_close(got, want)
