"""The convolution's two gradients, each in equivalent formulations of one equation, and which one runs.

Plain tensor code, no autograd: ``bp_torch.autograd.conv`` wraps :func:`input_grad` and :func:`weight_grad` in
Functions whose backward is again one of these equations, so every order of derivative is hand-written. Every
formulation computes the same sum; they differ in speed only (benchmarks/README.md), and the tests check each one
against native autograd, gradcheck and gradgradcheck, on a grid of options and on the shapes where it is chosen.

What runs (mode from :func:`bp_torch.formulas`; *fast* is the default). C_in_g, C_out_g: channels per group;
L = H_out·W_out, the positions of the output map.

========  ==============================  ========================================  ==================================
gradient  formulation                     equation, as computed                     runs when
========  ==============================  ========================================  ==================================
∂e/∂x     ``flipped_correlation``         Note A eq. 17/35: δ, zeros inserted for   *literal*: always
                                          the stride, fully padded, correlated
                                          with rot180(k), channels swapped
∂e/∂x     ``transposed_convolution``      Note A eq. 14: each δ_pq scattered onto   *fast*: always — no zeros to
                                          the inputs its window read (1x1 layers    insert, no flipped copy of the
                                          strided with a kernel of at most 2^18     kernel
                                          weights or δ's size, or on maps of 64+
                                          positions: the channel product, written
                                          at the strided positions; stride 1 on
                                          maps of 16+ positions with at most 2^21
                                          multiply-adds, 2^22 on 64+: one product
                                          wᵀδ per sample)
∂e/∂k     ``depthwise``                   Note B eq. 40 per (sample, channel)       *fast*: C_in = C_out = groups,
                                                                                    unless the padding is as wide as δ
∂e/∂k     ``unfold_per_sample``           Note A eq. 7 on each window (section      *fast*: 1x1 with C_out_g·C_in_g <
                                          3.3) = Note B eq. 40: per sample one      L·(C_in_g + C_out_g) (the partial
                                          product (C_out × L)·(L × C_in_g·k²) of δ  sums are the smaller copy); k > 1
                                          and the im2col columns, summed over the   with 8·C_in_g ≤ C_out_g (stems)
                                          batch (one group, k > 1, on oneDNN: a
                                          few samples a product, 2^22
                                          multiply-adds each)
∂e/∂k     ``unfold_gemm``                 the same sum as one product (C_out ×      *fast*: every other 1x1 but the
                                          N·L)·(N·L × C_in_g·k²), on oneDNN where   large ones below (small maps, many
                                          ``bp_torch._gemm`` says so (float32 on    channels); strided k > 1 whose Δk
                                          the CPU)                                  outweighs x and δ 8 to 1. On
                                                                                    oneDNN, before every rule below
                                                                                    and the two above: 1x1 with
                                                                                    C_out·C_in·N·L ≥ 2^22; k > 1, one
                                                                                    group, L > 16, C_out ≥ 192 and
                                                                                    at most 6·2^20 im2col elements;
                                                                                    stems of one group whose product
                                                                                    per sample is under 2^21; strided
                                                                                    k > 1 of one group with at most
                                                                                    6·2^20 im2col elements (more: a
                                                                                    few samples a product, as above)
∂e/∂k     ``output_channels_as_batch``    Note B eq. 40 with S and ΔC_σ swapped: δ  *fast*: k > 1, stride 1, one
                                          correlated with x is Δk rotated 180°      group, C_in_g ≥ 16, and C_in ≥
                                          (rotate the operands or the result)       C_out or Δk as large as x and δ
                                                                                    (ResNet's and VGG's 3x3,
                                                                                    DenseNet's growth layers)
∂e/∂k     ``input_as_kernel``             Note B eq. 40 as one transposed           *fast*: as the row above, on maps
                                          convolution (A 14's primitive): rotated   of at most 16 positions (ResNet's
                                          δ scattered through x as the kernel       and VGG's last layers)
∂e/∂k     ``batch_as_channels``           Note B eq. 40: one correlation of x with  *literal*: always. *fast*: every
                                          δ, the batch as channels                  other k > 1 (LeNet's C1 and C2,
                                                                                    strided and grouped layers); 1x1
                                                                                    with L ≥ 64 and C_out·C_in ≥ 8192
========  ==============================  ========================================  ==================================

*autotune* times every formulation of the gradient (``depthwise`` only where it applies) at the first call with
each shape, on the device at hand, and caches the fastest in :data:`TUNED`; under torch.compile or a torch.func
transform it runs *fast*'s choice. The fast mode's rules are a cost model measured on a CPU inside real training
steps (``benchmarks/formulations_in_step.py`` times every formulation on the x and δ of each convolution of a
converted model's step: alone, with fresh memory and cold caches, the ranking differs); on another device, autotune
measures instead of assuming.

LeNet's C1 (1→6, 5x5, input 28x28) needs only ∂e/∂k (the image needs no gradient): ``batch_as_channels``.
LeNet's C2 (6→12, 5x5, input 12x12): ``transposed_convolution`` and ``batch_as_channels`` (*fast*),
``flipped_correlation`` and ``batch_as_channels`` (*literal*).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bp_torch._arguments import Pair
from bp_torch._formulas import is_autotune, is_literal
from bp_torch._function import batched, in_layout
from bp_torch._gemm import matmul, onednn_takes


def input_grad(delta, weight, input_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂x (Note A eq. 14/17/35, Note B eq. 51) for δ of shape (N, C_out, H_out, W_out): the formulation the
    table above names."""
    if delta.numel() == 0 or weight.numel() == 0:  # no sample, or no channel: nothing to sum, as torch returns
        return delta.new_zeros((delta.shape[0], weight.shape[1] * groups, *input_size))
    args = (delta, weight, input_size, stride, padding, dilation, groups)
    return INPUT_GRAD[choose_input_grad(*args)](*args)


def weight_grad(input, delta, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair, groups: int):
    """∂e/∂k (Note B eq. 40/59): Δk[o, i, u, v] = Σ_n Σ_pq x[n, i, p·s + u·d − p, q·s + v·d − p] δ[n, o, p, q]."""
    if delta.numel() == 0 or input.numel() == 0:
        return input.new_zeros((delta.shape[1], input.shape[1] // groups, *kernel_size))
    args = (input, delta, kernel_size, stride, padding, dilation, groups)
    return WEIGHT_GRAD[choose_weight_grad(*args)](*args)


def choose_input_grad(delta, weight, input_size, stride, padding, dilation, groups) -> str:
    if is_literal():
        return "flipped_correlation"
    if is_autotune() and timeable(delta):
        return autotuned("input", INPUT_GRAD, (delta, weight, input_size, stride, padding, dilation, groups))
    return "transposed_convolution"


def choose_weight_grad(input, delta, kernel_size, stride, padding, dilation, groups) -> str:
    if is_literal():
        return "batch_as_channels"
    depthwise = input.shape[1] == delta.shape[1] == groups
    if is_autotune() and timeable(input):
        args = (input, delta, kernel_size, stride, padding, dilation, groups)
        return autotuned("weight", WEIGHT_GRAD, args, exclude=() if depthwise else ("depthwise",))
    if depthwise:
        # unless δ, each channel's kernel, is no wider than the padding (a 5x5 layer on a 2x2 map): the
        # one-channel correlations take a slow path there, the batch-as-channels correlation does not
        padded_past = stride == (1, 1) and (padding[0] >= delta.shape[2] or padding[1] >= delta.shape[3])
        return "batch_as_channels" if padded_past else "depthwise"
    fast_product = onednn_takes(input) and onednn_takes(delta)
    return cheapest_weight_grad(input.shape, delta.shape, kernel_size, stride, padding, dilation, groups, fast_product)


def cheapest_weight_grad(
    input_shape, delta_shape, kernel_size, stride, padding, dilation, groups, fast_product=False
) -> str:
    """The fast mode's fixed choice of ∂e/∂k's formulation for these shapes (the table above), fitted to each
    formulation's time inside real training steps (``python benchmarks/formulations_in_step.py``,
    benchmarks/README.md, "How each gradient is computed"). ``fast_product``: the operands' products run on oneDNN
    (``bp_torch._gemm``)."""
    C_in_g, (C_out, H_out, W_out) = input_shape[1] // groups, delta_shape[1:]
    C_out_g, L = C_out // groups, H_out * W_out
    if kernel_size == (1, 1):
        if fast_product and groups == 1 and C_out * C_in_g * delta_shape[0] * L >= 2**22:
            # one product on oneDNN, (C_out × N·L)·(N·L × C_in), past its fixed cost: faster than either below
            return "unfold_gemm"
        if stride == (1, 1) and groups == 1 and L >= 64 and C_out_g * C_in_g >= 8192:
            # maps and channels both large: the correlation, with δ as an L-tap kernel, runs the convolution's
            # vectorised kernel, where the products below run the general matrix product
            return "batch_as_channels"
        # both sum products over the positions: per sample, N partial sums of C_out_g x C_in_g are written and
        # added; as one product, x and δ are first copied into (channels x N·L) matrices. Fewer elements wins.
        return "unfold_per_sample" if C_out_g * C_in_g < L * (C_in_g + C_out_g) else "unfold_gemm"
    if 8 * C_in_g <= C_out_g:
        # a stem (3 input channels): the batch-as-channels correlation would have a batch of 3; per sample, the
        # im2col columns are few (C_in_g·k²) and the products short. (For 7x7 and 11x11 stems the correlation
        # is faster, but its copy of δ raises the step's peak memory: the stem's gradient comes last, when every
        # other gradient is held.) On oneDNN a stem whose per-sample product is under 2^21 multiply-adds (3x3 stems on
        # small images) is one product over the batch; larger ones run a few samples a product (_unfold_in_chunks)
        per_sample = C_out * C_in_g * kernel_size[0] * kernel_size[1] * L
        return "unfold_gemm" if fast_product and groups == 1 and per_sample < 2**21 else "unfold_per_sample"
    columns = delta_shape[0] * L * C_in_g * kernel_size[0] * kernel_size[1]  # the im2col matrix's elements
    if fast_product and groups == 1 and L > 16 and C_out >= 192 and columns <= 6 * 2**20:
        # many output channels share each im2col column: one product on oneDNN, past the columns' copy, beats the
        # correlations (not on small maps, where the scatter through x copies nothing; not for columns that
        # outgrow the cache)
        return "unfold_gemm"
    if fast_product and groups == 1 and stride != (1, 1):
        # strided: the correlations below see δ with zeros between its entries (batch_as_channels dilates δ as the
        # kernel), the products only the positions a window read: one product over the batch, or a few samples a
        # product once the im2col columns outgrow the cache (ResNet's first 3x3 of each stage)
        return "unfold_gemm" if columns <= 6 * 2**20 else "unfold_per_sample"
    operands = input_shape.numel() + delta_shape.numel()  # x and δ, the elements the correlations copy
    gradient = C_out_g * C_in_g * kernel_size[0] * kernel_size[1]
    full_padding_reaches = padding[0] <= kernel_size[0] - 1 and padding[1] <= kernel_size[1] - 1
    if (stride, dilation, groups) == ((1, 1), (1, 1), 1) and full_padding_reaches and C_in_g >= 16:
        # C_in, not C_out, are the output channels of these two (they fill the vector registers from 16 on), and
        # their result comes laid out as the weight: worth it when C_in ≥ C_out, or when the kernel's gradient is
        # as large as its operands (its transposing copy then costs). On small maps the scatter through x (no copy
        # of x either) beats the correlation
        if C_in_g >= C_out_g or gradient >= operands:
            return "input_as_kernel" if L <= 16 else "output_channels_as_batch"
    if stride != (1, 1) and gradient > 8 * operands:
        # a kernel gradient 8 times its operands (ResNet's strided 512-channel layer): the one product writes it
        # as the weight is laid out, where the correlation's transposing copy would double it in memory
        return "unfold_gemm"
    return "batch_as_channels"


# The autotuner's choices: (gradient, each operand's shape, strides, dtype and device, the options) -> formulation
TUNED: dict[tuple, str] = {}


def timeable(t: torch.Tensor) -> bool:
    """Whether timing means anything here: not while torch.compile traces or a torch.func transform runs."""
    return not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or t.is_meta)


def autotuned(kind: str, table: dict, args: tuple, exclude: tuple[str, ...] = ()) -> str:
    """The fastest formulation in ``table`` for these operands: timed at the first call with their shapes, then
    cached in :data:`TUNED`."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    key = (kind, *((t.shape, t.stride(), t.dtype, t.device) for t in tensors), *args[len(tensors) :])
    if key not in TUNED:
        TUNED[key] = min((n for n in table if n not in exclude), key=lambda n: seconds(table[n], args))
    return TUNED[key]


def seconds(function, args, repeats: int = 3) -> float:
    """The best of ``repeats`` timed calls, after one untimed call (allocations, caches, lazy initialisation)."""
    device = next(a for a in args if isinstance(a, torch.Tensor)).device
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    function(*args)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function(*args)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def flipped_correlation(delta, weight, input_size, stride, padding, dilation, groups):
    """Note A eq. 17/35 as written: insert s − 1 zeros between δ's entries, pad it by d·(k−1) − p on every side (a
    'full' correlation), and correlate with the rot180 kernel, its in/out channels swapped within each group."""
    kh, kw = weight.shape[2:]
    G = groups
    w_rot = weight.flip(2, 3)  # Note A eq. 17: w_{−i, −j}, the rot180 kernel
    w_rot = channels_swapped(w_rot, G)  # Note A eq. 35: the sum runs over the output channels
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
    if weight.shape[2:] == (1, 1) and padding == (0, 0):
        # strided: a write into a slice, which vmap cannot batch, and a transposing copy of the kernel, which costs
        # more than the scatter saves once the kernel outgrows both δ and the cache (ResNeXt's 512→1024 and
        # 1024→2048 shortcuts: 2^19 and 2^21 weights); stride 1: a small layer as one product per sample, otherwise
        # on maps under 64 positions the transposed convolution is the faster
        strided = stride != (1, 1)
        small_kernel = weight.numel() <= max(delta.numel(), 2**18)
        if not strided and groups == 1 and _products_per_sample(delta, weight):
            return _1x1_per_sample_products(delta, weight)
        if (strided and small_kernel and not batched(delta)) or (not strided and delta.shape[2] * delta.shape[3] >= 64):
            return _1x1_channel_product(delta, weight, input_size, stride, groups)
    rest = uncovered(input_size, delta.shape[2:], weight.shape[2:], stride, padding, dilation)
    out_pad = [max(r, 0) for r in rest]
    grad = F.conv_transpose2d(delta, weight, None, stride, padding, out_pad, groups, dilation)  # Note A eq. 14
    # a window hanging past the input's end (avg_pool2d's ceil_mode) scattered onto rows that do not exist
    return grad[:, :, : input_size[0], : input_size[1]] if min(rest) < 0 else grad


def _1x1_channel_product(delta, weight, input_size, stride, groups):
    """Note A eq. 14 for a 1x1 layer without padding: each window reads one input, so the scatter is the channel
    product Σ_o δ_o w_oi, a forward 1x1 convolution with wᵀ, written at the strided positions (zeros elsewhere).
    The transposed convolution's general kernel is slow on strided 1x1 layers, and slower than the forward one on
    large maps. Under torch.compile too, so that compiled and eager gradients round alike."""
    N, _, H_out, W_out = delta.shape
    C_in, (sh, sw) = weight.shape[1] * groups, stride
    w_t = channels_swapped(weight, groups)  # wᵀ: carries δ's channels back to x's
    product = F.conv2d(delta, w_t, None, 1, 0, 1, groups)  # Note A eq. 14: Σ_o δ_o w_oi, each window's one input
    if stride == (1, 1):
        return product
    grad = delta.new_zeros((N, C_in, *input_size))
    grad[:, :, : (H_out - 1) * sh + 1 : sh, : (W_out - 1) * sw + 1 : sw] = product
    return grad


def _products_per_sample(delta, weight) -> bool:
    """Whether a stride-1 1x1 layer's ∂e/∂x is cheaper as one small matrix product per sample than as a convolution:
    on maps of 16 positions and more (under that the products are too narrow), with few multiply-adds in all (2^21;
    2^22 on maps of 64+ positions), where oneDNN's fixed cost per convolution dominates (ShuffleNet's and MobileNet's
    small layers); δ contiguous, so that each sample is a (C_out × L) matrix without a copy."""
    N, C_out, H_out, W_out = delta.shape
    L = H_out * W_out
    multiply_adds = N * L * C_out * weight.shape[1]
    return L >= 16 and multiply_adds <= (2**22 if L >= 64 else 2**21) and delta.is_contiguous()


def _1x1_per_sample_products(delta, weight):
    """Note A eq. 14 for a stride-1 1x1 layer without padding, one group: each window reads one input, so the
    scatter is Σ_o w_oi δ_o, per sample the matrix product wᵀ (C_in × C_out) · δ_n (C_out × L) — Note A eq. 8's
    δ carried back through the weight, at every position."""
    N, C_out, H_out, W_out = delta.shape
    w_t = weight.reshape(C_out, -1).mT  # wᵀ: (C_in, C_out), a view
    grad = torch.matmul(w_t, delta.reshape(N, C_out, H_out * W_out))  # Note A eq. 14 = eq. 8 per position: wᵀδ
    return grad.reshape(N, w_t.shape[0], H_out, W_out)


def channels_swapped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel with its input and output channels swapped within each group, (C_out, C_in_g, kh, kw) ->
    (C_in, C_out_g, kh, kw): the kernel that carries δ's channels back to x's (Note A eq. 35)."""
    C_out, C_in_g, kh, kw = weight.shape
    w = weight.reshape(groups, C_out // groups, C_in_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * C_in_g, C_out // groups, kh, kw)


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
    becomes the dilation, its dilation the stride; rows past the last full stride step reach no tap and are cropped.

    Both operands are copied anyway (the batch moved to the channels' place); copied channels_last (the batch
    innermost) the convolution reads them as they are, where laid out plainly it first reorders both into its
    blocked layout — unless the kernel's gradient outweighs them (:func:`_operands_channels_last`)."""
    N, C_in, H, W = input.shape
    C_out = delta.shape[1]
    G = groups
    kh, kw = kernel_size
    channels_last = _operands_channels_last(input, delta, kernel_size, groups)
    # one copy each: with one group the reshape is a view (grouped operands stay plain: the reshape's copy)
    x = input.reshape(N, G, C_in // G, H, W).permute(2, 1, 0, 3, 4).reshape(C_in // G, G * N, H, W)
    x, d = in_layout(x, channels_last), in_layout(delta.transpose(0, 1), channels_last)
    grad = F.conv2d(x, d, None, dilation, padding, stride, G)  # Note B eq. 40: x ⋆ δ
    if grad.shape[2:] != (kh, kw):  # a no-op slice would be an alias, which legacy vmap cannot batch
        grad = grad[:, :, :kh, :kw]
    # back to (C_out, C_in_g, kh, kw) with the weight's own strides: a reshape, as transpose alone leaves a
    # size-1 dimension (one input channel, as C1's) a stride DDP's gradient buckets reject
    return grad.transpose(0, 1).reshape(C_out, C_in // G, kh, kw)


def output_channels_as_batch(input, delta, kernel_size, stride, padding, dilation, groups):
    """Note B eq. 40 with S and ΔC_σ swapped: one correlation of δ with x, the output channels as the batch, the
    batch as the channels, x the kernel. Correlating δ with x gives the sum of eq. 40 rotated by 180° (δ's offset
    from x runs the other way): so either both operands are rotated first, when they are the smaller, or the result
    after. Unlike :func:`batch_as_channels` the result comes out (C_out, C_in, kh, kw), as the weight is laid out,
    and laying out a large kernel gradient (512x512x3x3) costs no transposing copy. For stride 1, dilation 1, one
    group and padding up to k − 1 (the full correlation's); other layers run :func:`batch_as_channels`."""
    kh, kw = kernel_size
    full = (kh - 1 - padding[0], kw - 1 - padding[1])  # δ padded for the full correlation with x (Note A eq. 17)
    if stride != (1, 1) or dilation != (1, 1) or groups != 1 or min(full) < 0:
        return batch_as_channels(input, delta, kernel_size, stride, padding, dilation, groups)
    channels_last = _operands_channels_last(input, delta, kernel_size, groups)
    rotate_operands = delta.shape[1] * input.shape[1] * kh * kw > input.numel() + delta.numel()
    d, x = (delta.flip(2, 3), input.flip(2, 3)) if rotate_operands else (delta, input)
    d, x = in_layout(d.transpose(0, 1), channels_last), in_layout(x.transpose(0, 1), channels_last)
    grad = F.conv2d(d, x, None, 1, full)  # Note B eq. 40, S and ΔC_σ swapped: δ ⋆ x = rot180(Δk)
    return grad if rotate_operands else grad.flip(2, 3)


def input_as_kernel(input, delta, kernel_size, stride, padding, dilation, groups):
    """Note B eq. 40 as one transposed convolution (Note A eq. 14's primitive): δ, rotated 180° with the output
    channels as the batch, scattered through x itself as the kernel with the forward's stride —
    Σ_p δ[o, n, H_out − 1 − p] x[n, i, s·p + u − pad] lands on u, and the scatter's padding crops all but the k
    positions of Δk. x needs no copy, and the result comes laid out as the weight. For dilation 1, one group, and
    windows that reach the input's last row (the crop is the same at both ends); other layers run
    :func:`output_channels_as_batch`."""
    (H, W), (H_out, W_out) = input.shape[2:], delta.shape[2:]
    crop = [s * (L_out - 1) - p for s, L_out, p in zip(stride, (H_out, W_out), padding)]
    rest = uncovered((H, W), (H_out, W_out), kernel_size, stride, padding, dilation)
    if dilation != (1, 1) or groups != 1 or min(crop) < 0 or rest != [0, 0]:
        return output_channels_as_batch(input, delta, kernel_size, stride, padding, dilation, groups)
    d = delta.flip(2, 3).transpose(0, 1).contiguous()
    return F.conv_transpose2d(d, input.contiguous(), None, stride, crop)  # Note B eq. 40: Δk, (C_out, C_in, kh, kw)


def _operands_channels_last(input, delta, kernel_size, groups) -> bool:
    """Whether the operands of a batch-as-channels correlation are copied channels_last: not where its output, the
    kernel's gradient, is more than 8 times their size (ResNet's 512-channel layers on 2x2 maps): the output comes in
    the operands' layout, and laying a large one out as the weight costs more than the reorders saved; nor for grouped
    correlations, which run faster on plainly laid out operands; nor for a batch of one, the correlation's single
    input channel, on which oneDNN's channels_last kernel sums wrongly when the kernel outgrows a padded, strided input
    (a test holds it). Under vmap, which knows no layout, :func:`in_layout` leaves them as they are."""
    C_out, C_in_g = delta.shape[1], input.shape[1] // groups
    large = C_out * C_in_g * kernel_size[0] * kernel_size[1] > 8 * (input.numel() + delta.numel())
    return not (large or groups > 1 or input.shape[0] == 1)


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


def unfold_gemm(input, delta, kernel_size, stride, padding, dilation, groups):
    """Note A section 3.3 with eq. 7: every output position is a fully connected layer whose input is its window of
    x (C_in_g·kh·kw values, one im2col column) and whose weight is the kernel, so ∂e/∂k = Σ δ·windowᵀ over every
    position sharing the kernel (Note B eq. 40) — one matrix product (C_out × N·L)·(N·L × C_in_g·kh·kw) per group."""
    N, C_in = input.shape[:2]
    C_out, H_out, W_out = delta.shape[1:]
    G, (kh, kw) = groups, kernel_size
    win = windows(input, kernel_size, stride, padding, dilation)  # (N, C_in, H_out, W_out, kh, kw), a view
    # im2col, positions last: (G, C_in_g·kh·kw, N·H_out·W_out)
    cols = win.reshape(N, G, C_in // G, H_out, W_out, kh, kw).permute(1, 2, 5, 6, 0, 3, 4)
    cols = cols.reshape(G, C_in // G * kh * kw, N * H_out * W_out)
    d = delta.reshape(N, G, C_out // G, H_out * W_out).permute(1, 2, 0, 3).reshape(G, C_out // G, -1)
    grad = matmul(d, cols.transpose(1, 2))  # Note A eq. 7 / Note B eq. 40: Σ over positions of δ xᵀ, (G, C_out_g, ·)
    return grad.reshape(C_out, C_in // G, kh, kw)


def unfold_per_sample(input, delta, kernel_size, stride, padding, dilation, groups):
    """Note A eq. 7 on the unfolded input as :func:`unfold_gemm`, the sum over positions taken per sample first —
    N products (C_out × L)·(L × C_in_g·kh·kw), then summed over the batch: short reductions with many partial sums,
    where one long product would have a small output to share among threads."""
    N, C_in = input.shape[:2]
    C_out, H_out, W_out = delta.shape[1:]
    G, (kh, kw) = groups, kernel_size
    win = windows(input, kernel_size, stride, padding, dilation)  # (N, C_in, H_out, W_out, kh, kw), a view
    if G == 1 and (kh, kw) != (1, 1) and onednn_takes(input) and onednn_takes(delta):
        return _unfold_in_chunks(win, delta, kernel_size)
    # im2col per sample, positions last: (N, G, C_in_g·kh·kw, H_out·W_out)
    cols = win.reshape(N, G, C_in // G, H_out, W_out, kh, kw).permute(0, 1, 2, 5, 6, 3, 4)
    cols = cols.reshape(N, G, C_in // G * kh * kw, H_out * W_out)
    d = delta.reshape(N, G, C_out // G, H_out * W_out)
    grad = (d @ cols.transpose(-1, -2)).sum(0)  # Note A eq. 7 / Note B eq. 40: Σ_n Σ_pq δ xᵀ, (G, C_out_g, C_in_g·k²)
    return grad.reshape(C_out, C_in // G, kh, kw)


def _unfold_in_chunks(win, delta, kernel_size):
    """:func:`unfold_per_sample` for one group on oneDNN (``bp_torch._gemm``): the samples taken a few at a time, as
    many as make one product of 2^22 multiply-adds (one sample of a 7x7 stem), each chunk's im2col columns copied
    and multiplied alone — oneDNN's product without the whole im2col matrix in memory (the stem's gradient comes
    last, when every other gradient is held)."""
    N, C_in, H_out, W_out, kh, kw = win.shape
    C_out, L, K = delta.shape[1], H_out * W_out, C_in * kh * kw
    chunk = max(1, min(N, -(-(2**22) // (C_out * K * L))))
    grad = None
    for start in range(0, N, chunk):
        cols = win[start : start + chunk].permute(1, 4, 5, 0, 2, 3).reshape(K, -1)  # (C_in·k², chunk·L)
        d = delta[start : start + chunk].reshape(-1, C_out, L).transpose(0, 1).reshape(C_out, -1)  # (C_out, chunk·L)
        part = matmul(d, cols.T)  # Note A eq. 7 / Note B eq. 40: Σ over the chunk's positions of δ xᵀ, (C_out, C_in·k²)
        grad = part if grad is None else grad.add_(part)
    return grad.reshape(C_out, C_in, kh, kw)


def windows(input, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
    """The window each output reads (Note A eq. 10), as a view of the zero-padded x:
    (N, C, H, W) -> (N, C, H_out, W_out, kh, kw)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    x = F.pad(input, (pw, pw, ph, ph)) if (ph, pw) != (0, 0) else input
    win = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    return win[..., ::dh, ::dw] if (dh, dw) != (1, 1) else win


INPUT_GRAD = {"flipped_correlation": flipped_correlation, "transposed_convolution": transposed_convolution}
WEIGHT_GRAD = {
    "batch_as_channels": batch_as_channels,
    "output_channels_as_batch": output_channels_as_batch,
    "input_as_kernel": input_as_kernel,
    "unfold_gemm": unfold_gemm,
    "unfold_per_sample": unfold_per_sample,
    "depthwise": depthwise,
}

__all__ = ["input_grad", "weight_grad", "INPUT_GRAD", "WEIGHT_GRAD", "TUNED"]
