"""A transformer's SGD training step, convert()-ed against native, interleaved, one thread, medians:

    python benchmarks/transformer_step.py                      # vit_b_16, 8 images of 32x32 (5 tokens)
    python benchmarks/transformer_step.py --model vit_b_16 --size 64 --batch 8 --repeats 7

Prints each side's median step time and the ratio (manual/native), then each side's peak memory of a step (bench.py's
profiler count) and its ratio; ratios, not times, are the figures to quote.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench.py beside it

from bp_torch import functional as BF  # noqa: E402
from bp_torch import nn as bnn  # noqa: E402


def step_of(name: str, impl: str, batch: int, size: int):
    import torchvision

    torch.manual_seed(0)
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    model = getattr(torchvision.models, name)(num_classes=10, **kwargs)
    if impl == "manual":
        model = bnn.convert(model)[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    cross_entropy = BF.cross_entropy if impl == "manual" else F.cross_entropy

    def step():
        loss = cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b_16", help="a torchvision model (default: vit_b_16)")
    parser.add_argument("--size", type=int, default=32, help="image side (default: 32)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side (default: 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = {impl: step_of(args.model, impl, args.batch, args.size) for impl in ("native", "manual")}
    for step in steps.values():  # warm-up
        step()
    times = {impl: [] for impl in steps}
    for _ in range(args.repeats):
        for impl, step in steps.items():  # interleaved: both sides see the same machine
            start = time.perf_counter()
            step()
            times[impl].append(time.perf_counter() - start)
    native, manual = (statistics.median(times[i]) for i in ("native", "manual"))
    shape = f"{args.batch}x3x{args.size}x{args.size}"
    print(f"{args.model} {shape} step: native {native * 1e3:.0f} ms, manual {manual * 1e3:.0f} ms, "
          f"ratio {manual / native:.3f}")  # fmt: skip
    from bench import peak_bytes

    peak = {impl: peak_bytes(step, torch.device("cpu")) for impl, step in steps.items()}
    print(f"{args.model} {shape} peak memory: native {peak['native'] / 2**20:.1f} MiB, manual "
          f"{peak['manual'] / 2**20:.1f} MiB, ratio {peak['manual'] / peak['native']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
