"""The one source of convolution and pooling cases for the tests: fixed grids and hypothesis strategies (mean, max
and adaptive pooling).

Every configuration is valid by construction (the kernel fits the padded input, a pool window fits, padding at most
half the window), so no test needs to throw draws away. ``bp_torch.check.CASES`` — the small set
``python -m bp_torch.check`` runs — is re-exported as ``CHECK_CASES``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from hypothesis import strategies as st

from bp_torch.check import CASES as CHECK_CASES

__all__ = ["CHECK_CASES", "ConvCase", "CONV_GRID", "conv_cases", "PoolCase", "pool_cases"]
__all__ += ["MaxPoolCase", "max_pool_cases", "AdaptivePoolCase", "adaptive_pool_cases"]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass(frozen=True)
class ConvCase:
    """A conv2d configuration: channels, groups, kernel and input size, and the options."""

    C_in: int
    C_out: int
    groups: int
    kernel: tuple[int, int]
    size: tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | str = 0
    dilation: int | tuple[int, int] = 1
    batch: int = 2
    bias: bool = True
    name: str = ""

    @property
    def options(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    @property
    def depthwise(self) -> bool:
        return self.C_in == self.C_out == self.groups

    def tensors(self, dtype=torch.float64, device="cpu", requires_grad=True, memory_format=torch.contiguous_format):
        """``(x, w, b)`` (``b`` None without bias), random, as leaves."""
        x = torch.randn(self.batch, self.C_in, *self.size, dtype=dtype, device=device)
        w = torch.randn(self.C_out, self.C_in // self.groups, *self.kernel, dtype=dtype, device=device)
        x, w = x.contiguous(memory_format=memory_format), w.contiguous(memory_format=memory_format)
        b = torch.randn(self.C_out, dtype=dtype, device=device) if self.bias else None
        return tuple(t.requires_grad_(requires_grad) if t is not None else None for t in (x, w, b))

    def __str__(self) -> str:
        if self.name:
            return self.name
        return (
            f"{self.C_in}to{self.C_out}g{self.groups}-k{self.kernel}-x{self.size}-s{self.stride}-p{self.padding!r}"
            f"-d{self.dilation}"
        ).replace(" ", "")


def _fits(case: ConvCase) -> bool:
    if case.padding == "same":
        return case.stride == 1
    pad = (0, 0) if case.padding == "valid" else _pair(case.padding)
    dil = _pair(case.dilation)
    return all(L + 2 * p >= d * (k - 1) + 1 for L, p, d, k in zip(case.size, pad, dil, case.kernel))


# (C_in, C_out, groups, kernel, input HxW): plain, grouped, depthwise, 1x1; non-square kernels and maps
_LAYERS = [(2, 3, 1, (3, 2), (7, 6)), (4, 2, 2, (2, 3), (6, 7)), (3, 3, 3, (3, 3), (6, 6)), (2, 4, 1, (1, 1), (5, 4))]
_OPTIONS = [  # (stride, padding, dilation)
    (1, 0, 1),
    (1, 1, 1),
    (1, "same", 2),
    (2, 1, 1),
    (2, 0, 1),  # a strided 1x1 layer without padding (ResNet's shortcuts): the input gradient's 1x1 scatter
    ((3, 2), (2, 1), (1, 2)),
    (2, 2, 2),
    (1, "valid", 1),
]

# The fixed grid: Note B's two layers (fewer maps and a smaller batch than the LeNet's, for float64 gradcheck), every
# layer of _LAYERS under every option it fits, and odd cases (an even kernel under 'same', padding past the kernel's
# reach, a 1-D convolution, a 1x1 layer on a map of 64+ positions).
CONV_GRID: list[ConvCase] = [
    ConvCase(1, 3, 1, (5, 5), (12, 12), name="lenet-C1"),
    ConvCase(6, 4, 1, (5, 5), (8, 8), batch=1, name="lenet-C2"),
    ConvCase(2, 2, 1, (4, 2), (5, 6), padding="same", name="same-even-kernel"),
    ConvCase(2, 2, 1, (3, 3), (5, 5), padding=3, name="padding-past-reach"),
    ConvCase(1, 1, 1, (1, 3), (1, 6), name="1d"),
    ConvCase(3, 2, 1, (1, 1), (8, 9), batch=1, name="1x1-on-72-positions"),  # ∂e/∂x as the channel product
    *(
        case
        for (C_in, C_out, G, k, size), (s, p, d) in itertools.product(_LAYERS, _OPTIONS)
        if _fits(case := ConvCase(C_in, C_out, G, k, size, s, p, d))
    ),
]


@st.composite
def conv_cases(draw, max_extra: int = 3, max_channels: int = 2) -> ConvCase:
    """Random valid conv2d configurations: groups, per-group channels, kernels, strides, dilations, paddings (int,
    pair, 'same', 'valid'), and input sizes from the smallest the dilated kernel fits in to a few rows more."""
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in_g, c_out_g = draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    padding = draw(st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.sampled_from(["same", "valid"])))
    stride = (1, 1) if padding == "same" else draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    pad = (0, 0) if isinstance(padding, str) else padding
    extra = draw(st.tuples(st.integers(0, max_extra), st.integers(0, max_extra)))
    size = tuple(max(1, d * (k - 1) + 1 - 2 * p) + e for d, k, p, e in zip(dilation, kernel, pad, extra))
    return ConvCase(
        groups * c_in_g,
        groups * c_out_g,
        groups,
        kernel,
        size,
        stride,
        padding,
        dilation,
        batch=draw(st.integers(1, 2)),
        bias=draw(st.booleans()),
    )


class _MapCase:
    """What the pooling cases share: a random (batch, channels, *size) input, and their options by name."""

    OPTIONS: ClassVar[tuple[str, ...]] = ()

    @property
    def options(self) -> dict:
        return {name: getattr(self, name) for name in self.OPTIONS}

    def input(self, dtype=torch.float64, device="cpu", requires_grad=True) -> torch.Tensor:
        x = torch.randn(self.batch, self.channels, *self.size, dtype=dtype, device=device)
        return x.requires_grad_(requires_grad)


@dataclass(frozen=True)
class PoolCase(_MapCase):
    """An avg_pool2d configuration: input size and every option."""

    size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None
    padding: tuple[int, int]
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    batch: int = 2
    channels: int = 3

    OPTIONS: ClassVar = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


@st.composite
def pool_cases(draw) -> PoolCase:
    """Random valid avg_pool2d configurations: windows, strides (None: the window), paddings up to half the window,
    ceil_mode, count_include_pad, divisor_override; inputs from the smallest a window fits in to a few rows more."""
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    extra = draw(st.tuples(st.integers(0, 6), st.integers(0, 6)))
    size = tuple(max(1, k - 2 * p) + e for k, p, e in zip(kernel, padding, extra))
    return PoolCase(
        size,
        kernel,
        stride,
        padding,
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.sampled_from([None, None, 1, 3, 7])),
    )


@dataclass(frozen=True)
class MaxPoolCase(_MapCase):
    """A max_pool2d configuration: input size and every option."""

    size: tuple[int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool = False
    batch: int = 2
    channels: int = 3

    OPTIONS: ClassVar = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


@st.composite
def max_pool_cases(draw) -> MaxPoolCase:
    """Random valid max_pool2d configurations: windows, dilations, strides (None: the window), paddings up to half
    the window, ceil_mode; inputs from the smallest every window meets to a few rows more.

    A padded input smaller than the dilated window is valid for torch, but then a window's taps may all fall in the
    padding (its maximum −∞, no gradient): with padding, the input is at least the dilated window, so every window
    meets it (tests/test_pool_and_norm.py tests the −∞ windows on their own)."""
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    dilation = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    extra = draw(st.tuples(st.integers(0, 6), st.integers(0, 6)))
    size = tuple(d * (k - 1) + 1 + e for d, k, e in zip(dilation, kernel, extra))
    return MaxPoolCase(size, kernel, stride, padding, dilation, draw(st.booleans()), batch=draw(st.integers(1, 2)))


@dataclass(frozen=True)
class AdaptivePoolCase(_MapCase):
    """An adaptive_avg_pool2d configuration: input size and output size (an int, a pair, or a pair with None)."""

    size: tuple[int, int]
    output_size: int | tuple[int | None, int | None]
    batch: int = 2
    channels: int = 3

    OPTIONS: ClassVar = ("output_size",)


@st.composite
def adaptive_pool_cases(draw) -> AdaptivePoolCase:
    """Random adaptive_avg_pool2d configurations: any input size, outputs from 1 to twice the input (disjoint,
    overlapping and repeated windows), as an int, a pair or a pair with None (the input's size)."""
    size = draw(st.tuples(st.integers(1, 9), st.integers(1, 9)))
    out = tuple(draw(st.one_of(st.none(), st.integers(1, 2 * L))) for L in size)
    output_size = draw(st.sampled_from([out, out[0] or size[0]]))
    return AdaptivePoolCase(size, output_size, batch=draw(st.integers(1, 2)))
