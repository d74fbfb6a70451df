"""float64 gradcheck and gradgradcheck of every function over a grid of options (bp_torch.check.CASES)."""

import pytest
from cases import CHECK_CASES as CASES
from cases import conv_cases, pool_cases
from hypothesis import given, settings

from bp_torch import functional as BF
from bp_torch.check import Case, passes_gradcheck

# vmap over the backward (check_batched_grad) needs every op of the backward to have a batching rule
BATCHED = {
    "conv2d",
    "avg_pool2d",
    "sigmoid",
    "linear",
    "relu",
    "leaky_relu",
    "tanh",
    "dropout",
    "softmax",
    "log_softmax",
    "nll_loss",
    "cross_entropy",
    "mse_loss",
}
BATCHED = {"conv2d", "avg_pool2d", "sigmoid", "linear", "max_pool2d", "adaptive_avg_pool2d", "batch_norm"}

pytestmark = pytest.mark.usefixtures("both_formulas")  # every test, fast and literal formulations


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradcheck(case: Case, device):
    batched = case.name.split()[0] in BATCHED
    assert passes_gradcheck(case, device, fast_mode=False, check_batched_grad=batched)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradgradcheck(case: Case, device):
    assert passes_gradcheck(case, device, second_order=True, fast_mode=False)


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_conv2d_random_configs_gradgradcheck(case):
    """Random valid configurations: first and second derivatives (fast mode: random Jacobian projections)."""
    tensors = lambda d, t: tuple(a for a in case.tensors(t, d, requires_grad=False) if a is not None)  # noqa: E731
    conv = Case("conv2d random", BF.conv2d, None, tensors, case.options)
    assert passes_gradcheck(conv)
    assert passes_gradcheck(conv, second_order=True)


@settings(max_examples=40, deadline=None)
@given(pool_cases())
def test_avg_pool2d_random_configs_gradcheck(case):
    pool = Case(
        "avg_pool2d random", BF.avg_pool2d, None, lambda d, t: (case.input(t, d, requires_grad=False),), case.options
    )
    assert passes_gradcheck(pool)
    assert passes_gradcheck(pool, second_order=True)
