"""bp_torch against torch on random argument sets, valid and invalid (hypothesis): for every draw torch accepts, the
same values, dtypes, layouts and gradients; for every draw torch rejects, the same exception type.

Each draw starts from a valid configuration, may break one argument (a wrong type, value, length, rank, dtype ...),
and spells every integer the ways torch accepts (an int, a numpy integer, a 0-d or one-element integer tensor, a
tuple, list or torch.Size). torch decides which draws are valid. The counts of each kind::

    python -m pytest tests/test_differential.py --hypothesis-show-statistics
    BP_TORCH_DIFFERENTIAL_EXAMPLES=3000 python -m pytest tests/test_differential.py --hypothesis-show-statistics
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bp_torch import functional as BF

EXAMPLES = int(os.environ.get("BP_TORCH_DIFFERENTIAL_EXAMPLES", "150"))
# both_formulas sets the mode once per test, for all its examples
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
pytestmark = pytest.mark.usefixtures("both_formulas")  # fast and literal formulations

HALF = (torch.float16, torch.bfloat16)
FLOATS = [torch.float32, torch.float64, *HALF]
COMPLEX = [torch.complex64, torch.complex128]
# what a one-ulp-scale difference allows: the two sum in different orders
TOLERANCE = {torch.float64: 1e-9, torch.complex128: 1e-9, torch.float32: 1e-4, torch.complex64: 1e-4}
HALF_TOLERANCE = 3e-2  # float16/bfloat16 keep 8-11 bits: a few of their ulps of the largest value


# ---------------------------------------------------------------- spellings


def spell_int(draw, v: int):
    """One integer as any spelling torch's parser reads as that integer."""
    return draw(
        st.sampled_from(
            [
                v,
                np.int64(v),
                np.int32(v),
                torch.tensor(v),
                torch.tensor([v]),
                torch.tensor(v, dtype=torch.int32),
            ]
        )
    )


def spell_pair(draw, pair: tuple[int, int], allow_single=True):
    """A pair of ints as an int, tuple, list or torch.Size of spelled ints."""
    a, b = pair
    kinds = ["tuple", "list", "size"] + (["single", "single_tuple"] if a == b and allow_single else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "single":
        return spell_int(draw, a)
    if kind == "single_tuple":
        return (spell_int(draw, a),)
    if kind == "size":
        return torch.Size([a, b])
    items = [spell_int(draw, a), spell_int(draw, b)]
    return tuple(items) if kind == "tuple" else items


# what may replace an integer argument: each wrong in its own way (torch accepts the bool in a later tuple item)
BAD_INTS = [
    0,
    -1,
    2.0,
    True,
    False,
    "2",
    None,
    (1, 2, 3),
    (),
    (2, 2.0),
    (2.0, 2),
    (1, True),
    (True, 1),
    [torch.tensor(2), 1],
    (torch.tensor(2.0), 1),
    range(1, 3),
    np.array([1, 1]),
    np.float64(2),
    np.bool_(True),
    torch.tensor(2.0),
    torch.tensor([1, 1]),
    torch.tensor(True),
    {1: 1},
]
BAD_BOOLS = [0, 1, 1.0, "no", "", None, np.bool_(True), torch.tensor(True), (True,), [False]]


def make_tensor(draw, shape, dtype, layout=None, requires_grad=True):
    """A random tensor of ``shape`` and ``dtype`` laid out contiguous, channels_last, transposed or sliced."""
    layout = layout or draw(st.sampled_from(["contiguous", "channels_last", "transposed", "sliced"]))
    real = dtype if dtype.is_floating_point else torch.float64
    if layout == "sliced" and len(shape) >= 1:
        t = torch.randn(*shape[:-1], shape[-1] * 2, dtype=real)[..., ::2]
    elif layout == "transposed" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=real).transpose(-1, -2)
    elif layout == "channels_last" and len(shape) == 4:
        t = torch.randn(shape, dtype=real).contiguous(memory_format=torch.channels_last)
    else:
        t = torch.randn(shape, dtype=real)
    if dtype.is_complex:
        t = torch.complex(t, torch.randn_like(t))
    t = (t * 3).to(dtype) if not (dtype.is_floating_point or dtype.is_complex) else t.to(dtype)
    if requires_grad and (dtype.is_floating_point or dtype.is_complex):
        t.requires_grad_()
    return t


# ---------------------------------------------------------------- argument sets


@st.composite
def conv2d_arguments(draw):
    dtype = draw(st.sampled_from(FLOATS + COMPLEX))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(0, 2)), groups * draw(st.integers(1, 2))
    kernel = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    stride = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    padding = draw(st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.sampled_from(["same", "valid"])))
    if padding == "same":
        stride = (1, 1)
    pad = (0, 0) if isinstance(padding, str) else padding
    size = [max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, 3)) for d, k, p in zip(dilation, kernel, pad)]
    batch = draw(st.sampled_from([None, 0, 1, 2]))  # None: unbatched
    x_shape = ([] if batch is None else [batch]) + [c_in, *size]
    # torch's CPU bfloat16 convolution crashes (a segmentation fault) on some grouped, strided, dilated configurations
    # with a channels_last weight (docs/limits.md): half-precision maps stay contiguous
    layout = "contiguous" if dtype in HALF else None
    args = {
        "input": make_tensor(draw, x_shape, dtype, layout),
        "weight": make_tensor(draw, (c_out, c_in // groups, *kernel), dtype, layout),
        "bias": make_tensor(draw, (c_out,), dtype) if draw(st.booleans()) else None,
        "stride": spell_pair(draw, stride),
        "padding": padding if isinstance(padding, str) else spell_pair(draw, padding),
        "dilation": spell_pair(draw, dilation),
        "groups": spell_int(draw, groups),
    }
    if draw(st.booleans()):  # break one argument
        name = draw(st.sampled_from(list(args)))
        args[name] = draw(st.sampled_from(_conv_faults(name, args, dtype)))
    return args


def _real(t):
    return t.detach().real if t.is_complex() else t.detach()


def _conv_faults(name, args, dtype):
    x, w = args["input"], args["weight"]
    other = torch.float64 if dtype != torch.float64 else torch.float32
    tensors = {
        "input": [
            x.detach().flatten(0, 1) if x.dim() == 3 else x.detach().flatten(0, 2),
            x.detach()[None, None] if x.dim() == 3 else x.detach()[None],
            _real(x).to(other),
            x.detach()[..., :1, :1],
            torch.randn(1, x.shape[-3] + 1, *x.shape[-2:]),
            x.tolist(),
            1.0,
        ],
        "weight": [w.detach().flatten(0, 1), w.detach()[None], _real(w).to(other), w.detach()[:, :0],
                   w.detach()[:0], "w"],
        "bias": [torch.randn(w.shape[0] + 1), torch.randn(()), torch.randn(1, w.shape[0]), 1.0],
    }  # fmt: skip
    if not isinstance(args["padding"], str) or x.numel() == 0:
        # a bias of another dtype: with a padding string torch raises or not as the convolution backend it picks
        # checks or not; bp_torch raises (a known difference, docs/limits.md)
        tensors["bias"].append(torch.randn(w.shape[0]).to(other))
    if name in tensors:
        return tensors[name]
    if name == "padding":
        return BAD_INTS + ["full", "SAME", -1, (0, -1)]
    return BAD_INTS + ([4, 5, torch.tensor(True)] if name == "groups" else [])


@st.composite
def avg_pool2d_arguments(draw):
    dtype = draw(st.sampled_from(FLOATS))
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.just(()), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    size = [max(1, k - 2 * p) + draw(st.integers(0, 5)) for k, p in zip(kernel, padding)]
    batch = draw(st.sampled_from([None, 0, 1, 2]))
    x_shape = ([] if batch is None else [batch]) + [draw(st.integers(1, 3)), *size]
    args = {
        "input": make_tensor(draw, x_shape, dtype),
        "kernel_size": spell_pair(draw, kernel),
        "stride": stride if not stride else spell_pair(draw, stride),
        "padding": spell_pair(draw, padding),
        "ceil_mode": draw(st.booleans()),
        "count_include_pad": draw(st.booleans()),
        "divisor_override": draw(st.sampled_from([None, None, 1, 3, np.int64(2), torch.tensor(5)])),
    }
    if draw(st.booleans()):
        name = draw(st.sampled_from(list(args)))
        args[name] = draw(st.sampled_from(_pool_faults(name, args)))
    return args


def _pool_faults(name, args):
    x = args["input"].detach()
    if name == "input":
        return [
            x.flatten(),
            torch.randn(2, 2),
            x[None, None] if x.dim() == 3 else x[None],
            x[..., :0, :],
            x[..., :0, :, :],
            x.to(torch.complex128),
            x.to(torch.int64),
            x.tolist(),
            None,
        ]
    if name in ("ceil_mode", "count_include_pad"):
        return BAD_BOOLS
    if name == "divisor_override":
        return [0, True, False, 2.0, "2", torch.tensor(2.0), torch.tensor([2]), torch.tensor(True), np.float64(2), (2,)]
    return BAD_INTS + ([5, (1, 5), 9] if name == "padding" else [9, (1, 99)])


@st.composite
def linear_arguments(draw):
    dtype = draw(st.sampled_from(FLOATS + COMPLEX))
    in_f, out_f = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    lead = draw(st.lists(st.integers(0, 3), max_size=3))
    vector = draw(st.integers(0, 4)) == 0  # a 1-D weight: one output, no feature dimension
    w_shape = (in_f,) if vector else (out_f, in_f)
    out_shape = [*lead] + ([] if vector else [out_f])
    # biases torch may broadcast into the output: its trailing dimensions, each kept or made 1, maybe none
    kept = draw(st.integers(0, len(out_shape)))
    b_shape = [d if draw(st.booleans()) else 1 for d in out_shape[len(out_shape) - kept :]]
    args = {
        "input": make_tensor(draw, (*lead, in_f), dtype),
        "weight": make_tensor(draw, w_shape, dtype),
        "bias": draw(st.sampled_from([None, make_tensor(draw, b_shape, dtype, "contiguous")])),
    }
    if draw(st.booleans()):
        other = torch.float64 if dtype != torch.float64 else torch.float32
        faults = {
            "input": [torch.randn(()), torch.randn(2, in_f + 1), _real(args["input"]).to(other), [1.0], None],
            "weight": [torch.randn(()), torch.randn(1, out_f, in_f), torch.randn(out_f, in_f + 1), None,
                       _real(args["weight"]).to(other)],
            "bias": [torch.randn(out_f + 2), torch.randn(2, 1, 1, 1, out_f + 1), torch.randn(out_f).to(other), 1.0],
        }  # fmt: skip
        name = draw(st.sampled_from(list(args)))
        args[name] = draw(st.sampled_from(faults[name]))
    return args


@st.composite
def sigmoid_arguments(draw):
    dtype = draw(st.sampled_from(FLOATS + COMPLEX + [torch.int64, torch.bool]))
    shape = draw(st.lists(st.integers(0, 3), max_size=4))
    x = make_tensor(draw, shape, dtype) if dtype != torch.bool else torch.rand(shape) > 0.5
    if draw(st.integers(0, 5)) == 0:
        x = draw(st.sampled_from([0.5, [0.5], None, np.float64(0.5), "x"]))
    return {"input": x}


# ---------------------------------------------------------------- the comparison


def _run(fn, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args.values()), None
        except Exception as error:  # noqa: BLE001 - the type is the point
            return None, error


def _copy(args):
    """The arguments with each tensor copied stride for stride (torch's linear chooses its path by layout)."""
    return {k: _same_strides(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def _same_strides(t):
    copy = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(t.detach())
    return copy.requires_grad_(t.requires_grad)


def _layout(t):
    return (t.is_contiguous(), t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _assert_close(ours, theirs, what, layout=True):
    """``theirs`` may be a float32 reference for a half-precision ``ours`` (see compare)."""
    assert ours.shape == theirs.shape and (ours.dtype == theirs.dtype or ours.dtype in HALF), what
    if layout and theirs.numel():  # an empty tensor's strides are anyone's
        assert _layout(ours) == _layout(theirs), f"{what}: layout {_layout(ours)} vs torch's {_layout(theirs)}"
    if theirs.numel() == 0:
        return
    if ours.dtype in HALF:
        scale = theirs.abs().max().float().clamp(min=1)
        assert (ours.float() - theirs.float()).abs().max() <= HALF_TOLERANCE * scale, what
    elif theirs.is_floating_point() or theirs.is_complex():
        scale = theirs.abs().max().clamp(min=1)
        assert (ours - theirs).abs().max() <= TOLERANCE[theirs.dtype] * scale, what
    else:
        assert torch.equal(ours, theirs), what


def compare(name, ours_fn, torch_fn, args):
    """torch's verdict on ``args`` and ours must agree: the exception type, or the output and the gradients."""
    native_args = _copy(args)
    theirs, torch_error = _run(torch_fn, native_args)
    ours, our_error = _run(ours_fn, args)
    if torch_error is not None:
        event(f"{name}: invalid ({type(torch_error).__name__})")
        assert our_error is not None, f"torch raised {torch_error!r}, bp_torch returned a result"
        assert type(our_error) is type(torch_error), f"torch raised {torch_error!r}, bp_torch {our_error!r}"
        return
    assert our_error is None, f"torch returned a result, bp_torch raised {our_error!r}"
    event(f"{name}: valid")
    _assert_close(ours, theirs, "output")
    keys = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    if not keys or not theirs.requires_grad:
        return
    grad = torch.randn_like(theirs)
    if name == "conv2d" and theirs.dtype in HALF:
        # torch's CPU float16/bfloat16 convolution backward leaves the weight taps that read only padding
        # uninitialized (their values vary from call to call): the reference is its float32 backward, same values
        native_args = {k: v.float() if isinstance(v, torch.Tensor) and v.dtype in HALF else v for k, v in args.items()}
        native_args = {k: _same_strides(v) if isinstance(v, torch.Tensor) else v for k, v in native_args.items()}
        theirs, grad = torch_fn(*native_args.values()), grad.float()
    our_grads = torch.autograd.grad(ours, [args[k] for k in keys], grad.to(ours.dtype), allow_unused=True)
    torch_grads = torch.autograd.grad(theirs, [native_args[k] for k in keys], grad, allow_unused=True)
    for key, g, n in zip(keys, our_grads, torch_grads):
        assert (g is None) == (n is None), key
        if n is not None:
            # the memory formats of conv2d's and avg_pool2d's maps: linear's and sigmoid's gradient strides are
            # their matmul's or elementwise kernel's choice, either side; torch may return the zero gradients of an
            # empty output expanded
            maps = name in ("conv2d", "avg_pool2d") and theirs.numel() > 0
            _assert_close(g, n, f"gradient of {key}", layout=maps)


@SETTINGS
@given(conv2d_arguments())
def test_conv2d_as_torch(args):
    compare("conv2d", BF.conv2d, F.conv2d, args)


@SETTINGS
@given(avg_pool2d_arguments())
def test_avg_pool2d_as_torch(args):
    compare("avg_pool2d", BF.avg_pool2d, F.avg_pool2d, args)


@SETTINGS
@given(linear_arguments())
def test_linear_as_torch(args):
    compare("linear", BF.linear, F.linear, args)


@SETTINGS
@given(sigmoid_arguments())
def test_sigmoid_as_torch(args):
    # torch.sigmoid, as nn.Sigmoid calls it (F.sigmoid raises an AttributeError for a non-tensor, by accident)
    compare("sigmoid", BF.sigmoid, torch.sigmoid, args)
