"""Mean pooling with the backward of Note B eq. 32/52: δ spread evenly over each window; its jvp pools ẋ."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._arguments import Pair
from bp_torch._formulas import is_literal
from bp_torch._function import in_layout, is_channels_last, nested_apply, opmath, with_direct_call
from bp_torch.autograd.conv import conv2d_input_grad


def avg_pool2d_divisor(
    input_size: Pair,
    output_size: Pair,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    count_include_pad: bool,
    like: torch.Tensor,
) -> torch.Tensor:
    """The number each window's sum is divided by, as an (H_out, W_out) map (PyTorch's rule, separable in h, w).

    A window is clipped to the padded input; with ``count_include_pad=False`` also to the input itself.
    """
    sizes = []
    for L, L_out, k, s, p in zip(input_size, output_size, kernel_size, stride, padding):
        start = torch.arange(L_out, device=like.device) * s - p
        end = torch.clamp(start + k, max=L + p)
        if not count_include_pad:
            start, end = start.clamp(min=0), end.clamp(max=L)
        sizes.append((end - start).to(like.dtype))
    return sizes[0][:, None] * sizes[1][None, :]


@with_direct_call
class AvgPool2dFunction(Function):
    """Mean pooling; backward spreads δ evenly over each window (Note B eq. 32, 52, any kernel/stride/padding).

    Arguments arrive validated and normalised by ``bp_torch.functional.avg_pool2d``: a 4-D input, int pairs.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode, count_include_pad, divisor_override):
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = inputs
        # the backward reads no tensor: pooling is linear, its gradient depends only on the shapes
        ctx.input_size = tuple(input.shape[2:])
        ctx.options = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        ctx.channels_last = is_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = ctx.options
        (kh, kw), (H_out, W_out) = kernel_size, grad_output.shape[2:]
        dtype, grad_output = grad_output.dtype, opmath(grad_output)  # half precision: summed in float32, as torch
        # each output is its window's sum over a divisor, so each input in the window receives δ / divisor
        if divisor_override:
            delta = grad_output / divisor_override
        elif count_include_pad and not ceil_mode:
            delta = grad_output / (kh * kw)  # every window is whole: Note B eq. 52's ¼ for 2x2
        else:
            divisor = avg_pool2d_divisor(
                ctx.input_size, (H_out, W_out), kernel_size, stride, padding, count_include_pad, grad_output
            )
            delta = grad_output / divisor
        if stride == kernel_size and padding == (0, 0):
            grad_input = upsample(delta, kernel_size, ctx.input_size)
        else:
            # overlapping windows: the same spreading is the input gradient of a depthwise convolution whose
            # kernel is all ones (Note A eq. 17 with w = 1: rot180 of ones is ones)
            ones = grad_output.new_ones((delta.shape[1], 1, kh, kw))
            grad_input = conv2d_input_grad(delta, ones, ctx.input_size, stride, padding, (1, 1), delta.shape[1])
        return in_layout(grad_input.to(dtype), ctx.channels_last), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, *_):
        # pooling is linear: its derivative in any direction is the pooling of that direction
        return nested_apply(AvgPool2dFunction, input_t, *ctx.options)  # eq. J4: ṡ = pool(ẋ)


def upsample(delta: torch.Tensor, kernel_size: Pair, input_size: Pair) -> torch.Tensor:
    """Disjoint windows: each input receives its window's δ, δ ⊗ 1_{kh×kw} (Note B eq. 32/52). Rows no window covered
    get zero; ceil_mode windows hanging past the edge are cropped."""
    N, C, H_out, W_out = delta.shape
    (kh, kw), (H, W) = kernel_size, input_size
    if is_literal():
        up = delta.repeat_interleave(kh, 2).repeat_interleave(kw, 3)  # Note B eq. 32/52: δ ⊗ 1_{kh×kw}
    else:
        # the same upsampling as two copies, each column kw times then each widened row kh times: one 6-D broadcast
        # copy is slower on CPU (benchmarks/README.md, "Profile evidence")
        rows = delta[..., None].expand(N, C, H_out, W_out, kw).reshape(N, C, H_out, 1, W_out * kw)
        up = rows.expand(N, C, H_out, kh, W_out * kw).reshape(N, C, H_out * kh, W_out * kw)  # Note B eq. 32/52
    return F.pad(up, (0, W - W_out * kw, 0, H - H_out * kh)) if (H, W) != up.shape[2:] else up
