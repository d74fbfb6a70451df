"""Adaptive mean pooling (eq. M4) with the backward of eq. M5: δ spread over each adaptive window, divided by its size.

Output row i averages input rows start_i ≤ h < end_i, start_i = ⌊i·H/H_out⌋, end_i = ⌈(i+1)·H/H_out⌉ (torch's rule;
columns alike). Windows may overlap and differ in size, so the pooling is y = A_H x A_Wᵀ with A_H[i, h] = 1/|window
i| on its window, and its input gradient the transpose, A_Hᵀ δ A_W (eq. M5). The two are each other's backward
(``AdaptiveAvgPool2dFunction``, ``AdaptiveAvgPool2dInputGradFunction``), so every order is hand-written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._arguments import Pair
from bp_torch._formulas import is_literal
from bp_torch._function import in_layout, is_channels_last, nested_apply, opmath, with_direct_call
from bp_torch.autograd.pool import upsample


def spread_along(delta: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Aᵀδ along ``dim`` (eq. M5, one side): each of the ``size`` inputs receives δ_i/|window i| from every window i
    = [⌊i·size/out⌋, ⌈(i+1)·size/out⌉) holding it (torch's rule). Added window by window (``index_add``), not as a
    product with A's zeros: an infinite δ reaches its window alone, as in torch, not 0·∞ = NaN everywhere."""
    out = delta.shape[dim]
    i = torch.arange(out, device=delta.device)
    start, end = i * size // out, -(-(i + 1) * size // out)
    lengths = end - start
    owner = torch.repeat_interleave(i, lengths)  # the window of each (window, input) pair
    member = torch.arange(len(owner), device=delta.device) - torch.repeat_interleave(
        lengths.cumsum(0) - lengths, lengths
    )
    member = member + start[owner]  # the input of each pair
    shape = [1] * delta.dim()
    shape[dim] = -1
    share = delta.index_select(dim, owner) / lengths[owner].to(delta.dtype).view(shape)  # eq. M5: δ_i/|window i|
    zeros = delta.new_zeros(*delta.shape[:dim], size, *delta.shape[dim + 1 :])
    return zeros.index_add(dim, member, share)  # eq. M5: Σ over the windows holding each input


@with_direct_call
class AdaptiveAvgPool2dFunction(Function):
    """Adaptive mean pooling to ``output_size`` (eq. M4); backward spreads δ over each window (eq. M5).

    Arguments arrive validated and normalised by ``bp_torch.functional.adaptive_avg_pool2d``: a 4-D input, an int
    pair (``None`` entries already replaced by the input's size).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, output_size: Pair):
        return F.adaptive_avg_pool2d(input, output_size)  # eq. M4: y = A_H x A_Wᵀ

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, output_size = inputs
        # linear: the gradient depends only on the shapes, no tensor is saved
        ctx.input_size = tuple(input.shape[2:])
        ctx.output_size = output_size
        ctx.channels_last = is_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return None, None
        grad_input = spread(grad_output, ctx.input_size)  # eq. M5: ∂e/∂x = A_Hᵀ δ A_W
        # torch pools to 1 × 1 as a mean over H and W, whose gradient (an expanded δ) comes back contiguous
        return in_layout(grad_input, ctx.channels_last and ctx.output_size != (1, 1)), None

    @staticmethod
    def jvp(ctx, input_t, _):
        return pool(input_t, ctx.output_size)  # eq. M4, linear: the tangent is pooled alike


@with_direct_call
class AdaptiveAvgPool2dInputGradFunction(Function):
    """The input gradient of adaptive mean pooling as a Function of δ (eq. M5): A_Hᵀ δ A_W over an ``input_size``
    map. Linear in δ: its backward is the pooling (eq. M4) of the incoming gradient to δ's size."""

    generate_vmap_rule = True

    @staticmethod
    def forward(delta, input_size: Pair):
        if delta.dtype in (torch.float16, torch.bfloat16):  # half precision: summed in float32, as torch's
            return AdaptiveAvgPool2dInputGradFunction.forward(opmath(delta), input_size).to(delta.dtype)
        H_out, W_out = delta.shape[-2:]
        (H, W) = input_size
        if is_literal() or 0 in (H_out, W_out):
            # as written: each input receives δ_ij / (|window i|·|window j|) from every window holding it
            return spread_along(spread_along(delta, 2, H), 3, W)  # eq. M5: A_Hᵀ δ A_W
        if (H_out, W_out) == (1, 1):
            # one window, the whole map (global average pooling): every input receives δ / (H·W)
            return (delta / (H * W)).expand(*delta.shape[:-2], H, W).contiguous()  # eq. M5, A_H = 1ᵀ/H
        if H % H_out == 0 and W % W_out == 0:
            # equal, disjoint windows: mean pooling's upsampling (Note B eq. 32/52) with kernel H/H_out × W/W_out
            kernel = (H // H_out, W // W_out)
            return upsample(delta / (kernel[0] * kernel[1]), kernel, input_size)  # eq. M5, disjoint windows
        return spread_along(spread_along(delta, 2, H), 3, W)  # eq. M5: A_Hᵀ δ A_W

    @staticmethod
    def setup_context(ctx, inputs, output):
        delta, _ = inputs
        ctx.delta_size = tuple(delta.shape[-2:])
        ctx.input_size = inputs[1]
        ctx.channels_last = is_channels_last(delta)

    @staticmethod
    def backward(ctx, grad):
        grad_delta = None
        if ctx.needs_input_grad[0]:
            grad_delta = in_layout(pool(grad, ctx.delta_size), ctx.channels_last)  # eq. M4: the transpose of M5
        return grad_delta, None

    @staticmethod
    def jvp(ctx, delta_t, _):
        return spread(delta_t, ctx.input_size)  # eq. M5, linear: the tangent is spread alike


def spread(delta, input_size: Pair) -> torch.Tensor:
    """eq. M5 inside a backward: through ``AdaptiveAvgPool2dInputGradFunction`` when a graph of it is built."""
    return nested_apply(AdaptiveAvgPool2dInputGradFunction, delta, input_size)


def pool(input, output_size: Pair) -> torch.Tensor:
    """eq. M4 inside a backward or a tangent: through ``AdaptiveAvgPool2dFunction`` when a graph of it is built."""
    return nested_apply(AdaptiveAvgPool2dFunction, input, output_size)
