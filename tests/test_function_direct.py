"""bp_torch._function: each Function's direct (combined-style) copy runs the very same code, and is used only where it
may be."""

import pytest
import torch
from test_source_rules import FUNCTIONS

from bp_torch import functional as BF
from bp_torch._function import _TRACED, apply
from bp_torch.autograd import SigmoidFunction


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_direct_function_shares_backward_and_names(function):
    direct = function._direct
    assert direct.backward is function.backward  # the derived backward itself, not a copy
    assert direct.__name__ == function.__name__ and direct.__qualname__ == function.__qualname__


def test_eager_calls_go_through_the_direct_function_and_give_the_same_gradients():
    x = torch.randn(5, requires_grad=True)
    y = apply(SigmoidFunction, x)
    assert type(y.grad_fn)._forward_cls is SigmoidFunction._direct
    assert type(SigmoidFunction.apply(x).grad_fn)._forward_cls is SigmoidFunction
    g = torch.randn(5)
    (direct_grad,) = torch.autograd.grad(y, x, g)
    (plain_grad,) = torch.autograd.grad(SigmoidFunction.apply(x), x, g)
    assert torch.equal(direct_grad, plain_grad)


def test_torch_func_calls_go_through_the_setup_context_function():
    # a combined-style Function under vmap raises; so this passing shows apply() chose SigmoidFunction itself
    x = torch.randn(3, 4)
    per_row = torch.vmap(torch.func.grad(lambda r: BF.sigmoid(r).sum()))(x)
    s = torch.sigmoid(x)
    torch.testing.assert_close(per_row, s * (1 - s))


WITH_JVP = [f for f in FUNCTIONS if "jvp" in vars(f)]


@pytest.mark.parametrize("function", WITH_JVP, ids=lambda f: f.__name__)
def test_torch_compile_traces_a_copy_without_the_jvp(function):
    """Dynamo refuses a Function that has a jvp of its own: under torch.compile ``apply`` runs a copy without it,
    with the very same forward, setup_context and backward; eager calls (the direct Function) keep the jvp."""
    traced = _TRACED[id(function)]
    assert "jvp" not in vars(traced)
    assert traced.forward is function.forward and traced.setup_context is function.setup_context
    assert traced.backward is function.backward and traced.__qualname__ == function.__qualname__
    assert vars(function._direct)["jvp"].__func__ is vars(function)["jvp"].__func__
