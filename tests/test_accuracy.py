"""float32 accuracy: against a float64 reference, bp_torch's float32 weight gradient is at most twice as far off as
native's, plus eight ulps of its largest value (oneDNN's matrix product, bp_torch._gemm, sums each dot product in
one chain: 5–9 ulps where MKL's blocked sums are 2–4), on the benchmark's layers and the 1x1 layers whose gradient
batch_as_channels summed up to 6x further off.

The error of a gradient g is max|g − g64| / max|g64|, g64 the float64 gradient of the same float32 values. CPU only:
the claim is about the order the CPU formulations sum in (bp_torch._conv), at the suite's thread count (one,
tests/conftest.py; the summation order, and so the error, changes with the number of threads)."""

import pytest
import torch
import torch.nn.functional as F

from bp_torch import functional as BF

# (name, input shape, weight shape, options)
LAYERS = [
    ("LeNet C1 b64", (64, 1, 28, 28), (6, 1, 5, 5), {}),
    ("LeNet C2 b64", (64, 6, 12, 12), (12, 6, 5, 5), {}),
    ("3x3 pad 1", (8, 32, 28, 28), (32, 32, 3, 3), {"padding": 1}),
    ("3x3 pad 1 stride 2", (8, 32, 28, 28), (64, 32, 3, 3), {"padding": 1, "stride": 2}),
    ("depthwise 3x3", (8, 32, 28, 28), (32, 1, 3, 3), {"padding": 1, "groups": 32}),
    ("1x1 ResNet", (8, 64, 28, 28), (64, 64, 1, 1), {}),
    # the 1x1 layers small enough for batch_as_channels, which summed them 4-6x further off than native
    ("1x1 16->32 on 7x7 b32", (32, 16, 7, 7), (32, 16, 1, 1), {}),
    ("1x1 16->128 on 7x7 b32", (32, 16, 7, 7), (128, 16, 1, 1), {}),
    ("1x1 16->128 stride 2 b32", (32, 16, 14, 14), (128, 16, 1, 1), {"stride": 2}),
    ("1x1 64->128 stride 2 b8", (8, 64, 14, 14), (128, 64, 1, 1), {"stride": 2}),
    ("1x1 256->32 on 7x7 b8", (8, 256, 7, 7), (32, 256, 1, 1), {}),
    # the layers whose ∂e/∂k is an im2col product on oneDNN (bp_torch._gemm): one product over the batch, and a 7x7
    # stem's a sample at a time
    ("3x3 32->192 on 8x8 b16", (16, 32, 8, 8), (192, 32, 3, 3), {"padding": 1}),
    ("3x3 stem stride 2 b16", (16, 3, 64, 64), (32, 3, 3, 3), {"stride": 2, "padding": 1}),
    ("7x7 stem stride 2 b4", (4, 3, 64, 64), (64, 3, 7, 7), {"stride": 2, "padding": 3}),
]


def _error(g: torch.Tensor, reference: torch.Tensor) -> float:
    return ((g.double() - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("x_shape, w_shape, options", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_float32_weight_gradient_within_twice_natives_error_and_eight_ulps(x_shape, w_shape, options):
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    delta = torch.randn_like(F.conv2d(x, w, **options))
    w64 = w.double().requires_grad_()
    (reference,) = torch.autograd.grad(F.conv2d(x.double(), w64, **options), w64, delta.double())
    errors = {}
    for name, conv in (("ours", BF.conv2d), ("native", F.conv2d)):
        w32 = w.clone().requires_grad_()
        (g,) = torch.autograd.grad(conv(x, w32, **options), w32, delta)
        errors[name] = _error(g, reference)
    assert errors["ours"] <= 2 * errors["native"] + 8 * torch.finfo(torch.float32).eps, errors
