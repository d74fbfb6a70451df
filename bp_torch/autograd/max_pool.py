"""Max pooling (eq. M1) with the backward of eq. M2: δ routed to the input each window picked, summed where windows
overlap on the same pick.

Three Functions, each the others' transpose, so derivatives of every order run through hand-written code: max
pooling reads each window's argmax, y = x[a] (eq. M1); its input gradient scatters δ to the argmaxes and adds
(eq. M2, ``MaxPool2dInputGradFunction``); the backward of that scatter is the gather y = g[a] at the same,
fixed argmaxes (``MaxPool2dGatherFunction``), whose backward is the scatter again. Equation labels M are ours
(docs/derivation.md, "Beyond the notes").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._arguments import Pair
from bp_torch._function import in_layout, is_channels_last, nested_apply, with_direct_call


@with_direct_call
class MaxPool2dFunction(Function):
    """Max pooling (eq. M1) returning ``(output, indices)``: each window's largest input and its flat position
    ``h·W + w`` in its plane, picked by torch's own kernel (ties to the first in scan order, NaN wins, padding never
    does); backward routes δ to those positions (eq. M2).

    Arguments arrive validated and normalised by ``bp_torch.functional.max_pool2d``: a 4-D input, int pairs.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, ceil_mode: bool):
        # y_ij = max over window (i, j) = x at its argmax a_ij, and a_ij: torch's kernel
        return F.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode, True)  # eq. M1

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, _, _, padding, dilation, _ = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        H, W = ctx.input_size = tuple(input.shape[2:])
        missed = None
        if max(dilation) > 1 and max(padding) > 0:
            # dilated taps may all fall in the padding: that window's maximum is −∞ and torch's index points past
            # the plane; its δ goes nowhere, as in torch's backward
            missed = indices >= H * W
            indices = indices.masked_fill(missed, 0)
        # the backward reads only where each window's maximum was: the argmaxes, not the values
        ctx.save_for_backward(indices, missed)
        ctx.save_for_forward(indices, missed)
        ctx.channels_last = is_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output, grad_indices):
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        indices, missed = ctx.saved_tensors
        if missed is not None:
            grad_output = grad_output.masked_fill(missed, 0)
        grad_input = route(grad_output, indices, ctx.input_size)  # eq. M2: δ to each window's argmax, summed
        return in_layout(grad_input, ctx.channels_last), None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, *_):
        indices, missed = ctx.saved_tensors
        output_t = gather(input_t, indices)  # eq. M3: ẏ_ij = ẋ at a_ij
        return (output_t if missed is None else output_t.masked_fill(missed, 0)), None


@with_direct_call
class MaxPool2dInputGradFunction(Function):
    """The input gradient of max pooling as a Function of δ (eq. M2): an ``input_size`` map of zeros with each δ_ij
    added at its window's argmax a_ij. Linear in δ: its backward is the gather at the same argmaxes."""

    generate_vmap_rule = True

    @staticmethod
    def forward(delta, indices, input_size: Pair):
        return scatter_add(delta, indices, input_size)  # eq. M2: ∂e/∂x_pq = Σ over a_ij = (p, q) of δ_ij

    @staticmethod
    def setup_context(ctx, inputs, output):
        delta, indices, input_size = inputs
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.input_size = input_size
        ctx.channels_last = is_channels_last(delta)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        grad_delta = None
        if ctx.needs_input_grad[0]:
            grad_delta = in_layout(gather(grad, indices), ctx.channels_last)  # eq. M3: the transpose of M2
        return grad_delta, None, None

    @staticmethod
    def jvp(ctx, delta_t, *_):
        (indices,) = ctx.saved_tensors
        return scatter_add(delta_t, indices, ctx.input_size)  # eq. M2, linear: the tangent is scattered alike


@with_direct_call
class MaxPool2dGatherFunction(Function):
    """y_ij = x at a_ij for given, fixed argmaxes (eq. M1 with a held constant, M3): the transpose of eq. M2's
    scatter, and so its backward; its own backward is the scatter again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, indices):
        return take(input, indices)  # eq. M3: y_ij = x at a_ij

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, indices = inputs
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.input_size = tuple(input.shape[2:])
        ctx.channels_last = is_channels_last(input)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = in_layout(route(grad, indices, ctx.input_size), ctx.channels_last)  # eq. M2
        return grad_input, None

    @staticmethod
    def jvp(ctx, input_t, _):
        (indices,) = ctx.saved_tensors
        return take(input_t, indices)  # eq. M3, linear: the tangent is gathered alike


def route(delta, indices, input_size: Pair) -> torch.Tensor:
    """eq. M2 inside a backward: through ``MaxPool2dInputGradFunction`` when a graph of the backward is built."""
    return nested_apply(MaxPool2dInputGradFunction, delta, indices, input_size)


def gather(grad, indices) -> torch.Tensor:
    """eq. M3 inside a backward or a tangent: through ``MaxPool2dGatherFunction`` when a graph is built."""
    return nested_apply(MaxPool2dGatherFunction, grad, indices)


def scatter_add(delta: torch.Tensor, indices: torch.Tensor, input_size: Pair) -> torch.Tensor:
    """Zeros of ``(N, C, *input_size)`` with each ``delta[n, c, i, j]`` added at the flat position
    ``indices[n, c, i, j]`` of plane (n, c)."""
    N, C, H_out, W_out = delta.shape
    H, W = input_size
    if delta.dtype in (torch.float16, torch.bfloat16):  # overlapping windows' δ summed in float32, as torch's
        return scatter_add(delta.float(), indices, input_size).to(delta.dtype)
    if is_channels_last(delta):
        # scattered along the rows of an (N, H·W, C) map, channels innermost as they lie: a channels_last result
        planes = delta.new_zeros((N, H * W, C))
        src, index = (t.permute(0, 2, 3, 1).reshape(N, H_out * W_out, C) for t in (delta, indices))
        return planes.scatter_add_(1, index, src).view(N, H, W, C).permute(0, 3, 1, 2)  # eq. M2, channels last
    planes = delta.new_zeros((N, C, H * W))
    src, index = (t.reshape(N, C, H_out * W_out) for t in (delta, indices))
    return planes.scatter_add_(2, index, src).view(N, C, H, W)  # eq. M2: δ_ij added at a_ij


def take(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``input[n, c]`` read at the flat positions ``indices[n, c]``: an ``indices``-shaped map."""
    N, C, H, W = input.shape
    H_out, W_out = indices.shape[-2:]
    flat = indices.reshape(N, C, H_out * W_out)
    return input.reshape(N, C, H * W).gather(2, flat).view(indices.shape)  # eq. M3: x read at a_ij
