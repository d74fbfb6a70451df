"""conv2d (Note A eq. 10) and its two gradients as Functions, each backward made of the other two.

The three are one trilinear form T(x, k, δ) = Σ δ ⊙ conv2d(x, k) differentiated in each slot: conv2d = ∂T/∂δ, the
input gradient = ∂T/∂x (Note A eq. 17/35, Note B eq. 51), the weight gradient = ∂T/∂k (Note B eq. 40/59). The
backward of each is therefore the other two, and derivatives of every order run through hand-written code.
Which formulation of each gradient runs is ``bp_torch._conv``'s choice; its docstring has the table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch import _conv
from bp_torch._arguments import Pair
from bp_torch._function import in_layout, is_channels_last, nested_apply, with_direct_call


@with_direct_call
class Conv2dFunction(Function):
    """2-D cross-correlation (Note A eq. 10) with the backward of Note A eq. 14/17/35 and Note B eq. 40, 45, 51.

    Arguments arrive validated and normalised by ``bp_torch.functional.conv2d``: a 4-D input, stride, padding and
    dilation as int pairs, padding symmetric (``padding='same'`` with an even kernel is padded by the caller).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, stride: Pair, padding: Pair, dilation: Pair, groups: int, feedback=None):
        return torch.conv2d(input, weight, bias, stride, padding, dilation, groups)  # Note A eq. 10

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups, feedback = (*inputs, None)[:8]
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        # ∂e/∂x needs only the kernel, ∂e/∂k only the input: save what the requested gradients read; a backward
        # rule's feedback kernel B (bp_torch.feedback) carries δ back in k's place; None: k, exact
        backward_kernel = weight if feedback is None else feedback
        ctx.save_for_backward(input if needs_weight else None, backward_kernel if needs_input else None)
        ctx.input_size = tuple(input.shape[2:])
        ctx.kernel_size = tuple(weight.shape[2:])
        ctx.output_shape = output.shape
        ctx.options = (stride, padding, dilation, groups)
        ctx.channels_last = gradients_channels_last(input, weight)
        ctx.save_for_forward(input, weight)
        # an empty input (no samples or no channels; torch's output then has no channels either): zero gradients
        ctx.empty = (input.shape, weight.shape, input.dtype, input.device) if input.numel() == 0 else None

    @staticmethod
    def backward(ctx, grad_output):
        no_grads = (None,) * 5  # the options' and the feedback's: none (autograd drops the last if none was passed)
        if ctx.empty is not None:
            return (*_zero_gradients(ctx), *no_grads)
        input, weight = ctx.saved_tensors  # under a backward rule, B in k's place
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Note A eq. 17/35, Note B eq. 51 — fast mode: eq. 14's transposed convolution; literal mode: eq. 17
            # (_conv's table); complex: with k̄, as torch conjugates the other operand
            grad_input = conv2d_input_grad(grad_output, weight.conj(), ctx.input_size, *ctx.options)
            grad_input = in_layout(grad_input, ctx.channels_last)
        if ctx.needs_input_grad[1]:
            # Note B eq. 40/59, Δk = rot180(S) * ΔC_σ: x ⋆ δ over the batch, or Note A eq. 7 on im2col (_conv's table)
            grad_weight = conv2d_weight_grad(input.conj(), grad_output, ctx.kernel_size, *ctx.options)
            grad_weight = in_layout(grad_weight, ctx.channels_last)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))  # Note B eq. 45/64: Δb = Σ ΔC_σ
        return grad_input, grad_weight, grad_bias, *no_grads

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        # forward mode has no feedback: the tangent is the exact derivative of the forward, whatever the rule
        input, weight = ctx.saved_tensors
        if ctx.empty is not None:  # no samples or no channels: an empty output (torch's has no channels then)
            tangent = next(t for t in (input_t, weight_t, bias_t) if t is not None)
            return tangent.new_zeros(ctx.output_shape)
        # the product rule on the bilinear s = x ⋆ k (+ b): each operand's tangent correlated with the other one
        out_t = conv2d(input_t, weight, *ctx.options) if input_t is not None else None  # eq. J1: ẋ ⋆ k
        if weight_t is not None:
            out_t = _add(out_t, conv2d(input, weight_t, *ctx.options))  # eq. J1: + x ⋆ k̇
        if bias_t is not None:
            bias_t = bias_t[:, None, None]
            out_t = bias_t.expand(ctx.output_shape) if out_t is None else out_t + bias_t  # eq. J1: + ḃ
        return out_t


@with_direct_call
class Conv2dInputGradFunction(Function):
    """∂e/∂x = conv2d's input gradient (Note A eq. 14/17/35) as a Function of (δ, k) = ∂T/∂x, so that it too has a
    backward: ∂T/∂δ is the forward correlation, ∂T/∂k the weight gradient with the incoming gradient as x."""

    generate_vmap_rule = True

    @staticmethod
    def forward(delta, weight, input_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
        return _own_storage(_conv.input_grad(delta, weight, input_size, stride, padding, dilation, groups))

    @staticmethod
    def setup_context(ctx, inputs, output):
        delta, weight, input_size, *options = inputs
        needs_delta, needs_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(delta if needs_weight else None, weight if needs_delta else None)
        ctx.kernel_size = tuple(weight.shape[2:])
        ctx.options = tuple(options)
        ctx.layouts = (is_channels_last(delta), is_channels_last(weight))
        ctx.save_for_forward(delta, weight)
        ctx.input_size = tuple(input_size)
        # rows a window hanging past the input reached (ceil_mode pooling) were cropped: their gradient is zero
        hang = _conv.uncovered(input_size, delta.shape[-2:], ctx.kernel_size, *options[:3])
        ctx.hang = (0, max(-hang[1], 0), 0, max(-hang[0], 0))

    @staticmethod
    def backward(ctx, grad):
        delta, weight = ctx.saved_tensors
        grad_delta = grad_weight = None
        if any(ctx.hang):
            grad = F.pad(grad, ctx.hang)
        if ctx.needs_input_grad[0]:
            # ∂T/∂δ: the forward correlation (Note A eq. 10) of the incoming gradient with k (k̄ if complex)
            grad_delta = in_layout(conv2d(grad, weight.conj(), *ctx.options), ctx.layouts[0])
        if ctx.needs_input_grad[1]:
            # ∂T/∂k: Note B eq. 40 with the incoming gradient in the input's place
            grad_weight = conv2d_weight_grad(grad, delta.conj(), ctx.kernel_size, *ctx.options)
            grad_weight = in_layout(grad_weight, ctx.layouts[1])
        return grad_delta, grad_weight, None, None, None, None, None

    @staticmethod
    def jvp(ctx, delta_t, weight_t, *_):
        delta, weight = ctx.saved_tensors
        size, options = ctx.input_size, ctx.options
        # bilinear in (δ, k) as conv2d is in (x, k): the product rule, each tangent through the same Function
        out_t = conv2d_input_grad(delta_t, weight, size, *options) if delta_t is not None else None  # eq. J2: δ̇, k
        if weight_t is not None:
            out_t = _add(out_t, conv2d_input_grad(delta, weight_t, size, *options))  # eq. J2: + (δ, k̇)
        return out_t


@with_direct_call
class Conv2dWeightGradFunction(Function):
    """∂e/∂k = conv2d's weight gradient (Note B eq. 40/59) as a Function of (x, δ) = ∂T/∂k: its backward is the
    input gradient with the incoming gradient as the kernel (∂T/∂x) and the forward correlation (∂T/∂δ)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, delta, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
        return _own_storage(_conv.weight_grad(input, delta, kernel_size, stride, padding, dilation, groups))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, delta, kernel_size, *options = inputs
        needs_input, needs_delta = ctx.needs_input_grad[:2]
        ctx.save_for_backward(input if needs_delta else None, delta if needs_input else None)
        ctx.input_size = tuple(input.shape[2:])
        ctx.options = tuple(options)
        ctx.layouts = (is_channels_last(input), is_channels_last(delta))
        ctx.save_for_forward(input, delta)
        ctx.kernel_size = tuple(kernel_size)

    @staticmethod
    def backward(ctx, grad):
        input, delta = ctx.saved_tensors
        grad_input = grad_delta = None
        if ctx.needs_input_grad[0]:
            # ∂T/∂x: Note A eq. 17 with the incoming gradient as the kernel
            grad_input = conv2d_input_grad(delta.conj(), grad, ctx.input_size, *ctx.options)
            grad_input = in_layout(grad_input, ctx.layouts[0])
        if ctx.needs_input_grad[1]:
            # ∂T/∂δ: the forward correlation (Note A eq. 10) of x with the incoming gradient as the kernel
            grad_delta = in_layout(conv2d(input.conj(), grad, *ctx.options), ctx.layouts[1])
        return grad_input, grad_delta, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, delta_t, *_):
        input, delta = ctx.saved_tensors
        size, options = ctx.kernel_size, ctx.options
        # bilinear in (x, δ): the product rule, each tangent through the same Function
        out_t = conv2d_weight_grad(input_t, delta, size, *options) if input_t is not None else None  # eq. J3: ẋ, δ
        if delta_t is not None:
            out_t = _add(out_t, conv2d_weight_grad(input, delta_t, size, *options))  # eq. J3: + (x, δ̇)
        return out_t


def gradients_channels_last(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """torch's rule for conv2d's gradients on CPU (checked by experiment, tests/test_memory_formats.py): both
    channels_last when either the input or the weight is; complex ones, which torch computes as real convolutions,
    never."""
    return not input.is_complex() and (is_channels_last(input) or is_channels_last(weight))


def _zero_gradients(ctx) -> tuple:
    """Zero gradients for conv2d's input, weight and bias (each where requested) when its input is empty."""
    input_shape, weight_shape, dtype, device = ctx.empty
    shapes = (input_shape, weight_shape, weight_shape[:1])
    return tuple(
        in_layout(torch.zeros(shape, dtype=dtype, device=device), ctx.channels_last and len(shape) == 4)
        if needed
        else None
        for shape, needed in zip(shapes, ctx.needs_input_grad[:3])
    )


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied if it is a crop of a larger intermediate: forward-mode AD cannot give such a view the tangent
    its jvp computes (a tensor of its own)."""
    base = t._base
    return t.clone() if base is not None and base.numel() != t.numel() else t


def _add(a, b):
    """a + b where ``a`` may be None (no tangent)."""
    return b if a is None else a + b


def conv2d(input, weight, stride: Pair, padding: Pair, dilation: Pair, groups: int) -> torch.Tensor:
    """The forward correlation (Note A eq. 10) inside a backward, without bias."""
    return nested_apply(Conv2dFunction, input, weight, None, stride, padding, dilation, groups, None)


def conv2d_input_grad(delta, weight, input_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂x (Note A eq. 14/17/35, Note B eq. 51) inside a backward."""
    return nested_apply(Conv2dInputGradFunction, delta, weight, input_size, stride, padding, dilation, groups)


def conv2d_weight_grad(input, delta, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂k (Note B eq. 40/59) inside a backward."""
    return nested_apply(Conv2dWeightGradFunction, input, delta, kernel_size, stride, padding, dilation, groups)
