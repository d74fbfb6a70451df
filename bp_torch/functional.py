"""``torch.nn.functional``'s conv2d, avg_pool2d, sigmoid and linear (and max_pool2d, adaptive_avg_pool2d,
batch_norm), with hand-derived backward passes.

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
    check_adaptive_avg_pool2d,
    check_batch_norm,
    check_conv2d,
    check_linear,
    check_max_pool2d,
    check_pool_input,
    check_same_dtype_and_device,
    pool2d_arguments,
)
from bp_torch._function import apply
from bp_torch.autograd import (
    AdaptiveAvgPool2dFunction,
    AvgPool2dFunction,
    BatchNormFunction,
    Conv2dFunction,
    LinearFunction,
    MaxPool2dFunction,
    SigmoidFunction,
)

__all__ = ["conv2d", "avg_pool2d", "sigmoid", "linear"]
__all__ += ["max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d", "batch_norm"]


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


# pooling and normalisation beyond the notes: max_pool2d, adaptive_avg_pool2d, batch_norm (docs/derivation.md, eq. M)


def max_pool2d_with_indices(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D max pooling returning ``(output, indices)``, as :func:`torch.nn.functional.max_pool2d_with_indices`,
    with the hand-derived backward.

    Backward (``bp_torch.autograd.MaxPool2dFunction``): each window's δ goes to the input it picked, added up
    where overlapping windows picked the same one (eq. M2); the picks are torch's own (the first maximum in scan
    order, NaN propagating).

    Args:
        input: ``(N, C, H, W)`` (N may be 0) or unbatched ``(C, H, W)``.
        kernel_size: int or pair, positive.
        stride: int or pair, positive; default ``kernel_size``.
        padding: int or pair, at most half the kernel size; implicit −∞ (never picked).
        dilation: int or pair, positive: the distance between a window's taps.
        ceil_mode: use ceil instead of floor for the output size (a window must start inside the input or the
            left padding).
        return_indices: ignored (always returned here, as torch's).

    Shape:
        ``H_out = floor_or_ceil((H + 2·padding − dilation·(kH − 1) − 1) / stride) + 1``, likewise ``W_out``;
        ``indices`` is the output's shape, each entry ``h·W + w`` in its own (n, c) plane.

    Example::

        >>> out, indices = max_pool2d_with_indices(torch.tensor([[[1.0, 4.0], [3.0, 2.0]]]), 2)
        >>> out, indices
        (tensor([[[4.]]]), tensor([[[1]]]))
    """
    if has_torch_function_unary(input):
        return handle_torch_function(max_pool2d_with_indices, (input,), input, kernel_size, stride, padding,
                                     dilation, ceil_mode, return_indices)  # fmt: skip
    kernel_size, stride, padding, dilation = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    out, indices = apply(MaxPool2dFunction, input, kernel_size, stride, padding, dilation, ceil_mode)
    return (out.squeeze(0), indices.squeeze(0)) if unbatched else (out, indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, as :func:`torch.nn.functional.max_pool2d`, with the hand-derived backward (eq. M2).

    The arguments are :func:`max_pool2d_with_indices`'s; returns the output, or ``(output, indices)`` with
    ``return_indices=True``.

    Example::

        >>> max_pool2d(torch.arange(16.0).reshape(1, 4, 4), 2)
        tensor([[[ 5.,  7.],
                 [13., 15.]]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(max_pool2d, (input,), input, kernel_size, stride, padding, dilation, ceil_mode,
                                     return_indices)  # fmt: skip
    out, indices = max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)
    return (out, indices) if return_indices else out


def adaptive_avg_pool2d(input, output_size) -> torch.Tensor:
    """2-D adaptive mean pooling, as :func:`torch.nn.functional.adaptive_avg_pool2d`, with the hand-derived
    backward.

    Output row i averages input rows ⌊i·H/H_out⌋ to ⌈(i+1)·H/H_out⌉ − 1 (columns alike; eq. M4). Backward
    (``bp_torch.autograd.AdaptiveAvgPool2dFunction``): each window's δ spread evenly over it, divided by its size
    (eq. M5); for a 1×1 output, δ/(H·W) everywhere.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``; N and C may be 0.
        output_size: int or pair ``(H_out, W_out)``, non-negative; a ``None`` entry keeps the input's size.

    Example::

        >>> adaptive_avg_pool2d(torch.arange(6.0).reshape(1, 2, 3), (1, None))
        tensor([[[1.5000, 2.5000, 3.5000]]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(adaptive_avg_pool2d, (input,), input, output_size)
    output_size = check_adaptive_avg_pool2d(input, output_size)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    out = apply(AdaptiveAvgPool2dFunction, input, output_size)
    return out.squeeze(0) if unbatched else out


def batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
) -> torch.Tensor:
    """Batch normalisation, as :func:`torch.nn.functional.batch_norm`, with the hand-derived backward.

    Per channel: y = γ(x − μ)/√(σ² + ε) + β (eq. M6), with the batch's mean and biased variance in training (and
    the running statistics updated in place, the variance unbiased, eq. M7), the running ones otherwise. Backward
    (``bp_torch.autograd.BatchNormFunction``): ∂e/∂β = Σδ (M8), ∂e/∂γ = Σδx̂ (M9), ∂e/∂x = γ/(mσ̂)·(mδ − Σδ −
    x̂Σδx̂) in training (M10), γδ/σ̂ with the running statistics (M11).

    Args:
        input: ``(N, C, *)``.
        running_mean, running_var: ``(C,)`` or ``None`` (then ``training`` must be true).
        weight, bias: γ and β, ``(C,)`` or ``None`` (γ = 1, β = 0).
        training: normalise with the batch's statistics (and update the running ones); else with the running ones.
        momentum: the running statistics' update factor α: r ← (1 − α)·r + α·batch statistic.
        eps: ε, added to the variance; positive in training.

    Example::

        >>> batch_norm(torch.tensor([[1.0], [3.0]]), None, None, training=True)
        tensor([[-1.0000],
                [ 1.0000]])
    """
    if has_torch_function_variadic(input, running_mean, running_var, weight, bias):
        return handle_torch_function(batch_norm, (input, running_mean, running_var, weight, bias), input,
                                     running_mean, running_var, weight=weight, bias=bias, training=training,
                                     momentum=momentum, eps=eps)  # fmt: skip
    check_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    out, _, _ = apply(
        BatchNormFunction, input, weight, bias, running_mean, running_var, training, float(momentum), float(eps)
    )
    return out
