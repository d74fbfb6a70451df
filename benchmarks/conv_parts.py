"""Each gradient of one strided convolution timed alone, ours (each formulation of eq. 14/40) against native's.

Shows where the 'conv2d 3x3 pad 1 stride 2' row of bench.py loses its time::

    python benchmarks/conv_parts.py            # N=32, 64 -> 64 channels, 56x56, 3x3, stride 2, padding 1
    python benchmarks/conv_parts.py --quick    # tiny shapes: a smoke test, not a measurement

Native's gradients come from ``aten.convolution_backward``, here only as the yardstick (never in bp_torch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bp_torch import _conv  # noqa: E402


def best_ms(parts: dict, number: int, repeats: int) -> dict[str, float]:
    """Per part, the best of ``repeats`` averages over ``number`` calls, in ms; the parts take turns in every
    round, so a change in the machine's load hits all of them alike."""
    best = dict.fromkeys(parts, float("inf"))
    for _ in range(repeats):
        for name, fn in parts.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return {name: seconds * 1e3 for name, seconds in best.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one call each (default: off)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    N, C, L = (2, 4, 8) if args.quick else (32, 64, 56)
    number, repeats = (1, 1) if args.quick else (3, 9)
    k, stride, padding, dilation = (3, 3), (2, 2), (1, 1), (1, 1)
    x, w = torch.randn(N, C, L, L), torch.randn(C, C, *k)
    d = torch.randn_like(F.conv2d(x, w, None, stride, padding))
    opts = (stride, padding, dilation, 1)

    def native(input_grad: bool, weight_grad: bool):
        mask = [input_grad, weight_grad, False]
        return lambda: torch.ops.aten.convolution_backward(
            d, x, w, None, stride, padding, dilation, False, [0, 0], 1, mask
        )

    def unfold_matmul():  # eq. 40 as im2col + one batched matmul, summed over the batch
        cols = F.unfold(x, k, dilation, padding, stride)
        return (d.flatten(2) @ cols.transpose(1, 2)).sum(0)

    parts = {
        "forward (eq. 10)": lambda: F.conv2d(x, w, None, stride, padding),
        "ours dx: transposed convolution (eq. 14)": lambda: _conv.transposed_convolution(d, w, (L, L), *opts),
        "ours dk: per-tap matmuls (eq. 40), all": lambda: _conv.per_tap(x, d, k, *opts),
        "  of which: padding and splitting x into stride phases": lambda: _conv.stride_phases(x, stride, padding, 1),
        "ours dk: batch-as-channels convolution (eq. 40)": lambda: _conv.batch_as_channels(x, d, k, *opts),
        "ours dk: unfold + batched matmul (eq. 40)": unfold_matmul,
        "native dx and dk": native(True, True),
        "native dx": native(True, False),
        "native dk": native(False, True),
    }
    print(
        f"x {tuple(x.shape)}, k {tuple(w.shape)}, stride {stride}, padding {padding}, {torch.get_num_threads()} threads"
    )
    for name, ms in best_ms(parts, number, repeats).items():
        print(f"{name:56s} {ms:9.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
