"""A convolution as the explicit matrix W̃ of a fully connected layer (Note A, sections 3.3 and 3.4).

A convolution is a fully connected layer s = W̃ᵀx (Note A eq. 23) whose matrix W̃ is sparse (an output reads only
its receptive field) and weight-shared (every column holds the same kernel, shifted). Its backward is therefore the
fully connected one, δ = θ' ⊙ W̃δ' (eq. 28, which is eq. 8): multiplying by W̃ instead of W̃ᵀ is what turns into the
*flipped* kernel of eq. 17. With M input and N output channels, W̃ is an M×N grid of such blocks, all of them
non-zero: the channels are fully connected (section 3.4, eq. 35).

- :func:`conv2d_matrix` builds W̃ for every option of ``conv2d``.
- :class:`DenseConv2dFunction`, :func:`dense_conv2d` and :class:`DenseConv2d` compute ``conv2d`` through W̃, with
  the fully connected backward written by hand.

Options are checked as ``conv2d`` checks them, and bad ones raise what ``conv2d`` raises. ``docs/plot_conv_matrix.py``
draws W̃'s sparsity pattern (``docs/conv_matrix.png``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._arguments import (
    Pair,
    _check_tensor,
    _positive_pair,
    check_conv2d,
    check_conv2d_weight,
    check_same_dtype_and_device,
    conv2d_options,
    output_size,
)
from bp_torch._function import apply, with_direct_call

__all__ = ["conv2d_matrix", "DenseConv2dFunction", "dense_conv2d", "DenseConv2d"]

Pads = tuple[Pair, Pair]  # ((top, bottom), (left, right))


def _pads_and_output_size(weight_shape, size: Pair, stride: Pair, padding: Pair, extra: Pair, dilation: Pair):
    """conv2d's normalised padding as ((top, bottom), (left, right)), and the output size."""
    pads = ((padding[0], padding[0] + extra[0]), (padding[1], padding[1] + extra[1]))
    # the odd extra row/column of 'same' counts as input: the output size is that of the input padded by it
    out = tuple(
        output_size(L + e, k, s, p, d)
        for L, e, k, s, p, d in zip(size, extra, weight_shape[2:], stride, padding, dilation)
    )
    return pads, out


def _taps(weight_shape, size: Pair, stride: Pair, pads: Pads, dilation: Pair, groups: int, out: Pair, device):
    """W̃'s non-zeros in coalesced order: their (input, output) indices (2, nnz) and the weight each one holds.

    Output (o, p, q) reads, through tap (i, u, v) of its kernel, input (g·C_in_g + i, p·s + u·d − pad, q·s + v·d − pad)
    (Note A eq. 10, strided, dilated and grouped); taps that land in the padding read a zero and are dropped.
    """
    C_out, C_in_g, kh, kw = weight_shape
    H, W = size
    H_out, W_out = out
    a = [torch.arange(n, device=device) for n in (C_out, C_in_g, H_out, W_out, kh, kw)]
    o, i, p, q, u, v = (t.reshape([-1 if j == k else 1 for k in range(6)]) for j, t in enumerate(a))
    # every tensor below broadcasts over (C_out, C_in_g, H_out, W_out, kh, kw): one entry per (output, tap)
    row = p * stride[0] + u * dilation[0] - pads[0][0]  # Note A eq. 10: s_pq reads x_{p+u, q+v} through w_uv
    col = q * stride[1] + v * dilation[1] - pads[1][0]
    channel = o // (C_out // groups) * C_in_g + i  # the input channel tap i of output channel o reads
    inside = ((row >= 0) & (row < H) & (col >= 0) & (col < W)).expand(C_out, C_in_g, H_out, W_out, kh, kw)
    x_index = ((channel * H + row) * W + col).expand_as(inside)[inside]
    s_index = ((o * H_out + p) * W_out + q).expand_as(inside)[inside]
    k_index = (((o * C_in_g + i) * kh + u) * kw + v).expand_as(inside)[inside]
    order = torch.argsort(x_index * (C_out * H_out * W_out) + s_index)  # row-major: a coalesced COO tensor
    return torch.stack((x_index[order], s_index[order])), k_index[order]


def _matrix(weight: torch.Tensor, size: Pair, stride: Pair, pads: Pads, dilation: Pair, groups: int, out: Pair):
    """W̃ as a sparse COO tensor whose values are gathered from ``weight`` (so it is differentiable w.r.t. it)."""
    indices, taps = _taps(weight.shape, size, stride, pads, dilation, groups, out, weight.device)
    C_out, C_in_g = weight.shape[:2]
    shape = (C_in_g * groups * size[0] * size[1], C_out * out[0] * out[1])
    values = weight.reshape(-1)[taps]  # weight sharing: many entries of W̃ hold the same kernel weight
    return torch.sparse_coo_tensor(indices, values, shape, is_coalesced=True, check_invariants=False)


def conv2d_matrix(weight, input_size, stride=1, padding=0, dilation=1, groups=1, *, dense=False) -> torch.Tensor:
    """The matrix W̃ of Note A eq. 23: ``conv2d(x, weight, ...)`` flattened equals ``W̃ᵀ`` times ``x`` flattened.

    Row ``(c, h, w)`` of W̃ is an input element, column ``(o, p, q)`` an output element (both flattened in
    ``(C, H, W)`` order); column ``(o, p, q)`` holds kernel ``weight[o]`` at the inputs that output reads.
    W̃'s values are gathered from ``weight``, so W̃ is differentiable with respect to it.

    Args:
        weight: ``(C_out, C_in / groups, kH, kW)``. A 1-D convolution is the case ``kH = 1`` and input height 1.
        input_size: ``(H, W)`` or an int; the input has ``C_in = weight.shape[1] · groups`` channels.
        stride, padding, dilation, groups: as in :func:`bp_torch.functional.conv2d` (``padding`` an int, a pair,
            ``'valid'`` or ``'same'``, whose odd extra row/column goes to the bottom/right as in torch).
        dense: return a strided tensor instead of a sparse COO one.

    Shape:
        ``(C_in·H·W, C_out·H_out·W_out)`` with ``H_out = floor((H + 2·padding − dilation·(kH − 1) − 1) / stride) + 1``,
        likewise ``W_out``. Each column has ``C_in/groups · kH · kW`` entries, fewer where taps fall in the padding.

    Raises:
        RuntimeError: a value out of range, as :func:`bp_torch.functional.conv2d` raises it for the same options,
            naming the argument and the value received.
        TypeError: an argument of a wrong type, likewise.

    Example::

        >>> conv2d_matrix(torch.tensor([[[[1.0, 2.0, 3.0]]]]), (1, 4), dense=True)  # a 1-D kernel over 4 inputs
        tensor([[1., 0.],
                [2., 1.],
                [3., 2.],
                [0., 3.]])
    """
    _check_tensor(weight, "weight", "conv2d_matrix")
    check_conv2d_weight(weight)
    size = _positive_pair(input_size, "input_size", "conv2d_matrix")
    C_in = weight.shape[1] * groups if isinstance(groups, int) else weight.shape[1]  # a bad groups fails in the check
    stride, padding, extra, dilation, groups = conv2d_options(
        tuple(weight.shape), C_in, size, stride, padding, dilation, groups
    )
    pads, out = _pads_and_output_size(weight.shape, size, stride, padding, extra, dilation)
    matrix = _matrix(weight, size, stride, pads, dilation, groups, out)
    return matrix.to_dense() if dense else matrix


@with_direct_call
class DenseConv2dFunction(Function):
    """``conv2d`` computed as a fully connected layer through W̃, with the fully connected backward.

    Forward s = W̃ᵀx + b (Note A eq. 23); backward ∂e/∂x = W̃δ (eq. 8 = eq. 28), ∂e/∂W̃ = xδᵀ (eq. 7) summed over
    the entries that share a kernel weight (Note A section 3.3, Note B eq. 40), ∂e/∂b = Σδ (Note B eq. 45).

    Takes the normalised options of :func:`dense_conv2d`: a 4-D input, ``pads = ((top, bottom), (left, right))``.
    """

    @staticmethod
    def forward(input, weight, bias, stride: Pair, pads: Pads, dilation: Pair, groups: int, out: Pair):
        N, C_in, H, W = input.shape
        W_tilde = _matrix(weight, (H, W), stride, pads, dilation, groups, out)  # (C_in·H·W, C_out·H_out·W_out)
        x = input.reshape(N, C_in * H * W)
        s = torch.sparse.mm(W_tilde.t(), x.T).T  # Note A eq. 23: s = W̃ᵀx, one column per sample
        s = s.reshape(N, weight.shape[0], *out)  # (N, C_out, H_out, W_out)
        return s if bias is None else s + bias[:, None, None]

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, pads, dilation, groups, out = inputs
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        # W̃δ reads the kernel; xδᵀ the input (and W̃'s pattern, which depends only on the shapes)
        ctx.save_for_backward(input if needs_weight else None, weight if needs_input else None)
        ctx.input_shape, ctx.weight_shape = input.shape, weight.shape
        ctx.options = (stride, pads, dilation, groups, out)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        stride, pads, dilation, groups, out = ctx.options
        N, C_in, H, W = ctx.input_shape
        grad_input = grad_weight = grad_bias = None
        delta = grad_output.reshape(N, ctx.weight_shape[0] * out[0] * out[1])  # (N, C_out·H_out·W_out)
        if ctx.needs_input_grad[0]:
            W_tilde = _matrix(weight, (H, W), stride, pads, dilation, groups, out)
            # W̃ itself, not transposed: the flipped kernel of eq. 17
            grad_input = torch.sparse.mm(W_tilde, delta.T).T.reshape(ctx.input_shape)  # Note A eq. 8 = eq. 28: W̃δ
        if ctx.needs_input_grad[1]:
            (x_index, s_index), taps = _taps(
                ctx.weight_shape, (H, W), stride, pads, dilation, groups, out, grad_output.device
            )
            x = input.reshape(N, C_in * H * W)
            # needed only at W̃'s entries (its zeros are structure, not parameters), summed over the batch: (nnz,)
            grad_entries = (x[:, x_index] * delta[:, s_index]).sum(0)  # Note A eq. 7: ∂e/∂W̃ = xδᵀ
            # weight sharing (Note A section 3.3): a kernel weight's gradient is the sum over the entries that hold it
            grad_weight = grad_entries.new_zeros(ctx.weight_shape.numel())
            grad_weight = grad_weight.index_add_(0, taps, grad_entries)  # Note B eq. 40: Σ over the shared entries
            grad_weight = grad_weight.reshape(ctx.weight_shape)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))  # Note B eq. 45: Δb = ΣΔC_σ
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def dense_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """:func:`bp_torch.functional.conv2d` computed through W̃ (:class:`DenseConv2dFunction`), for teaching.

    Same arguments, shapes (unbatched inputs too), results and errors as ``conv2d``; a sparse matrix product is far
    slower than a convolution, so use it to see the fully connected view, not to train.

    Example::

        >>> dense_conv2d(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), padding="same").shape
        torch.Size([2, 4, 8, 8])
    """
    stride, padding, extra, dilation, groups = check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    check_same_dtype_and_device("conv2d", input=input, weight=weight, bias=bias)
    pads, out = _pads_and_output_size(weight.shape, input.shape[-2:], stride, padding, extra, dilation)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    s = apply(DenseConv2dFunction, input, weight, bias, stride, pads, dilation, groups, out)
    return s.squeeze(0) if unbatched else s


class DenseConv2d(torch.nn.Conv2d):
    """:class:`torch.nn.Conv2d` (same arguments, parameters and state_dict) computed through W̃ by
    :func:`dense_conv2d`.

    Example::

        >>> DenseConv2d(1, 6, 5)(torch.randn(8, 1, 28, 28)).shape  # Note B's C1
        torch.Size([8, 6, 24, 24])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad explicitly, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return dense_conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
