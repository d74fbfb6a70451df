"""``torch.nn.functional``'s conv2d, avg_pool2d, sigmoid and linear, with hand-derived backward passes.

Same signatures, defaults, shapes (unbatched inputs too), dtypes, devices and memory formats as
``torch.nn.functional``; bad arguments raise the exception type torch raises, with a message naming the argument.
Like torch's own functions, each first hands itself to ``__torch_function__`` overrides (``torch.fx``'s proxies,
tensor subclasses), so a traced model calls these very functions.

Example::

    >>> import torch
    >>> from bp_torch import functional as BF
    >>> x = torch.randn(8, 1, 28, 28)
    >>> w = torch.randn(6, 1, 5, 5, requires_grad=True)
    >>> BF.avg_pool2d(BF.sigmoid(BF.conv2d(x, w)), 2).shape
    torch.Size([8, 6, 12, 12])
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function_unary, has_torch_function_variadic

from bp_torch._arguments import (
    check_conv2d,
    check_linear,
    check_pool_input,
    check_same_dtype_and_device,
    pool2d_arguments,
)
from bp_torch._function import apply
from bp_torch.autograd import AvgPool2dFunction, Conv2dFunction, LinearFunction, SigmoidFunction

__all__ = ["conv2d", "avg_pool2d", "sigmoid", "linear"]


def _autocast_lower_precision(*tensors: torch.Tensor | None):
    """Cast as autocast casts an op on its lower-precision list (conv2d, linear), then run with autocast off.

    ``torch.amp.custom_fwd`` cannot wrap a Function written with ``setup_context`` (PyTorch issue 132388), so the
    cast happens here, outside the Function: the casts are recorded by autograd, and gradients come back in each
    argument's own dtype. Like autocast, float64 tensors are left alone.
    """
    device_type = tensors[0].device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know, e.g. meta
        enabled = False
    if not enabled:
        return tensors, nullcontext()
    dtype = torch.get_autocast_dtype(device_type)
    cast = tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )
    return cast, torch.autocast(device_type, enabled=False)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """2-D cross-correlation, as :func:`torch.nn.functional.conv2d`, with the hand-derived backward.

    Backward (``bp_torch.autograd.Conv2dFunction``): ∂e/∂x is the full correlation of δ with the rot180 kernel
    (Note A eq. 17/35, Note B eq. 51), ∂e/∂k the correlation of x with δ (Note B eq. 40/59), ∂e/∂b = Σδ (eq. 45/64).

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        bias: optional ``(C_out,)``.
        stride, dilation: int or pair, positive.
        padding: int or pair (non-negative), ``'valid'`` (none) or ``'same'`` (output size = input size;
            stride 1 only; an odd total goes one more to the bottom/right, as in torch).
        groups: splits the channels into independent convolutions; both channel counts must divide by it.

    Shape:
        ``H_out = floor((H + 2·padding − dilation·(kH − 1) − 1) / stride) + 1``, likewise ``W_out``.

    Example::

        >>> conv2d(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), padding="same").shape
        torch.Size([2, 4, 8, 8])
    """
    if has_torch_function_variadic(input, weight, bias):  # torch.fx proxies, tensor subclasses: as torch's functions
        return handle_torch_function(conv2d, (input, weight, bias), input, weight, bias, stride, padding, dilation,
                                     groups)  # fmt: skip
    stride, padding, extra, dilation, groups = check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    if extra != (0, 0):
        # padding='same' with an even reach: torch pads the bottom/right by one more than the top/left
        input = F.pad(input, (0, extra[1], 0, extra[0]))
    (input, weight, bias), autocast_off = _autocast_lower_precision(input, weight, bias)
    check_same_dtype_and_device("conv2d", input=input, weight=weight, bias=bias)
    with autocast_off:
        out = apply(Conv2dFunction, input, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
) -> torch.Tensor:
    """2-D mean pooling, as :func:`torch.nn.functional.avg_pool2d`, with the hand-derived backward.

    Backward (``bp_torch.autograd.AvgPool2dFunction``): δ spread evenly over each window, divided by that window's
    divisor — for LeNet's 2x2 windows, upsampling by ¼ (Note B eq. 32, 52).

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        kernel_size: int or pair, positive.
        stride: int or pair, positive; default ``kernel_size``.
        padding: int or pair, at most half the kernel size; implicit zeros.
        ceil_mode: use ceil instead of floor for the output size (a window must start inside the input or the
            left padding).
        count_include_pad: count padded zeros in the divisor.
        divisor_override: if given and non-zero, the divisor of every window.

    Shape:
        ``H_out = floor_or_ceil((H + 2·padding − kH) / stride) + 1``, likewise ``W_out``.

    Example::

        >>> avg_pool2d(torch.ones(1, 4, 4), 2)
        tensor([[[1., 1.],
                 [1., 1.]]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(avg_pool2d, (input,), input, kernel_size, stride, padding, ceil_mode,
                                     count_include_pad, divisor_override)  # fmt: skip
    check_pool_input(input)
    kernel_size, stride, padding = pool2d_arguments(input, kernel_size, stride, padding, ceil_mode, divisor_override)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    out = apply(
        AvgPool2dFunction,
        input,
        kernel_size,
        stride,
        padding,
        bool(ceil_mode),
        bool(count_include_pad),
        divisor_override,
    )
    return out.squeeze(0) if unbatched else out


def sigmoid(input) -> torch.Tensor:
    """Logistic sigmoid, as :func:`torch.sigmoid`; backward δ·σ(1−σ) from the saved output (Note B eq. 37, 57).

    Example::

        >>> sigmoid(torch.zeros(2))
        tensor([0.5000, 0.5000])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(sigmoid, (input,), input)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"sigmoid(): argument 'input' must be Tensor, not {type(input).__name__}")
    return apply(SigmoidFunction, input)


def linear(input, weight, bias=None) -> torch.Tensor:
    """``y = x Wᵀ + b``, as :func:`torch.nn.functional.linear`, with the hand-derived backward.

    Backward (``bp_torch.autograd.LinearFunction``): ∂e/∂x = δW (Note A eq. 8, Note B eq. 30),
    ∂e/∂W = δᵀx (Note A eq. 7, Note B eq. 19), ∂e/∂b = Σδ (Note B eq. 24), summed over every leading dimension.

    Args:
        input: ``(*, in_features)``; any number of leading (batch) dimensions, including none.
        weight: ``(out_features, in_features)``, or ``(in_features,)`` for a single output with no feature dim.
        bias: optional ``(out_features,)`` (``()`` with a 1-D weight).

    Example::

        >>> linear(torch.ones(5, 3), torch.ones(2, 3)).shape
        torch.Size([5, 2])
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(linear, (input, weight, bias), input, weight, bias)
    check_linear(input, weight, bias)
    vector_weight = weight.dim() == 1  # F.linear then contracts the last dim away: y has no feature dim
    if vector_weight:
        weight = weight.unsqueeze(0)
        bias = bias.reshape(1) if bias is not None else None
    (input, weight, bias), autocast_off = _autocast_lower_precision(input, weight, bias)
    check_same_dtype_and_device("linear", input=input, weight=weight, bias=bias)
    with autocast_off:
        out = apply(LinearFunction, input, weight, bias)
    return out.squeeze(-1) if vector_weight else out
