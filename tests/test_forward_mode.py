"""Forward mode through each Function's hand-written jvp (docs/derivation.md, J 1–J 6): gradcheck's forward-AD
checks, torch.func.jvp and torch.autograd.forward_ad against native, jacfwd, and a network's Hessian equal to
native's — computed through the jvp of the gradient Functions."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from cases import CHECK_CASES as CASES
from test_transforms import _block, _params
from torch.autograd import gradcheck, gradgradcheck
from torch.func import hessian, jacfwd, jacrev, jvp

from bp_torch import functional as BF
from bp_torch._function import apply
from bp_torch.autograd import Conv2dInputGradFunction, Conv2dWeightGradFunction
from bp_torch.check import Case

pytestmark = pytest.mark.usefixtures("both_formulas")


def _fn(case: Case, which: str):
    f = case.manual if which == "ours" else case.native
    return lambda *args: f(*args, **case.options)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradcheck_forward_ad(case, device):
    """vmapped forward mode too — but for an in-place op, whose tangent gradcheck's legacy vmap re-wraps so that no
    jvp can return it modified in place, and for dropout, whose draw legacy vmap refuses (as it refuses torch's)."""
    inputs = case.inputs(device, torch.float64)
    batched = "inplace" not in case.name and "dropout" not in case.name
    assert gradcheck(_fn(case, "ours"), inputs, check_forward_ad=True, check_batched_forward_grad=batched)
    assert gradgradcheck(_fn(case, "ours"), inputs, check_fwd_over_rev=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_torch_func_jvp_and_dual_tensors_equal_native(case, device):
    inputs = case.inputs(device, torch.float64, requires_grad=False)
    # those with a gradient: not class-index targets, nor a class weight with them (torch refuses its gradient, and
    # its forward mode gives it a tangent only through the label-smoothing term)
    marked = case.inputs(device, torch.float64)
    differentiable = [i for i, t in enumerate(marked) if t.requires_grad]

    def at(fn):  # fn of the differentiable inputs, the others fixed
        def call(*primals):
            args = list(inputs)
            for i, p in zip(differentiable, primals):
                args[i] = p
            return fn(*args)

        return call

    primals = tuple(inputs[i] for i in differentiable)
    tangents = tuple(torch.randn_like(p) for p in primals)
    out, out_t = jvp(at(_fn(case, "ours")), primals, tangents)
    native, native_t = jvp(at(_fn(case, "native")), primals, tangents)
    torch.testing.assert_close(out, native)
    torch.testing.assert_close(out_t, native_t)
    with fwAD.dual_level():  # eager forward-mode AD: the direct Function's jvp
        dual = at(_fn(case, "ours"))(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents)))
        torch.testing.assert_close(fwAD.unpack_dual(dual).tangent, native_t)


@pytest.mark.parametrize("argnum", [0, 1, 2, 3], ids=["input", "conv weight", "conv bias", "fc weight"])
def test_jacfwd_equals_native_jacrev(argnum, device):
    args = _params(device, torch.float64)
    ours = jacfwd(lambda *a: _block(BF, *a), argnums=argnum)(*args)
    native = jacrev(lambda *a: _block(torch.nn.functional, *a), argnums=argnum)(*args)
    torch.testing.assert_close(ours, native, rtol=1e-10, atol=1e-12)


def _loss(f, x, w, b, fc):
    return _block(f, x, w, b, fc).pow(2).sum()


@pytest.mark.parametrize("argnum", [1, 3], ids=["conv weight", "fc weight"])
def test_hessian_of_a_network_equals_native_through_the_gradient_functions_jvp(argnum, device, monkeypatch):
    """hessian = jacfwd(jacrev(loss)): the forward pass differentiates the backward, whose convolutions are the
    gradient Functions; their hand-written jvp (J 2, J 3) runs."""
    x, w, b, fc = _params(device, torch.float64)
    x, w = x[:2, :, :4, :4], w[:2]  # a Hessian of every weight pair: keep the layer small
    b, fc = b[:2], fc[:, : 2 * 2 * 2]
    calls = []
    for function in (Conv2dInputGradFunction, Conv2dWeightGradFunction):  # torch.func runs the class's own jvp
        monkeypatch.setattr(
            function,
            "jvp",
            staticmethod(lambda *a, _jvp=function.jvp, _name=function.__name__: (calls.append(_name), _jvp(*a))[1]),
        )
    ours = hessian(lambda *a: _loss(BF, *a), argnums=argnum)(x, w, b, fc)
    native = hessian(lambda *a: _loss(torch.nn.functional, *a), argnums=argnum)(x, w, b, fc)
    torch.testing.assert_close(ours, native, rtol=1e-9, atol=1e-10)
    if argnum == 1:
        assert calls, "the Hessian never ran the gradient Functions' jvp"


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_gradient_functions_forward_ad(ceil_mode, device):
    """Conv2dInputGradFunction and Conv2dWeightGradFunction called directly: jvp and forward-over-reverse, including
    the input gradient of a window hanging past the input (ceil_mode pooling's case)."""
    d = lambda *s: torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True)  # noqa: E731
    options = ((2, 2), (1, 1), (1, 1), 1)
    size = (6, 6) if ceil_mode else (7, 7)  # delta (4x4) from a 7x7 input; from 6x6 the last window hangs over
    grad_input = lambda delta, w: apply(Conv2dInputGradFunction, delta, w, size, *options)  # noqa: E731
    grad_weight = lambda x, delta: apply(Conv2dWeightGradFunction, x, delta, (3, 3), *options)  # noqa: E731
    for fn, inputs in ((grad_input, (d(2, 3, 4, 4), d(3, 2, 3, 3))), (grad_weight, (d(2, 2, 7, 7), d(2, 3, 4, 4)))):
        assert gradcheck(fn, inputs, check_forward_ad=True, check_batched_forward_grad=True)
        assert gradgradcheck(fn, inputs, check_fwd_over_rev=True)
