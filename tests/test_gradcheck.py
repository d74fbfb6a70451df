"""float64 gradcheck and gradgradcheck of every function over a grid of options (bp_torch.check.CASES)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bp_torch import functional as BF
from bp_torch.check import CASES, Case, passes_gradcheck

# vmap over the backward (check_batched_grad) needs every op of the backward to have a batching rule
BATCHED = {"conv2d", "avg_pool2d", "sigmoid", "linear"}

pytestmark = pytest.mark.usefixtures("both_formulas")  # every test, fast and literal formulations


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradcheck(case: Case, device):
    batched = case.name.split()[0] in BATCHED
    assert passes_gradcheck(case, device, fast_mode=False, check_batched_grad=batched)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradgradcheck(case: Case, device):
    assert passes_gradcheck(case, device, second_order=True, fast_mode=False)


conv_configs = st.fixed_dictionaries(
    {
        "groups": st.sampled_from([1, 2, 3]),
        "c_in_g": st.integers(1, 2),
        "c_out_g": st.integers(1, 2),
        "kernel": st.tuples(st.integers(1, 4), st.integers(1, 4)),
        "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "padding": st.tuples(st.integers(0, 3), st.integers(0, 3)),
        "extra": st.tuples(st.integers(0, 3), st.integers(0, 3)),
        "bias": st.booleans(),
        "batch": st.integers(1, 2),
    }
)


@settings(max_examples=25, deadline=None)
@given(conv_configs)
def test_conv2d_random_configs_gradgradcheck(cfg):
    """Random valid configurations: first and second derivatives (fast mode: random Jacobian projections)."""
    g = cfg["groups"]
    kh, kw = cfg["kernel"]
    # the smallest input the dilated kernel fits in, plus a few rows/cols so strides leave remainders
    h, w = (d * (k - 1) + 1 + e for d, k, e in zip(cfg["dilation"], cfg["kernel"], cfg["extra"]))
    options = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=g)
    case = Case(
        "conv2d random",
        BF.conv2d,
        None,
        lambda device, dtype: tuple(
            t
            for t in (
                torch.randn(cfg["batch"], g * cfg["c_in_g"], h, w, device=device, dtype=dtype),
                torch.randn(g * cfg["c_out_g"], cfg["c_in_g"], kh, kw, device=device, dtype=dtype),
                torch.randn(g * cfg["c_out_g"], device=device, dtype=dtype) if cfg["bias"] else None,
            )
            if t is not None
        ),
        options,
    )
    assert passes_gradcheck(case)
    assert passes_gradcheck(case, second_order=True)


pool_configs = st.fixed_dictionaries(
    {
        "kernel": st.tuples(st.integers(1, 4), st.integers(1, 4)),
        "stride": st.tuples(st.integers(1, 4), st.integers(1, 4)),
        "pad_fraction": st.tuples(st.floats(0, 1), st.floats(0, 1)),
        "ceil_mode": st.booleans(),
        "count_include_pad": st.booleans(),
        "divisor_override": st.sampled_from([None, None, 3]),
        "size": st.tuples(st.integers(4, 9), st.integers(4, 9)),
    }
)


@settings(max_examples=40, deadline=None)
@given(pool_configs)
def test_avg_pool2d_random_configs_gradcheck(cfg):
    padding = tuple(int(f * (k // 2)) for f, k in zip(cfg["pad_fraction"], cfg["kernel"]))
    options = dict(
        kernel_size=cfg["kernel"],
        stride=cfg["stride"],
        padding=padding,
        ceil_mode=cfg["ceil_mode"],
        count_include_pad=cfg["count_include_pad"],
        divisor_override=cfg["divisor_override"],
    )
    case = Case(
        "avg_pool2d random",
        BF.avg_pool2d,
        None,
        lambda d, t: (torch.randn(2, 2, *cfg["size"], device=d, dtype=t),),
        options,
    )
    assert passes_gradcheck(case)
    assert passes_gradcheck(case, second_order=True)
