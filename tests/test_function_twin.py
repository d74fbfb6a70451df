"""bp_torch._function: each Function's combined-style twin runs the very same code, and is used only where it may be."""

import pytest
import torch
from test_backward_rules import FUNCTIONS

from bp_torch import functional as BF
from bp_torch._function import apply
from bp_torch.autograd import SigmoidFunction


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_twin_shares_backward_and_names(function):
    twin = function._combined
    assert twin.backward is function.backward  # the derived backward itself, not a copy
    assert twin.__name__ == function.__name__ and twin.__qualname__ == function.__qualname__


def test_eager_calls_go_through_the_twin_and_give_the_same_gradients():
    x = torch.randn(5, requires_grad=True)
    y = apply(SigmoidFunction, x)
    assert type(y.grad_fn)._forward_cls is SigmoidFunction._combined
    assert type(SigmoidFunction.apply(x).grad_fn)._forward_cls is SigmoidFunction
    g = torch.randn(5)
    (twin_grad,) = torch.autograd.grad(y, x, g)
    (plain_grad,) = torch.autograd.grad(SigmoidFunction.apply(x), x, g)
    assert torch.equal(twin_grad, plain_grad)


def test_torch_func_calls_go_through_the_setup_context_function():
    # a combined-style Function under vmap raises; so this passing shows apply() chose SigmoidFunction itself
    x = torch.randn(3, 4)
    per_row = torch.vmap(torch.func.grad(lambda r: BF.sigmoid(r).sum()))(x)
    s = torch.sigmoid(x)
    torch.testing.assert_close(per_row, s * (1 - s))
