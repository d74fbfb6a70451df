"""The backward's matrix products on torch's ``@`` (MKL on the CPU) against oneDNN's (``bp_torch._gemm``), on the
shapes of real layers: interleaved in random order, medians, one thread, and each one's distance from the float64
product (max error over max value, in float32 ulps)::

    python benchmarks/gemm.py            # the table
    python benchmarks/gemm.py --quick    # two shapes, three repeats (the test suite runs this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from timing import medians_in_random_order, one_thread_rounds  # noqa: E402

from bp_torch import _gemm  # noqa: E402

# (what, M, K, N): a (M × K) times b (K × N)
SHAPES = [
    ("vit_b_16 qkv ∂e/∂x, 8x5 tokens", 40, 2304, 768),
    ("vit_b_16 qkv ∂e/∂W", 2304, 40, 768),
    ("vit_b_16 MLP ∂e/∂x", 40, 3072, 768),
    ("swin_t MLP ∂e/∂W, 8x64 tokens", 384, 512, 96),
    ("resnext50 1x1 512→1024 ∂e/∂k, 4x4 maps", 1024, 256, 512),
    ("resnet18 1x1 64→128 ∂e/∂k, 16x16 maps", 128, 4096, 64),
    ("vgg11 3x3 256→512 ∂e/∂k (im2col), 8x8 maps", 512, 1024, 2304),
    ("at the threshold, 2^21 multiply-adds", 128, 128, 128),
    ("under it: a LeNet layer, b64", 64, 64, 12),
]


def _ulps(c: torch.Tensor, reference: torch.Tensor) -> float:
    return ((c.double() - reference).abs().max() / reference.abs().max()).item() / torch.finfo(torch.float32).eps


def main(argv=None) -> None:
    quick, repeats = one_thread_rounds(argv, __doc__.splitlines()[0], 21, "two shapes")
    shapes = SHAPES[:1] + SHAPES[-1:] if quick else SHAPES
    print("| product | M·K·N | torch's @ | oneDNN | ratio | error @, oneDNN (ulps of the largest value) |")
    print("|---|---|---|---|---|---|")
    for what, M, K, N in shapes:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(M, K, generator=gen), torch.randn(K, N, generator=gen)
        runs = {"torch": lambda a=a, b=b: a @ b, "onednn": lambda a=a, b=b: _gemm.matmul(a, b)}
        t = {k: seconds * 1e6 for k, seconds in medians_in_random_order(runs, repeats).items()}
        reference = a.double() @ b.double()
        on = "" if _gemm.runs_onednn(a, b) else " (torch's @: under the threshold)"
        errors = f"{_ulps(a @ b, reference):.1f}, {_ulps(_gemm.matmul(a, b), reference):.1f}"
        ratio = t["onednn"] / t["torch"]
        print(f"| {what}{on} | {M * K * N:,} | {t['torch']:.0f} µs | {t['onednn']:.0f} µs | {ratio:.2f} | {errors} |")


if __name__ == "__main__":
    main()
