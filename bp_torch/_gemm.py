"""Which kernel computes a matrix product inside a backward formula (Note A eq. 7/8 and their batched and im2col
forms): the same product, another library.

On the CPU, ``a @ b`` runs the BLAS torch was built with (MKL). torch also carries oneDNN's matrix product, the one
its compiled CPU graphs run for Linear layers (``torch.ops.mkldnn._linear_pointwise``, y = x Wᵀ); for float32
products of two million multiply-adds and more it is about twice as fast on the AMD EPYC measured, where py-spy
shows MKL in its Zen kernel and oneDNN in its own JIT-generated code (benchmarks/README.md, "oneDNN's matrix
product"); under that size its fixed cost loses. Only the order of the sums inside each dot product differs:
tests/test_gemm.py judges it against a float64 reference.

It runs where nothing else can be asked of the result: float32 CPU tensors of the strided layout, no graph of the
product being recorded, no torch.func transform, legacy vmap or torch.compile at work, and oneDNN enabled
(``torch.backends.mkldnn.flags(enabled=False)`` turns it off, as it turns off torch's own oneDNN convolutions).
"""

from __future__ import annotations

import torch

from bp_torch._function import batched_or_traced

__all__ = ["matmul", "onednn_takes", "runs_onednn"]

# the fewest multiply-adds at which oneDNN's product is the faster (benchmarks/README.md)
MIN_MULTIPLY_ADDS = 2**21


def _onednn_product():
    """oneDNN's product, if this build has it and it runs here (one tiny product tried: a CPU it does not support
    raises), else None."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        linear = torch.ops.mkldnn._linear_pointwise.default
        with torch.no_grad():
            linear(torch.ones(2, 2), torch.ones(2, 2), None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):  # a build without the operator, a CPU without it
        return None
    return linear


_LINEAR = _onednn_product()


def onednn_takes(t: torch.Tensor) -> bool:
    """Whether a large enough product of operands like ``t`` (its type, dtype, layout and device; no graph of it
    recorded; no transform at work) runs on oneDNN."""
    if torch.compiler.is_compiling() or _LINEAR is None or not torch.backends.mkldnn.enabled:
        return False  # a compiled graph: its own choice of kernels (Dynamo would have to trace this check)
    if type(t) is not torch.Tensor or t.dtype != torch.float32 or t.layout != torch.strided or t.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and t.requires_grad:  # a graph of the product is wanted
        return False
    return not batched_or_traced(t)


def runs_onednn(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`matmul` computes ``a @ b`` (``a`` of shape (..., M, K), ``b`` a (K, N) matrix) with oneDNN."""
    if torch.compiler.is_compiling() or a.dim() < 2 or b.dim() != 2 or a.shape[-1] != b.shape[0]:
        return False
    if a.numel() * b.shape[1] < MIN_MULTIPLY_ADDS:  # M·K·N (every leading dimension of a folded into M)
        return False
    return onednn_takes(a) and onednn_takes(b)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``: oneDNN's product where :func:`runs_onednn` says so, torch's ``@`` otherwise. A ``b`` with one
    leading dimension of size 1 (a batch of one matrix) is that matrix."""
    if b.dim() == 3 and b.shape[0] == 1 and a.dim() == 3:
        if runs_onednn(a, b[0]):
            return _LINEAR(a, b[0].mT, None, "none", [], "")  # y = a (bᵀ)ᵀ = a b
    elif runs_onednn(a, b):
        return _LINEAR(a, b.mT, None, "none", [], "")  # y = a (bᵀ)ᵀ = a b
    return a @ b
