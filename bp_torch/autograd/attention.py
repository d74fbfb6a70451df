"""Scaled dot-product attention, O = dropout(softmax(s·QKᵀ + M))·V (eq. T9), with the backward of eq. T10–T12.

Backward, from δ = ∂e/∂O, one factor at a time: the product O = P̃V gives ∂e/∂V = P̃ᴴδ and ∂e/∂P̃ = δVᴴ (eq. T7);
dropout's mask Z/(1−p) multiplies again, ∂e/∂P = ∂e/∂P̃ ⊙ Z/(1−p) (eq. D4); the softmax gives
∂e/∂S = P ⊙ (∂e/∂P − Σ_j P ⊙ ∂e/∂P) (eq. D5), which is also ∂e/∂M for a float mask, summed where M was broadcast
(eq. T11); and S = s·QKᵀ gives ∂e/∂Q = s·∂e/∂S·K and ∂e/∂K = s·(∂e/∂S)ᵀQ (eq. T7 again, eq. T12). A boolean or
causal mask sets the masked scores to −∞, so their weights and gradients are zero; a row with every score masked
gets zero weights, as torch's. Labels T are ours (docs/derivation.md).
"""

from __future__ import annotations

import math

import torch
from torch.autograd import Function

from bp_torch._function import batched, nested_apply, with_direct_call
from bp_torch.autograd.batch_norm import upcast
from bp_torch.autograd.linear import _sum_to
from bp_torch.autograd.matmul import matmul, product_grads
from bp_torch.autograd.softmax import SoftmaxFunction, softmax_grad


def attention_weights(q, k, bias, keep, scale: float) -> torch.Tensor:
    """P = softmax(s·QKᵀ + M) with masked scores at −∞ (eq. T9); a row masked throughout has zero weights."""
    scores = matmul(q, k.mT) * scale  # eq. T9: S = s·QKᵀ
    if bias is not None:
        scores = scores + bias  # eq. T9: + M
    if keep is not None:
        scores = scores.masked_fill(keep.logical_not(), float("-inf"))
    p = nested_apply(SoftmaxFunction, scores, -1)  # eq. T9: P = softmax(S) along the keys
    if (bias is not None or keep is not None) and scores.shape[-1]:  # no keys: P is empty already
        p = p.masked_fill(scores.amax(-1, keepdim=True) == float("-inf"), 0.0)  # nothing to attend to: zero weights
    return p


def expand_heads(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: each of the key's (or value's) heads serves ``groups`` query heads."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=-3)


def sum_heads(grad: torch.Tensor, groups: int) -> torch.Tensor:
    """The gradient of :func:`expand_heads`: each head's copies summed."""
    if groups == 1:
        return grad
    *batch, heads, rows, cols = grad.shape
    return grad.reshape(*batch, heads // groups, groups, rows, cols).sum(-3)


def attends(query, key, value) -> bool:
    """Whether attention computes anything: queries, keys and values to weigh (torch's output is otherwise
    0·(ΣQ + ΣK + ΣV)). Features may be absent (E = 0): the scores are then 0 and the output averages V."""
    return math.prod(query.shape[:-1]) > 0 and math.prod(key.shape[:-1]) > 0 and value.numel() > 0


def _empty_operand_grads(query, key, value, delta, needs) -> tuple:
    """The gradients where an operand is empty: torch then returns 0·(ΣQ + ΣK + ΣV) broadcast to zeros, so every
    entry of ∂e/∂Q, ∂e/∂K and ∂e/∂V is 0·Σδ (NaN where δ has a NaN or an infinity); M gets none (as torch's)."""
    zero = delta.sum() * 0  # ∂e/∂(ΣQ + ΣK + ΣV) of 0·(ΣQ + ΣK + ΣV)
    grads = [
        zero.expand(t.shape).to(t.dtype).contiguous() if need else None for t, need in zip((query, key, value), needs)
    ]
    return *grads, None, None, None, None, None


def _flash_like(query, key, value, mask, dropout, groups) -> bool:
    """Whether torch computes this call with its fused CPU kernel (3-D or 4-D inputs, no dropout, the value's width
    the query's, each row's values side by side ...: torch's own verdict where it gives one),
    whose backward sums Σ δ ⊙ O in place of Σ P ⊙ ∂e/∂P and writes its gradients heads interleaved."""
    if not (query.dim() in (3, 4) and dropout is None and query.shape[-1] == value.shape[-1]):
        return False
    try:
        # 1: flash attention (the CPU's fused kernel)
        return torch._fused_sdp_choice(query, key, value, mask, enable_gqa=groups > 1) == 1
    except Exception:  # noqa: BLE001 - no verdict (a torch.func transform's tensors): the conditions above
        return groups == 1 and query.stride(-1) == key.stride(-1) == value.stride(-1) == 1


def _heads_interleaved(grad: torch.Tensor | None) -> torch.Tensor | None:
    """A (B, H, L, E) gradient laid out as (B, L, H, E) (each position's heads side by side), as torch's fused CPU
    kernel writes its gradients; a 3-D one, (H, L, E), as (L, H, E) (torch adds a batch of one)."""
    if grad is None or batched(grad):
        return grad  # (vmap's per-sample gradients have no layout of their own)
    interleaved = torch.empty_like(grad.transpose(-3, -2), memory_format=torch.contiguous_format)
    return interleaved.transpose(-3, -2).copy_(grad)


@with_direct_call
class ScaledDotProductAttentionFunction(Function):
    """Attention of ``(*, L, E)`` queries over ``(*, S, E)`` keys and ``(*, S, Ev)`` values; returns ``(output,
    weights)``, the second P (not differentiable, float32 for half precision inputs).

    ``bias``: a float mask M added to the scores (may require grad); ``keep``: a boolean mask, True where a query
    may attend (the causal mask included); ``dropout``: the drawn Z/(1−p) (or None); ``groups``: query heads per key
    head. Arguments arrive validated and combined by ``bp_torch.functional.scaled_dot_product_attention``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(query, key, value, bias, keep, dropout, scale: float, groups: int):
        q, k, v = upcast(query), expand_heads(upcast(key), groups), expand_heads(upcast(value), groups)
        p = attention_weights(q, k, upcast(bias) if bias is not None else None, keep, scale)
        p_dropped = p if dropout is None else p * dropout  # eq. D4: P̃ = P ⊙ Z/(1−p)
        return torch.matmul(p_dropped, v).to(query.dtype), p  # eq. T9: O = P̃V

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, value, bias, keep, dropout, scale, groups = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(query, key, value, bias, keep, dropout, output[1], output[0])
        ctx.save_for_forward(query, key, value, bias, keep, dropout, output[1])
        ctx.scale, ctx.groups = scale, groups

    @staticmethod
    def backward(ctx, grad_output, _grad_weights):
        query, key, value, bias, keep, dropout, p, out = ctx.saved_tensors
        needs_q, needs_k, needs_v, needs_bias = ctx.needs_input_grad[:4]
        scale, groups = ctx.scale, ctx.groups
        q, k, v = upcast(query), expand_heads(upcast(key), groups), expand_heads(upcast(value), groups)
        m = upcast(bias) if bias is not None else None
        if torch.is_grad_enabled():  # a graph of this backward is being built: P as the function of Q, K, M it is
            p = attention_weights(q, k, m, keep, scale)
        # torch's fused kernel (never for a mask that requires grad)
        flash = not needs_bias and _flash_like(query, key, value, bias if bias is not None else keep, dropout, groups)
        delta = upcast(grad_output)
        if not attends(query, key, value):  # torch's output is then 0·(ΣQ + ΣK + ΣV)
            return _empty_operand_grads(query, key, value, delta, ctx.needs_input_grad)
        p_dropped = p if dropout is None else p * dropout
        upstream = needs_q or needs_k or needs_bias
        # eq. T7 on O = P̃V
        wanted = p_dropped if needs_v else None, v if upstream else None
        grad_p, grad_v = product_grads(delta, *wanted, p.shape, v.shape)  # eq. T10: ∂e/∂P̃ = δVᴴ, ∂e/∂V = P̃ᴴδ
        grad_query = grad_key = grad_value = grad_bias = None
        if needs_v:
            grad_value = sum_heads(grad_v, groups).to(value.dtype)
        if upstream:
            if dropout is not None:
                grad_p = grad_p * dropout  # eq. D4: ∂e/∂P = ∂e/∂P̃ ⊙ Z/(1−p)
            if flash:
                # torch's fused CPU kernel's sum (its NaN and infinities): Σ_j P ⊙ ∂e/∂P = Σ δ ⊙ O, as ∂e/∂P = δVᴴ;
                # where both are finite, Σ_j P ⊙ ∂e/∂P itself: with the P it multiplies, Σ_j ∂e/∂S = 0 as rounded
                # (O's rounding is not P's: with one weight near 1 the difference cancels down to that error)
                out = matmul(p_dropped, v) if torch.is_grad_enabled() else upcast(out)
                fused = (delta * out.conj()).sum(-1, keepdim=True)  # eq. T11: Σ δ ⊙ O
                row = (p * grad_p).sum(-1, keepdim=True)  # eq. T11: Σ_j P ⊙ ∂e/∂P
                row = torch.where(fused.isfinite() & row.isfinite(), row, fused)
                grad_scores = p * (grad_p - row)  # eq. T11: ∂e/∂S = P ⊙ (∂e/∂P − Σ P ⊙ ∂e/∂P)
            else:
                grad_scores = softmax_grad(p, grad_p, -1)  # eq. T11: ∂e/∂S = P ⊙ (∂e/∂P − Σ P ⊙ ∂e/∂P)
            if needs_bias:
                grad_bias = _sum_to(grad_scores, bias.shape).to(bias.dtype)  # eq. T11: ∂e/∂M = ∂e/∂S, summed
            scaled = grad_scores * scale
            if needs_q:  # eq. T7 on S = s·QKᵀ
                grad_q = product_grads(scaled, None, k.mT, q.shape, k.mT.shape)[0]  # eq. T12: ∂e/∂Q = s·∂e/∂S·K
                grad_query = grad_q.to(query.dtype)
            if needs_k:
                if k.dim() > 2:  # eq. T7 on S = s·QKᵀ for Kᵀ, transposed back: torch's math path's layout
                    grad_k = product_grads(scaled, q, None, q.shape, k.mT.shape)[1].mT  # eq. T12: s·((∂e/∂S)ᵀQ)
                else:  # eq. T7 on Sᵀ = s·KQᵀ (mm's backward keeps a matrix Kᵀ's gradient column-major)
                    grad_k = product_grads(scaled.mT, None, q.mT, k.shape, q.mT.shape)[0]  # eq. T12: s·(∂e/∂S)ᵀQ
                grad_key = sum_heads(grad_k, groups).to(key.dtype)
        if flash:
            grad_query, grad_key, grad_value = map(_heads_interleaved, (grad_query, grad_key, grad_value))
        return grad_query, grad_key, grad_value, grad_bias, None, None, None, None

    @staticmethod
    def jvp(ctx, query_t, key_t, value_t, bias_t, *_):
        query, key, value, bias, keep, dropout, p = ctx.saved_tensors
        scale, groups = ctx.scale, ctx.groups
        q, k, v = upcast(query), expand_heads(upcast(key), groups), expand_heads(upcast(value), groups)
        scores_t = torch.zeros_like(p)
        if query_t is not None:
            scores_t = scores_t + matmul(upcast(query_t), k.mT) * scale  # eq. T13: Ṡ = s·Q̇Kᵀ ...
        if key_t is not None:
            scores_t = scores_t + matmul(q, expand_heads(upcast(key_t), groups).mT) * scale  # eq. T13: + s·QK̇ᵀ
        if bias_t is not None:
            scores_t = scores_t + upcast(bias_t)  # eq. T13: + Ṁ
        if keep is not None:
            scores_t = scores_t.masked_fill(keep.logical_not(), 0.0)  # a masked score stays −∞
        p_t = softmax_grad(p, scores_t, -1)  # eq. T13: Ṗ = P ⊙ (Ṡ − Σ P ⊙ Ṡ), eq. D5 forward
        p_dropped, p_dropped_t = (p, p_t) if dropout is None else (p * dropout, p_t * dropout)
        out_t = matmul(p_dropped_t, v)  # eq. T13: Ȯ = Ṗ̃V ...
        if value_t is not None:
            out_t = out_t + matmul(p_dropped, expand_heads(upcast(value_t), groups))  # eq. T13: + P̃V̇
        return out_t.to(query.dtype), None
