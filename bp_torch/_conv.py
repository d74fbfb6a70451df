"""Equivalent formulations of the two convolution gradients, chosen per shape: plain tensor code, no autograd.

``bp_torch.autograd`` wraps each in a Function whose backward is again one of the three convolution equations
(eq. 10, 17, 40), so every order of derivative runs through hand-written code. The choice between formulations
is speed only; each one computes the same equation, named in its comment, and the tests compare them all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Pair = tuple[int, int]

# Below this many multiply-adds per kernel tap, one convolution over all taps beats a matmul per tap (measured on
# CPU with the LeNet's and ResNet-like shapes, see benchmarks/).
TAP_MATMUL_MIN_MACS = 1 << 22


def input_grad(
    delta: torch.Tensor,
    weight: torch.Tensor,
    input_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
) -> torch.Tensor:
    """∂e/∂x (Note A eq. 14/17/35, Note B eq. 51) for δ of shape (N, C_out, H_out, W_out)."""
    C_out, C_in_g, kh, kw = weight.shape
    G = groups
    full = [d * (k - 1) - p for k, p, d in zip((kh, kw), padding, dilation)]  # a 'full' correlation's padding
    if stride == (1, 1) and list(padding) == full:
        # eq. 17 as written: correlate δ with the rot180 kernel, channels swapped per group; when its padding
        # equals the forward's (3x3 pad 1, 1x1 ...) this is as fast as the transposed form and needs no crop
        w_rot = weight.flip(2, 3).reshape(G, C_out // G, C_in_g, kh, kw).transpose(1, 2).reshape(-1, C_out // G, kh, kw)
        return F.conv2d(delta, w_rot, None, 1, padding, dilation, G)
    # Note A eq. 14, the same sum scattered: each δ_pq adds δ_pq·w to the inputs its window read — a transposed
    # convolution. It skips the zeros a strided δ would need inserted and the wide padding of a 'full' correlation
    # (3x faster than eq. 17 for LeNet's 5x5 'valid' C2). Rows the forward never reached get zero (output_padding).
    out_pad = uncovered(input_size, delta.shape[2:], (kh, kw), stride, padding, dilation)
    grad = F.conv_transpose2d(delta, weight, None, stride, padding, [max(o, 0) for o in out_pad], G, dilation)
    # a window hanging past the input's end (avg_pool2d's ceil_mode) scattered onto rows that do not exist
    return grad[:, :, : input_size[0], : input_size[1]] if min(out_pad) < 0 else grad


def uncovered(input_size, output_size, kernel_size, stride, padding, dilation) -> list[int]:
    """Per side, the input rows past the last window's reach; negative when a window hangs past the end."""
    return [L - ((Lo - 1) * s - 2 * p + d * (k - 1) + 1) for L, Lo, k, s, p, d in zip(
        input_size, output_size, kernel_size, stride, padding, dilation)]  # fmt: skip


def weight_grad(
    input: torch.Tensor,
    delta: torch.Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
) -> torch.Tensor:
    """∂e/∂k (Note B eq. 40/59): Δk[o, i, u, v] = Σ_n Σ_pq x[n, i, p·s + u·d, q·s + v·d] δ[n, o, p, q]."""
    N, C_in, H, W = input.shape
    C_out, H_out, W_out = delta.shape[1:]
    G = groups
    kh, kw = kernel_size
    if N == 0:
        return input.new_zeros((C_out, C_in // G, kh, kw))
    if C_in == C_out == G:
        # depthwise: one convolution per (sample, channel), δ its kernel, then summed over the batch
        x = input.reshape(1, N * C_in, H, W)
        grad = F.conv2d(x, delta.reshape(N * C_out, 1, H_out, W_out), None, dilation, padding, stride, N * G)
        grad = grad.reshape(N, C_out, 1, *grad.shape[2:]).sum(0)
        return grad[..., :kh, :kw] if grad.shape[2:] != (kh, kw) else grad
    if N * H_out * W_out * C_out * (C_in // G) < TAP_MATMUL_MIN_MACS:
        return _weight_grad_batch_as_channels(input, delta, kernel_size, stride, padding, dilation, groups)
    return _weight_grad_per_tap(input, delta, kernel_size, stride, padding, dilation, groups)


def _weight_grad_batch_as_channels(input, delta, kernel_size, stride, padding, dilation, groups) -> torch.Tensor:
    """eq. 40 as one convolution in which the batch plays the channels: the forward's stride becomes the
    dilation, its dilation the stride; rows past the last full stride step reach no tap and are cropped."""
    N, C_in, H, W = input.shape
    C_out = delta.shape[1]
    G = groups
    kh, kw = kernel_size
    x = input.reshape(N, G, C_in // G, H, W).permute(2, 1, 0, 3, 4).reshape(C_in // G, G * N, H, W)
    grad = F.conv2d(x, delta.transpose(0, 1), None, dilation, padding, stride, G)  # (C_in_g, C_out, >=kh, >=kw)
    if grad.shape[2:] != (kh, kw):  # a no-op slice would be an alias, which legacy vmap cannot batch
        grad = grad[:, :, :kh, :kw]
    # back to (C_out, C_in_g, kh, kw) with the weight's own strides: a reshape, as transpose alone leaves a
    # size-1 dimension (one input channel, as C1's) a stride DDP's gradient buckets reject
    return grad.transpose(0, 1).reshape(C_out, C_in // G, kh, kw)


def _weight_grad_per_tap(input, delta, kernel_size, stride, padding, dilation, groups) -> torch.Tensor:
    """eq. 40 one tap (u, v) at a time: the sum over (n, p, q) is a matrix product δ (C_out, ·) @ x_uv (·, C_in).

    No im2col copy: with x padded to a whole number of strides and split into its stride phases, every tap reads
    a phase at a fixed offset, and on a δ padded to the phase's width that read is one slice of the flattened map.
    """
    N, C_out, H_out, W_out = delta.shape
    (sh, sw), (dh, dw), G = stride, dilation, groups
    phases, Wq = stride_phases(input, stride, padding, groups)
    # δ on the phase grid: padded to width Wq, flattened, cut after its last real position
    d = F.pad(delta, (0, Wq - W_out)) if Wq != W_out else delta
    M = (H_out - 1) * Wq + W_out
    d = d.reshape(N, G, C_out // G, H_out * Wq)[..., :M]
    taps = []
    for u in range(kernel_size[0]):
        a, r = divmod(u * dh, sh)  # row p·s + u·d = (p + a)·s + r: phase r, shifted a rows
        for v in range(kernel_size[1]):
            b, t = divmod(v * dw, sw)
            x_uv = phases[r, t, ..., a * Wq + b : a * Wq + b + M]  # (N, G, C_in_g, M)
            taps.append(d @ x_uv.transpose(-1, -2))  # (N, G, C_out_g, C_in_g)
    grad = torch.stack(taps, -1).sum(0)  # (G, C_out_g, C_in_g, kh·kw)
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
