"""``torch.nn``'s Conv2d, AvgPool2d, Sigmoid and Linear with the hand-derived backward, and ``convert()``.

Each class subclasses its ``torch.nn`` twin and keeps torch's ``__init__`` untouched: constructor arguments,
defaults, parameter initialisation, ``state_dict`` keys, ``repr`` and ``isinstance`` checks are torch's own. Only
the forward is ours — it calls ``bp_torch.functional`` — and so the backward is the derived one.

Example::

    >>> import torch
    >>> from bp_torch import nn as bnn
    >>> layer = bnn.Conv2d(1, 6, 5)
    >>> isinstance(layer, torch.nn.Conv2d), layer(torch.randn(2, 1, 28, 28)).shape
    (True, torch.Size([2, 6, 24, 24]))
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bp_torch import functional as BF

__all__ = ["Conv2d", "AvgPool2d", "Sigmoid", "Linear", "convert", "to_native", "Conversion"]


class NotScriptable:
    """Mixed into every bp_torch module: ``torch.jit.script`` fails at once with a one-line error naming the way out.

    TorchScript cannot compile a Python ``autograd.Function``, and the hand-derived backward is one. torch.jit.script
    calls ``__prepare_scriptable__`` on every module it is given before compiling anything.
    """

    def __prepare_scriptable__(self):
        kind = type(self).__name__
        raise RuntimeError(
            f"bp_torch.nn.{kind} cannot be scripted: TorchScript cannot compile the Python autograd.Function that "
            f"holds its hand-derived backward. Script bp_torch.nn.to_native(model)[0] instead (torch's own {kind}), "
            f"or use torch.compile, which keeps the hand-derived backward (torch.export gives a forward-only graph)."
        )


class Conv2d(NotScriptable, nn.Conv2d):
    """:class:`torch.nn.Conv2d` whose forward is :func:`bp_torch.functional.conv2d` (Note A eq. 10, 17, 35).

    Every argument, every ``padding_mode`` and the initialisation are torch's. Non-'zeros' padding modes pad with
    ``F.pad`` first, exactly as torch does; that pad is native autograd, the convolution behind it is ours.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # mirrors torch.nn.Conv2d._conv_forward line for line, with our conv2d in place of F.conv2d
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return BF.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return BF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class AvgPool2d(NotScriptable, nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` whose forward is :func:`bp_torch.functional.avg_pool2d` (Note B eq. 32, 52)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class Sigmoid(NotScriptable, nn.Sigmoid):
    """:class:`torch.nn.Sigmoid` whose forward is :func:`bp_torch.functional.sigmoid` (Note B eq. 37, 57)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.sigmoid(input)


class Linear(NotScriptable, nn.Linear):
    """:class:`torch.nn.Linear` whose forward is :func:`bp_torch.functional.linear` (Note A eq. 5, 7, 8)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return BF.linear(input, self.weight, self.bias)


# The one table both directions read. Matching is by exact type: a user's subclass of nn.Conv2d (weight
# standardisation, a parametrized layer's generated class ...) has its own forward, which a swap would silently drop,
# so it is left native and listed in the summary.
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: Conv2d,
    nn.AvgPool2d: AvgPool2d,
    nn.Sigmoid: Sigmoid,
    nn.Linear: Linear,
}


@dataclass
class Conversion:
    """What :func:`convert` / :func:`to_native` did: qualified module names, grouped by class name.

    ``swapped`` maps each new class name to the modules that became it; ``left`` maps each class name to the leaf
    modules (no children) that have no twin and kept their own forward.
    """

    swapped: dict[str, list[str]] = field(default_factory=dict)
    left: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        def lines(groups: dict[str, list[str]]) -> list[str]:
            return [f"  {kind} x{len(names)}: {', '.join(names)}" for kind, names in groups.items()] or ["  none"]

        return "\n".join(["swapped:", *lines(self.swapped), "left as they were:", *lines(self.left)])


def _swap(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]]) -> tuple[nn.Module, Conversion]:
    # The swap reassigns __class__: the twins add no state and keep torch's __init__, so an object of one is a
    # valid object of the other. Being the same object, the module keeps its Parameters and buffers (optimizers built
    # before still hold them), training/eval mode, hooks and every reference to it (a module shared by two parents,
    # or held by the caller); nothing is copied and no parent needs re-wiring, which a fresh object would require.
    targets = set(table.values())
    swapped, left = defaultdict(list), defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=True):
        kind = type(module)
        if kind in table:
            module.__class__ = table[kind]
            swapped[table[kind].__name__].append(name or "<root>")
        elif kind not in targets and next(module.children(), None) is None:
            left[kind.__name__].append(name or "<root>")
    return model, Conversion(dict(swapped), dict(left))


def convert(model: nn.Module) -> tuple[nn.Module, Conversion]:
    """Swap, in place, every ``torch.nn`` Conv2d, AvgPool2d, Sigmoid and Linear in ``model`` for its bp_torch twin.

    The modules stay the same objects, so parameters and buffers are shared, not copied: an optimizer built before
    the conversion trains the converted model. Only exact types are swapped; subclasses and every other layer stay
    native. For an untouched original, convert a copy: ``convert(copy.deepcopy(model))``.

    Returns:
        ``(model, summary)``: the same ``model``, and a :class:`Conversion` naming what was swapped and what was not.

    Example::

        >>> import torch
        >>> model, summary = convert(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
        >>> type(model[0]).__module__, summary.swapped, summary.left
        ('bp_torch.nn', {'Linear': ['0']}, {'ReLU': ['1']})
    """
    return _swap(model, TWINS)


def to_native(model: nn.Module) -> tuple[nn.Module, Conversion]:
    """The reverse of :func:`convert`: every bp_torch module in ``model`` becomes its ``torch.nn`` class, in place."""
    return _swap(model, {twin: native for native, twin in TWINS.items()})
