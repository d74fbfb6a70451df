"""The op table: one entry per operation of ``bp_torch.functional``, in the spirit of PyTorch's
``common_methods_invocations`` (OpInfo). Every property test of tests/test_op_table.py loops over it, so a new
operation gets every property by adding one entry here.

An entry names our function and torch's, and draws random valid argument sets (:class:`Sample`) from a
``random.Random``: every floating dtype (complex where torch has it), 0-d, 1-d, empty and unbatched shapes,
non-contiguous and channels_last layouts, extreme values (saturating activations, huge logits), non-finite inputs,
and its integer, float and bool arguments in every spelling torch's parser accepts (numpy scalars, 0-d tensors).
``faults`` lists what may replace an argument to make the call invalid (a wrong type or value); torch decides which
replacements it refuses, and the tests ask for the same exception type.

Samples are valid by construction, and steer clear of torch's own bugs (each such exclusion says which).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bp_torch import functional as BF

HALF = (torch.float16, torch.bfloat16)
REAL = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
COMPLEX = (torch.complex128, torch.complex64)


@dataclass
class Sample:
    """One call: ``args`` and ``kwargs`` (tensors among them); ``grads`` the positions (ints) or keyword names (strs)
    of the tensors that may be differentiated; ``inplace``: the call overwrites argument 0, so the tests hand it a
    non-leaf copy; ``seed``: reseed before the call (a random op: both sides draw the same)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    grads: tuple = (0,)
    inplace: bool = False
    seed: int | None = None

    def tensors(self) -> dict:
        """Every tensor argument by position or keyword name."""
        found = {i: a for i, a in enumerate(self.args) if isinstance(a, torch.Tensor)}
        found.update({k: v for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)})
        return found

    def replace(self, key, value) -> Sample:
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(key, int):
            args[key] = value
        else:
            kwargs[key] = value
        return Sample(tuple(args), kwargs, self.grads, self.inplace, self.seed)

    def describe(self) -> str:
        def show(a):
            if isinstance(a, torch.Tensor):
                layout = "cl" if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) else ""
                layout += "" if a.is_contiguous() else "nc"
                return f"T{list(a.shape)}{str(a.dtype)[6:]}{layout}"
            return repr(a)

        kwargs = ", ".join(f"{k}={show(v)}" for k, v in self.kwargs.items())
        return f"({', '.join(show(a) for a in self.args)}{', ' if kwargs else ''}{kwargs})"


@dataclass(frozen=True)
class OpEntry:
    """An operation: ``ours`` and ``theirs`` take the same arguments; ``sample(rng)`` draws a valid :class:`Sample`;
    ``faults(sample, rng)`` what may replace one argument (key, value) to make a call torch may refuse;
    ``elementwise``: each output element depends on one input element (errors judged element by element);
    ``opinfo``: the names of the entries of torch's ``op_db`` with samples for it."""

    name: str
    ours: Callable
    theirs: Callable
    sample: Callable[[random.Random], Sample]
    faults: Callable[[Sample, random.Random], list] = lambda sample, rng: []
    elementwise: bool = False
    opinfo: tuple[str, ...] = ()
    # non-finite upstream gradients (values judged as torch's NaN and inf, where it has them)
    nonfinite_upstream: bool = True
    # torch's backward errors on inputs its forward accepts (docs/limits.md): torch on plain copies is the reference
    torch_bugs: tuple[str, ...] = ()
    # float64 against torch's own float64 (no truth to judge by): ulps of the largest value either may be off
    float64_ulps: float = 64
    # a gradient whose terms cancel to far less than δ (a broadcast attention mask's; softmax's δ − Σ p δ; batch norm
    # with few values per channel): a few ulps of the largest δ count
    sums_cancel: bool = False
    # arguments whose gradient's layout is a known difference (docs/limits.md)
    layout_exempt: tuple[str, ...] = ()
    # how many times torch's own distance to the float64 truth ours may be: 2, or more where docs/limits.md says why
    torch_distance: float = 2
    # the second derivative in the input is None where torch's is a zero tensor: ours does not hold x (docs/limits.md)
    input_unlinked_at_second_order: bool = False
    # the float64 truth where torch's own float64 is not one: ``theirs`` computed a better-conditioned way (it then
    # judges float64 calls too)
    reference: Callable | None = None

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------- tensors and spellings


def dtype_of(rng: random.Random, complex_ok: bool = False) -> torch.dtype:
    choices = list(REAL) + (list(COMPLEX) if complex_ok else [])
    weights = [4, 4, 1, 1] + ([1, 1] if complex_ok else [])
    return rng.choices(choices, weights)[0]


def tensor(rng: random.Random, shape, dtype, *, scale: float | None = None, special: bool = True,
           layout: str | None = None) -> torch.Tensor:  # fmt: skip
    """A random tensor of ``shape``: normal values (sometimes scaled up to extremes), sometimes a NaN or ±inf, laid out
    contiguously, channels_last (4-D), transposed or sliced."""
    g = torch.Generator().manual_seed(rng.getrandbits(32))
    real = torch.float64
    layout = layout or rng.choices(["contiguous", "channels_last", "transposed", "sliced"], [5, 2, 1, 1])[0]
    if layout == "sliced" and len(shape) >= 1:
        t = torch.randn(*shape[:-1], shape[-1] * 2, dtype=real, generator=g)[..., ::2]
    elif layout == "transposed" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=real, generator=g).transpose(-1, -2)
    elif layout == "channels_last" and len(shape) == 4:
        t = torch.randn(shape, dtype=real, generator=g).contiguous(memory_format=torch.channels_last)
    else:
        t = torch.randn(shape, dtype=real, generator=g)
    if scale is None:
        scale = rng.choices([1.0, 10.0, 1e3, 1e-3], [6, 2, 1, 1])[0]
    t = t * scale
    if special and t.numel() and rng.random() < 0.1:
        flat = t.view(-1) if t.is_contiguous() else None
        if flat is not None:
            flat[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, -math.inf])
    if dtype.is_complex:
        t = torch.complex(t, torch.randn(t.shape, dtype=real, generator=g).as_strided(t.shape, t.stride()))
    return t.to(dtype)


def shape_of(rng: random.Random, min_dim: int = 0, max_dim: int = 4, max_size: int = 4, zero: float = 0.05) -> list:
    dims = rng.randint(min_dim, max_dim)
    return [0 if rng.random() < zero else rng.randint(1, max_size) for _ in range(dims)]


def spell_int(rng: random.Random, v: int, tensors: bool = True):
    """``v`` as one of the spellings torch's parser reads as that integer (an int list's items and an int array
    also as integer tensors; a plain int argument, such as a dim, not)."""
    return rng.choice([v, v, v, np.int64(v), np.int32(v)] + ([torch.tensor(v), torch.tensor([v])] if tensors else []))


def spell_pair(rng: random.Random, pair):
    a, b = pair
    kind = rng.choice(["tuple", "list", "size"] + (["single"] if a == b else []))
    if kind == "single":
        return spell_int(rng, a)
    if kind == "size":
        return torch.Size([a, b])
    items = [spell_int(rng, a), spell_int(rng, b)]
    return tuple(items) if kind == "tuple" else items


def spell_float(rng: random.Random, v: float):
    """``v`` as one of the spellings torch's parser reads as that double (an int, numpy scalars, 0-d tensors)."""
    options = [v, v, v, np.float64(v), np.float32(v), torch.tensor(v, dtype=torch.float64)]
    if float(v).is_integer():
        options += [int(v), np.int64(int(v))]
    return rng.choice(options)


def spell_bool(rng: random.Random, v: bool):
    """A bool argument: torch's parser takes only Python's bools (numpy's bool is refused, see BAD_BOOLS)."""
    return v


# What may replace an argument to make the call invalid (torch decides: some it accepts).
BAD_INTS = [0, -1, 2.0, 1.5, True, "2", None, (1, 2, 3), (), (2, 2.0), np.float64(2), np.bool_(True),
            torch.tensor(2.0), torch.tensor([1, 1]), torch.tensor(True), {1: 1}]  # fmt: skip
BAD_FLOATS = ["0.3", None, (0.1,), [0.1], torch.tensor([0.1, 0.2]), torch.tensor(1 + 1j), 1j, {0.1: 0}]
BAD_BOOLS = [
    0,
    1,
    1.0,
    "no",
    "",
    None,
    (True,),
    [False],
    np.bool_(True),
    torch.tensor(True),
    torch.tensor([True, False]),
]
BAD_DTYPES = [1, "float64", torch.int64, torch.float64, np.float64, float, torch.device("cpu")]
BAD_TENSORS = [1.0, [1.0, 2.0], "x", None, np.ones(3)]


def _faults(**kinds) -> Callable[[Sample, random.Random], list]:
    """Faults by argument: ``kinds`` maps an argument (position or keyword) to its list of replacements."""

    def faults(sample: Sample, rng: random.Random) -> list:
        return [(int(key) if key.isdigit() else key, bad) for key, bads in kinds.items() for bad in bads]

    return faults


# --------------------------------------------------------------------------------------- the notes' four


def _conv2d(rng: random.Random) -> Sample:
    dtype = dtype_of(rng, complex_ok=True)
    groups = rng.choice([1, 1, 2, 3])
    c_in, c_out = groups * rng.randint(0 if rng.random() < 0.05 else 1, 2), groups * rng.randint(1, 2)
    kernel = (rng.randint(1, 3), rng.randint(1, 3))
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    padding = rng.choice([(rng.randint(0, 2), rng.randint(0, 2))] * 3 + ["same", "valid"])
    if padding == "same":
        stride = (1, 1)
    pad = (0, 0) if isinstance(padding, str) else padding
    size = [max(1, d * (k - 1) + 1 - 2 * p) + rng.randint(0, 3) for d, k, p in zip(dilation, kernel, pad)]
    batch = rng.choice([None, 0, 1, 2, 2])
    x_shape = ([] if batch is None else [batch]) + [c_in, *size]
    # torch's CPU bfloat16 convolution crashes on some grouped, strided, dilated channels_last configurations
    # (README "Limits"): half-precision maps stay contiguous
    layout = "contiguous" if dtype in HALF else None
    x = tensor(rng, x_shape, dtype, layout=layout, scale=1.0, special=False)
    w = tensor(rng, (c_out, c_in // groups, *kernel), dtype, layout=layout, scale=1.0, special=False)
    b = tensor(rng, (c_out,), dtype, scale=1.0, special=False) if rng.random() < 0.7 else None
    kwargs = dict(stride=spell_pair(rng, stride), dilation=spell_pair(rng, dilation), groups=spell_int(rng, groups),
                  padding=padding if isinstance(padding, str) else spell_pair(rng, padding))  # fmt: skip
    return Sample((x, w, b), kwargs, grads=(0, 1, 2))


def _avg_pool2d(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    stride = rng.choice([None, (rng.randint(1, 4), rng.randint(1, 4))])
    padding = tuple(rng.randint(0, k // 2) for k in kernel)
    size = [max(1, k - 2 * p) + rng.randint(0, 5) for k, p in zip(kernel, padding)]
    x = tensor(rng, [rng.choice([0, 1, 2])][: rng.random() < 0.8] + [rng.randint(1, 3), *size], dtype)
    kwargs = dict(kernel_size=spell_pair(rng, kernel), padding=spell_pair(rng, padding),
                  ceil_mode=spell_bool(rng, rng.random() < 0.5), count_include_pad=spell_bool(rng, rng.random() < 0.5),
                  divisor_override=rng.choice([None, None, spell_int(rng, rng.randint(1, 5), False)]))  # fmt: skip
    if stride is not None:
        kwargs["stride"] = spell_pair(rng, stride)
    return Sample((x,), kwargs)


def _linear(rng: random.Random) -> Sample:
    dtype = dtype_of(rng, complex_ok=True)
    n_in, n_out = rng.randint(0 if rng.random() < 0.05 else 1, 5), rng.randint(1, 4)
    lead = shape_of(rng, 0, 3)
    x = tensor(rng, [*lead, n_in], dtype, special=rng.random() < 0.3)
    w = tensor(rng, (n_out, n_in), dtype, scale=1.0, special=False)
    b = (
        tensor(rng, rng.choice([(n_out,), (n_out,), ()]), dtype, scale=1.0, special=False)
        if rng.random() < 0.7
        else None
    )
    return Sample((x, w, b), grads=(0, 1, 2))


def _sigmoid_or_tanh(rng: random.Random) -> Sample:
    return Sample((tensor(rng, shape_of(rng), dtype_of(rng, complex_ok=True)),))


# --------------------------------------------------------------------------------------- beyond the notes


def _relu(rng: random.Random) -> Sample:
    inplace = rng.random() < 0.25
    return Sample((tensor(rng, shape_of(rng), dtype_of(rng)),), dict(inplace=spell_bool(rng, inplace)), inplace=inplace)


def _leaky_relu(rng: random.Random) -> Sample:
    slope = rng.choice([0.01, 0.2, 0.0, 1.0, 1.5, 3.0, -0.1, -2.0, 1e-8])
    inplace = rng.random() < 0.25 and slope >= 0  # in place with a negative slope: torch's backward refuses
    kwargs = dict(negative_slope=spell_float(rng, slope), inplace=spell_bool(rng, inplace))
    return Sample((tensor(rng, shape_of(rng), dtype_of(rng)),), kwargs, inplace=inplace)


def _dropout(rng: random.Random) -> Sample:
    inplace = rng.random() < 0.25
    kwargs = dict(p=spell_float(rng, rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])),
                  training=spell_bool(rng, rng.random() < 0.8), inplace=spell_bool(rng, inplace))  # fmt: skip
    return Sample((tensor(rng, shape_of(rng), dtype_of(rng)),), kwargs, inplace=inplace, seed=rng.getrandbits(16))


def _softmax(rng: random.Random) -> Sample:
    x = tensor(rng, shape_of(rng), dtype_of(rng))
    dim = rng.randint(-max(x.dim(), 1), max(x.dim(), 1) - 1)
    kwargs = {"dim": spell_int(rng, dim, tensors=False)}
    if rng.random() < 0.2:
        kwargs["dtype"] = rng.choice([torch.float64, torch.float32])
    return Sample((x,), kwargs)


def _class_weight(rng, C, dtype):
    kind = rng.choice(["none", "none", "positive", "signed", "zeros"])
    if kind == "none":
        return None
    w = tensor(rng, (C,), dtype, scale=1.0, special=False, layout="contiguous")
    return {"positive": w.abs() + 0.1, "signed": w, "zeros": torch.zeros_like(w)}[kind]


def _class_input(rng, dtype):
    """Logits (N, C, *) or (C,), and their class-index target, some of it ignored."""
    C = rng.randint(1, 5)
    batch = rng.random() < 0.85
    extra = shape_of(rng, 0, 2, 3) if batch else []
    N = 0 if rng.random() < 0.05 else rng.randint(1, 4)
    shape = [N, C, *extra] if batch else [C]
    x = tensor(rng, shape, dtype, scale=rng.choice([1.0, 1.0, 30.0, 1e4]))
    g = torch.Generator().manual_seed(rng.getrandbits(32))
    target = torch.randint(0, C, [N, *extra] if batch else [], generator=g)
    ignore = rng.choice([-100, -100, 0, C - 1, spell_int(rng, 1, tensors=False)])
    if target.numel() and rng.random() < 0.3:
        target.view(-1)[0] = int(ignore)  # an ignored target (out of the classes' range: only as ignore_index)
    return x, target, C, ignore


def _nll_loss(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    x, target, C, ignore = _class_input(rng, dtype)
    kwargs = dict(weight=_class_weight(rng, C, dtype), ignore_index=ignore,
                  reduction=rng.choice(["mean", "sum", "none"]))  # fmt: skip
    return Sample((x, target), kwargs)


def _cross_entropy(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    x, target, C, ignore = _class_input(rng, dtype)
    kwargs = dict(weight=_class_weight(rng, C, dtype), reduction=rng.choice(["mean", "sum", "none"]),
                  label_smoothing=spell_float(rng, rng.choice([0.0, 0.0, 0.1, 1.0])))  # fmt: skip
    if rng.random() < 0.35:  # class probabilities, differentiable like the input (and the weight with them)
        target = tensor(rng, x.shape, dtype, scale=1.0, special=False).softmax(1 if x.dim() > 1 else 0)
        return Sample((x, target), kwargs, grads=(0, 1, "weight"))
    kwargs["ignore_index"] = ignore
    return Sample((x, target), kwargs)


def _mse_loss(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    shape = shape_of(rng)
    target_shape = shape if rng.random() < 0.8 else [1 if rng.random() < 0.5 else s for s in shape]
    kwargs = dict(reduction=rng.choice(["mean", "sum", "none"]))
    if rng.random() < 0.3:
        kwargs["weight"] = tensor(rng, shape, dtype, scale=1.0, special=False).abs()
    return Sample((tensor(rng, shape, dtype), tensor(rng, target_shape, dtype)), kwargs, grads=(0, 1, "weight"))


def _map(rng: random.Random, dtype, min_size: int = 1) -> torch.Tensor:
    shape = [rng.randint(1, 3), rng.randint(min_size, 8), rng.randint(min_size, 8)]
    if rng.random() < 0.85:
        shape.insert(0, 0 if rng.random() < 0.05 else rng.randint(1, 2))
    return tensor(rng, shape, dtype)


def _max_pool2d(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    while True:
        kernel = (rng.randint(1, 4), rng.randint(1, 4))
        dilation = (rng.randint(1, 2), rng.randint(1, 2))
        x = _map(rng, dtype)
        # a window whose taps all fall in the padding: torch's CPU max_pool2d corrupts its heap (README "Limits")
        if all(L >= d * (k - 1) + 1 for L, d, k in zip(x.shape[-2:], dilation, kernel)):
            break
    padding = tuple(rng.randint(0, k // 2) for k in kernel)
    kwargs = dict(kernel_size=spell_pair(rng, kernel), padding=spell_pair(rng, padding),
                  dilation=spell_pair(rng, dilation), ceil_mode=spell_bool(rng, rng.random() < 0.5),
                  return_indices=spell_bool(rng, rng.random() < 0.5))  # fmt: skip
    if rng.random() < 0.7:
        kwargs["stride"] = spell_pair(rng, (rng.randint(1, 3), rng.randint(1, 3)))
    return Sample((x,), kwargs)


def _adaptive_avg_pool2d(rng: random.Random) -> Sample:
    x = _map(rng, dtype_of(rng))
    size = rng.choice([1, 1, 2, 3, 5, (2, None), (None, 3), (1, 4), (3, 2)])
    return Sample((x, size if size is None or isinstance(size, int) else tuple(size)))


def _batch_norm(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    C = rng.randint(1, 4)
    shape = [rng.randint(1, 3) if rng.random() < 0.95 else 0, C, *shape_of(rng, 0, 2, 4)]
    if rng.random() < 0.8 and shape[0] == 1 and all(n == 1 for n in shape[2:]):
        shape[0] = 2  # one value per channel in training is refused (a few such draws are kept)
    scale = rng.choice([1.0, 1.0, 1e-3])
    x = tensor(rng, shape, dtype, scale=scale) + rng.choice([0.0, 0.0, 100.0]) * scale  # |mean| ≫ std too
    tracked = rng.random() < 0.7
    stat_dtype = torch.float32 if dtype in HALF and rng.random() < 0.5 else dtype  # mixed precision, as torch allows
    running = ((tensor(rng, (C,), stat_dtype, scale=1.0, special=False, layout="contiguous"),
                tensor(rng, (C,), stat_dtype, scale=1.0, special=False, layout="contiguous").abs() + 0.1)
               if tracked else (None, None))  # fmt: skip
    affine = [tensor(rng, (C,), stat_dtype, scale=1.0, special=False) if rng.random() < 0.6 else None for _ in "wb"]
    kwargs = dict(weight=affine[0], bias=affine[1], training=spell_bool(rng, rng.random() < 0.6 or not tracked),
                  momentum=spell_float(rng, rng.choice([0.1, 0.5, 0.0, 1.0])),
                  eps=spell_float(rng, rng.choice([1e-5, 1e-3, 1.0])))  # fmt: skip
    return Sample((x, *running), kwargs, grads=(0, "weight", "bias"))


OPS: list[OpEntry] = [
    OpEntry("conv2d", BF.conv2d, F.conv2d, _conv2d,
            _faults(stride=BAD_INTS, dilation=BAD_INTS, groups=BAD_INTS + [4, 5], padding=BAD_INTS + ["full", "SAME"]),
            # a kernel tap that sees only padding: torch multiplies its zeros by a NaN or inf δ (getting NaN), ours
            # never reads padding for the weight gradient (a zero): only finite δ are compared
            opinfo=("nn.functional.conv2d",), nonfinite_upstream=False),
    OpEntry("avg_pool2d", BF.avg_pool2d, F.avg_pool2d, _avg_pool2d,
            _faults(kernel_size=BAD_INTS, stride=BAD_INTS, padding=BAD_INTS, ceil_mode=BAD_BOOLS,
                    count_include_pad=BAD_BOOLS, divisor_override=BAD_INTS), opinfo=("nn.functional.avg_pool2d",),
            input_unlinked_at_second_order=True),
    OpEntry("linear", BF.linear, F.linear, _linear, _faults(**{"0": BAD_TENSORS}), opinfo=("nn.functional.linear",)),
    OpEntry("sigmoid", BF.sigmoid, torch.sigmoid, _sigmoid_or_tanh, _faults(**{"0": BAD_TENSORS}), elementwise=True,
            opinfo=("sigmoid", "nn.functional.sigmoid")),
    OpEntry("tanh", BF.tanh, torch.tanh, _sigmoid_or_tanh, _faults(**{"0": BAD_TENSORS}), elementwise=True,
            opinfo=("tanh", "nn.functional.tanh")),
    OpEntry("relu", BF.relu, F.relu, _relu, _faults(inplace=BAD_BOOLS), elementwise=True,
            opinfo=("nn.functional.relu",)),
    OpEntry("leaky_relu", BF.leaky_relu, F.leaky_relu, _leaky_relu,
            _faults(negative_slope=BAD_FLOATS, inplace=BAD_BOOLS), elementwise=True,
            opinfo=("nn.functional.leaky_relu",)),
    OpEntry("dropout", BF.dropout, F.dropout, _dropout,
            _faults(p=BAD_FLOATS + [-0.1, 1.5], training=BAD_BOOLS, inplace=BAD_BOOLS), elementwise=True),
    OpEntry("softmax", BF.softmax, F.softmax, _softmax, _faults(dim=BAD_INTS + [7, -7], dtype=BAD_DTYPES),
            opinfo=("softmax", "nn.functional.softmax"), sums_cancel=True),
    OpEntry("log_softmax", BF.log_softmax, F.log_softmax, _softmax,
            _faults(dim=BAD_INTS + [7, -7], dtype=BAD_DTYPES), opinfo=("log_softmax", "nn.functional.log_softmax"),
            sums_cancel=True),
    OpEntry("nll_loss", BF.nll_loss, F.nll_loss, _nll_loss,
            _faults(ignore_index=BAD_INTS, reduction=["avg", None, 1, "MEAN"], weight=BAD_TENSORS[:-1]),
            opinfo=("nn.functional.nll_loss",), torch_bugs=("grad_input must be contiguous",)),
    OpEntry("cross_entropy", BF.cross_entropy, F.cross_entropy, _cross_entropy,
            _faults(ignore_index=BAD_INTS, reduction=["avg", None, 1], label_smoothing=BAD_FLOATS + [-0.1, 1.5]),
            opinfo=("nn.functional.cross_entropy",)),
    OpEntry("mse_loss", BF.mse_loss, F.mse_loss, _mse_loss, _faults(reduction=["avg", None, 1]),
            opinfo=("nn.functional.mse_loss",)),
    OpEntry("max_pool2d", BF.max_pool2d, F.max_pool2d, _max_pool2d,
            _faults(kernel_size=BAD_INTS, stride=BAD_INTS, padding=BAD_INTS, dilation=BAD_INTS, ceil_mode=BAD_BOOLS),
            opinfo=("nn.functional.max_pool2d",), input_unlinked_at_second_order=True),
    OpEntry("adaptive_avg_pool2d", BF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, _adaptive_avg_pool2d,
            _faults(**{"1": BAD_INTS + [(2, -1), -1]}), opinfo=("nn.functional.adaptive_avg_pool2d",),
            torch_bugs=("Expected grad_output to have non-zero size",), input_unlinked_at_second_order=True),
    OpEntry("batch_norm", BF.batch_norm, F.batch_norm, _batch_norm,
            _faults(momentum=BAD_FLOATS, eps=BAD_FLOATS, training=BAD_BOOLS), opinfo=("nn.functional.batch_norm",),
            sums_cancel=True),
]  # fmt: skip


# --------------------------------------------------------------------------------------- the CNN zoo's operations

# (The kinks themselves, where a finite difference cannot judge: tests/test_cnn_zoo_ops.py, in both modes.)


def _hard_activation(rng: random.Random, nan: bool = True) -> Sample:
    """``nan=False``: no NaN input. torch's hardtanh and hardswish backward disagree with themselves there: their
    vectorised loop gives 0 (hardswish NaN), the scalar loop for the last elements passes δ (README "Limits")."""
    inplace = rng.random() < 0.25
    x = tensor(rng, shape_of(rng), dtype_of(rng), scale=rng.choice([1.0, 4.0, 4.0, 1e3]))
    if not nan:
        x = x.nan_to_num(nan=rng.choice([1.0, -4.0]), posinf=math.inf, neginf=-math.inf)
    return Sample((x,), dict(inplace=spell_bool(rng, inplace)), inplace=inplace)


def _without_nan(rng: random.Random) -> Sample:
    return _hard_activation(rng, nan=False)


def _hardtanh(rng: random.Random) -> Sample:
    low = rng.choice([-1.0, 0.0, -2.5, 0.5])
    high = low + rng.choice([0.0, 1.0, 2.0, 6.0])
    sample = _hard_activation(rng, nan=False)
    kwargs = dict(min_val=spell_float(rng, low), max_val=spell_float(rng, high), **sample.kwargs)
    return Sample(sample.args, kwargs, inplace=sample.inplace)


def _broadcast_shape(rng: random.Random, shape: list) -> list:
    """A shape that broadcasts against ``shape``: some dimensions 1, some leading ones dropped."""
    other = [1 if rng.random() < 0.4 else s for s in shape]
    return other[rng.randint(0, len(other)) :] if rng.random() < 0.3 else other


def _mul_or_div(rng: random.Random) -> Sample:
    dtype = dtype_of(rng, complex_ok=True)
    shape = shape_of(rng)
    a = tensor(rng, shape, dtype)
    kind = rng.choice(["tensor", "tensor", "broadcast", "swapped", "number", "0-d"])
    if kind == "number":
        return Sample((a, rng.choice([0.5, 2, -3.0, True, 1e-3])), grads=(0,))
    if kind == "0-d":  # a 0-d tensor of another dtype: torch's promotion keeps the dimensioned operand's
        return Sample((a, tensor(rng, [], rng.choice(REAL), scale=1.0, special=False)), grads=(0, 1))
    other = _broadcast_shape(rng, shape) if kind != "tensor" else shape
    b = tensor(rng, other, dtype, scale=rng.choice([1.0, 1.0, 1e-3]))
    return Sample((b, a) if kind == "swapped" else (a, b), grads=(0, 1))


def _div(rng: random.Random) -> Sample:
    sample = _mul_or_div(rng)
    return sample if rng.random() < 0.85 else Sample(sample.args, {"rounding_mode": None}, grads=sample.grads)


def _reduction(rng: random.Random) -> Sample:
    x = tensor(rng, shape_of(rng), dtype_of(rng, complex_ok=True))
    n = max(x.dim(), 1)
    kind = rng.choice(["none", "int", "int", "tuple", "list", "empty"])
    if kind == "none":
        return Sample((x,), {"dtype": torch.float64} if rng.random() < 0.2 and not x.is_complex() else {})
    if kind == "int":
        dim = spell_int(rng, rng.randint(-n, n - 1))
    elif kind == "empty":
        dim = rng.choice([(), []])
    else:
        dims = rng.sample(range(x.dim()), rng.randint(1, x.dim())) if x.dim() else [0]
        dim = tuple(dims) if kind == "tuple" else [spell_int(rng, d) if rng.random() < 0.3 else d for d in dims]
    kwargs = {"dim": dim, "keepdim": rng.random() < 0.4}
    if rng.random() < 0.2:  # NumPy's names, which torch's argument parser reads as dim and keepdim
        kwargs = {"axis": kwargs["dim"], "keepdims": kwargs["keepdim"]}
    if rng.random() < 0.2 and not x.is_complex():
        kwargs["dtype"] = rng.choice([torch.float64, torch.float32])
    return Sample((x,), kwargs)


def _reduction_faults(sample: Sample, rng: random.Random) -> list:
    """Bad dims and dtypes, the dims under the name the sample gives them (``dim``, or NumPy's ``axis``)."""
    name = "axis" if "axis" in sample.kwargs else "dim"
    return _faults(**{name: BAD_INTS + [7, (0, 0)], "dtype": BAD_DTYPES})(sample, rng)


OPS += [
    OpEntry("hardtanh", BF.hardtanh, F.hardtanh, _hardtanh,
            _faults(min_val=BAD_FLOATS, max_val=BAD_FLOATS, inplace=BAD_BOOLS), elementwise=True,
            opinfo=("nn.functional.hardtanh",)),
    OpEntry("relu6", BF.relu6, F.relu6, _without_nan, _faults(inplace=BAD_BOOLS), elementwise=True,
            opinfo=("nn.functional.relu6",)),
    # torch has no double backward for hardsigmoid (ours: zero almost everywhere, gradgradcheck judges it)
    OpEntry("hardsigmoid", BF.hardsigmoid, F.hardsigmoid, _hard_activation, _faults(inplace=BAD_BOOLS),
            elementwise=True, opinfo=("nn.functional.hardsigmoid",),
            torch_bugs=("derivative for aten::hardsigmoid_backward is not implemented",)),
    OpEntry("hardswish", BF.hardswish, F.hardswish, _without_nan, _faults(inplace=BAD_BOOLS), elementwise=True,
            opinfo=("nn.functional.hardswish",)),
    OpEntry("silu", BF.silu, F.silu, _hard_activation, _faults(inplace=BAD_BOOLS), elementwise=True,
            opinfo=("nn.functional.silu",)),
    OpEntry("mul", BF.mul, torch.mul, _mul_or_div, _faults(**{"0": BAD_TENSORS, "1": BAD_TENSORS[1:]}),
            elementwise=False, opinfo=("mul",)),
    OpEntry("div", BF.div, torch.div, _div, _faults(**{"0": BAD_TENSORS, "1": BAD_TENSORS[1:]}),
            opinfo=("div.no_rounding_mode",)),
    OpEntry("sum", BF.sum, torch.sum, _reduction, _reduction_faults, opinfo=("sum",)),
    OpEntry("mean", BF.mean, torch.mean, _reduction, _reduction_faults, opinfo=("mean",)),
]  # fmt: skip


# --------------------------------------------------------------------------------------- the transformer's operations


def _layer_norm(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    norm = [rng.randint(1, 4) if rng.random() < 0.97 else 0 for _ in range(rng.randint(1, 3))]
    x = tensor(rng, [*shape_of(rng, 0, 2), *norm], dtype) + rng.choice([0.0, 0.0, 100.0])  # |mean| ≫ std too
    affine = [tensor(rng, norm, dtype, scale=1.0, special=False) if rng.random() < 0.6 else None for _ in "wb"]
    shape = rng.choice([list, tuple, torch.Size])(norm)
    kwargs = dict(weight=affine[0], bias=affine[1], eps=spell_float(rng, rng.choice([1e-5, 1e-3, 1.0])))
    return Sample((x, shape), kwargs, grads=(0, "weight", "bias"))


def _group_norm(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    groups = rng.randint(1, 3)
    C = groups * rng.randint(1, 2)
    shape = [rng.choice([0, 1, 2, 3]), C, *shape_of(rng, 0, 2, 4, zero=0)]
    x = tensor(rng, shape, dtype) + rng.choice([0.0, 0.0, 100.0])
    affine = [tensor(rng, (C,), dtype, scale=1.0, special=False) if rng.random() < 0.6 else None for _ in "wb"]
    kwargs = dict(weight=affine[0], bias=affine[1], eps=spell_float(rng, rng.choice([1e-5, 1e-3, 1.0])))
    return Sample((x, spell_int(rng, groups)), kwargs, grads=(0, "weight", "bias"))


def _gelu(rng: random.Random) -> Sample:
    x = tensor(rng, shape_of(rng), dtype_of(rng))
    return Sample((x,), dict(approximate=rng.choice(["none", "tanh"])))


def _batches(rng: random.Random, dims: int) -> tuple[list, list]:
    """Two batch shapes that broadcast against each other, ``dims`` dimensions at most."""
    full = shape_of(rng, 0, dims, 3)
    a = [1 if rng.random() < 0.25 else s for s in full]
    b = [1 if rng.random() < 0.25 else s for s in full][rng.randint(0, len(full)) :]
    return (a, b) if rng.random() < 0.5 else (b, a)


def _matmul(rng: random.Random) -> Sample:
    dtype = dtype_of(rng, complex_ok=True)
    n, k, m = (rng.randint(0 if rng.random() < 0.05 else 1, 4) for _ in range(3))
    batch_a, batch_b = _batches(rng, 2)
    a = [k] if rng.random() < 0.2 else [*batch_a, n, k]
    b = [k] if rng.random() < 0.2 else [*batch_b, k, m]
    return Sample((tensor(rng, a, dtype, special=rng.random() < 0.3), tensor(rng, b, dtype, special=False)),
                  grads=(0, 1))  # fmt: skip


def _bmm(rng: random.Random) -> Sample:
    dtype = dtype_of(rng, complex_ok=True)
    b, n, k, m = (rng.randint(0 if rng.random() < 0.05 else 1, 4) for _ in range(4))
    return Sample((tensor(rng, (b, n, k), dtype), tensor(rng, (b, k, m), dtype, special=False)), grads=(0, 1))


def _addmm(rng: random.Random, batched: bool) -> Sample:
    dtype = dtype_of(rng, complex_ok=True)
    b, n, k, m = (rng.randint(0 if rng.random() < 0.05 else 1, 4) for _ in range(4))
    out = [b, n, m] if batched else [n, m]
    shape = [1 if rng.random() < 0.3 else s for s in out][rng.randint(0, len(out)) :]
    mats = ((b, n, k), (b, k, m)) if batched else ((n, k), (k, m))
    kwargs = dict(beta=spell_float(rng, rng.choice([1.0, 1.0, 0.0, 0.5, -2.0])),
                  alpha=spell_float(rng, rng.choice([1.0, 1.0, 0.0, 0.6, -1.5])))  # fmt: skip
    x = tensor(rng, shape, dtype, special=False)
    return Sample((x, *(tensor(rng, s, dtype, special=False) for s in mats)), kwargs, grads=(0, 1, 2))


def _attention(rng: random.Random) -> Sample:
    dtype = dtype_of(rng)
    L, S, E, Ev = (
        rng.randint(1, 5),
        rng.randint(1 if rng.random() < 0.95 else 0, 5),
        rng.randint(1 if rng.random() < 0.95 else 0, 6),  # no features: every score 0, the output averages V
        rng.randint(1, 4),
    )
    heads, groups = rng.randint(1, 2), rng.choice([1, 1, 2])
    batch = [rng.randint(0 if rng.random() < 0.05 else 1, 2), heads * groups][: rng.randint(0, 2)]
    kv_batch = list(batch)
    gqa = len(batch) == 2 and groups > 1 and rng.random() < 0.5
    if gqa:
        kv_batch[-1] = heads
    q, k, v = (tensor(rng, [*b, r, c], dtype, scale=1.0, special=False)
               for b, r, c in ((batch, L, E), (kv_batch, S, E), (kv_batch, S, Ev)))  # fmt: skip
    kwargs = dict(enable_gqa=gqa)
    mask = rng.choice(["none", "bool", "float", "causal"])
    if mask == "causal":
        kwargs["is_causal"] = True
    elif mask != "none":
        shape = [*batch, L, S][rng.randint(0, len(batch)) :]
        shape = [1 if rng.random() < 0.3 else s for s in shape]
        g = torch.Generator().manual_seed(rng.getrandbits(32))
        if mask == "bool":
            kwargs["attn_mask"] = torch.rand(shape, generator=g) < 0.7  # some rows masked throughout
        else:
            kwargs["attn_mask"] = tensor(rng, shape, dtype, scale=1.0, special=False)
    if rng.random() < 0.3:
        kwargs["scale"] = spell_float(rng, rng.choice([0.1, 1.0, 2.5]))
    return Sample((q, k, v), kwargs, grads=(0, 1, 2, "attn_mask"))


def _sdpa_with_seed(function):
    """scaled_dot_product_attention with dropout: torch's kernel draws its masks its own way, so the reference is
    torch's documented formula (its docstring's Python) made of native ops, both drawing from the same seed."""

    def call(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
        if not dropout_p or function is BF.scaled_dot_product_attention:
            torch.manual_seed(0)
            return function(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        torch.manual_seed(0)
        L, S = query.size(-2), key.size(-2)
        bias = torch.zeros(L, S, dtype=query.dtype)
        if is_causal:
            bias = bias.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
        if attn_mask is not None:
            bias = bias.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else bias + attn_mask
        if enable_gqa:
            key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
            value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
        weights = torch.softmax(query @ key.mT * (scale or 1 / math.sqrt(query.size(-1))) + bias, dim=-1)
        shape = torch.broadcast_shapes(weights.shape, (*key.shape[:-2], L, S))
        keep = torch.empty(shape, dtype=weights.dtype).bernoulli_(1 - dropout_p) / (1 - dropout_p)
        return (weights * keep) @ value

    return call


def _multi_head_attention(rng: random.Random) -> Sample:
    dtype = rng.choice([torch.float64, torch.float32])
    heads = rng.randint(1, 2)
    E, L, S, N = heads * rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 2)
    t = lambda *shape: tensor(rng, shape, dtype, scale=1.0, special=False, layout="contiguous")  # noqa: E731
    query = t(L, N, E)
    kind = rng.choice(["self", "kv", "separate"])
    key = query if kind == "self" else t(S, N, E)
    value = key if kind != "separate" else t(S, N, E)
    S = key.shape[0]
    add_bias_kv = rng.random() < 0.3
    need_weights = rng.random() < 0.5
    kwargs = dict(training=rng.random() < 0.5, need_weights=need_weights,
                  average_attn_weights=rng.random() < 0.5)  # fmt: skip
    if rng.random() < 0.3:
        kwargs["key_padding_mask"] = torch.arange(S).expand(N, S) >= S - rng.randint(0, 1)
    if rng.random() < 0.3:
        kwargs["attn_mask"] = t(L, S)
    args = (query, key, value, E, heads, t(3 * E, E), t(3 * E) if rng.random() < 0.7 else None,
            t(1, 1, E) if add_bias_kv else None, t(1, 1, E) if add_bias_kv else None, rng.random() < 0.3,
            rng.choice([0.0, 0.5]) if need_weights else 0.0, t(E, E), t(E) if rng.random() < 0.7 else None)  # fmt: skip
    random_draws = kwargs["training"] and args[10] > 0  # a dropout mask is drawn: reseeded (else widened to float64)
    return Sample(args, kwargs, grads=(0, 1, 2, 5, 6, 7, 8, 11, 12), seed=rng.getrandbits(16) if random_draws else None)


EINSUMS = [("bgHid,bgHjd->bgHij", "bgHid", "bgHjd"), ("bgHij,bgHjd->bgHid", "bgHij", "bgHjd"), ("ij,jk", "ij", "jk"),
           ("bij,bjk->bik", "bij", "bjk"), ("ik,jk->ij", "ik", "jk"), ("i,i->", "i", "i"), ("i,j->ij", "i", "j"),
           ("bij,jk->bki", "bij", "jk"), ("ii,ij->j", "ii", "ij"), ("ij,jk -> ik", "ij", "jk"),
           ("bij,bjk->kbi", "bij", "bjk"), ("ij,ij->ji", "ij", "ij"), ("i,j->ji", "i", "j"), ("ij,jk->k", "ij", "jk"),
           ("bIj,bjK->bKI", "bIj", "bjK"), ("ij,kl->lj", "ij", "kl"), ("ij,j", "ij", "j")]  # fmt: skip


def _einsum(rng: random.Random) -> Sample:
    """A two-operand einsum: batched matrix products (maxvit's attention among them), products with nothing
    contracted, indices summed within one operand, outputs in another order, and, for torch's own path, a diagonal;
    batch indices of size 1 broadcast."""
    equation, a, b = rng.choice(EINSUMS)
    size = {i: rng.randint(0 if rng.random() < 0.05 else 1, 3) for i in dict.fromkeys(a + b)}  # in a fixed order
    size["i"] = size.get("j", 2) if "ii" in a else size.get("i", 2)
    shape_a = [size[i] if i not in "bg" or rng.random() < 0.8 else 1 for i in a]
    dtype = dtype_of(rng, complex_ok=True)
    return Sample((equation, tensor(rng, shape_a, dtype), tensor(rng, [size[i] for i in b], dtype)), grads=(1, 2))


def _outputs(function):
    """multi_head_attention_forward returning the outputs that are tensors (the weights may be None); with dropout,
    both sides draw from the same seed (its masks are F.dropout's where the weights are returned, the only case
    the samples draw them)."""

    def call(*args, **kwargs):
        if args[10] and kwargs.get("training", True):
            torch.manual_seed(0)
        return tuple(t for t in function(*args, **kwargs) if t is not None)

    return call


def _centered(norm: Callable, groups: Callable) -> Callable:
    """``norm`` on x less each group's mean (a constant): the same function, normalisation being shift-invariant,
    and the same gradients, but torch's kernels then lose no digits to |μ| ≫ σ (its float64 loses up to (μ/σ)² ulps).
    ``groups(x, *args)``: x viewed as (groups, values)."""

    def call(x, *args, **kwargs):
        if x.numel():
            grouped = groups(x.detach(), *args)
            mean = grouped.mean(-1, keepdim=True)
            x = x - torch.where(torch.isfinite(mean), mean, 0).expand(grouped.shape).reshape(x.shape)
        return norm(x, *args, **kwargs)

    return call


def _layer_norm_groups(x, normalized_shape):
    return x.reshape(*x.shape[: x.dim() - len(torch.Size(normalized_shape))], -1)


def _group_norm_groups(x, num_groups):
    return x.reshape(x.shape[0], int(num_groups), -1)


class _GeluSlope(torch.autograd.Function):
    """torch's GELU, its derivative y' = Φ(x) + x·φ(x) evaluated with Φ = ½·erfc(−x/√2) (differentiable again)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * torch.special.erfc(x * -math.sqrt(0.5))
        return grad * (cdf + x * torch.exp(x * x * -0.5) / math.sqrt(2 * math.pi))


def _gelu_without_cancellation(input, approximate="none"):
    """The exact GELU's derivative without the left tail's cancellation (the tanh form: torch's own)."""
    return F.gelu(input, approximate=approximate) if approximate != "none" else _GeluSlope.apply(input)


OPS += [
    # reference: with |μ| ≫ σ torch's own float64 is far off the shift-invariant truth (ours is not); float64_ulps:
    # against that reference, of the largest value (δ/σ̂ with σ̂ as small as √ε)
    OpEntry("layer_norm", BF.layer_norm, F.layer_norm, _layer_norm,
            _faults(**{"1": [3, (3, 2.0), None, "3"]}, eps=BAD_FLOATS), opinfo=("nn.functional.layer_norm",),
            float64_ulps=4096, sums_cancel=True, reference=_centered(F.layer_norm, _layer_norm_groups)),
    OpEntry("group_norm", BF.group_norm, F.group_norm, _group_norm,
            _faults(**{"1": BAD_INTS + [4, 5]}, eps=BAD_FLOATS), opinfo=("nn.functional.group_norm",),
            float64_ulps=4096, sums_cancel=True, reference=_centered(F.group_norm, _group_norm_groups)),
    # reference: torch's kernel (float64 too) takes Φ as ½(1 + erf), which cancels in the left tail (x < −8: off by
    # 1/x², 1%); x·Φ with Φ = ½·erfc(−x/√2) is the same function without that cancellation
    OpEntry("gelu", BF.gelu, F.gelu, _gelu, _faults(**{"0": BAD_TENSORS}, approximate=["tan", None, 1, "NONE"]),
            elementwise=True, opinfo=("nn.functional.gelu",), reference=_gelu_without_cancellation),
    OpEntry("matmul", BF.matmul, torch.matmul, _matmul, _faults(**{"1": BAD_TENSORS}), opinfo=("matmul",)),
    OpEntry("bmm", BF.bmm, torch.bmm, _bmm, _faults(**{"1": BAD_TENSORS}), opinfo=("bmm",)),
    OpEntry("addmm", BF.addmm, torch.addmm, lambda rng: _addmm(rng, False),
            _faults(beta=BAD_FLOATS, alpha=BAD_FLOATS), opinfo=("addmm",)),
    OpEntry("baddbmm", BF.baddbmm, torch.baddbmm, lambda rng: _addmm(rng, True),
            _faults(beta=BAD_FLOATS, alpha=BAD_FLOATS), opinfo=("baddbmm",)),
    OpEntry("scaled_dot_product_attention", _sdpa_with_seed(BF.scaled_dot_product_attention),
            _sdpa_with_seed(F.scaled_dot_product_attention), _attention,
            _faults(attn_mask=BAD_TENSORS[:-2] + [torch.ones(1, dtype=torch.int64)], dropout_p=[1.5, -0.1]),
            opinfo=("nn.functional.scaled_dot_product_attention",), float64_ulps=512, sums_cancel=True),
    OpEntry("einsum", BF.einsum, torch.einsum, _einsum, _faults(**{"0": ["ij,jk->il", "ij,jk->ii", 3]}),
            opinfo=("einsum",)),
    OpEntry("multi_head_attention_forward", _outputs(BF.multi_head_attention_forward),
            _outputs(F.multi_head_attention_forward), _multi_head_attention, _faults(**{"3": [3, 5]}),
            opinfo=("nn.functional.multi_head_attention_forward",), float64_ulps=256, sums_cancel=True,
            # bias_k's, bias_v's gradients (through torch's cat and repeat of ours) laid out otherwise (docs/limits.md)
            layout_exempt=("7", "8")),
]  # fmt: skip


# --------------------------------------------------------------------------------------- data movement (eq. S)


def _index(rng: random.Random, shape: list):
    """One index of the kinds ``Tensor.__getitem__`` reads. Mostly advanced (bp_torch's S1): integer tensors with
    repeats, bool masks, lists, and tensors among ints, slices, None and Ellipsis; sometimes basic (ints, slices,
    None, Ellipsis), which bp_torch leaves to torch."""
    n = len(shape)
    d = rng.randrange(n)
    g = torch.Generator().manual_seed(rng.getrandbits(32))

    def positions(size, *count):
        dtype = rng.choice([torch.int64, torch.int32])
        return torch.randint(-size, size, count, generator=g, dtype=dtype) if size else torch.zeros(count, dtype=dtype)

    if rng.random() < 0.15:  # basic
        step = rng.choice([1, 2, 3])
        if rng.random() < 0.5 or not shape[d]:
            return (slice(None),) * d + (slice(rng.randint(-2, 2), rng.choice([None, rng.randint(-2, 4)]), step),)
        return (Ellipsis, rng.randint(-shape[-1], shape[-1] - 1)) if shape[-1] else (None, slice(None, None, step))
    kind = rng.choice(["tensor", "list", "mask", "among slices", "pair", "with int", "with ellipsis"])
    if kind == "mask":
        return torch.rand(shape[: rng.randint(1, n)], generator=g) < 0.5  # over the leading dimensions
    if not shape[d] and kind != "tensor":  # an empty dimension takes only an empty index
        return (slice(None),) * d + (positions(0, 0),)
    if kind == "tensor":  # repeated positions: their δ add up
        return positions(shape[0], rng.randint(0, 5)) if shape[0] else positions(0, 0)
    if kind == "list":
        return (
            [rng.randrange(shape[d]) for _ in range(rng.randint(1, 4))]
            if d == 0
            else (slice(None),) * d + ([rng.randrange(shape[d]) for _ in range(rng.randint(1, 4))],)
        )
    if kind == "among slices":  # swin's relative position bias: a table read at a 2-D index
        return (slice(None),) * d + (positions(shape[d], rng.randint(1, 3), 2),)
    if kind == "pair" and n >= 2 and all(shape[:2]):
        count = rng.randint(1, 4)
        return positions(shape[0], count), positions(shape[1], count)
    if kind == "with int" and n >= 2 and shape[0]:
        return rng.randrange(shape[0]), Ellipsis, positions(shape[-1], 3) if shape[-1] else positions(0, 0)
    if d == n - 1:  # "with ellipsis": the last dimension, after a new one
        return Ellipsis, None, positions(shape[d], 2)
    return (slice(None),) * d + (positions(shape[d], 2),)


def _getitem(rng: random.Random) -> Sample:
    x = tensor(rng, shape_of(rng, min_dim=1), dtype_of(rng, complex_ok=True))
    return Sample((x, _index(rng, list(x.shape))))


def _roll(rng: random.Random) -> Sample:
    x = tensor(rng, shape_of(rng, min_dim=1), dtype_of(rng, complex_ok=True))
    kind = rng.choice(["flat", "one", "several"])
    if kind == "flat":
        return Sample((x, rng.randint(-5, 5)))
    if kind == "one":
        return Sample((x, rng.randint(-5, 5), rng.randint(-x.dim(), x.dim() - 1)))
    dims = rng.sample(range(x.dim()), rng.randint(1, x.dim()))
    return Sample((x, tuple(rng.randint(-5, 5) for _ in dims), tuple(dims)))


def _pad(rng: random.Random) -> Sample:
    x = tensor(rng, shape_of(rng, min_dim=1), dtype_of(rng, complex_ok=True))
    # per padded dimension (the last ones first) a pair: positive pads, negative ones crop (never past the size)
    pads = []
    for size in reversed(x.shape[-rng.randint(1, x.dim()) :]):
        left = rng.randint(-(size // 2), 2)
        pads += [left, rng.randint(-(size + min(left, 0)) // 2, 2)]
    kwargs = {"value": rng.choice([None, 0.0, -1.5, 2])} if rng.random() < 0.5 else {}
    return Sample((x, tuple(pads) if rng.random() < 0.7 else pads), kwargs)


def _getitem_faults(sample: Sample, rng: random.Random) -> list:
    x = sample.args[0]
    return [(1, x.dim() * (0,) + (0,)), (1, 1.5), (1, "a"), (1, torch.tensor([0.5])), (1, (x.shape[0] + 3,))]


OPS += [
    OpEntry("getitem", BF.getitem, lambda input, index: input[index], _getitem, _getitem_faults,
            opinfo=("__getitem__",)),
    OpEntry("roll", BF.roll, torch.roll, _roll, _faults(**{"1": [(1, 2)], "2": [(0, 0, 0), 9, "0"]}), opinfo=("roll",)),
    OpEntry("pad", BF.pad, F.pad, _pad, _faults(**{"1": [(1,), (1, 2, 3), "1", (0.5, 1)]}, mode=["const", 3]),
            opinfo=("nn.functional.pad.constant", "nn.functional.pad.reflect", "nn.functional.pad.replicate",
                    "nn.functional.pad.circular")),
]  # fmt: skip


def samples(op: OpEntry, count: int, seed: int = 0) -> Iterator[tuple[int, Sample]]:
    """``count`` samples of ``op``, each from its own seeded ``random.Random`` (a failure names its draw)."""
    for i in range(count):
        yield i, op.sample(random.Random(f"{op.name}-{seed}-{i}"))
