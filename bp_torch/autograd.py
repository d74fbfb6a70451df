"""The four operations of the derivations as ``torch.autograd.Function``s whose ``backward`` is the derived formula.

Equation numbers cite the two notes summarised in ``docs/derivation.md``: Note A (Ji & Xie, fully connected to
convolutional layers) and Note B (Zhang, backpropagation in the LeNet CNN).

Every backward is written with forward tensor ops only (conv2d, matmul, pad, flip, sum ...): never autograd,
``torch.nn.grad``, ``torch.func`` or an ``aten.*_backward`` op. A convolution's two gradients (eq. 17, 40, 51) are
Functions too, each backward made of the other two and ``Conv2dFunction``, so derivatives of every order run
through this file; ``bp_torch._conv`` picks, per shape, among equivalent formulations of each equation.

Arguments arrive validated and normalised by ``bp_torch.functional``: 4-D inputs, stride/padding/dilation as int
pairs, padding symmetric (``padding='same'`` with an even kernel is padded by the caller).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch import _conv
from bp_torch._function import apply, with_combined_twin

Pair = tuple[int, int]


def conv2d_input_grad(delta, weight, input_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂x (Note A eq. 17/35, Note B eq. 51): through ``Conv2dInputGradFunction`` when a graph of the backward is
    being built (``create_graph=True``), so higher derivatives stay hand-written; otherwise the same tensor code
    without a Function's bookkeeping (and without the aliases legacy vmap cannot batch)."""
    if torch.is_grad_enabled():
        return apply(Conv2dInputGradFunction, delta, weight, input_size, stride, padding, dilation, groups)
    return _conv.input_grad(delta, weight, input_size, stride, padding, dilation, groups)


def conv2d_weight_grad(input, delta, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂k (Note B eq. 40/59), through ``Conv2dWeightGradFunction`` only when a graph is being built."""
    if torch.is_grad_enabled():
        return apply(Conv2dWeightGradFunction, input, delta, kernel_size, stride, padding, dilation, groups)
    return _conv.weight_grad(input, delta, kernel_size, stride, padding, dilation, groups)


def _conv2d(input, weight, stride: Pair, padding: Pair, dilation: Pair, groups: int) -> torch.Tensor:
    """The forward correlation (Note A eq. 10) inside a backward, through ``Conv2dFunction`` only when a graph is
    being built."""
    if torch.is_grad_enabled():
        return apply(Conv2dFunction, input, weight, None, stride, padding, dilation, groups)
    return torch.conv2d(input, weight, None, stride, padding, dilation, groups)


@with_combined_twin
class Conv2dFunction(Function):
    """2-D cross-correlation (Note A eq. 10) with the backward of Note A eq. 17/35 and Note B eq. 40, 45, 51."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, stride: Pair, padding: Pair, dilation: Pair, groups: int):
        return torch.conv2d(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups = inputs
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        # ∂e/∂x needs only the kernel, ∂e/∂k only the input: save what the requested gradients read
        ctx.save_for_backward(input if needs_weight else None, weight if needs_input else None)
        ctx.input_size = tuple(input.shape[2:])
        ctx.kernel_size = tuple(weight.shape[2:])
        ctx.options = (stride, padding, dilation, groups)
        ctx.input_channels_last = _channels_last(input)
        ctx.weight_channels_last = _channels_last(weight)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Note A eq. 17/35, Note B eq. 51: the full correlation of δ with the rot180 kernel
            grad_input = conv2d_input_grad(grad_output, weight, ctx.input_size, *ctx.options)
            grad_input = _layout(grad_input, ctx.input_channels_last)
        if ctx.needs_input_grad[1]:
            # Note B eq. 40/59: Δk = rot180(S) * ΔC_σ, the correlation of the input with δ over the batch
            grad_weight = conv2d_weight_grad(input, grad_output, ctx.kernel_size, *ctx.options)
            grad_weight = _layout(grad_weight, ctx.weight_channels_last)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))  # Note B eq. 45/64: Δb = Σ ΔC_σ
        return grad_input, grad_weight, grad_bias, None, None, None, None


@with_combined_twin
class Conv2dInputGradFunction(Function):
    """∂e/∂x = conv2d's input gradient (Note A eq. 17/35), as a Function of (δ, k) so that it too has a backward.

    The three are one trilinear form T(x, k, δ) = Σ δ ⊙ conv2d(x, k) differentiated in each slot: conv2d = ∂T/∂δ,
    this = ∂T/∂x, the weight gradient = ∂T/∂k. The backward of each is therefore the other two.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(delta, weight, input_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
        return _conv.input_grad(delta, weight, input_size, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        delta, weight, input_size, *options = inputs
        needs_delta, needs_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(delta if needs_weight else None, weight if needs_delta else None)
        ctx.kernel_size = tuple(weight.shape[2:])
        ctx.options = tuple(options)
        ctx.layouts = (_channels_last(delta), _channels_last(weight))
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
            # ∂T/∂δ: the forward correlation (Note A eq. 10) of the incoming gradient with k
            grad_delta = _layout(_conv2d(grad, weight, *ctx.options), ctx.layouts[0])
        if ctx.needs_input_grad[1]:
            # ∂T/∂k: Note B eq. 40 with the incoming gradient in the input's place
            grad_weight = conv2d_weight_grad(grad, delta, ctx.kernel_size, *ctx.options)
            grad_weight = _layout(grad_weight, ctx.layouts[1])
        return grad_delta, grad_weight, None, None, None, None, None


@with_combined_twin
class Conv2dWeightGradFunction(Function):
    """∂e/∂k = conv2d's weight gradient (Note B eq. 40/59) as a Function of (x, δ); see Conv2dInputGradFunction."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, delta, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
        return _conv.weight_grad(input, delta, kernel_size, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, delta, kernel_size, *options = inputs
        needs_input, needs_delta = ctx.needs_input_grad[:2]
        ctx.save_for_backward(input if needs_delta else None, delta if needs_input else None)
        ctx.input_size = tuple(input.shape[2:])
        ctx.options = tuple(options)
        ctx.layouts = (_channels_last(input), _channels_last(delta))

    @staticmethod
    def backward(ctx, grad):
        input, delta = ctx.saved_tensors
        grad_input = grad_delta = None
        if ctx.needs_input_grad[0]:
            # ∂T/∂x: Note A eq. 17 with the incoming gradient as the kernel
            grad_input = conv2d_input_grad(delta, grad, ctx.input_size, *ctx.options)
            grad_input = _layout(grad_input, ctx.layouts[0])
        if ctx.needs_input_grad[1]:
            # ∂T/∂δ: the forward correlation (Note A eq. 10) of x with the incoming gradient as the kernel
            grad_delta = _layout(_conv2d(input, grad, *ctx.options), ctx.layouts[1])
        return grad_input, grad_delta, None, None, None, None, None


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A gradient in its input's layout (channels_last or plain contiguous)."""
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is laid out channels_last (and not also plainly contiguous, as 1x1 maps are)."""
    try:
        return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # vmap cannot query memory formats; its per-sample tensors have none of their own
        return False


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


@with_combined_twin
class AvgPool2dFunction(Function):
    """Mean pooling; backward spreads δ evenly over each window (Note B eq. 32, 52, any kernel/stride/padding)."""

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
        ctx.input_channels_last = _channels_last(input)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = ctx.options
        (H, W), (kh, kw) = ctx.input_size, kernel_size
        N, C, H_out, W_out = grad_output.shape
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
            # disjoint windows: spreading is upsampling, δ ⊗ 1_{kh×kw} (Note B eq. 32/52); written as two copies,
            # each column kw times then each widened row kh times: one 6-D broadcast copy is 2-4x slower on CPU
            rows = delta[..., None].expand(N, C, H_out, W_out, kw).reshape(N, C, H_out, 1, W_out * kw)
            up = rows.expand(N, C, H_out, kh, W_out * kw).reshape(N, C, H_out * kh, W_out * kw)
            # rows no window covered get zero; ceil_mode windows hanging past the edge are cropped
            grad_input = F.pad(up, (0, W - W_out * kw, 0, H - H_out * kh)) if (H, W) != up.shape[2:] else up
        else:
            # overlapping windows: the same spreading is the input gradient of a depthwise convolution whose
            # kernel is all ones (Note A eq. 17 with w = 1: rot180 of ones is ones)
            ones = grad_output.new_ones((C, 1, kh, kw))
            grad_input = conv2d_input_grad(delta, ones, ctx.input_size, stride, padding, (1, 1), C)
        if ctx.input_channels_last:
            grad_input = grad_input.contiguous(memory_format=torch.channels_last)
        return grad_input, None, None, None, None, None, None


@with_combined_twin
class SigmoidFunction(Function):
    """σ(x) = 1 / (1 + e^-x); backward δ·σ(1−σ) from the saved output (Note B eq. 37, 57)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input):
        return torch.sigmoid(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)  # σ' = σ(1−σ) needs only the output: nothing is recomputed

    @staticmethod
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        # Note B eq. 37/57: ΔC_σ = ΔC ⊙ C(1−C), as t − t·C with t = ΔC ⊙ C: two passes over memory, not three
        t = grad_output * out
        return torch.addcmul(t, t, out, value=-1)


@with_combined_twin
class LinearFunction(Function):
    """s = x Wᵀ + b: Note A eq. 5 (s = Wᵀx) with PyTorch's (out, in) weight, i.e. Note A's W transposed.

    Any leading dimensions of ``x`` are batch dimensions; their gradients sum over them.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias):
        return F.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(input if needs_weight else None, weight if needs_input else None)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Note A eq. 8 / Note B eq. 30: Δf = Wᵀ Δŷ — with PyTorch's (out, in) weight that is δ @ W
            grad_input = grad_output @ weight
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            out_features = grad_output.shape[-1]
            delta = grad_output.reshape(-1, out_features)  # every leading dimension is a batch dimension
            if ctx.needs_input_grad[1]:
                # Note A eq. 7 / Note B eq. 19: ∂e/∂W = x δᵀ, summed over the batch; here (out, in) = δᵀ x
                grad_weight = delta.T @ input.reshape(-1, input.shape[-1])
            if ctx.needs_input_grad[2]:
                grad_bias = delta.sum(0)  # Note B eq. 24: Δb = Δŷ, summed over the batch
        return grad_input, grad_weight, grad_bias
