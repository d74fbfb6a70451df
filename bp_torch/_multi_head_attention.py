"""``torch.nn.functional.multi_head_attention_forward`` made of bp_torch's operations.

The projections are :func:`bp_torch.functional.linear` (Note A eq. 5, 7, 8), the attention
:func:`bp_torch.functional.scaled_dot_product_attention` (eq. T9–T12) or, when the weights are returned, ``baddbmm``,
``softmax``, ``dropout`` and ``bmm`` (eq. T7, T8, D4, D5); what remains moves data (views, transposes, chunks,
concatenations). Argument checks and mask handling are torch's own helpers, so torch's shapes, masks and errors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bp_torch import functional as BF


def multi_head_attention_forward(
    query,
    key,
    value,
    embed_dim_to_check,
    num_heads,
    in_proj_weight,
    in_proj_bias,
    bias_k,
    bias_v,
    add_zero_attn,
    dropout_p,
    out_proj_weight,
    out_proj_bias,
    training=True,
    key_padding_mask=None,
    need_weights=True,
    attn_mask=None,
    use_separate_proj_weight=False,
    q_proj_weight=None,
    k_proj_weight=None,
    v_proj_weight=None,
    static_k=None,
    static_v=None,
    average_attn_weights=True,
    is_causal=False,
    *,
    out_proj_feedback=None,
):
    """As :func:`torch.nn.functional.multi_head_attention_forward`, every differentiated step bp_torch's;
    ``out_proj_feedback``: the output projection's feedback matrix under a backward rule (:mod:`bp_torch.feedback`).

    Example::

        >>> E = 4
        >>> x = torch.randn(3, 2, E)  # (L, N, E)
        >>> w, w_out = torch.randn(3 * E, E), torch.randn(E, E)
        >>> out, weights = multi_head_attention_forward(x, x, x, E, 2, w, None, None, None, False, 0.0, w_out, None)
        >>> out.shape, weights.shape
        (torch.Size([3, 2, 4]), torch.Size([2, 3, 3]))
    """
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not is_batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=query.dtype,
    )
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
            "`generate_square_subsequent_mask` to create this mask."
        )
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # the causal hint alone: scaled_dot_product_attention builds the mask
    else:
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=query.dtype,
            check_other=False,
        )  # fmt: skip
        if key_padding_mask is not None:
            is_causal = False
    if embed_dim != embed_dim_to_check:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim_to_check}, but got {embed_dim}")
    head_dim = embed_dim // num_heads
    if head_dim * num_heads != embed_dim:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    if use_separate_proj_weight:
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(
                f"key's sequence and batch dims {key.shape[:2]} do not match value's {value.shape[:2]}"
            )
        if q_proj_weight is None or k_proj_weight is None or v_proj_weight is None:
            raise AssertionError(
                "use_separate_proj_weight is True but q_proj_weight, k_proj_weight or v_proj_weight is None"
            )
        biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
        q, k, v = (BF.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))
    else:
        if key.shape != value.shape:
            raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
        if in_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is False but in_proj_weight is None")
        q, k, v = _packed_projection(query, key, value, in_proj_weight, in_proj_bias)

    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if attn_mask.shape != (tgt_len, key.shape[0]):
                raise RuntimeError(
                    f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be {(tgt_len, key.shape[0])}."
                )
            attn_mask = attn_mask.unsqueeze(0)
        elif attn_mask.dim() == 3:
            if attn_mask.shape != (bsz * num_heads, tgt_len, key.shape[0]):
                raise RuntimeError(
                    f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                    f"{(bsz * num_heads, tgt_len, key.shape[0])}."
                )
        else:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
    if bias_k is not None and bias_v is not None:
        if static_k is not None or static_v is not None:
            raise AssertionError("bias cannot be added to static key or value.")
        k = torch.cat([k, bias_k.expand(1, bsz, embed_dim)])  # a learnt key and value appended to the sequence
        v = torch.cat([v, bias_v.expand(1, bsz, embed_dim)])
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    elif bias_k is not None or bias_v is not None:
        raise AssertionError("bias_k and bias_v must be given together")

    q = q.reshape(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = _heads(k, static_k, bsz * num_heads, head_dim, "static_k")
    v = _heads(v, static_v, bsz * num_heads, head_dim, "static_v")
    if add_zero_attn:
        k = torch.cat([k, k.new_zeros(bsz * num_heads, 1, head_dim)], dim=1)
        v = torch.cat([v, v.new_zeros(bsz * num_heads, 1, head_dim)], dim=1)
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    src_len = k.size(1)
    if key_padding_mask is not None:
        F._check_key_padding_mask(key_padding_mask, src_len, bsz)
        key_padding_mask = (
            key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, num_heads, -1, -1).reshape(bsz * num_heads, 1, src_len)
        )
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    if not training:
        dropout_p = 0.0

    if need_weights:
        if is_causal and attn_mask is None:
            raise AssertionError("FIXME: is_causal not implemented for need_weights")
        scale = math.sqrt(1.0 / float(q.shape[-1]))
        if attn_mask is not None:  # eq. T8: M + s·QKᵀ
            scores = BF.baddbmm(attn_mask, q, k.transpose(-2, -1), alpha=scale)
        else:
            scores = BF.baddbmm(q.new_zeros(()), q, k.transpose(-2, -1), beta=0, alpha=scale)
        weights = BF.softmax(scores, dim=-1)  # eq. D5
        if dropout_p > 0.0:
            weights = BF.dropout(weights, p=dropout_p)  # eq. D4
        out = BF.bmm(weights, v)  # eq. T7
        out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
        out = BF._linear(out, out_proj_weight, out_proj_bias, out_proj_feedback)
        out = out.view(tgt_len, bsz, out.size(1))  # sizes, not -1: an empty batch or sequence has no -1 to infer
        weights = weights.view(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            out, weights = out.squeeze(1), weights.squeeze(0)
        return out, weights

    if attn_mask is not None:
        if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
        else:
            attn_mask = attn_mask.view(bsz, num_heads, -1, src_len)
    q = q.view(bsz, num_heads, tgt_len, head_dim)
    k = k.view(bsz, num_heads, src_len, head_dim)
    v = v.view(bsz, num_heads, src_len, head_dim)
    out = BF.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)  # eq. T9–T12
    out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
    out = BF._linear(out, out_proj_weight, out_proj_bias, out_proj_feedback)
    out = out.view(tgt_len, bsz, out.size(1))
    return (out.squeeze(1) if not is_batched else out), None


def _packed_projection(query, key, value, w, b):
    """q, k, v projected by the packed ``(3E, E)`` weight: one product where the inputs are one tensor."""
    E = query.size(-1)
    if key is value and query is key:  # self-attention: one product, cut in three
        return BF.linear(query, w, b).chunk(3, dim=-1)
    w_q, w_kv = w.split([E, 2 * E])
    b_q, b_kv = b.split([E, 2 * E]) if b is not None else (None, None)
    if key is value:
        return (BF.linear(query, w_q, b_q), *BF.linear(key, w_kv, b_kv).chunk(2, dim=-1))
    w_k, w_v = w_kv.chunk(2)
    b_k, b_v = b_kv.chunk(2) if b_kv is not None else (None, None)
    return BF.linear(query, w_q, b_q), BF.linear(key, w_k, b_k), BF.linear(value, w_v, b_v)


def _heads(t, static, batch_heads: int, head_dim: int, name: str):
    """``(S, N, E)`` as ``(N·heads, S, head_dim)``, or the given static key/value, checked as torch checks it."""
    if static is None:
        return t.reshape(t.shape[0], batch_heads, head_dim).transpose(0, 1)
    if static.size(0) != batch_heads:
        raise AssertionError(f"expecting {name}.size(0) of {batch_heads}, but got {static.size(0)}")
    if static.size(2) != head_dim:
        raise AssertionError(f"expecting {name}.size(2) of {head_dim}, but got {static.size(2)}")
    return static
