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

from bp_torch._arguments import check_avg_pool2d, check_conv2d, check_linear, check_same_dtype_and_device
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


def _differentiated(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    given_padding = padding
    stride, padding, extra, dilation, groups = check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    if input.numel() == 0:
        # nothing to convolve: torch's conv2d then checks less (no dtypes with a padding string, a zero dilation
        # passes), so it decides, given the padding as given; every gradient is zero (Conv2dFunction.backward)
        padding = given_padding if isinstance(given_padding, str) else padding
        if weight.is_complex() and not input.is_complex() and _differentiated(input, weight, bias):
            raise RuntimeError(  # torch's autograd refuses the complex output of its real-input convolution path
                "conv2d: a complex weight over a real, empty input gives a complex output torch does not "
                "differentiate: convolution does not support automatic differentiation for outputs with complex dtype"
            )
    elif extra != (0, 0):
        # padding='same' with an even reach: torch pads the bottom/right by one more than the top/left
        input = F.pad(input, (0, extra[1], 0, extra[0]))
    (input, weight, bias), autocast_off = _autocast_lower_precision(input, weight, bias)
    if input.numel():
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
    options = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    out = apply(AvgPool2dFunction, input, *options)
    return out.squeeze(0) if unbatched else out


def sigmoid(input) -> torch.Tensor:
    """Logistic sigmoid, as :func:`torch.sigmoid`; backward δ·σ(1−σ) from the saved output (Note B eq. 37, 57).

    A non-tensor raises torch.sigmoid's TypeError (``F.sigmoid``, which calls ``input.sigmoid()``, raises an
    AttributeError by accident; ``nn.Sigmoid`` calls torch.sigmoid).

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
        bias: optional ``(out_features,)``, or any shape torch broadcasts into the output (``()``, ``(1, out)``,
            ``(N, out)`` ...; which ones, torch decides).

    Example::

        >>> linear(torch.ones(5, 3), torch.ones(2, 3)).shape
        torch.Size([5, 2])
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(linear, (input, weight, bias), input, weight, bias)
    check_linear(input, weight, bias)
    (input, weight, bias), autocast_off = _autocast_lower_precision(input, weight, bias)
    with autocast_off:
        try:
            return apply(LinearFunction, input, weight, bias)
        except RuntimeError as error:  # F.linear's verdict (check_linear says why it is torch's): its type, explained
            named = ", ".join(
                f"{name} of size {list(t.shape)} ({t.dtype} on {t.device})"
                for name, t in (("input", input), ("weight", weight), ("bias", bias))
                if t is not None
            )
            raise type(error)(f"linear: {named} do not fit: {error}") from error
