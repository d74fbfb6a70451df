"""bp_torch._gemm: the matrix products of the backward formulas on oneDNN where it is the faster kernel, torch's ``@``
everywhere else, the same product either way."""

import pytest
import torch

from bp_torch import _gemm

needs_onednn = pytest.mark.skipif(_gemm._LINEAR is None, reason="torch built without oneDNN's matrix product")


def _error(g: torch.Tensor, reference: torch.Tensor) -> float:
    return ((g.double() - reference).abs().max() / reference.abs().max()).item()


@needs_onednn
@pytest.mark.parametrize(
    "a_shape, b_shape",
    [((40, 768), (768, 2304)), ((8, 5, 768), (768, 3072)), ((2304, 40), (40, 768)), ((1, 64, 4096), (1, 4096, 128))],
    ids=["vit-qkv-input-grad", "batched-rows", "weight-grad-short-sum", "one-group-im2col"],
)
def test_onednn_product_is_the_product(a_shape, b_shape):
    """The products of eq. 7/8 on oneDNN: torch's shape, dtype and contiguous layout, and as close to the float64
    product as twice torch's distance plus eight ulps of its largest value (oneDNN's measured 5–9 ulps where MKL's
    are 2–4: it sums each dot product in one chain)."""
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    assert _gemm.runs_onednn(a, b[0] if b.dim() == 3 else b)
    ours, theirs = _gemm.matmul(a, b), a @ b
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype and ours.is_contiguous()
    reference = a.double() @ b.double()
    assert _error(ours, reference) <= 2 * _error(theirs, reference) + 8 * torch.finfo(torch.float32).eps


@needs_onednn
def test_transposed_operands_are_read_as_they_are():
    """Linear's weight gradient δᵀx and its input gradient δW: views of transposed matrices, no copy needed."""
    delta, x, w = torch.randn(512, 256), torch.randn(512, 128), torch.randn(256, 128)
    torch.testing.assert_close(_gemm.matmul(delta.T, x), delta.T @ x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(_gemm.matmul(delta, w), delta @ w, rtol=1e-5, atol=1e-4)


def test_everything_else_runs_torchs_product(monkeypatch):
    """Small products, other dtypes, a recorded graph, oneDNN turned off, torch.func: torch's own ``@``."""
    calls = []
    monkeypatch.setattr(_gemm, "_LINEAR", lambda *args: calls.append(args) or pytest.fail("oneDNN ran"))
    large = torch.randn(256, 256)
    cases = [
        (torch.randn(8, 8), torch.randn(8, 8)),  # under oneDNN's fixed cost
        (large.double(), large.double()),
        (large.to(torch.bfloat16), large.to(torch.bfloat16)),
        (large.to(torch.complex64), large.to(torch.complex64)),
        (large.requires_grad_(), large),  # a graph of the product is being recorded
    ]
    for a, b in cases:
        torch.testing.assert_close(_gemm.matmul(a, b), a @ b)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not _gemm.runs_onednn(large.detach(), large.detach())
    torch.func.vmap(lambda a: _gemm.matmul(a, large.detach()))(torch.randn(2, 256, 256))
    assert not calls


@needs_onednn
def test_graph_off_large_float32_runs_onednn():
    a, b = torch.randn(256, 256, requires_grad=True), torch.randn(256, 256)
    with torch.no_grad():
        assert _gemm.runs_onednn(a, b)
    assert not _gemm.runs_onednn(a, b)
    assert _gemm.runs_onednn(a.detach(), b)


@needs_onednn
def test_linear_gradients_on_onednn_against_float64():
    """A vit_b_16-sized Linear's ∂e/∂x and ∂e/∂W, whose products run on oneDNN: each as close to the float64 gradient
    as twice torch's own distance plus eight ulps of its largest value."""
    from bp_torch import functional as BF

    x, w, delta = torch.randn(8, 5, 768), torch.randn(2304, 768), torch.randn(8, 5, 2304)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    references = torch.autograd.grad(torch.nn.functional.linear(x64, w64), (x64, w64), delta.double())
    grads = {}
    for name, linear in (("ours", BF.linear), ("torch", torch.nn.functional.linear)):
        x32, w32 = x.clone().requires_grad_(), w.clone().requires_grad_()
        grads[name] = torch.autograd.grad(linear(x32, w32), (x32, w32), delta)
    for ours, theirs, reference in zip(grads["ours"], grads["torch"], references):
        assert _error(ours, reference) <= 2 * _error(theirs, reference) + 8 * torch.finfo(torch.float32).eps
