"""bp_torch._function: each Function's direct (combined-style) copy runs the very same code, and is used only where it
may be."""

import pytest
import torch
from test_backward_rules import FUNCTIONS

from bp_torch import functional as BF
from bp_torch._function import apply
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


WITH_JVP = [f for f in FUNCTIONS if f._transformed is not f]


@pytest.mark.parametrize("function", WITH_JVP, ids=lambda f: f.__name__)
def test_a_jvp_lives_on_the_copies_torch_func_and_eager_calls_run(function):
    """torch.compile traces the Function itself, which Dynamo refuses if it has a jvp: the jvp is on the copy
    torch.func runs and on the direct one, the same function; forward, setup_context and backward are shared."""
    assert "jvp" not in vars(function)
    transformed, direct = function._transformed, function._direct
    assert vars(transformed)["jvp"] is vars(direct)["jvp"]
    assert transformed.backward is direct.backward is function.backward
    assert transformed.forward is function.forward and transformed.setup_context is function.setup_context
    assert transformed.__qualname__ == function.__qualname__


def test_functions_beyond_the_notes_have_a_jvp():
    assert {f.__name__ for f in WITH_JVP} >= {"MaxPool2dFunction", "AdaptiveAvgPool2dFunction", "BatchNormFunction"}
