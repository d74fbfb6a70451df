"""``torch.einsum`` of two operands whose product is a batched matrix product, computed by
:func:`bp_torch.functional.matmul` (eq. T7) between permutations and reshapes that only move data.

Each index of such an equation is a batch index (in both operands and the output), a contracted one (in both
operands, not the output), or belongs to one operand and the output. Anything else — one operand or three, an
ellipsis, a repeated index (a diagonal), an index summed within one operand — is ``torch.einsum``'s own.
"""

from __future__ import annotations

import math

import torch

from bp_torch import functional as BF


def einsum(*args) -> torch.Tensor:
    """As :func:`torch.einsum`, with the backward of eq. T7 where the equation is a batched matrix product.

    Example::

        >>> q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
        >>> einsum("bid,bjd->bij", q, k).shape
        torch.Size([2, 3, 5])
    """
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    plan = _plan(equation, operands)
    if plan is None:
        return torch.einsum(equation, *operands)
    a, b = operands
    (a_in, b_in, out), batch, left, contracted, right = plan
    size = {**dict(zip(a_in, a.shape)), **dict(zip(b_in, b.shape))}
    a_size, b_size = dict(zip(a_in, a.shape)), dict(zip(b_in, b.shape))
    size.update({i: b_size[i] if a_size[i] == 1 else a_size[i] for i in batch})  # broadcast: a size 1 takes the other
    n = [math.prod(size[i] for i in group) for group in (batch, left, contracted, right)]
    dtype = a.dtype
    broadcast = any(a_size[i] != b_size[i] for i in batch)
    if broadcast and dtype in (torch.float16, torch.bfloat16):
        # the gradient of a broadcast operand sums one product per copy: in float32, rounded once (torch's einsum
        # contracts the copies inside one product), not once per copy; the product itself as torch's kernel, in
        # float32 rounded once
        a, b = a.float(), b.float()
    # as one bmm (a batch of one where there is none: torch's einsum's kernel, whose complex infinities differ from
    # mm's), broadcast batches expanded: the gradients' layouts are torch's einsum's
    a = a.permute([a_in.index(i) for i in batch + left + contracted])
    a = a.expand(*(size[i] for i in batch), *a.shape[len(batch) :]).reshape(n[0], n[1], n[2])
    b = b.permute([b_in.index(i) for i in batch + contracted + right])
    b = b.expand(*(size[i] for i in batch), *b.shape[len(batch) :]).reshape(n[0], n[2], n[3])
    c = BF.matmul(a, b).reshape([size[i] for i in batch + left + right]).to(dtype)  # eq. T7
    order = batch + left + right
    if order == out:
        return c
    return c.permute([order.index(i) for i in out]).contiguous()  # laid out plainly, as torch's result


def _plan(equation, operands):
    """The index groups (batch, left, contracted, right) of a two-operand matrix-product equation, else None."""
    if len(operands) != 2 or not all(isinstance(t, torch.Tensor) for t in operands) or "." in equation:
        return None
    equation = equation.replace(" ", "")
    inputs, arrow, out = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != 2 or any(len(set(t)) != len(t) for t in (*terms, out)):
        return None
    a_in, b_in = terms
    if not arrow:  # torch's implicit output: the indices seen once, in alphabetical order
        out = "".join(sorted(i for i in set(a_in + b_in) if (a_in + b_in).count(i) == 1))
    if any(len(t) != x.dim() for t, x in zip(terms, operands)) or not set(out) <= set(a_in + b_in):
        return None
    batch = [i for i in a_in if i in b_in and i in out]
    contracted = [i for i in a_in if i in b_in and i not in out]
    left = [i for i in a_in if i not in b_in]
    right = [i for i in b_in if i not in a_in]
    if any(i not in out for i in left + right):  # an index summed within one operand
        return None
    sizes = [(dict(zip(a_in, operands[0].shape))[i], dict(zip(b_in, operands[1].shape))[i]) for i in batch + contracted]
    if any(x != y and 1 not in (x, y) for x, y in sizes) or any(x != y for x, y in sizes[len(batch) :]):
        return None  # torch's einsum decides (and raises)
    return (list(a_in), list(b_in), list(out)), batch, left, contracted, right
