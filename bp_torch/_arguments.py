"""Argument checks and normalisation for ``bp_torch.functional``: validated once, up front, as torch does.

Errors use the exception type torch raises for the same mistake and name the argument and the value received. As
torch's argument parser reads every argument's type before any operator checks a value, the ``check_*`` functions
first read the types (``TypeError``), then check the values (``RuntimeError``; ``IndexError`` where torch's indexing
raises it).

The readers of single arguments, shared by every function with such arguments (their names say which of torch's
argument types they read, spelled as torch spells them: an int, a numpy integer, a one-element integer tensor):

- :func:`int_arg`: ``SymInt`` (conv2d's ``groups``); :func:`optional_int_arg`: ``int?`` (``divisor_override``);
- :func:`int_list`, :func:`int_pair`, :func:`positive_int_pair`: ``int[2]`` (kernel_size, stride, padding, dilation);
- :func:`bool_arg`: ``bool`` (``ceil_mode``, ``count_include_pad``, ``training``: a Python bool and nothing else);
- :func:`float_arg`: ``float`` (``eps``, ``momentum``, ``p``, ``label_smoothing``) and ``Scalar``
  (``negative_slope``): a Python or numpy number, a bool, a 0-d tensor that does not require grad;
- :func:`dim_arg`: ``int`` (softmax's ``dim``), :func:`optional_dtype_arg`: ``ScalarType?`` (softmax's ``dtype``).
"""

from __future__ import annotations

import operator
import sys

import torch

Pair = tuple[int, int]


def _type_name(value) -> str:
    return type(value).__name__


def _is_integer(value, allow_bool: bool) -> bool:
    """Whether torch's argument parser reads ``value`` as an integer: a one-element tensor of an integer (or bool)
    dtype, or anything with ``__index__`` (Python's and numpy's integers) — a Python bool only where
    ``allow_bool`` (inside a list, after its first item)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not (value.is_floating_point() or value.is_complex())
    if isinstance(value, bool):
        return allow_bool
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _to_int(value) -> int:
    return int(value.item()) if isinstance(value, torch.Tensor) else operator.index(value)


def int_arg(value, name: str, op: str) -> int:
    """torch's ``SymInt`` argument: an int, a numpy integer or a one-element integer tensor; TypeError otherwise."""
    if type(value) is int:  # the common case, before the parser's other spellings
        return value
    if not _is_integer(value, allow_bool=False):
        raise TypeError(f"{op}(): argument '{name}' must be int, not {_type_name(value)}")
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        # torch's parser lets a bool tensor through here, then fails converting it (an internal assert)
        raise RuntimeError(f"{op}: argument '{name}' must be an integer, but got the bool tensor {value!r}")
    return _to_int(value)


def optional_int_arg(value, name: str, op: str) -> int | None:
    """torch's ``int?`` argument: None, an int, a numpy integer or a 0-d integer tensor; TypeError otherwise."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        ok = value.dim() == 0 and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    else:
        ok = _is_integer(value, allow_bool=False)
    if not ok:
        raise TypeError(f"{op}(): argument '{name}' must be int, not {_type_name(value)}")
    return _to_int(value)


def bool_arg(value, name: str, op: str) -> bool:
    """torch's ``bool`` argument: True or False, nothing else (not 0, 1, "no" or a numpy bool)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{name}' must be bool, not {_type_name(value)}")
    return value


def _is_numpy_number(value) -> bool:
    """A numpy scalar of a bool, integer, floating or complex dtype (not a numpy array, not even a 0-d one)."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, (np.number, np.bool_))


def float_arg(value, name: str, op: str, scalar: bool = False) -> float:
    """torch's ``float`` (C++ double) argument, or with ``scalar`` its ``Scalar`` read as a float: a Python float,
    int or bool, a numpy number, or a 0-d tensor that does not require grad; TypeError otherwise. A complex number
    is a TypeError as a ``float``; as a ``Scalar`` it parses, then fails converting (RuntimeError), as in torch."""
    from_tensor = isinstance(value, torch.Tensor)
    if from_tensor:
        if value.dim() != 0 or value.requires_grad:
            kind = "Number" if scalar else "float"
            raise TypeError(f"{op}(): argument '{name}' must be {kind}, not a Tensor of size {list(value.shape)}")
        value = value.item()
    elif _is_numpy_number(value):
        value = value.item()
    if isinstance(value, complex):
        if scalar or from_tensor:  # a complex 0-d tensor parses, then fails converting
            raise RuntimeError(f"{op}: argument '{name}'={value!r} cannot be converted to type double without overflow")
        raise TypeError(f"{op}(): argument '{name}' must be float, not complex")
    if not isinstance(value, (bool, int, float)):
        raise TypeError(f"{op}(): argument '{name}' must be {'Number' if scalar else 'float'}, not {_type_name(value)}")
    return float(value)


def dim_arg(value, name: str, op: str) -> int:
    """torch's ``int`` (C++ int64_t) argument: as :func:`int_arg`, but a tensor must be 0-d and not bool."""
    if isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.dim() != 0):
        raise TypeError(
            f"{op}(): argument '{name}' must be int, not a {value.dtype} Tensor of size {list(value.shape)}"
        )
    return int_arg(value, name, op)


def optional_dtype_arg(value, name: str, op: str) -> torch.dtype | None:
    """torch's ``ScalarType?`` argument: None, a torch.dtype, or one of Python's number types as torch reads them
    (float: float64, int: int64, bool, complex: complex128); not an int, a string or a numpy type."""
    python_types = {float: torch.float64, int: torch.int64, bool: torch.bool, complex: torch.complex128}
    if isinstance(value, type) and value in python_types:
        return python_types[value]
    if value is not None and not isinstance(value, torch.dtype):
        raise TypeError(f"{op}(): argument '{name}' must be torch.dtype, not {_type_name(value)}")
    return value


def int_list(value, name: str, op: str) -> tuple[int, ...]:
    """torch's ``int[2]`` argument before its length is checked: one integer (as :func:`int_arg`, a bool tensor too),
    or a list or tuple (torch.Size too) whose first item is one and whose other items are integers or bools."""
    if type(value) is tuple and all(type(item) is int for item in value):  # a module's own options: already plain
        return value
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            if not _is_integer(item, allow_bool=i > 0):
                raise TypeError(
                    f"{op}(): argument '{name}' must be an int or a tuple of two ints, but got {value!r} "
                    f"(item {i} is {_type_name(item)})"
                )
        return tuple(_to_int(item) for item in value)
    if _is_integer(value, allow_bool=False):
        return (_to_int(value),)
    raise TypeError(f"{op}(): argument '{name}' must be an int or a tuple of two ints, but got {_type_name(value)}")


def int_pair(value, name: str, op: str) -> Pair:
    """torch's ``int[2]`` argument as a pair: :func:`int_list`, one value repeated; RuntimeError for another length."""
    items = int_list(value, name, op)
    if len(items) not in (1, 2):
        raise RuntimeError(f"{op}: expected {name} to be a single int or a pair of ints, but got {name}={value!r}")
    return (items[0], items[-1])


def positive_int_pair(value, name: str, op: str) -> Pair:
    pair = int_pair(value, name, op)
    if min(pair) <= 0:
        raise RuntimeError(f"{op}: non-positive {name} is not supported, but got {name}={value!r}")
    return pair


_pair, _positive_pair = int_pair, positive_int_pair  # the names the first callers used


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
        # torch computes with a meta tensor beside any other (the shapes alone, as a model's dry run uses them)
        if t.device != ref.device and "meta" not in (t.device.type, ref.device.type):
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
    # every type before any value, as torch's parser (the values are read again below, where messages quote them)
    int_list(stride, "stride", op), int_list(dilation, "dilation", op), int_arg(groups, "groups", op)
    if not isinstance(padding, str):
        int_list(padding, "padding", op)
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
        tuple(weight.shape),
        C_in,
        size,
        stride,
        padding,
        dilation,
        groups,
        f"input of size {list(input.shape)}",
        empty=input.numel() == 0,
    )


def check_conv2d_weight(weight) -> None:
    if weight.dim() != 4:
        raise RuntimeError(
            f"conv2d: expected weight to be 4D (out_channels, in_channels / groups, kH, kW), "
            f"but got weight of size {list(weight.shape)}"
        )


def conv2d_options(
    weight_shape, C_in: int, input_size: Pair, stride, padding, dilation, groups, what: str = "the input", empty=False
):
    """Validate conv2d's options for a weight of ``weight_shape`` over ``C_in`` channels of ``input_size``.

    Returns ``(stride, padding, extra, dilation, groups)``: pairs and an int, ``padding`` symmetric and ``extra`` the
    further bottom/right padding of ``padding='same'`` with an even reach. An ``empty`` input (no elements) may have
    a zero dilation, as torch accepts (nothing is convolved); a negative one, never.
    """
    op = "conv2d"
    stride = _positive_pair(stride, "stride", op)
    pair = int_pair(dilation, "dilation", op)
    if min(pair) < (0 if empty else 1):
        raise RuntimeError(f"{op}: non-positive dilation is not supported, but got dilation={dilation!r}")
    dilation = pair
    groups = int_arg(groups, "groups", op)
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


def check_avg_pool2d(
    input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
) -> tuple[Pair, Pair, Pair, bool, bool, int | None]:
    """Validate avg_pool2d's arguments in torch's order; return them normalised: kernel_size, stride, padding as
    pairs (stride None or empty: the kernel's), the two flags, divisor_override an int or None."""
    op = "avg_pool2d"
    _check_tensor(input, "input", op)
    kernel, pad = int_list(kernel_size, "kernel_size", op), int_list(padding, "padding", op)
    steps = () if stride is None else int_list(stride, "stride", op)
    flags = bool_arg(ceil_mode, "ceil_mode", op), bool_arg(count_include_pad, "count_include_pad", op)
    divisor = optional_int_arg(divisor_override, "divisor_override", op)
    kernel, pad = int_pair(kernel, "kernel_size", op), int_pair(pad, "padding", op)
    step = int_pair(steps, "stride", op) if steps else kernel
    if divisor == 0:
        raise RuntimeError(f"avg_pool2d: divisor must be not zero, but got divisor_override={divisor_override!r}")
    if input.dim() not in (3, 4):
        # below 3 dimensions torch fails reading the channels, size(-3): an IndexError
        raise (IndexError if input.dim() < 3 else RuntimeError)(
            f"Expected 3D (unbatched) or 4D (batched) input to avg_pool2d, but got input of size: {list(input.shape)}"
        )
    for name, pair, given in (("kernel_size", kernel, kernel_size), ("stride", step, stride if steps else kernel_size)):
        if min(pair) <= 0:
            raise RuntimeError(f"avg_pool2d: non-positive {name} is not supported, but got {name}={given!r}")
    if min(pad) < 0:
        raise RuntimeError(f"avg_pool2d: negative padding is not supported, but got padding={padding!r}")
    for p, k in zip(pad, kernel):
        if p > k // 2:
            raise RuntimeError(
                f"avg_pool2d: pad should be at most half of the kernel size, but got padding={padding!r}, "
                f"kernel_size={kernel_size!r}"
            )
    if 0 in input.shape[-3:]:
        raise RuntimeError(
            f"avg_pool2d: expected an input with non-zero channels, height and width (only the batch may be empty), "
            f"but got input of size {list(input.shape)}"
        )
    for side, size, k, s, p in zip(("height", "width"), input.shape[-2:], kernel, step, pad):
        out = output_size(size, k, s, p, ceil_mode=flags[0])
        if out < 1:
            raise RuntimeError(
                f"avg_pool2d: given input {side} {size}, kernel_size {k}, stride {s}, padding {p}, "
                f"the output {side} would be {out}: output size is too small"
            )
    return kernel, step, pad, *flags, divisor


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
    """Validate linear's types and shapes. The dtypes, devices and the bias's shape are torch's to judge: which biases
    it accepts (0-d, (1,), (N, out) ...) depends on the input's rank and even its layout, and an empty product skips
    its dtype check, so ``functional.linear`` lets ``F.linear`` decide."""
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


def check_dropout(p, training) -> float:
    """dropout's ``p`` (a float in [0, 1]: ValueError outside, RuntimeError for NaN, as torch's kernel) and
    ``training`` (a bool); returns p as a float."""
    # torch.nn.functional.dropout's own first check, on p as given (a tensor of two values: its RuntimeError)
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    value = float_arg(p, "p", "dropout")
    bool_arg(training, "training", "dropout")
    if value != value:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {p}")
    return value


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
    # the types of every argument first, as torch's parser reads them
    kernel, pad = int_list(kernel_size, "kernel_size", op), int_list(padding, "padding", op)
    steps = () if stride is None else int_list(stride, "stride", op)  # None or empty: the kernel's
    spacing = int_list(dilation, "dilation", op)
    bool_arg(ceil_mode, "ceil_mode", op)
    if input.dim() not in (3, 4) or 0 in input.shape[-3:]:
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to max_pool2d with non-zero channels, height and width "
            f"(only the batch may be empty), but got input of size: {list(input.shape)}"
        )
    kernel, pad, spacing = (
        int_pair(kernel, "kernel_size", op),
        int_pair(pad, "padding", op),
        int_pair(spacing, "dilation", op),
    )
    step = int_pair(steps, "stride", op) if steps else kernel
    given = {"kernel_size": kernel_size, "stride": stride if steps else kernel_size, "dilation": dilation}
    for name, pair in (("kernel_size", kernel), ("stride", step), ("dilation", spacing)):
        if min(pair) <= 0:
            raise RuntimeError(f"max_pool2d: non-positive {name} is not supported, but got {name}={given[name]!r}")
    if min(pad) < 0:
        raise RuntimeError(f"max_pool2d: negative padding is not supported, but got padding={padding!r}")
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise RuntimeError(
            f"max_pool2d: pad should be at most half of the kernel size, but got padding={padding!r}, "
            f"kernel_size={kernel_size!r}"
        )
    for side, size, k, s, p, d in zip(("height", "width"), input.shape[-2:], kernel, step, pad, spacing):
        out = output_size(size, k, s, p, d, ceil_mode)
        if out < 1:
            raise RuntimeError(
                f"max_pool2d: given input {side} {size}, kernel_size {k}, stride {s}, padding {p}, dilation {d}, "
                f"the output {side} would be {out}: output size is too small"
            )
    return kernel, step, pad, spacing


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
    if not isinstance(output_size, int):
        # torch's _list_with_default: anything but an int is read as a sequence, a None entry keeping that dimension's
        # input size (a numpy integer or a 0-d tensor has no len(): a TypeError there too)
        if (
            not hasattr(output_size, "__len__")
            or isinstance(output_size, (str, bytes))
            or isinstance(output_size, torch.Tensor)
            and output_size.dim() == 0
        ):
            raise TypeError(f"{op}(): output_size must be an int or a sequence of two, not {_type_name(output_size)}")
        if len(output_size) != 2:
            raise RuntimeError(f"{op}: output_size must be 2 values, but got output_size={output_size!r}")
        output_size = tuple(L if v is None else v for v, L in zip(output_size, input.shape[-2:]))
    pair = int_pair(output_size, "output_size", op)
    if min(pair) < 0:
        raise RuntimeError(f"adaptive_avg_pool2d: output_size must be non-negative, but got output_size={pair!r}")
    return pair


def check_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps) -> tuple[float, float]:
    """Validate batch_norm's arguments with the exception types torch raises; return momentum and eps as floats."""
    op = "batch_norm"
    _check_tensor(input, "input", op)
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor(t, name, op)
    # torch.nn.functional.batch_norm's own checks, on eps as given (so a tensor of two values fails as there)
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    elif eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    bool_arg(training, "training", op)
    momentum, eps = float_arg(momentum, "momentum", op), float_arg(eps, "eps", op)
    if input.dim() == 1 and input.numel() == 0:
        return momentum, eps  # torch returns an empty 1-D input as it is, checking nothing else
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
    return momentum, eps


# layer and group normalisation, attention (docs/derivation.md eq. T1–T12)


def normalized_shape_of(normalized_shape) -> tuple[int, ...]:
    """``normalized_shape`` as torch reads it, a sequence of ints (an int is refused, as torch refuses it)."""
    if isinstance(normalized_shape, torch.Size | list | tuple) and all(_is_integer(s, False) for s in normalized_shape):
        return tuple(int(s) for s in normalized_shape)
    raise TypeError(
        f"layer_norm(): argument 'normalized_shape' must be tuple of ints, not {_type_name(normalized_shape)}"
    )


def check_group_norm(input, num_groups, weight, bias) -> int:
    """torch.nn.functional.group_norm's checks, with torch's exception types; returns ``num_groups`` as an int."""
    _check_tensor(input, "input", "group_norm")
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    C = input.shape[1]
    # torch.nn.functional.group_norm's own Python check runs on num_groups as given, before its parser: a tensor
    # num_groups gives tensor sizes (several values: an ambiguous truth value, RuntimeError), num_groups=0 divides by
    # zero, and the one-value-per-channel ValueError comes before the parser's TypeError
    try:
        size = [input.shape[0] * C // num_groups, num_groups, *input.shape[2:]]
    except TypeError:  # not a number: the parser's TypeError below, with its message
        size = None
    if size is not None:
        prods = size[0]
        for n in size[2:]:  # torch's _verify_batch_size: every dimension but the groups
            prods = prods * n
        if prods == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    if isinstance(num_groups, torch.Tensor) and (
        num_groups.dim()
        or torch.is_floating_point(num_groups)
        or num_groups.is_complex()
        or num_groups.dtype == torch.bool
    ):  # the parser takes a 0-d integer tensor only
        raise TypeError("group_norm(): argument 'num_groups' (position 2) must be int, not Tensor")
    num_groups = int_arg(num_groups, "num_groups", "group_norm")
    if num_groups <= 0 or C % num_groups:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got input of shape "
            f"{list(input.shape)} and num_groups={num_groups}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != C):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in input, but got {name} "
                f"of shape {list(t.shape)} and input of shape {list(input.shape)}"
            )
    return num_groups


def check_attention(query, key, value, attn_mask, dropout_p, is_causal) -> None:
    """torch.nn.functional.scaled_dot_product_attention's checks, with torch's exception types."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(t, name, "scaled_dot_product_attention")
    if attn_mask is not None:
        _check_tensor(attn_mask, "attn_mask", "scaled_dot_product_attention")
    if min(query.dim(), key.dim(), value.dim()) < 2:
        raise RuntimeError(
            "Expected query, key, and value to all be at least 2 dimensional, but got query.dim: "
            f"{query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead."
        )
    if not query.dtype == key.dtype == value.dtype:
        raise RuntimeError(
            "Expected query, key, and value to have the same dtype, but got query.dtype: "
            f"{query.dtype} key.dtype: {key.dtype} and value.dtype: {value.dtype} instead."
        )
    if attn_mask is not None and attn_mask.dtype not in (torch.bool, torch.float32, query.dtype):
        raise RuntimeError(
            "Expected attn_mask dtype to be bool or float or to match query dtype, but got attn_mask.dtype: "
            f"{attn_mask.dtype} and  query.dtype: {query.dtype} instead."
        )
    if is_causal and attn_mask is not None:
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    if not 0 <= dropout_p <= 1:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {dropout_p}")


def eps_arg(eps, op: str) -> float:
    """``eps`` as torch's parser reads a double (a number, a numpy scalar, a one-element tensor), else its
    TypeError."""
    if isinstance(eps, (str, bytes, complex)) or not hasattr(eps, "__float__") or getattr(eps, "ndim", 0):
        raise TypeError(f"{op}(): argument 'eps' (position 5) must be float, not {_type_name(eps)}")
    return float(eps)
