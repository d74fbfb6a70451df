"""Indexing, roll and constant padding with the backward of docs/derivation.md eq. S1–S3: the twins of
``Tensor.__getitem__``, :func:`torch.roll` and :func:`torch.nn.functional.pad` that a converted model's ``forward``
calls (swin's shifted windows and padding, the relative position bias tables of swin and maxvit, vit's class token).

Their forward is torch's own, which validates the arguments and raises torch's errors; nothing to differentiate, or a
padding mode other than ``'constant'`` (whose backward adds mirrored or wrapped values: not derived here), runs
torch's function alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function_unary

from bp_torch._function import apply
from bp_torch.autograd.movement import ConstantPadFunction, GetItemFunction, RollFunction, is_basic


def _differentiated(input) -> bool:
    return isinstance(input, torch.Tensor) and torch.is_grad_enabled() and input.requires_grad


def getitem(input, index) -> torch.Tensor:
    """``input[index]`` (``Tensor.__getitem__``), with the backward of eq. S1 for advanced indexing (index or mask
    tensors, lists: ``bp_torch.autograd.GetItemFunction``): δ added back where each element was read, summed where an
    index repeats.

    Basic indexing (ints, slices, None, Ellipsis) is torch's own: its result is a view of ``input``, which code may
    write through in place (``x[:, 0] += 1``, ``x[:, :2].zero_()``), and torch allows that on its own views only, not
    on a custom Function's. Its backward node (``SliceBackward0``, ``SelectBackward0``) writes δ into zeros: it only
    moves δ, and ``bp_torch.audit`` counts it as structural.

    Example::

        >>> x = torch.arange(4.0, requires_grad=True)
        >>> getitem(x, torch.tensor([0, 0, 3])).sum().backward()
        >>> x.grad
        tensor([2., 0., 0., 1.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(getitem, (input,), input, index)
    if not _differentiated(input) or is_basic(index):
        return input[index]
    return apply(GetItemFunction, input, index)


def roll(input, shifts, dims=None) -> torch.Tensor:
    """As :func:`torch.roll`, with the backward of eq. S2: δ rolled back by the opposite shifts.

    Example::

        >>> roll(torch.arange(4.0), 1)
        tensor([3., 0., 1., 2.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(roll, (input,), input, shifts, dims)
    dims = () if dims is None else dims
    if not _differentiated(input):
        return torch.roll(input, shifts, dims)
    return apply(RollFunction, input, shifts, dims)


def pad(input, pad, mode="constant", value=None) -> torch.Tensor:
    """As :func:`torch.nn.functional.pad`; for ``mode='constant'`` with the backward of eq. S3: δ cropped back (padded
    with zeros where a negative pad cropped the input). Other modes are torch's own.

    Example::

        >>> pad(torch.ones(1, 2), (1, 0), value=5.0)
        tensor([[5., 1., 1.]])
    """
    if has_torch_function_unary(input):
        # _PAD: this function (inside it, `pad` is the argument)
        return handle_torch_function(_PAD, (input,), input, pad, mode=mode, value=value)
    if mode != "constant" or not _differentiated(input):
        return F.pad(input, pad, mode, value)
    return apply(ConstantPadFunction, input, pad, value)


_PAD = pad
