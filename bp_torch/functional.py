"""``torch.nn.functional``'s conv2d, avg_pool2d, sigmoid and linear (the notes' operations); relu, leaky_relu, tanh,
dropout, softmax, log_softmax, nll_loss, cross_entropy and mse_loss (eq. D1–D12, ours); max_pool2d,
adaptive_avg_pool2d and batch_norm (eq. M1–M12, ours); hardtanh, relu6, hardsigmoid, hardswish, silu, mul, div, sum
and mean (eq. H1–H4, E1–E3, R1–R2, ours): each with its hand-derived backward.

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

import math
import warnings
from contextlib import nullcontext
from numbers import Number

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch._C._functorch import TransformType
from torch.overrides import handle_torch_function, has_torch_function_unary, has_torch_function_variadic

from bp_torch._arguments import (
    check_adaptive_avg_pool2d,
    check_attention,
    check_avg_pool2d,
    check_batch_norm,
    check_conv2d,
    check_dropout,
    check_group_norm,
    check_inplace,
    check_linear,
    check_max_pool2d,
    check_same_dtype_and_device,
    check_tensor,
    check_weight_not_differentiable,
    dim_arg,
    eps_arg,
    float_arg,
    int_arg,
    normalized_shape_of,
    optional_dtype_arg,
    reduction_of,
)
from bp_torch._function import apply, transform_levels
from bp_torch.autograd import (
    AdaptiveAvgPool2dFunction,
    AvgPool2dFunction,
    BatchNormFunction,
    Conv2dFunction,
    CrossEntropyFunction,
    DivFunction,
    DropoutFunction,
    HardsigmoidFunction,
    HardswishFunction,
    HardswishInplaceFunction,
    HardtanhFunction,
    LeakyReluFunction,
    LinearFunction,
    LogSoftmaxFunction,
    MaxPool2dFunction,
    MeanFunction,
    MSELossFunction,
    MulFunction,
    NllLossFunction,
    ReluFunction,
    SigmoidFunction,
    SiluFunction,
    SiluInplaceFunction,
    SoftmaxFunction,
    SumFunction,
    TanhFunction,
)
from bp_torch.autograd.attention import ScaledDotProductAttentionFunction, attends
from bp_torch.autograd.gelu import GeluFunction
from bp_torch.autograd.layer_norm import GroupNormFunction, LayerNormFunction
from bp_torch.autograd.matmul import AddmmFunction, MatmulFunction
from bp_torch.autograd.reduction import reduced_dims

__all__ = ["conv2d", "avg_pool2d", "sigmoid", "linear"]
__all__ += ["relu", "relu_", "leaky_relu", "leaky_relu_", "tanh", "dropout"]
__all__ += ["softmax", "log_softmax", "nll_loss", "cross_entropy", "mse_loss"]
__all__ += ["max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d", "batch_norm"]
__all__ += ["hardtanh", "hardtanh_", "relu6", "hardsigmoid", "hardswish", "silu", "mul", "div", "sum", "mean"]
__all__ += ["layer_norm", "group_norm", "gelu", "matmul", "bmm", "addmm", "baddbmm", "scaled_dot_product_attention"]
__all__ += ["multi_head_attention_forward", "einsum", "getitem", "roll", "pad"]


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
    return _conv2d(input, weight, bias, stride, padding, dilation, groups)


def _conv2d(input, weight, bias, stride, padding, dilation, groups, feedback=None) -> torch.Tensor:
    """:func:`conv2d`, and ``bp_torch.nn.Conv2d``'s forward: ``feedback`` (the weight's shape) is the matrix a backward
    rule of ``bp_torch.feedback`` sends δ back through in the weight's place (None: the weight, exact backprop)."""
    if feedback is None and has_torch_function_variadic(input, weight, bias):  # torch.fx proxies, tensor subclasses
        args = (input, weight, bias, stride, padding, dilation, groups)
        return handle_torch_function(conv2d, (input, weight, bias), *args)  # as torch's functions do
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
    (input, weight, bias, feedback), autocast_off = _autocast_lower_precision(input, weight, bias, feedback)
    if input.numel():
        check_same_dtype_and_device("conv2d", input=input, weight=weight, bias=bias)
    with autocast_off:
        out = apply(Conv2dFunction, input, weight, bias, stride, padding, dilation, groups, feedback)
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
        return handle_torch_function(
            avg_pool2d, (input,), input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )
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
    return _linear(input, weight, bias)


def _linear(input, weight, bias, feedback=None) -> torch.Tensor:
    """:func:`linear`, and ``bp_torch.nn.Linear``'s forward; ``feedback`` as in :func:`_conv2d`."""
    if feedback is None and has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(linear, (input, weight, bias), input, weight, bias)
    check_linear(input, weight, bias)
    (input, weight, bias, feedback), autocast_off = _autocast_lower_precision(input, weight, bias, feedback)
    with autocast_off:
        try:
            return apply(LinearFunction, input, weight, bias, feedback)
        except RuntimeError as error:  # F.linear's verdict (check_linear says why it is torch's): its type, explained
            named = ", ".join(
                f"{name} of size {list(t.shape)} ({t.dtype} on {t.device})"
                for name, t in (("input", input), ("weight", weight), ("bias", bias))
                if t is not None
            )
            raise type(error)(f"linear: {named} do not fit: {error}") from error


# --- activations and dropout (docs/derivation.md eq. D1–D4) --------------------------------------------------------


def _maybe_inplace(function, input: torch.Tensor, *args, inplace: bool) -> torch.Tensor:
    """``function(input, *args, inplace)``. In place, torch's leaf check first; under torch.func or torch.compile,
    which cannot save an input a setup_context Function returns as-is, the Function runs out of place on a copy
    (which it may save: ``input`` is overwritten next) and its output is copied back into ``input``."""
    if not inplace:
        return apply(function, input, *args, False)
    check_inplace(input)
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return input.copy_(apply(function, input.clone(), *args, False))
    if _recorded_by_nothing(input):  # the forward alone, as torch's in-place op: ``input`` itself comes back
        return function.forward(input, *args, True)
    return _mark_view_write(apply(function, input, *args, True))


def _recorded_by_nothing(input: torch.Tensor) -> bool:
    """Grad mode off and no forward-mode tangent: nothing records the call (a Function would still wrap its output,
    returning another tensor object than the one it overwrote, one that does not require grad)."""
    return not torch.is_grad_enabled() and fwAD.unpack_dual(input).tangent is None


def _mark_view_write(output: torch.Tensor) -> torch.Tensor:
    """After an in-place Function on a view, its base's node is a ``CopySlices``, which runs the Function's backward
    on δ's slice and passes the rest on unchanged: marked so that ``bp_torch.audit`` counts it as structural (an
    in-place native op on a view makes an unmarked one, which the audit reports as native)."""
    base = output._base if output._is_view() else None
    if base is not None and base.grad_fn is not None and type(base.grad_fn).__name__ == "CopySlices":
        base.grad_fn.metadata["bp_torch"] = "structural"
    return output


def _inplace_keeping_input(function, twin, input: torch.Tensor) -> torch.Tensor:
    """``function`` in place through ``twin``, its in-place Function, given a copy of the input that its backward
    reads; under torch.func or torch.compile (which cannot save an input a Function returns as-is) out of place on a
    copy, copied back."""
    check_inplace(input)
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return input.copy_(apply(function, input.clone()))
    if _recorded_by_nothing(input):
        return input.copy_(function.forward(input))
    return _mark_view_write(apply(twin, input, input.clone()))


def relu(input, inplace=False) -> torch.Tensor:
    """max(0, x), as :func:`torch.nn.functional.relu`; backward δ ⊙ 1[x > 0] from the saved output (eq. D1).

    Args:
        input: any shape.
        inplace: overwrite ``input`` (its backward reads the output, which then is ``input``).

    Example::

        >>> relu(torch.tensor([-1.0, 0.0, 2.0]))
        tensor([0., 0., 2.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(relu, (input,), input, inplace=inplace)
    check_tensor(input, "input", "relu")
    return _maybe_inplace(ReluFunction, input, inplace=bool(inplace))


def relu_(input) -> torch.Tensor:
    """In-place :func:`relu`, as :func:`torch.nn.functional.relu_`."""
    return relu(input, inplace=True)


def leaky_relu(input, negative_slope=0.01, inplace=False) -> torch.Tensor:
    """x if x > 0 else negative_slope·x, as :func:`torch.nn.functional.leaky_relu`; backward δ where x > 0,
    negative_slope·δ elsewhere (eq. D2).

    Args:
        input: any shape.
        negative_slope: α, the slope for x ≤ 0.
        inplace: overwrite ``input``; its backward then reads the sign of the output, so (as in torch) a negative
            slope raises when the backward runs.

    Example::

        >>> leaky_relu(torch.tensor([-1.0, 2.0]), 0.1)
        tensor([-0.1000,  2.0000])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(leaky_relu, (input,), input, negative_slope=negative_slope, inplace=inplace)
    check_tensor(input, "input", "leaky_relu")
    negative_slope = float_arg(negative_slope, "negative_slope", "leaky_relu", scalar=True)
    return _maybe_inplace(LeakyReluFunction, input, negative_slope, inplace=bool(inplace))


def leaky_relu_(input, negative_slope=0.01) -> torch.Tensor:
    """In-place :func:`leaky_relu`, as :func:`torch.nn.functional.leaky_relu_`."""
    return leaky_relu(input, negative_slope, inplace=True)


def tanh(input) -> torch.Tensor:
    """tanh, as :func:`torch.tanh` (complex too); backward δ·(1 − y²) from the saved output, conjugated for complex
    inputs (eq. D3).

    Example::

        >>> tanh(torch.zeros(2))
        tensor([0., 0.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(tanh, (input,), input)
    check_tensor(input, "input", "tanh")
    return apply(TanhFunction, input)


def dropout(input, p=0.5, training=True, inplace=False) -> torch.Tensor:
    """Zero each element with probability p and scale the rest by 1/(1 − p), as :func:`torch.nn.functional.dropout`;
    backward δ times the same scaled mask (eq. D4).

    The mask is drawn as torch's dropout draws it on the CPU (and in place on any device): ``bernoulli_(1 − p)`` on
    an ``empty_like(input)``, divided by 1 − p. So with the same seed a CPU run gives native's very mask, and under
    ``torch.func.vmap`` the ``randomness`` argument rules the draw as it rules torch's. (torch's out-of-place CUDA
    dropout draws in a fused kernel that also computes the output; there the masks differ from native's, not their
    distribution.)

    Args:
        input: any shape.
        p: the probability of an element to be zeroed, in [0, 1].
        training: apply dropout; if False (or p = 0, or no elements) the input is returned as it is, as by torch.
        inplace: overwrite ``input``.

    Example::

        >>> dropout(torch.ones(4), p=0.5, training=False)
        tensor([1., 1., 1., 1.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(dropout, (input,), input, p=p, training=training, inplace=inplace)
    p = check_dropout(p, training)
    inplace = bool(inplace)  # torch's `if inplace` picks the kernel: read whatever else the call does
    check_tensor(input, "input", "dropout")
    if not training or p == 0 or input.numel() == 0:
        return input
    if p == 1:
        noise = torch.zeros((), dtype=input.dtype, device=input.device)  # torch multiplies by a zero scalar too
    elif torch._C._are_functorch_transforms_active() and transform_levels(TransformType.Vmap) > 1:
        # vmap within vmap: a tensor made like the input is batched at the inner level only, and the outer one refuses
        # to draw into it in place ("different" randomness); drawn out of place
        full = torch.full(input.shape, 1 - p, dtype=input.dtype, device=input.device)
        noise = torch.bernoulli(full).div_(1 - p)  # eq. D4: m / (1 − p)
    else:
        noise = torch.empty_like(input).bernoulli_(1 - p).div_(1 - p)  # eq. D4: m / (1 − p), drawn as torch draws it
    return _maybe_inplace(DropoutFunction, input, noise, inplace=inplace)


# --- softmax and the losses (Note B eq. 13–16; docs/derivation.md eq. D5–D12) -------------------------------------

# Autocast's float32 policy for these ops (torch's cast lists, aten/src/ATen/autocast_mode.cpp): the losses run in
# float32 on CPU and CUDA; softmax and log_softmax only on CUDA (its fp32_set_opt_dtype, when no dtype is given).
# On CUDA torch's cross_entropy keeps its log_softmax in the half dtype and casts for nll_loss; ours casts the logits
# first: the same float32 loss, a little more precise.
_FLOAT32_UNDER_AUTOCAST = {
    "mse_loss": ("cpu", "cuda"),
    "nll_loss": ("cpu", "cuda"),
    "cross_entropy": ("cpu", "cuda"),
    "softmax": ("cuda",),
    "weighted mse_loss": ("cuda",),  # torch composes it of ops of which CUDA's list holds pow
}


def _autocast_float32(op: str, *tensors: torch.Tensor | None):
    """Cast as autocast casts an op on its float32 list, then run with autocast off (the casts are recorded by
    autograd; gradients come back in each argument's own dtype). float64 and non-float tensors are left alone."""
    device_type = tensors[0].device.type
    if device_type not in _FLOAT32_UNDER_AUTOCAST[op] or not torch.is_autocast_enabled(device_type):
        return tensors, nullcontext()
    low = (torch.float16, torch.bfloat16)
    cast = tuple(t.float() if t is not None and t.dtype in low else t for t in tensors)
    return cast, torch.autocast(device_type, enabled=False)


def _softmax_input(name: str, input, dim, stacklevel: int, dtype):
    """The input cast to ``dtype`` (or float32 as CUDA autocast does) and the dimension, by torch's rules."""
    check_tensor(input, "input", name)
    dtype = optional_dtype_arg(dtype, "dtype", name)
    if dim is None:
        dim = F._get_softmax_dim(name, input.dim(), stacklevel + 1)
    dim = dim_arg(dim, "dim", name)
    if dtype is not None:
        return input.to(dtype), dim, nullcontext()
    (input,), autocast_off = _autocast_float32("softmax", input)
    return input, dim, autocast_off


def softmax(input, dim=None, _stacklevel=3, dtype=None) -> torch.Tensor:
    """e^x / Σ e^x along ``dim``, as :func:`torch.nn.functional.softmax`; backward p ⊙ δ − p Σ p ⊙ δ from the saved
    output (eq. D5).

    Args:
        input: any shape.
        dim: the dimension that sums to 1 (torch's deprecated default if None).
        dtype: cast the input to this dtype first.

    Example::

        >>> softmax(torch.zeros(1, 4), dim=1)
        tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(softmax, (input,), input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)
    input, dim, autocast_off = _softmax_input("softmax", input, dim, _stacklevel, dtype)
    with autocast_off:
        return apply(SoftmaxFunction, input, dim)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None) -> torch.Tensor:
    """x − log Σ e^x along ``dim``, as :func:`torch.nn.functional.log_softmax`; backward δ − p Σ δ with p = e^y from
    the saved output (eq. D6).

    Args:
        input: any shape.
        dim: the dimension normalised over (torch's deprecated default if None).
        dtype: cast the input to this dtype first.

    Example::

        >>> log_softmax(torch.zeros(1, 2), dim=1)
        tensor([[-0.6931, -0.6931]])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(log_softmax, (input,), input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)
    input, dim, autocast_off = _softmax_input("log_softmax", input, dim, _stacklevel, dtype)
    with autocast_off:
        return apply(LogSoftmaxFunction, input, dim)


def _class_inputs(input, target):
    """An unbatched ``(C,)`` input as a batch of one (its target too): the Functions read classes along dim 1.

    A ``(1,)`` class-index target with a ``(C,)`` input, which torch's forward takes as one target (its backward
    then fails on the sizes), is that batch of one too."""
    if input.dim() == 1 and (target.dim() == 0 or target.shape == input.shape):
        return input.unsqueeze(0), target.unsqueeze(0), True
    if input.dim() == 1 and target.shape == (1,):
        return input.unsqueeze(0), target, True
    return input, target, False


def nll_loss(
    input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"
) -> torch.Tensor:
    """Negative log-likelihood of class indices, as :func:`torch.nn.functional.nll_loss`; backward −w_t/D at each
    target class and zero elsewhere (eq. D9).

    Args:
        input: log-probabilities ``(N, C)``, ``(N, C, d1, ...)`` or unbatched ``(C,)``.
        target: class indices (int64 or uint8) ``(N)``, ``(N, d1, ...)`` or ``()``.
        weight: optional ``(C,)`` weight of each class.
        ignore_index: targets equal to it add nothing, not even to the mean's denominator.
        reduction: ``"none"``, ``"mean"`` (over Σ w_t of the kept targets) or ``"sum"``.

    Example::

        >>> nll_loss(torch.log(torch.tensor([[0.5, 0.5]])), torch.tensor([1]))
        tensor(0.6931)
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(nll_loss, (input, target, weight), input, target, weight=weight,
                                     size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                                     reduction=reduction)  # fmt: skip
    for name, t in (("input", input), ("target", target), ("weight", weight)):
        if t is not None or name != "weight":
            check_tensor(t, name, "nll_loss")
    reduction = reduction_of(reduction, size_average, reduce)
    ignore_index = int_arg(ignore_index, "ignore_index", "nll_loss")
    check_weight_not_differentiable(weight)
    input, target, unbatched = _class_inputs(input, target)
    (input, weight), autocast_off = _autocast_float32("nll_loss", input, weight)
    with autocast_off:
        out = apply(NllLossFunction, input, target, weight, reduction, ignore_index)
    return out.squeeze(0) if unbatched and reduction == "none" else out


def cross_entropy(
    input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean", label_smoothing=0.0
) -> torch.Tensor:
    """Softmax cross-entropy of logits, as :func:`torch.nn.functional.cross_entropy`; backward (s·p − a)/D: the
    softmax minus the (weighted, smoothed) targets over the mean's denominator (eq. D10–D12).

    Args:
        input: logits ``(N, C)``, ``(N, C, d1, ...)`` or unbatched ``(C,)``.
        target: class indices (int64 or uint8) of shape ``(N)``, ``(N, d1, ...)`` or ``()``; or class probabilities
            of the input's shape (then differentiable too).
        weight: optional ``(C,)`` weight of each class.
        ignore_index: class-index targets equal to it add nothing, not even to the mean's denominator.
        reduction: ``"none"``, ``"mean"`` (class indices: over Σ w_t of the kept targets; probabilities: over the
            positions) or ``"sum"``.
        label_smoothing: ε in [0, 1]: the targets become (1 − ε)·targets + ε/C.

    Example::

        >>> cross_entropy(torch.zeros(1, 4), torch.tensor([2]))
        tensor(1.3863)
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(cross_entropy, (input, target, weight), input, target, weight=weight,
                                     size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                                     reduction=reduction, label_smoothing=label_smoothing)  # fmt: skip
    for name, t in (("input", input), ("target", target), ("weight", weight)):
        if t is not None or name != "weight":
            check_tensor(t, name, "cross_entropy")
    reduction = reduction_of(reduction, size_average, reduce)
    ignore_index = int_arg(ignore_index, "ignore_index", "cross_entropy")
    label_smoothing = float_arg(label_smoothing, "label_smoothing", "cross_entropy")
    if target.shape != input.shape:  # class indices: no gradient for the weight, as in torch
        check_weight_not_differentiable(weight)
    input, target, unbatched = _class_inputs(input, target)
    probabilities = target.shape == input.shape
    (input, weight, *soft), autocast_off = _autocast_float32(
        "cross_entropy", input, weight, *((target,) if probabilities else ())
    )
    target = soft[0] if probabilities else target
    # torch ignores a negative smoothing and refuses one above 1 (in its forward, which our forward is)
    smoothing = label_smoothing if label_smoothing > 0 else 0.0
    with autocast_off:
        out = apply(CrossEntropyFunction, input, target, weight, reduction, ignore_index, smoothing)
    return out.squeeze(0) if unbatched and reduction == "none" else out


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None) -> torch.Tensor:
    """Mean squared error Σ w(ŷ − y)²/D, as :func:`torch.nn.functional.mse_loss` (no ½: Note B's L = ½Σ(ŷ − y)² is
    half its ``"sum"``); backward 2w(ŷ − y)/D for ŷ, its negative for y (Note B eq. 13–16, eq. D7), and the
    weight's (eq. D8).

    Args:
        input, target: ŷ and y, broadcast against each other (with torch's warning if their sizes differ).
        reduction: ``"none"``, ``"mean"`` (over the elements, or over Σw with a weight) or ``"sum"``.
        weight: optional, of the input's size: each squared error's weight.

    Example::

        >>> mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
        tensor(5.)
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            mse_loss,
            (input, target, weight),
            input,
            target,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
            weight=weight,
        )
    for name, t in (("input", input), ("target", target)):
        check_tensor(t, name, "mse_loss")
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=2,
        )
    if weight is None or size_average is not None or reduce is not None:  # torch's weighted form checks its own
        reduction = reduction_of(reduction, size_average, reduce)
    given_size = input.size()
    input, target = torch.broadcast_tensors(input, target)
    if weight is not None:
        check_tensor(weight, "weight", "mse_loss")
        if weight.size() != given_size:  # the input's own size, not the broadcast one (torch's rule)
            raise ValueError("Weights and input must have the same size.")
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")
    (input, target, weight), autocast_off = _autocast_float32(
        "mse_loss" if weight is None else "weighted mse_loss", input, target, weight
    )
    with autocast_off:
        return apply(MSELossFunction, input, target, weight, reduction)


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
        return handle_torch_function(
            max_pool2d_with_indices, (input,), input, kernel_size, stride, padding, dilation, ceil_mode, return_indices
        )
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
        return handle_torch_function(
            max_pool2d, (input,), input, kernel_size, stride, padding, dilation, ceil_mode, return_indices
        )
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
    momentum, eps = check_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if input.dim() == 1:  # empty (check_batch_norm): as an empty batch of the parameters' channels, nothing to update
        channels = next((t.numel() for t in (weight, bias) if t is not None), 0)
        out, _, _ = apply(BatchNormFunction, input.view(0, channels), weight, bias, None, None, training, momentum, eps)
        return out.view(0)
    out, _, _ = apply(BatchNormFunction, input, weight, bias, running_mean, running_var, training, momentum, eps)
    return out


# the mobile networks' activations, the elementwise product and quotient, sum and mean (docs/derivation.md eq. H, E, R)


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False) -> torch.Tensor:
    """clamp(x, min_val, max_val), as :func:`torch.nn.functional.hardtanh`; backward δ where min_val < x < max_val,
    0 elsewhere, read from the saved output (eq. H1).

    Example::

        >>> hardtanh(torch.tensor([-2.0, 0.5, 2.0]))
        tensor([-1.0000,  0.5000,  1.0000])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(hardtanh, (input,), input, min_val=min_val, max_val=max_val, inplace=inplace)
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    check_tensor(input, "input", "hardtanh")
    return _maybe_inplace(HardtanhFunction, input, min_val, max_val, inplace=bool(inplace))


def hardtanh_(input, min_val=-1.0, max_val=1.0) -> torch.Tensor:
    """In-place :func:`hardtanh`, as :func:`torch.nn.functional.hardtanh_`."""
    return hardtanh(input, min_val, max_val, inplace=True)


def relu6(input, inplace=False) -> torch.Tensor:
    """min(max(0, x), 6), as :func:`torch.nn.functional.relu6`: :func:`hardtanh` on [0, 6] (eq. H1).

    Example::

        >>> relu6(torch.tensor([-1.0, 3.0, 7.0]))
        tensor([0., 3., 6.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(relu6, (input,), input, inplace=inplace)
    return hardtanh(input, 0.0, 6.0, inplace)


def hardsigmoid(input, inplace=False) -> torch.Tensor:
    """relu6(x + 3)/6, as :func:`torch.nn.functional.hardsigmoid`; backward δ/6 where −3 < x < 3 (eq. H2).

    Example::

        >>> hardsigmoid(torch.tensor([-4.0, 0.0, 4.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(hardsigmoid, (input,), input, inplace=inplace)
    check_tensor(input, "input", "hardsigmoid")
    return _maybe_inplace(HardsigmoidFunction, input, inplace=bool(inplace))


def hardswish(input, inplace=False) -> torch.Tensor:
    """x·relu6(x + 3)/6, as :func:`torch.nn.functional.hardswish`; backward δ·(x/3 + ½) on [−3, 3], δ above, 0 below
    (eq. H3).

    Example::

        >>> hardswish(torch.tensor([-4.0, 0.0, 4.0]))
        tensor([-0., 0., 4.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(hardswish, (input,), input, inplace=inplace)
    check_tensor(input, "input", "hardswish")
    if inplace:
        return _inplace_keeping_input(HardswishFunction, HardswishInplaceFunction, input)
    return apply(HardswishFunction, input)


def silu(input, inplace=False) -> torch.Tensor:
    """x·σ(x), as :func:`torch.nn.functional.silu`; backward δ·σ(x)(1 + x(1 − σ(x))) (eq. H4).

    Example::

        >>> silu(torch.zeros(2))
        tensor([0., 0.])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(silu, (input,), input, inplace=inplace)
    check_tensor(input, "input", "silu")
    if inplace:
        return _inplace_keeping_input(SiluFunction, SiluInplaceFunction, input)
    return apply(SiluFunction, input)


def _check_operands(op: str, input, other) -> None:
    """torch's TypeError unless each operand is a Tensor or a number (torch wraps a number into a 0-d tensor)."""
    if not isinstance(input, (torch.Tensor, Number)):
        raise TypeError(f"{op}(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")
    if not isinstance(other, (torch.Tensor, Number)):
        raise TypeError(f"{op}(): argument 'other' (position 2) must be Tensor or Number, not {type(other).__name__}")


def mul(input, other) -> torch.Tensor:
    """a ⊙ b with broadcasting and torch's type promotion, as :func:`torch.mul`; backward by the product rule, each
    operand's gradient summed back to its own shape (eq. E1, E3). ``other`` may be a number.

    Example::

        >>> mul(torch.ones(2, 3), torch.tensor([[2.0], [3.0]]))
        tensor([[2., 2., 2.],
                [3., 3., 3.]])
    """
    if has_torch_function_variadic(input, other):
        return handle_torch_function(mul, (input, other), input, other)
    _check_operands("mul", input, other)
    if not _differentiated(*(t for t in (input, other) if isinstance(t, torch.Tensor))):
        return torch.mul(input, other)
    return apply(MulFunction, input, other)


def div(input, other, *, rounding_mode=None) -> torch.Tensor:
    """a / b with broadcasting and torch's type promotion, as :func:`torch.div`; backward δ/b̄ and −δ·conj(a/b²),
    each summed back to its operand's shape (eq. E2, E3). ``other`` may be a number.

    ``rounding_mode`` ``"trunc"`` or ``"floor"`` (a step function: zero derivative) is torch's own division.

    Example::

        >>> div(torch.ones(2), torch.tensor([2.0, 4.0]))
        tensor([0.5000, 0.2500])
    """
    if has_torch_function_variadic(input, other):
        return handle_torch_function(div, (input, other), input, other, rounding_mode=rounding_mode)
    _check_operands("div", input, other)
    if rounding_mode is not None or not _differentiated(*(t for t in (input, other) if isinstance(t, torch.Tensor))):
        return torch.div(input, other, rounding_mode=rounding_mode)
    return apply(DivFunction, input, other)


def _reduce(function, name: str, native, input, dim, keepdim, dtype) -> torch.Tensor:
    check_tensor(input, "input", name)
    named = isinstance(dim, str) or (isinstance(dim, (tuple, list)) and any(isinstance(d, str) for d in dim))
    if not _differentiated(input) or named:  # nothing to differentiate, or named dimensions: torch's own reduction
        return native(input, dim, keepdim, dtype=dtype) if dim is not None or keepdim else native(input, dtype=dtype)
    if isinstance(dtype, torch.dtype) and not (dtype.is_floating_point or dtype.is_complex):
        raise RuntimeError(f"{name}: an output that requires grad needs a floating or complex dtype, not {dtype}")
    if dim is not None and not (isinstance(dim, (tuple, list)) and len(dim) == 0):
        dim = reduced_dims(dim, input.dim()) or dim  # every spelling torch accepts, as a tuple (0-d: as given)
    return apply(function, input, dim, keepdim, dtype)


def sum(input, dim=None, keepdim=False, *, dtype=None, **numpy_names) -> torch.Tensor:
    """Σ over ``dim`` (all dimensions if None), as :func:`torch.sum`; backward δ copied to every summed element
    (eq. R1). NumPy's names ``axis`` and ``keepdims`` are read as ``dim`` and ``keepdim``, as torch reads them.

    Example::

        >>> sum(torch.ones(2, 3), 1)
        tensor([3., 3.])
    """
    dim, keepdim = _numpy_names("sum", dim, keepdim, numpy_names)
    if has_torch_function_unary(input):
        return handle_torch_function(sum, (input,), input, dim, keepdim, dtype=dtype)
    return _reduce(SumFunction, "sum", torch.sum, input, dim, keepdim, dtype)


def mean(input, dim=None, keepdim=False, *, dtype=None, **numpy_names) -> torch.Tensor:
    """The mean over ``dim`` (all dimensions if None), as :func:`torch.mean`; backward δ/n copied to every averaged
    element (eq. R2). NumPy's names ``axis`` and ``keepdims`` are read as ``dim`` and ``keepdim``, as torch reads them.

    Example::

        >>> mean(torch.arange(6.0).reshape(2, 3), [0, 1])
        tensor(2.5000)
    """
    dim, keepdim = _numpy_names("mean", dim, keepdim, numpy_names)
    if has_torch_function_unary(input):
        return handle_torch_function(mean, (input,), input, dim, keepdim, dtype=dtype)
    return _reduce(MeanFunction, "mean", torch.mean, input, dim, keepdim, dtype)


def _numpy_names(op: str, dim, keepdim, names: dict):
    """``dim`` and ``keepdim`` given by NumPy's names, which torch's argument parser accepts for its reductions:
    ``axis`` and ``keepdims``. Any other keyword, or a name given twice, is a TypeError, as in torch."""
    for name in names:
        if name not in ("axis", "keepdims") or (name == "axis" and dim is not None) or (name == "keepdims" and keepdim):
            raise TypeError(f"{op}() got an unexpected keyword argument '{name}'")
    return names.get("axis", dim), names.get("keepdims", keepdim)


# --- the transformer's operations (docs/derivation.md eq. T1–T12) -------------------------------------------------


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5) -> torch.Tensor:
    """Layer normalisation, as :func:`torch.nn.functional.layer_norm`, with the hand-derived backward.

    Over the trailing ``normalized_shape`` dimensions of each sample: y = γ ⊙ (x − μ)/√(σ² + ε) + β (eq. T1).
    Backward (``bp_torch.autograd.LayerNormFunction``): ∂e/∂β = Σδ, ∂e/∂γ = Σδ⊙x̂ over the samples (T2), and with
    g = γ⊙δ, ∂e/∂x = (g − mean g − x̂·mean(g⊙x̂))/σ̂ over each sample's normalised values (T3).

    Args:
        input: ``(*, *normalized_shape)``.
        normalized_shape: int or sequence of ints, the trailing dimensions normalised together.
        weight, bias: γ and β, of ``normalized_shape``, or ``None`` (γ = 1, β = 0).
        eps: ε, added to the variance.

    Example::

        >>> layer_norm(torch.tensor([[1.0, 3.0]]), (2,))
        tensor([[-1.0000,  1.0000]])
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(layer_norm, (input, weight, bias), input, normalized_shape, weight=weight,
                                     bias=bias, eps=eps)  # fmt: skip
    check_tensor(input, "input", "layer_norm")
    shape = normalized_shape_of(normalized_shape)
    out, _, _ = apply(LayerNormFunction, input, shape, weight, bias, eps_arg(eps, "layer_norm"))
    return out


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5) -> torch.Tensor:
    """Group normalisation, as :func:`torch.nn.functional.group_norm`, with the hand-derived backward.

    The C channels in ``num_groups`` groups, each group of each sample normalised over its channels and positions,
    then γ and β per channel (eq. T1). Backward (``bp_torch.autograd.GroupNormFunction``): eq. T2, T3 over a group.

    Args:
        input: ``(N, C, *)``.
        num_groups: divides C.
        weight, bias: γ and β, ``(C,)``, or ``None``.
        eps: ε, added to the variance.

    Example::

        >>> group_norm(torch.tensor([[[1.0], [3.0]]]), 1).flatten()
        tensor([-1.0000,  1.0000])
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(group_norm, (input, weight, bias), input, num_groups, weight=weight, bias=bias,
                                     eps=eps)  # fmt: skip
    num_groups = check_group_norm(input, num_groups, weight, bias)
    out, _, _ = apply(GroupNormFunction, input, num_groups, weight, bias, eps_arg(eps, "group_norm"))
    return out


def gelu(input, approximate="none") -> torch.Tensor:
    """x·Φ(x), or its tanh approximation, as :func:`torch.nn.functional.gelu`; backward δ·y' (eq. T5, T6).

    Args:
        input: any shape.
        approximate: ``"none"`` (exact, y' = Φ + xφ) or ``"tanh"`` (y = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))).

    Example::

        >>> gelu(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 0.8413])
    """
    if has_torch_function_unary(input):
        return handle_torch_function(gelu, (input,), input, approximate=approximate)
    check_tensor(input, "input", "gelu")
    if not isinstance(approximate, str):
        raise TypeError(f"gelu(): argument 'approximate' must be str, not {type(approximate).__name__}")
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    return apply(GeluFunction, input, approximate)


def matmul(input, other, *, out=None) -> torch.Tensor:
    """The matrix product, as :func:`torch.matmul` (batches broadcast, 1-D operands a row or a column), with the
    backward of eq. T7: ∂e/∂A = δBᴴ, ∂e/∂B = Aᴴδ (Note A eq. 8, 7), summed over broadcast batch dimensions.

    ``out=`` is torch's own (torch differentiates no ``out=`` call).

    Example::

        >>> matmul(torch.ones(2, 3), torch.ones(3))
        tensor([3., 3.])
    """
    if has_torch_function_variadic(input, other):
        return handle_torch_function(matmul, (input, other), input, other, out=out)
    if out is not None:
        return torch.matmul(input, other, out=out)
    return _product(MatmulFunction, input, other, "matmul")


def bmm(input, mat2, *, out=None) -> torch.Tensor:
    """Batched matrix product of two ``(b, n, m)``, ``(b, m, p)`` tensors, as :func:`torch.bmm` (backward eq. T7).

    Example::

        >>> bmm(torch.ones(2, 1, 3), torch.ones(2, 3, 1)).flatten()
        tensor([3., 3.])
    """
    if has_torch_function_variadic(input, mat2):
        return handle_torch_function(bmm, (input, mat2), input, mat2, out=out)
    if out is not None:
        return torch.bmm(input, mat2, out=out)
    return _product(MatmulFunction, input, mat2, "bmm")


def addmm(input, mat1, mat2, *, beta=1, alpha=1, out=None) -> torch.Tensor:
    """β·input + α·mat1 @ mat2, as :func:`torch.addmm` (input broadcast to the product's shape); backward eq. T8.

    Example::

        >>> addmm(torch.ones(2), torch.ones(1, 3), torch.ones(3, 2), beta=2)
        tensor([[5., 5.]])
    """
    if has_torch_function_variadic(input, mat1, mat2):
        return handle_torch_function(addmm, (input, mat1, mat2), input, mat1, mat2, beta=beta, alpha=alpha, out=out)
    if out is not None:
        return torch.addmm(input, mat1, mat2, beta=beta, alpha=alpha, out=out)
    return _product(AddmmFunction, input, mat1, mat2, _number(beta), _number(alpha), "addmm")


def baddbmm(input, batch1, batch2, *, beta=1, alpha=1, out=None) -> torch.Tensor:
    """β·input + α·batch1 @ batch2 for each matrix of the batch, as :func:`torch.baddbmm`; backward eq. T8.

    Example::

        >>> baddbmm(torch.zeros(1, 1, 1), torch.ones(1, 1, 3), torch.ones(1, 3, 1), alpha=2).flatten()
        tensor([6.])
    """
    if has_torch_function_variadic(input, batch1, batch2):
        return handle_torch_function(baddbmm, (input, batch1, batch2), input, batch1, batch2, beta=beta, alpha=alpha,
                                     out=out)  # fmt: skip
    if out is not None:
        return torch.baddbmm(input, batch1, batch2, beta=beta, alpha=alpha, out=out)
    return _product(AddmmFunction, input, batch1, batch2, _number(beta), _number(alpha), "baddbmm")


def _number(scalar):
    """A scalar given as a 0-d tensor or a numpy scalar, as the Python number torch reads (others as they are: torch
    judges them)."""
    if isinstance(scalar, torch.Tensor) and scalar.dim() == 0 or type(scalar).__module__ == "numpy":
        return scalar.item()
    return scalar


def _product(function, *args):
    """A product's Function on its tensors cast as autocast casts the matrix products (its lower-precision list)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    for t, name in zip(tensors, ("input", "other", "mat2")):
        check_tensor(t, name, args[-1])
    cast, autocast_off = _autocast_lower_precision(*tensors)
    with autocast_off:
        return apply(function, *cast, *args[len(tensors) :])


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False
) -> torch.Tensor:
    """softmax(s·QKᵀ + M)·V, as :func:`torch.nn.functional.scaled_dot_product_attention`, with the hand-derived
    backward (``bp_torch.autograd.ScaledDotProductAttentionFunction``, eq. T9–T12).

    Args:
        query: ``(*, L, E)``; key: ``(*, S, E)``; value: ``(*, S, Ev)`` (batch dimensions broadcast).
        attn_mask: boolean (True: may attend) or float (added to the scores), broadcast to ``(*, L, S)``.
        dropout_p: the probability of dropping an attention weight (always applied when positive, as torch's);
            the survivors scaled by 1/(1 − p). The masks are drawn by ``torch.bernoulli``, not torch's kernel's.
        is_causal: query i attends to keys j ≤ i (the top-left causal mask); no ``attn_mask`` with it.
        scale: s; default 1/√E.
        enable_gqa: grouped-query attention: the key and value heads (dim −3) each serve several query heads.

    Shape:
        ``(*, L, Ev)``.

    Example::

        >>> q = torch.zeros(1, 2, 4)
        >>> scaled_dot_product_attention(q, q, torch.tensor([[[1.0], [3.0]]]))
        tensor([[[2.],
                 [2.]]])
    """
    if has_torch_function_variadic(query, key, value, attn_mask):
        return handle_torch_function(scaled_dot_product_attention, (query, key, value, attn_mask), query, key, value,
                                     attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                                     enable_gqa=enable_gqa)  # fmt: skip
    check_attention(query, key, value, attn_mask, dropout_p, is_causal)
    (query, key, value, attn_mask), autocast_off = _autocast_lower_precision(query, key, value, attn_mask)
    L, S, E = query.shape[-2], key.shape[-2], query.shape[-1]
    if scale is None:
        # no features to compare: every score is 0 whatever the scale (torch's 1/√0 never multiplies a number)
        scale = 1 / math.sqrt(E) if E else 1.0
    else:
        scale = float_arg(scale, "scale", "scaled_dot_product_attention")
    groups = 1
    if enable_gqa and query.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        if query.shape[-3] % key.shape[-3] or query.shape[-3] % value.shape[-3]:
            raise RuntimeError("Number of heads in key and value must divide the number of heads in query")
        groups = query.shape[-3] // key.shape[-3]
    keep = bias = dropout = None
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        keep = attn_mask
    elif attn_mask is not None:
        # an output with no elements, or no keys to attend to, depends on no mask: torch's carries no graph to it
        bias = attn_mask if attends(query, key, value) else attn_mask.detach()
    if dropout_p > 0:
        key_batch = (*key.shape[:-3], key.shape[-3] * groups) if key.dim() >= 3 else key.shape[:-2]
        shape = (*torch.broadcast_shapes(query.shape[:-2], key_batch), L, S)
        dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
        if dropout_p == 1:
            dropout = torch.zeros(shape, dtype=dtype, device=query.device)
        else:  # eq. D4: m / (1 − p)
            dropout = torch.empty(shape, dtype=dtype, device=query.device).bernoulli_(1 - dropout_p) / (1 - dropout_p)
    with autocast_off:
        out, _ = apply(ScaledDotProductAttentionFunction, query, key, value, bias, keep, dropout, scale, groups)
    return out


# made of the functions above (a module of its own, which imports this one)
from bp_torch._einsum import einsum  # noqa: E402
from bp_torch._movement import getitem, pad, roll  # noqa: E402
from bp_torch._multi_head_attention import multi_head_attention_forward  # noqa: E402
