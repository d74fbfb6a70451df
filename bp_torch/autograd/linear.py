"""The fully connected layer with the backward of Note A eq. 7/8 and Note B eq. 19, 24, 30."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._function import batched, nested_apply, with_direct_call
from bp_torch._gemm import matmul


@with_direct_call
class LinearFunction(Function):
    """s = x Wᵀ + b: Note A eq. 5 (s = Wᵀx) with PyTorch's (out, in) weight, i.e. Note A's W transposed.

    Any leading dimensions of ``x`` are batch dimensions; their gradients sum over them. A 1-D weight is one output
    feature whose dimension the output drops; the bias is any shape torch broadcasts into the output. Complex
    tensors get PyTorch's (Wirtinger) gradients: each is the real formula with the other operand conjugated.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, feedback=None):
        return F.linear(input, weight, bias)  # Note A eq. 5: s = Wᵀx (+ b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, feedback = (*inputs, None)[:4]
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        # a backward rule's feedback matrix B (bp_torch.feedback) carries δ back in W's place; None: W, exact
        backward_matrix = weight if feedback is None else feedback
        ctx.save_for_backward(input if needs_weight else None, backward_matrix if needs_input else None)
        ctx.save_for_forward(input, weight)
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.vector_weight, ctx.output_shape = weight.dim() == 1, output.shape
        # torch's input gradient comes back in the input's own strides where its matrix of rows is a column-major
        # view (a transposed matrix, channels_last with one pixel per row), as torch's mm backward gives one;
        # contiguous otherwise
        ctx.input_layout = (input.shape, input.stride()) if _column_major_rows(input) else None
        # and W's comes back transposed unless W is row-major (Wᵀ column-major): torch computes it as (xᴴδ)ᵀ then
        ctx.weight_row_major = weight.dim() != 2 or weight.stride() == (weight.shape[1], 1)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = _sum_to(grad_output, ctx.bias_shape)  # Note B eq. 24: Δb = Δŷ, summed where b was broadcast
        vector_weight = ctx.vector_weight
        if vector_weight:  # the output feature a 1-D weight drops: back as a dimension of size 1
            grad_output = grad_output.unsqueeze(-1)
        if ctx.needs_input_grad[0]:
            W = weight.unsqueeze(0) if vector_weight else weight  # under a backward rule, B in W's place
            grad_input = matmul(grad_output, W.conj())  # Note A eq. 8 / Note B eq. 30: Δf = WᵀΔŷ, with (out, in) W: δW
            if ctx.input_layout is not None and grad_input.shape == ctx.input_layout[0] and not batched(grad_input):
                grad_input = torch.empty_strided(*ctx.input_layout, dtype=grad_input.dtype,
                                                 device=grad_input.device).copy_(grad_input)  # fmt: skip
        if ctx.needs_input_grad[1]:
            in_features, out_features = input.shape[-1], grad_output.shape[-1]
            batch = math.prod(input.shape[:-1])  # every leading dimension is a batch dimension (maybe none, maybe 0)
            delta, x = grad_output.reshape(batch, out_features), input.reshape(batch, in_features)
            # summed over the batch; with PyTorch's (out, in) W, xδᵀ is δᵀx
            if ctx.weight_row_major:
                grad_weight = matmul(delta.T, x.conj())  # Note A eq. 7 / Note B eq. 19: xδᵀ
            else:  # the same product, transposed (torch's layout, and its non-finite pattern for complex inputs)
                grad_weight = matmul(x.T.conj(), delta).T  # Note A eq. 7 / Note B eq. 19: xδᵀ
            if vector_weight:
                grad_weight = grad_weight.squeeze(0)
        # no gradient for the feedback matrix: it is fixed, or redrawn, never learnt (autograd drops the None when a
        # direct call passed no feedback)
        return grad_input, grad_weight, grad_bias, None

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        # forward mode has no feedback: the tangent is the exact derivative of the forward, whatever the rule
        input, weight = ctx.saved_tensors
        # the product rule on s = x Wᵀ + b: each operand's tangent through the same layer, the others held
        out_t = linear(input_t, weight) if input_t is not None else None  # eq. J6: ẋWᵀ
        if weight_t is not None:
            out_t = _add(out_t, linear(input, weight_t))  # eq. J6: + xẆᵀ
        return _add(out_t, bias_t, ctx.output_shape)  # eq. J6: + ḃ


def _add(a, b, shape=None):
    """a + b where either may be None (no tangent); ``b`` the bias's tangent, broadcast to the output's ``shape``."""
    if b is not None and shape is not None:
        b = b.reshape(b.shape[b.dim() - len(shape) :]) if b.dim() > len(shape) else b  # leading 1s torch dropped
        return b.expand(shape) if a is None else a + b
    return b if a is None else a if b is None else a + b


def _sum_to(grad, shape):
    """δ summed over the dimensions a bias of ``shape`` was broadcast along (the bias may have more, of size 1)."""
    if len(shape) > grad.dim():
        grad = grad.reshape((1,) * (len(shape) - grad.dim()) + tuple(grad.shape))
    return grad.sum_to_size(shape)


def linear(input, weight):
    """The layer without bias (Note A eq. 5) inside a jvp or backward."""
    return nested_apply(LinearFunction, input, weight, None, None)


def _column_major_rows(t: torch.Tensor) -> bool:
    """Whether ``t`` viewed as a matrix of rows (every leading dimension folded) is column-major, without a copy."""
    if t.dim() < 2 or t.is_contiguous():
        return False
    if t.numel() == 0:  # the fold's strides of an empty tensor: torch's own view says
        return _column_major_view(t)
    # the leading dimensions fold into one without a copy (torch's view) exactly where each one's stride is the next
    # one's stride times its size (dimensions of size 1 aside); the fold's stride is then the innermost one's
    try:
        strides = t.stride()
    except RuntimeError:  # vmap's per-sample tensors have no strides of their own
        return False
    rows, fold_stride = 1, None
    for size, stride in zip(reversed(t.shape[:-1]), reversed(strides[:-1])):
        if size == 1:
            continue
        if fold_stride is not None and stride != fold_stride * rows:
            return False  # no view: torch's reshape copies, a contiguous gradient
        fold_stride = stride if fold_stride is None else fold_stride
        rows *= size
    return rows > 1 and fold_stride == 1 and strides[-1] == rows


def _column_major_view(t: torch.Tensor) -> bool:
    try:
        rows = t.view(-1, t.shape[-1])
        return rows.stride(0) == 1 and rows.stride(1) == rows.shape[0]
    except RuntimeError:  # no view without a copy (torch's reshape copies: a contiguous gradient); vmap: no strides
        return False
