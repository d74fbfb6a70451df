"""The convolution's two gradients, each in equivalent formulations of one equation, and which one runs.

Plain tensor code, no autograd: ``bp_torch.autograd.conv`` wraps :func:`input_grad` and :func:`weight_grad` in
Functions whose backward is again one of these equations, so every order of derivative is hand-written. Every
formulation computes the same sum; they differ in speed only (benchmarks/README.md), and the tests check each one
against native autograd, gradcheck and gradgradcheck.

What runs (mode from :func:`bp_torch.formulas`; *fast* is the default):

============  ==============================  =====================================  ===================================
gradient      formulation                     equation, as computed                  runs when
============  ==============================  =====================================  ===================================
∂e/∂x         ``flipped_correlation``         Note A eq. 17/35: δ, zeros inserted    *literal*: always. *fast*: stride 1
                                              for the stride, fully padded,          and padding p = d·(k−1) − p, i.e.
                                              correlated with rot180(k), channels    'same' (3x3 pad 1, 1x1): no zeros,
                                              swapped                                no extra padding to insert
∂e/∂x         ``transposed_convolution``      Note A eq. 14: each δ_pq scattered     *fast*: every other shape — LeNet's
                                              onto the inputs its window read        C2 (5x5 'valid'), any stride
∂e/∂k         ``batch_as_channels``           Note B eq. 40: one correlation of x    *literal*: always. *fast*: under
                                              with δ, the batch as channels          2^22 multiply-adds per kernel tap
                                                                                     — LeNet's C1 and C2
∂e/∂k         ``per_tap``                     Note B eq. 40, one tap (u, v) at a     *fast*: the larger shapes (ResNet's
                                              time: δ @ x_uv over stride phases      3x3 layers) and every 1x1 kernel
∂e/∂k         ``depthwise``                   Note B eq. 40 per (sample, channel)    *fast*: C_in = C_out = groups
============  ==============================  =====================================  ===================================

LeNet's C1 (1→6, 5x5, input 28x28) needs only ∂e/∂k (the image needs no gradient): ``batch_as_channels``.
LeNet's C2 (6→12, 5x5, input 12x12): ``transposed_convolution`` and ``batch_as_channels`` (*fast*),
``flipped_correlation`` and ``batch_as_channels`` (*literal*).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bp_torch._arguments import Pair
from bp_torch._formulas import is_literal

# Below this many multiply-adds per kernel tap, one convolution over all taps beats a matmul per tap on CPU
# (benchmarks/README.md, "Profile evidence").
TAP_MATMUL_MIN_MACS = 1 << 22


def input_grad(delta, weight, input_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂x (Note A eq. 14/17/35, Note B eq. 51) for δ of shape (N, C_out, H_out, W_out): the formulation the
    table above names."""
    if delta.numel() == 0 or weight.numel() == 0:  # no sample, or no channel: nothing to sum, as torch returns
        return delta.new_zeros((delta.shape[0], weight.shape[1] * groups, *input_size))
    name = choose_input_grad(weight.shape[2:], stride, padding, dilation)
    return INPUT_GRAD[name](delta, weight, input_size, stride, padding, dilation, groups)


def weight_grad(input, delta, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂k (Note B eq. 40/59): Δk[o, i, u, v] = Σ_n Σ_pq x[n, i, p·s + u·d − p, q·s + v·d − p] δ[n, o, p, q]."""
    if delta.numel() == 0 or input.numel() == 0:
        return input.new_zeros((delta.shape[1], input.shape[1] // groups, *kernel_size))
    name = choose_weight_grad(input.shape, delta.shape, kernel_size, groups)
    return WEIGHT_GRAD[name](input, delta, kernel_size, stride, padding, dilation, groups)


def choose_input_grad(kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> str:
    if is_literal():
        return "flipped_correlation"
    full = [d * (k - 1) - p for k, p, d in zip(kernel_size, padding, dilation)]  # a 'full' correlation's padding
    return "flipped_correlation" if stride == (1, 1) and list(padding) == full else "transposed_convolution"


def choose_weight_grad(input_shape, delta_shape, kernel_size: Pair, groups: int) -> str:
    if is_literal():
        return "batch_as_channels"
    N, C_in = input_shape[:2]
    C_out, H_out, W_out = delta_shape[1:]
    if C_in == C_out == groups:
        return "depthwise"
    if tuple(kernel_size) == (1, 1):
        # one tap, one matrix product; batch_as_channels would sum each entry over one window of N·H_out·W_out terms,
        # in float32 up to 6x further from float64 than native (tests/test_accuracy.py)
        return "per_tap"
    return "batch_as_channels" if N * H_out * W_out * C_out * (C_in // groups) < TAP_MATMUL_MIN_MACS else "per_tap"


def flipped_correlation(delta, weight, input_size, stride, padding, dilation, groups):
    """Note A eq. 17/35 as written: insert s − 1 zeros between δ's entries, pad it by d·(k−1) − p on every side (a
    'full' correlation), and correlate with the rot180 kernel, its in/out channels swapped within each group."""
    C_out, C_in_g, kh, kw = weight.shape
    G = groups
    w_rot = weight.flip(2, 3)  # Note A eq. 17: w_{−i, −j}, the rot180 kernel
    # Note A eq. 35: the sum runs over the output channels, so they become the kernel's input channels
    w_rot = w_rot.reshape(G, C_out // G, C_in_g, kh, kw).transpose(1, 2).reshape(-1, C_out // G, kh, kw)
    full = [d * (k - 1) - p for k, p, d in zip((kh, kw), padding, dilation)]
    rest = uncovered(input_size, delta.shape[2:], (kh, kw), stride, padding, dilation)  # rows no window reached
    if stride == (1, 1) and min(full) >= 0 and rest == [0, 0]:
        return F.conv2d(delta, w_rot, None, 1, full, dilation, G)  # Note A eq. 17/35, Note B eq. 51: no zeros to insert
    d = insert_zeros(delta, stride)
    # full padding (negative: cropped, when the forward padded past the kernel's reach); the rows no window reached
    # get one more row of zeros each, so their gradient is zero (negative: a window hung past the end, ceil_mode)
    d = F.pad(d, (full[1], full[1] + rest[1], full[0], full[0] + rest[0]))
    return F.conv2d(d, w_rot, None, 1, 0, dilation, G)  # Note A eq. 17/35, Note B eq. 51: Σ δ_{p+i, q+j} w_{−i, −j}


def transposed_convolution(delta, weight, input_size, stride, padding, dilation, groups):
    """Note A eq. 14, the same sum scattered: each δ_pq adds δ_pq·w to the inputs its window read — a transposed
    convolution, which skips the zeros a strided δ would need inserted and the wide padding of a 'full'
    correlation. Rows the forward never reached get zero (output_padding)."""
    rest = uncovered(input_size, delta.shape[2:], weight.shape[2:], stride, padding, dilation)
    out_pad = [max(r, 0) for r in rest]
    grad = F.conv_transpose2d(delta, weight, None, stride, padding, out_pad, groups, dilation)  # Note A eq. 14
    # a window hanging past the input's end (avg_pool2d's ceil_mode) scattered onto rows that do not exist
    return grad[:, :, : input_size[0], : input_size[1]] if min(rest) < 0 else grad


def insert_zeros(delta: torch.Tensor, stride: Pair) -> torch.Tensor:
    """δ with s − 1 zeros between neighbouring entries along each axis (the strided positions no output read):
    (N, C, H_out, W_out) -> (N, C, (H_out − 1)·sh + 1, (W_out − 1)·sw + 1)."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return delta
    N, C, H_out, W_out = delta.shape
    spread = F.pad(delta[:, :, :, None, :, None], (0, sw - 1, 0, 0, 0, sh - 1))  # (N, C, H_out, sh, W_out, sw)
    return spread.reshape(N, C, H_out * sh, W_out * sw)[:, :, : (H_out - 1) * sh + 1, : (W_out - 1) * sw + 1]


def uncovered(input_size, output_size, kernel_size, stride, padding, dilation) -> list[int]:
    """Per side, the input rows past the last window's reach; negative when a window hangs past the end."""
    return [
        L - ((Lo - 1) * s - 2 * p + d * (k - 1) + 1)
        for L, Lo, k, s, p, d in zip(input_size, output_size, kernel_size, stride, padding, dilation)
    ]


def batch_as_channels(input, delta, kernel_size, stride, padding, dilation, groups):
    """Note B eq. 40 as one correlation of x with δ in which the batch plays the channels: the forward's stride
    becomes the dilation, its dilation the stride; rows past the last full stride step reach no tap and are cropped."""
    N, C_in, H, W = input.shape
    C_out = delta.shape[1]
    G = groups
    kh, kw = kernel_size
    x = input.reshape(N, G, C_in // G, H, W).permute(2, 1, 0, 3, 4).reshape(C_in // G, G * N, H, W)
    grad = F.conv2d(x, delta.transpose(0, 1), None, dilation, padding, stride, G)  # Note B eq. 40: x ⋆ δ
    if grad.shape[2:] != (kh, kw):  # a no-op slice would be an alias, which legacy vmap cannot batch
        grad = grad[:, :, :kh, :kw]
    # back to (C_out, C_in_g, kh, kw) with the weight's own strides: a reshape, as transpose alone leaves a
    # size-1 dimension (one input channel, as C1's) a stride DDP's gradient buckets reject
    return grad.transpose(0, 1).reshape(C_out, C_in // G, kh, kw)


def depthwise(input, delta, kernel_size, stride, padding, dilation, groups):
    """Note B eq. 40 for C_in = C_out = groups: one correlation per (sample, channel), δ its kernel, summed over
    the batch."""
    N, C, H, W = input.shape
    H_out, W_out = delta.shape[2:]
    kh, kw = kernel_size
    x = input.reshape(1, N * C, H, W)
    grad = F.conv2d(x, delta.reshape(N * C, 1, H_out, W_out), None, dilation, padding, stride, N * C)  # eq. 40
    grad = grad.reshape(N, C, 1, *grad.shape[2:]).sum(0)
    return grad[..., :kh, :kw] if grad.shape[2:] != (kh, kw) else grad


def per_tap(input, delta, kernel_size, stride, padding, dilation, groups):
    """Note B eq. 40 one tap (u, v) at a time: the sum over (n, p, q) is a matrix product δ (C_out, ·) @ x_uv (·, C_in).

    No im2col copy: with x padded to a whole number of strides and split into its stride phases, every tap reads
    a phase at a fixed offset, and on a δ padded to the phase's width that read is one slice of the flattened map.
    """
    N, C_out, H_out, W_out = delta.shape
    (sh, sw), (dh, dw), G = stride, dilation, groups
    phases, Wq = stride_phases(input, stride, padding, groups)
    # δ on the phase grid: padded to width Wq, flattened, cut after its last real position
    d = F.pad(delta, (0, Wq - W_out)) if Wq != W_out else delta
    M = (H_out - 1) * Wq + W_out
    d = d.reshape(N, G, C_out // G, H_out * Wq)
    d = d[..., :M] if M != d.shape[-1] else d  # a no-op slice would be an alias, which legacy vmap cannot batch
    taps = []
    for u in range(kernel_size[0]):
        a, r = divmod(u * dh, sh)  # row p·s + u·d = (p + a)·s + r: phase r, shifted a rows
        for v in range(kernel_size[1]):
            b, t = divmod(v * dw, sw)
            x_uv, start = phases[r, t], a * Wq + b  # (N, G, C_in_g, Hq·Wq)
            x_uv = x_uv[..., start : start + M] if (start, M) != (0, x_uv.shape[-1]) else x_uv  # (N, G, C_in_g, M)
            taps.append(d @ x_uv.transpose(-1, -2))  # Note B eq. 40 at tap (u, v): Σ_pq δ x_uv, (N, G, C_out_g, C_in_g)
    grad = torch.stack(taps, -1).sum(0)  # (G, C_out_g, C_in_g, kh·kw), summed over the batch
    return grad.reshape(C_out, input.shape[1] // G, *kernel_size)


def stride_phases(input, stride: Pair, padding: Pair, groups: int) -> tuple[torch.Tensor, int]:
    """x zero-padded to a whole number of strides and split into its stride phases, with each phase's width Wq:
    (N, C_in, H, W) -> (sh, sw, N, G, C_in_g, Hq·Wq), where phase (r, t) holds the padded rows r::sh, columns t::sw."""
    N, C_in, H, W = input.shape
    (sh, sw), (ph, pw), G = stride, padding, groups
    Hq, Wq = -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)  # each stride phase is (Hq, Wq)
    extra_h, extra_w = Hq * sh - H - ph, Wq * sw - W - pw
    x = F.pad(input, (pw, extra_w, ph, extra_h)) if (ph, pw, extra_h, extra_w) != (0, 0, 0, 0) else input
    return x.reshape(N, G, C_in // G, Hq, sh, Wq, sw).permute(4, 6, 0, 1, 2, 3, 5).flatten(-2), Wq


INPUT_GRAD = {"flipped_correlation": flipped_correlation, "transposed_convolution": transposed_convolution}
WEIGHT_GRAD = {"batch_as_channels": batch_as_channels, "per_tap": per_tap, "depthwise": depthwise}

__all__ = ["input_grad", "weight_grad", "INPUT_GRAD", "WEIGHT_GRAD"]
