"""Argument checks and normalisation for ``bp_torch.functional``: validated once, up front, as torch does.

Errors use the exception type torch raises for the same mistake (``RuntimeError`` for bad values, ``TypeError``
for wrong types) and name the argument and the value received.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Pair = tuple[int, int]


def _pair(value, name: str, op: str) -> Pair:
    """An int or a sequence of two ints, as a pair (torch's ``_pair``), or a TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of two ints, but got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) == 1 and isinstance(items[0], int):
            return (items[0], items[0])
        if len(items) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return items
        raise RuntimeError(f"{op}: expected {name} to be a single int or a pair of ints, but got {name}={value!r}")
    raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of two ints, but got {type(value).__name__}")


def _positive_pair(value, name: str, op: str) -> Pair:
    pair = _pair(value, name, op)
    if min(pair) <= 0:
        raise RuntimeError(f"{op}: non-positive {name} is not supported, but got {name}={value!r}")
    return pair


def _check_tensor(value, name: str, op: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}(): argument '{name}' must be Tensor, not {type(value).__name__}")


def check_same_dtype_and_device(op: str, **tensors: torch.Tensor | None) -> None:
    (ref_name, ref), *others = [(n, t) for n, t in tensors.items() if t is not None]
    for name, t in others:
        if t.dtype != ref.dtype:
            raise RuntimeError(
                f"{op}: expected {name} to have the same dtype as {ref_name}, "
                f"but got {ref_name}.dtype={ref.dtype} and {name}.dtype={t.dtype}"
            )
        if t.device != ref.device:
            raise RuntimeError(
                f"{op}: expected {name} to be on the same device as {ref_name}, "
                f"but got {ref_name} on {ref.device} and {name} on {t.device}"
            )


def check_conv2d(input, weight, bias, stride, padding, dilation, groups) -> tuple[Pair, Pair, Pair, Pair, int]:
    """Validate conv2d's tensors and options; return :func:`conv2d_options`'s normalised ones."""
    op = "conv2d"
    _check_tensor(input, "input", op)
    _check_tensor(weight, "weight", op)
    if bias is not None:
        _check_tensor(bias, "bias", op)
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(input.shape)}"
        )
    check_conv2d_weight(weight)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise RuntimeError(
            f"conv2d: expected bias to be 1-dimensional with {weight.shape[0]} elements (out_channels), "
            f"but got bias of size {list(bias.shape)}"
        )
    C_in, size = input.shape[-3], tuple(input.shape[-2:])
    return conv2d_options(
        tuple(weight.shape), C_in, size, stride, padding, dilation, groups, f"input of size {list(input.shape)}"
    )


def check_conv2d_weight(weight) -> None:
    if weight.dim() != 4:
        raise RuntimeError(
            f"conv2d: expected weight to be 4D (out_channels, in_channels / groups, kH, kW), "
            f"but got weight of size {list(weight.shape)}"
        )


def conv2d_options(
    weight_shape, C_in: int, input_size: Pair, stride, padding, dilation, groups, what: str = "the input"
):
    """Validate conv2d's options for a weight of ``weight_shape`` over ``C_in`` channels of ``input_size``.

    Returns ``(stride, padding, extra, dilation, groups)``: pairs and an int, ``padding`` symmetric and ``extra`` the
    further bottom/right padding of ``padding='same'`` with an even reach.
    """
    op = "conv2d"
    stride = _positive_pair(stride, "stride", op)
    dilation = _positive_pair(dilation, "dilation", op)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"conv2d(): argument 'groups' must be int, not {type(groups).__name__}")
    if groups <= 0:
        raise RuntimeError(f"conv2d: non-positive groups is not supported, but got groups={groups}")
    C_out = weight_shape[0]
    if C_out % groups != 0:
        raise RuntimeError(
            f"conv2d: out_channels must be divisible by groups, but got out_channels={C_out} "
            f"(weight of size {list(weight_shape)}), groups={groups}"
        )
    if C_in != weight_shape[1] * groups:
        raise RuntimeError(
            f"conv2d: expected input with {weight_shape[1] * groups} channels (weight.shape[1]={weight_shape[1]} "
            f"x groups={groups}), but got {what} with {C_in} channels"
        )
    padding, extra = conv2d_padding(padding, weight_shape[2:], stride, dilation)
    for side, size, k, p, e, d in zip(("height", "width"), input_size, weight_shape[2:], padding, extra, dilation):
        if output_size(size + e, k, 1, p, d) < 1:
            raise RuntimeError(
                f"conv2d: the dilated kernel {side} {d * (k - 1) + 1} (kernel {k}, dilation {d}) is larger than "
                f"the padded input {side} {size + e + 2 * p} (input {size}, padding {p}); kernel size can't be "
                f"greater than the padded input size"
            )
    return stride, padding, extra, dilation, groups


def conv2d_padding(padding, kernel_size, stride: Pair, dilation: Pair) -> tuple[Pair, Pair]:
    """Resolve conv2d's padding to (symmetric padding, extra bottom/right padding)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise RuntimeError(f"conv2d: invalid padding string {padding!r}, expected 'same', 'valid' or an int")
        if stride != (1, 1):
            raise RuntimeError(f"conv2d: padding='same' is not supported for strided convolutions (stride={stride})")
        # the output keeps the input size: the dilated reach d·(k−1) is padded, the odd one to the bottom/right
        reach = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        return (reach[0] // 2, reach[1] // 2), (reach[0] % 2, reach[1] % 2)
    pair = _pair(padding, "padding", "conv2d")
    if min(pair) < 0:
        raise RuntimeError(f"conv2d: negative padding is not supported, but got padding={padding!r}")
    return pair, (0, 0)


def check_pool_input(input) -> None:
    _check_tensor(input, "input", "avg_pool2d")
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to avg_pool2d, but got input of size: {list(input.shape)}"
        )


def pool2d_arguments(input, kernel_size, stride, padding, ceil_mode, divisor_override) -> tuple[Pair, Pair, Pair]:
    """Validate avg_pool2d's options; return kernel_size, stride, padding as pairs."""
    op = "avg_pool2d"
    kernel = _positive_pair(kernel_size, "kernel_size", op)
    # stride=None, or an empty sequence as torch also accepts, means stride = kernel_size
    stride = kernel if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else stride
    stride = _positive_pair(stride, "stride", op)
    pad = _pair(padding, "padding", op)
    if min(pad) < 0:
        raise RuntimeError(f"avg_pool2d: negative padding is not supported, but got padding={padding!r}")
    for p, k in zip(pad, kernel):
        if p > k // 2:
            raise RuntimeError(
                f"avg_pool2d: pad should be at most half of the kernel size, but got padding={padding!r}, "
                f"kernel_size={kernel_size!r}"
            )
    if divisor_override is not None and (isinstance(divisor_override, bool) or divisor_override == 0):
        raise RuntimeError(f"avg_pool2d: divisor must be not zero, but got divisor_override={divisor_override!r}")
    for side, size, k, s, p in zip(("height", "width"), input.shape[-2:], kernel, stride, pad):
        out = output_size(size, k, s, p, ceil_mode=ceil_mode)
        if out < 1:
            raise RuntimeError(
                f"avg_pool2d: given input {side} {size}, kernel_size {k}, stride {s}, padding {p}, "
                f"the output {side} would be {out}: output size is too small"
            )
    return kernel, stride, pad


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a window of ``kernel`` taps ``dilation`` apart sliding by ``stride`` over ``size`` inputs
    padded by ``padding`` on each side (conv2d's and the pools' formula, PyTorch's rounding); with ``ceil_mode``
    a last, partial window counts if it starts inside the input or the left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1  # where the last window may start
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def check_linear(input, weight, bias) -> None:
    op = "linear"
    _check_tensor(input, "input", op)
    _check_tensor(weight, "weight", op)
    if bias is not None:
        _check_tensor(bias, "bias", op)
    if input.dim() == 0:
        raise RuntimeError("linear: expected input to have at least 1 dimension (in_features), but got a scalar")
    if weight.dim() not in (1, 2):
        raise RuntimeError(
            f"linear: expected weight to be 2D (out_features, in_features), but got weight of size {list(weight.shape)}"
        )
    if input.shape[-1] != weight.shape[-1]:
        raise RuntimeError(
            f"linear: input's last dimension ({input.shape[-1]}) must equal in_features ({weight.shape[-1]}), "
            f"but got input of size {list(input.shape)} and weight of size {list(weight.shape)}"
        )
    out_shape = tuple(weight.shape[:1]) if weight.dim() == 2 else ()
    if bias is not None and tuple(bias.shape) != out_shape:
        raise RuntimeError(
            f"linear: expected bias of size {list(out_shape)} (out_features), but got bias of size {list(bias.shape)}"
        )


# activations, dropout, softmax and the losses


def check_tensor(value, name: str, op: str) -> None:
    """A TypeError naming ``name`` unless ``value`` is a Tensor."""
    _check_tensor(value, name, op)


def check_inplace(input: torch.Tensor) -> None:
    """torch's error for an in-place operation on a leaf that requires grad (with grad mode on)."""
    if input.is_leaf and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")


def reduction_of(reduction: str, size_average=None, reduce=None) -> str:
    """``"none"``, ``"mean"`` or ``"sum"``, by torch's own rules: the deprecated size_average/reduce override
    ``reduction`` (with torch's warning), ``"elementwise_mean"`` is ``"mean"``, anything else a ValueError."""
    from torch.nn import _reduction

    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    return ("none", "mean", "sum")[_reduction.get_enum(reduction)]


def check_dropout_probability(p) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def check_weight_not_differentiable(weight, op: str = "nll_loss_forward") -> None:
    """torch's error for a class weight that requires grad where the loss has no gradient for it (class indices)."""
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"The function '{op}' is not differentiable with respect to argument 'weight'. "
            "This input cannot have requires_grad True."
        )


# pooling and normalisation beyond the notes: max_pool2d, adaptive_avg_pool2d, batch_norm


def check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[Pair, Pair, Pair, Pair]:
    """Validate max_pool2d's input and options as torch does; return kernel_size, stride, padding, dilation as pairs."""
    op = "max_pool2d"
    _check_tensor(input, "input", op)
    if input.dim() not in (3, 4) or 0 in input.shape[-3:]:
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to max_pool2d with non-zero channels, height and width "
            f"(only the batch may be empty), but got input of size: {list(input.shape)}"
        )
    kernel = _positive_pair(kernel_size, "kernel_size", op)
    # stride=None, or an empty sequence as torch also accepts, means stride = kernel_size
    stride = kernel if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else stride
    stride = _positive_pair(stride, "stride", op)
    dilation = _positive_pair(dilation, "dilation", op)
    pad = _pair(padding, "padding", op)
    if min(pad) < 0:
        raise RuntimeError(f"max_pool2d: negative padding is not supported, but got padding={padding!r}")
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise RuntimeError(
            f"max_pool2d: pad should be at most half of the kernel size, but got padding={padding!r}, "
            f"kernel_size={kernel_size!r}"
        )
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"max_pool2d(): argument 'ceil_mode' must be bool, not {type(ceil_mode).__name__}")
    for side, size, k, s, p, d in zip(("height", "width"), input.shape[-2:], kernel, stride, pad, dilation):
        out = output_size(size, k, s, p, d, ceil_mode)
        if out < 1:
            raise RuntimeError(
                f"max_pool2d: given input {side} {size}, kernel_size {k}, stride {s}, padding {p}, dilation {d}, "
                f"the output {side} would be {out}: output size is too small"
            )
    return kernel, stride, pad, dilation


def check_adaptive_avg_pool2d(input, output_size) -> Pair:
    """Validate adaptive_avg_pool2d's input and output_size as torch does; return the output size as a pair, each
    ``None`` entry replaced by the input's own size."""
    op = "adaptive_avg_pool2d"
    _check_tensor(input, "input", op)
    if input.dim() not in (3, 4) or 0 in input.shape[-2:]:
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to adaptive_avg_pool2d with non-zero height and width, "
            f"but got input of size: {list(input.shape)}"
        )
    if isinstance(output_size, Sequence) and not isinstance(output_size, str) and len(output_size) == 2:
        # None keeps that dimension's input size (torch's _list_with_default)
        output_size = tuple(L if v is None else v for v, L in zip(output_size, input.shape[-2:]))
    pair = _pair(output_size, "output_size", op)
    if min(pair) < 0:
        raise RuntimeError(f"adaptive_avg_pool2d: output_size must be non-negative, but got output_size={pair!r}")
    return pair


def check_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps) -> None:
    """Validate batch_norm's arguments with the exception types torch raises."""
    op = "batch_norm"
    _check_tensor(input, "input", op)
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor(t, name, op)
    if not isinstance(training, bool):
        raise TypeError(f"batch_norm(): argument 'training' must be bool, not {type(training).__name__}")
    for name, value in (("momentum", momentum), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"batch_norm(): argument '{name}' must be float, not {type(value).__name__}")
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected input of at least 2 dimensions (N, C, *) to batch_norm, but got input of size: "
            f"{list(input.shape)}"
        )
    if training:
        per_channel = input.shape[0]  # torch's _verify_batch_size: N·H·W values normalised together
        for size in input.shape[2:]:
            per_channel *= size
        if per_channel == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
        if eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
        if (running_mean is None) != (running_var is None):
            raise ValueError("running_mean and running_var must either both be None or neither be None")
    else:
        if eps < 0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is None:
                raise RuntimeError(f"batch_norm: {name} must be defined in evaluation mode (training=False)")
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != C:
            raise RuntimeError(
                f"batch_norm: {name} should contain {C} elements (the input's channels), but got {name} of size "
                f"{list(t.shape)}"
            )
