"""The four operations of the derivations as ``torch.autograd.Function``s whose ``backward`` is the derived formula.

Equation numbers cite the two notes summarised in ``docs/derivation.md``: Note A (Ji & Xie, fully connected to
convolutional layers) and Note B (Zhang, backpropagation in the LeNet CNN).

Every backward is written with forward tensor ops only (conv2d, matmul, pad, flip, sum ...): never autograd,
``torch.nn.grad``, ``torch.func`` or an ``aten.*_backward`` op. Where a gradient is itself a convolution
(eq. 17, 40, 51) it calls ``Conv2dFunction`` again, so second derivatives also run through this file.

Arguments arrive validated and normalised by ``bp_torch.functional``: 4-D inputs, stride/padding/dilation as int
pairs, padding symmetric (``padding='same'`` with an even kernel is padded by the caller).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

Pair = tuple[int, int]


def _conv2d(input, weight, stride: Pair, padding: Pair, dilation: Pair, groups: int) -> torch.Tensor:
    """A convolution inside a backward: through ``Conv2dFunction`` when a graph of the backward is being built
    (``create_graph=True``), so second derivatives run through the hand-derived backward again; otherwise the
    same ``torch.conv2d`` that ``Conv2dFunction.forward`` calls, without a Function's bookkeeping."""
    if torch.is_grad_enabled():
        return Conv2dFunction.apply(input, weight, None, stride, padding, dilation, groups)
    return torch.conv2d(input, weight, None, stride, padding, dilation, groups)


def _zero_insert_and_pad(delta: torch.Tensor, stride: Pair, pads: tuple[Pair, Pair]) -> torch.Tensor:
    """Insert ``stride - 1`` zeros between the rows and columns of δ, then pad (negative = crop) each side.

    A strided forward skips positions; their δ is zero (Note A eq. 14 summed over the positions that exist).
    """
    (top, bottom), (left, right) = pads
    sh, sw = stride
    if sh > 1 or sw > 1:
        N, C, Ho, Wo = delta.shape
        # (N, C, Ho, 1, Wo, 1) -> (N, C, Ho, sh, Wo, sw): each δ followed by its zeros, trailing zeros trimmed below
        delta = F.pad(delta.reshape(N, C, Ho, 1, Wo, 1), (0, sw - 1, 0, 0, 0, sh - 1)).reshape(N, C, Ho * sh, Wo * sw)
        bottom, right = bottom - (sh - 1), right - (sw - 1)
    if top == bottom == left == right == 0:
        return delta
    return F.pad(delta, (left, right, top, bottom))


def conv2d_input_grad(
    grad_output: torch.Tensor,
    weight: torch.Tensor,
    input_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
) -> torch.Tensor:
    """∂e/∂x: the full cross-correlation of δ with the rot180 kernel, in/out channels swapped.

    Note A eq. 17 (one channel) and eq. 35 (M in, N out channels), Note B eq. 51: ΔS = Σ_q ΔC_q * rot180(k_q).
    Stride enters as zeros inserted into δ, dilation as the same dilation of the flipped kernel, and the forward's
    padding as a crop of the full correlation.
    """
    C_out, C_in_g, kh, kw = weight.shape
    G = groups
    # rot180 and swap channels per group: (G*C_out_g, C_in_g, kh, kw) -> (G*C_in_g, C_out_g, kh, kw)
    w_rot = weight.flip(2, 3).reshape(G, C_out // G, C_in_g, kh, kw).transpose(1, 2).reshape(-1, C_out // G, kh, kw)
    pads = []
    for L_in, L_out, k, s, p, d in zip(input_size, grad_output.shape[2:], (kh, kw), stride, padding, dilation):
        reach = d * (k - 1)  # a 'full' correlation pads δ by the dilated kernel's reach ...
        before = reach - p  # ... less the forward's padding, which is cropped away
        after = L_in + p - (L_out - 1) * s - 1  # rows the forward never reached get zero gradient
        pads.append((before, after))
    (top, bottom), (left, right) = pads
    if stride == (1, 1) and top == bottom >= 0 and left == right >= 0:
        # the common case needs no copy of δ: let the convolution pad it
        return _conv2d(grad_output, w_rot, (1, 1), (top, left), dilation, G)
    delta = _zero_insert_and_pad(grad_output, stride, tuple(pads))
    return _conv2d(delta, w_rot, (1, 1), (0, 0), dilation, G)


def conv2d_weight_grad(
    input: torch.Tensor,
    grad_output: torch.Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
) -> torch.Tensor:
    """∂e/∂k: the cross-correlation of the input with δ, summed over the batch.

    Note B eq. 40/59: Δk = rot180(S) * ΔC_σ, i.e. (as a cross-correlation, Note A eq. 10)
    Δk[o, i, u, v] = Σ_n Σ_pq x[n, i, p·s + u·d, q·s + v·d] δ[n, o, p, q].
    Written as one convolution in which the batch plays the channels, the forward's stride becomes the dilation
    and its dilation the stride.
    """
    N, C_in, H, W = input.shape
    G = groups
    # (N, G*C_in_g, H, W) -> (C_in_g, G*N, H, W): per group, the batch becomes the channels
    x = input.reshape(N, G, C_in // G, H, W).permute(2, 1, 0, 3, 4).reshape(C_in // G, G * N, H, W)
    delta = grad_output.transpose(0, 1)  # (C_out, N, H_out, W_out): δ is the kernel
    grad = _conv2d(x, delta, dilation, padding, stride, G)  # (C_in_g, C_out, >=kh, >=kw)
    kh, kw = kernel_size
    # rows past the last full stride step reach no kernel tap: crop them, then back to (C_out, C_in_g, kh, kw)
    if grad.shape[2:] != (kh, kw):
        grad = grad[:, :, :kh, :kw]
    return grad.transpose(0, 1)


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
        stride, padding, dilation, groups = ctx.options
        grad_input = grad_weight = grad_bias = None
        if grad_output.shape[0] == 0:  # empty batch: every gradient is zero
            return _empty_batch_grads(ctx, grad_output, input, weight)
        if ctx.needs_input_grad[0]:
            grad_input = conv2d_input_grad(grad_output, weight, ctx.input_size, stride, padding, dilation, groups)
            if ctx.input_channels_last:
                grad_input = grad_input.contiguous(memory_format=torch.channels_last)
        if ctx.needs_input_grad[1]:
            grad_weight = conv2d_weight_grad(input, grad_output, ctx.kernel_size, stride, padding, dilation, groups)
            grad_weight = grad_weight.contiguous(
                memory_format=torch.channels_last if ctx.weight_channels_last else torch.contiguous_format
            )
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))  # Note B eq. 45/64: Δb = Σ ΔC_σ
        return grad_input, grad_weight, grad_bias, None, None, None, None


def _channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is laid out channels_last (and not also plainly contiguous, as 1x1 maps are)."""
    try:
        return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # vmap cannot query memory formats; its per-sample tensors have none of their own
        return False


def _empty_batch_grads(ctx, grad_output, input, weight):
    C_out = grad_output.shape[1]
    N = grad_output.shape[0]
    needs = ctx.needs_input_grad
    grad_input = grad_output.new_zeros((N, weight.shape[1] * ctx.options[3], *ctx.input_size)) if needs[0] else None
    grad_weight = input.new_zeros((C_out, input.shape[1] // ctx.options[3], *ctx.kernel_size)) if needs[1] else None
    grad_bias = grad_output.new_zeros(C_out) if needs[2] else None
    return grad_input, grad_weight, grad_bias, None, None, None, None


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
            # disjoint windows: spreading is upsampling, δ ⊗ 1_{kh×kw} (Note B eq. 32/52)
            up = delta[:, :, :, None, :, None].expand(N, C, H_out, kh, W_out, kw).reshape(N, C, H_out * kh, W_out * kw)
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
        return grad_output * out * (1 - out)  # Note B eq. 37/57: ΔC_σ = ΔC ⊙ C(1−C)


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
