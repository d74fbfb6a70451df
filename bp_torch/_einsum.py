"""``torch.einsum`` of two operands, lowered as torch lowers it (``einsum`` and ``sumproduct_pair`` in ATen's
Linear.cpp), with each step's backward ours: :func:`bp_torch.functional.bmm` for a contraction (eq. T7),
:func:`bp_torch.functional.mul` where nothing is contracted (eq. E1), :func:`bp_torch.functional.sum` for an index
summed within one operand (eq. R1), and between them permutations, reshapes and views that only move data.

Lowered step by step as torch's, the output and every gradient come back in torch's layout, and each product
rounds where torch's does. One operand or three, an ellipsis or a repeated index (a diagonal) is
``torch.einsum``'s own.
"""

from __future__ import annotations

import math
import string

import torch

from bp_torch import functional as BF

# torch's order of the labels it adds after the output's, the contracted ones: A–Z, then a–z
_LABEL_ORDER = {label: i for i, label in enumerate(string.ascii_uppercase + string.ascii_lowercase)}


def einsum(*args) -> torch.Tensor:
    """As :func:`torch.einsum`, with hand-derived backwards where the equation has two operands.

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
    terms, labels, kept = plan
    a, b = (_aligned(x, term, labels) for x, term in zip(operands, terms))
    sum_dims, a_sums, b_sums = [], [], []
    for d in range(kept, len(labels)):  # a contracted index: in a product if both have it, else summed where it is
        if a.shape[d] != 1 and b.shape[d] != 1:
            sum_dims.append(d)
        elif a.shape[d] != 1:
            a_sums.append(d)
        elif b.shape[d] != 1:
            b_sums.append(d)
    if a_sums:
        a = BF.sum(a, a_sums, keepdim=True)  # eq. R1
    if b_sums:
        b = BF.sum(b, b_sums, keepdim=True)  # eq. R1
    c = _sum_of_products(a, b, sum_dims)
    if kept == len(labels):
        return c
    return c.view(c.shape[:kept])  # the contracted indices, now of size 1, dropped


def _aligned(x: torch.Tensor, term: str, labels: list[str]) -> torch.Tensor:
    """``x`` with one dimension per label, in ``labels``' order: a label it lacks is a dimension of size 1, added
    after its own dimensions before the permutation, as torch's einsum adds it (the strides follow)."""
    permutation = [term.index(label) if label in term else -1 for label in labels]
    for position, dim in enumerate(permutation):
        if dim == -1:
            permutation[position] = x.dim()
            x = x.unsqueeze(x.dim())
    return x.permute(permutation)


def _sum_of_products(left: torch.Tensor, right: torch.Tensor, sum_dims: list[int]) -> torch.Tensor:
    """Σ over ``sum_dims`` of left ⊙ right (dimensions aligned, the summed ones kept with size 1), as torch's
    ``sumproduct_pair``: a product ⊙ if nothing is summed, else one batched matrix product whose batch is the
    dimensions both have (lro), its rows left's alone (lo), its columns right's alone (ro); a view of it permuted
    back."""
    if not sum_dims:
        return BF.mul(left, right)  # eq. E1
    lro, lo, ro = [], [], []
    for d in range(left.dim()):
        if d in sum_dims:
            continue
        if left.shape[d] != 1 and right.shape[d] != 1:
            lro.append(d)
        elif left.shape[d] != 1:
            lo.append(d)
        else:
            ro.append(d)
    if lo and ro and ro[-1] < lo[0]:  # right's dimensions all come first: swapped, the product is laid out in order
        left, right, lo, ro = right, left, ro, lo
    sizes = [math.prod(left.shape[d] for d in group) for group in (lro, lo)]
    sum_size, ro_size = math.prod(left.shape[d] for d in sum_dims), math.prod(right.shape[d] for d in ro)
    a = left.permute(lro + lo + sum_dims + ro).reshape(sizes[0], sizes[1], sum_size)
    b = right.permute(lro + sum_dims + ro + lo).reshape(sizes[0], sum_size, ro_size)
    c = BF.bmm(a, b)  # eq. T7
    order = lro + lo + sum_dims + ro
    shape = [left.shape[d] for d in lro + lo] + [1] * len(sum_dims) + [right.shape[d] for d in ro]
    return c.view(shape).permute([order.index(d) for d in range(left.dim())])


def _plan(equation, operands):
    """The two operands' terms, all labels in torch's order (the output's, then the contracted ones) and how many
    are the output's; None where torch's einsum computes it (or raises)."""
    if not isinstance(equation, str) or len(operands) != 2 or not all(isinstance(t, torch.Tensor) for t in operands):
        return None
    if "." in equation:  # an ellipsis
        return None
    equation = equation.replace(" ", "")
    inputs, arrow, out = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != 2 or not all(t.isalpha() and t.isascii() for t in terms) or (out and not out.isalpha()):
        return None
    if any(len(set(t)) != len(t) for t in (*terms, out)) or any(len(t) != x.dim() for t, x in zip(terms, operands)):
        return None
    if not arrow:  # torch's implicit output: the labels seen once, A–Z then a–z
        both = terms[0] + terms[1]
        out = "".join(sorted((i for i in set(both) if both.count(i) == 1), key=_LABEL_ORDER.get))
    if not set(out) <= set(terms[0] + terms[1]):
        return None
    contracted = sorted(set(terms[0] + terms[1]) - set(out), key=_LABEL_ORDER.get)
    size = {}
    for term, x in zip(terms, operands):
        for label, n in zip(term, x.shape):
            if n != 1 and size.setdefault(label, n) != n:
                return None  # sizes that do not broadcast: torch's einsum raises
    return terms, list(out) + contracted, len(out)
