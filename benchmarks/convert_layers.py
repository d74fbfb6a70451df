"""A torchvision model's training step with only some layer types convert()-ed, against the native model.

Isolates what a group of bp_torch's layers costs inside a real network (the rest stays native)::

    python benchmarks/convert_layers.py                       # resnet18, its BatchNorm2d, MaxPool2d, AdaptiveAvgPool2d
    python benchmarks/convert_layers.py --layers Conv2d Linear --threads 1
    python benchmarks/convert_layers.py --quick               # tiny input, few steps: a smoke test

Both models start from the same weights; steps (cross-entropy, backward, SGD) run interleaved, medians, as in
bench.py.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench import interleaved  # noqa: E402

from bp_torch import nn as bnn  # noqa: E402

DEFAULT_LAYERS = ["BatchNorm2d", "MaxPool2d", "AdaptiveAvgPool2d"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision.models constructor (default: resnet18)")
    parser.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, help=f"torch.nn classes to convert "
                        f"(default: {' '.join(DEFAULT_LAYERS)})")  # fmt: skip
    parser.add_argument("--batch", type=int, default=16, help="default: 16")
    parser.add_argument("--size", type=int, default=64, help="input height and width (default: 64)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per side (default: 15)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 32x32, 2 repeats: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.repeats = 2, 32, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchvision

    torch.manual_seed(0)
    native = getattr(torchvision.models, args.model)(num_classes=10)
    table = {getattr(torch.nn, name): bnn.TWINS[getattr(torch.nn, name)] for name in args.layers}
    manual, summary = bnn._swap(copy.deepcopy(native), table)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))

    def step(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def run():
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return run

    times = interleaved({"manual": step(manual), "native": step(native)}, torch.device("cpu"), args.repeats, 2, 0.0)
    swapped = ", ".join(f"{kind} x{len(names)}" for kind, names in summary.swapped.items())
    print(
        f"{args.model} b{args.batch} {args.size}x{args.size}, {torch.get_num_threads()} thread(s), "
        f"converted: {swapped}: "
        f"manual {times['manual'] * 1e3:.1f} ms, native {times['native'] * 1e3:.1f} ms, "
        f"manual/native {times['manual'] / times['native']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
