"""Matrix products — matmul, bmm, addmm, baddbmm — with the backward of eq. T7 and T8: Note A eq. 7/8 for batches.

C = AB, for each matrix of a batch (batch dimensions broadcast, as ``torch.matmul``'s): ∂e/∂A = δBᴴ (Note A eq. 8's
δ carried back through the other factor) and ∂e/∂B = Aᴴδ (Note A eq. 7's xδᵀ), each summed over the batch
dimensions its operand was broadcast along (eq. T7). A 1-D operand is a row (left) or a column (right) whose
dimension the product drops. ``out = β·input + α·AB`` adds ∂e/∂input = β·δ summed to input's shape, and scales the
products' gradients by α (eq. T8). Tangents by the product rule: Ċ = ȦB + AḂ. Each gradient is itself a product
computed by ``MatmulFunction``, so every order of derivative is ours. Labels T are ours (docs/derivation.md).
"""

from __future__ import annotations

import math

import torch
from torch.autograd import Function

from bp_torch import _gemm as gemm
from bp_torch._function import nested_apply, opmath, with_direct_call
from bp_torch._torch_layouts import in_strides, torch_grad_strides
from bp_torch.autograd.linear import _sum_to


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A product inside a backward or a jvp, through ``MatmulFunction`` when a graph of it is being built; otherwise
    the product alone, by the kernel ``bp_torch._gemm`` picks."""
    if not torch.is_grad_enabled():
        return gemm.matmul(a, b)
    return nested_apply(MatmulFunction, a, b, "matmul")


def product_grads(delta, a, b, a_shape, b_shape):
    """∂e/∂A = δBᴴ and ∂e/∂B = Aᴴδ of C = AB (``torch.matmul``'s shapes), each in its operand's shape (eq. T7).

    ``a`` is None when only ∂e/∂A is wanted, ``b`` when only ∂e/∂B: each operand enters the other's gradient only.
    """
    vector_a, vector_b = len(a_shape) == 1, len(b_shape) == 1
    if vector_b:  # the column's dimension, dropped from the product: back as a dimension of size 1
        b, delta, b_shape = b.unsqueeze(-1) if b is not None else None, delta.unsqueeze(-1), (*b_shape, 1)
    if vector_a:  # likewise the row's
        a, delta, a_shape = a.unsqueeze(0) if a is not None else None, delta.unsqueeze(-2), (1, *a_shape)
    batch = delta.shape[:-2]
    grad_a = grad_b = None
    if b is not None:
        if len(a_shape) == 2 and batch:
            # one matrix for the whole batch: Σ_i δ_i B_iᴴ as a single product over the batch's columns
            m, n, count = *delta.shape[-2:], math.prod(batch)
            rows = delta.reshape(count, m, n).transpose(0, 1).reshape(m, count * n)  # (m, batch·n)
            columns = b.expand(*batch, *b.shape[-2:]).mH.reshape(count * n, a_shape[-1])  # (batch·n, k)
            grad_a = matmul(rows, columns)  # eq. T7: ∂e/∂A = Σ δBᴴ
        else:
            grad_a = _summed_product(delta, b.mH, a_shape)  # eq. T7: ∂e/∂A = δBᴴ, summed where A was broadcast
        grad_a = grad_a.squeeze(0) if vector_a else grad_a
    if a is not None:
        if len(b_shape) == 2 and batch:
            # one matrix for the whole batch: Σ_i A_iᴴ δ_i as a single product over the batch's rows
            rows = math.prod(batch) * delta.shape[-2]
            a_rows = a.expand(*batch, *a.shape[-2:]).reshape(rows, a_shape[-1])  # (batch·m, k)
            grad_b = matmul(a_rows.mH, delta.reshape(rows, delta.shape[-1]))  # eq. T7: ∂e/∂B = Σ Aᴴδ
        else:
            grad_b = _summed_product(a.mH, delta, b_shape)  # eq. T7: ∂e/∂B = Aᴴδ, summed where B was broadcast
        grad_b = grad_b.squeeze(-1) if vector_b else grad_b
    return grad_a, grad_b


def _summed_product(x, y, shape):
    """x @ y summed over the batch dimensions an operand of ``shape`` was broadcast along; in half precision summed
    in float32 and rounded once (as one product over the broadcast dimensions rounds it), not once per copy."""
    summed = tuple(torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])) != tuple(shape[:-2])
    if summed and x.dtype in (torch.float16, torch.bfloat16):
        return _sum_to(matmul(opmath(x), opmath(y)), shape).to(x.dtype)
    return _sum_to(matmul(x, y), shape)


def _operand_layouts(op: str, a: torch.Tensor, b: torch.Tensor, needs_a: bool, needs_b: bool):
    """What decides the layout of torch's gradients of ``op(a, b)`` (its folding and its mm backward's column-major
    rule read the operands' strides and which of them require grad); None where there are no strides to read."""
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return None
    try:
        return op, tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), needs_a, needs_b
    except RuntimeError:  # a tensor without strides (sparse, nested): torch's layout is not a question of strides
        return None


@with_direct_call
class MatmulFunction(Function):
    """C = AB by ``op``, ``"matmul"`` (broadcast batches, 1-D operands) or ``"bmm"`` (3-D, equal batches): torch's
    own forward, so its shape rules and errors; backward eq. T7."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, other, op: str):
        return torch.matmul(input, other) if op == "matmul" else torch.bmm(input, other)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, op = inputs
        needs_a, needs_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if needs_b else None, b if needs_a else None)
        ctx.save_for_forward(a, b)
        ctx.shapes = a.shape, b.shape
        ctx.layouts = _operand_layouts(op, a, b, needs_a, needs_b)

    @staticmethod
    def backward(ctx, grad_output):
        a, b = ctx.saved_tensors  # each saved only if the other operand's gradient is wanted
        grads = product_grads(grad_output, a, b, *ctx.shapes)  # eq. T7: ∂e/∂A = δBᴴ, ∂e/∂B = Aᴴδ
        if ctx.layouts is not None and not torch._C._are_functorch_transforms_active():
            grads = [in_strides(g, strides) for g, strides in zip(grads, torch_grad_strides(*ctx.layouts))]
        return (*grads, None)

    @staticmethod
    def jvp(ctx, input_t, other_t, _):
        a, b = ctx.saved_tensors
        out_t = matmul(input_t, b) if input_t is not None else None  # eq. T13: Ċ = ȦB ...
        if other_t is not None:
            out_t = matmul(a, other_t) if out_t is None else out_t + matmul(a, other_t)  # eq. T13: + AḂ
        return out_t


@with_direct_call
class AddmmFunction(Function):
    """out = β·input + α·AB by ``op``, ``"addmm"`` (2-D) or ``"baddbmm"`` (3-D batches): torch's own forward;
    backward eq. T8."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, mat1, mat2, beta, alpha, op: str):
        return getattr(torch, op)(input, mat1, mat2, beta=beta, alpha=alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, a, b, beta, alpha, op = inputs
        needs_a, needs_b = ctx.needs_input_grad[1:3]
        ctx.save_for_backward(a if needs_b else None, b if needs_a else None)
        ctx.save_for_forward(a, b)
        ctx.shapes = a.shape, b.shape
        # the products' gradients laid out as mm's and bmm's (a transposed operand's stays column-major)
        ctx.layouts = (needs_a or needs_b) and _operand_layouts(
            "matmul" if op == "addmm" else "bmm", a, b, needs_a, needs_b
        )
        ctx.beta, ctx.alpha, ctx.input_shape, ctx.output_shape = beta, alpha, input.shape, output.shape

    @staticmethod
    def backward(ctx, grad_output):
        a, b = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = _sum_to(grad_output * ctx.beta.conjugate(), ctx.input_shape)  # eq. T8: β·δ, summed
        # half precision as torch's: α·δ and the products in float32, each gradient rounded once
        delta = opmath(grad_output)
        scaled = delta * ctx.alpha.conjugate() if ctx.alpha != 1 else delta  # eq. T8: α·δ
        a, b = opmath(a), opmath(b)
        grad_a, grad_b = product_grads(scaled, a, b, *ctx.shapes)  # eq. T8: eq. T7 with α·δ
        dtype = grad_output.dtype
        grad_a, grad_b = (g.to(dtype) if g is not None else None for g in (grad_a, grad_b))
        if ctx.layouts and not torch._C._are_functorch_transforms_active():
            grad_a, grad_b = (
                in_strides(g, strides) for g, strides in zip((grad_a, grad_b), torch_grad_strides(*ctx.layouts))
            )
        return grad_input, grad_a, grad_b, None, None, None

    @staticmethod
    def jvp(ctx, input_t, mat1_t, mat2_t, *_):
        a, b = ctx.saved_tensors
        out_t = torch.zeros(ctx.output_shape, dtype=a.dtype, device=a.device)
        if input_t is not None:
            out_t = out_t + ctx.beta * input_t  # eq. T13: β·i̇, broadcast
        if mat1_t is not None:
            out_t = out_t + ctx.alpha * matmul(mat1_t, b)  # eq. T13: α·ȦB
        if mat2_t is not None:
            out_t = out_t + ctx.alpha * matmul(a, mat2_t)  # eq. T13: α·AḂ
        return out_t
