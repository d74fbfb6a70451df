"""What routing a converted model's functional calls costs: its training step (forward, bp_torch's cross-entropy,
backward) with convert()'s routing hooks, without them (``bp_torch.routing.uninstall``) and native, interleaved,
medians, one thread::

    python benchmarks/routing_overhead.py mobilenet_v3_small 16 64 9   # model, batch, image size, repeats
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bp_torch import functional as BF  # noqa: E402
from bp_torch import nn as bnn  # noqa: E402
from bp_torch import routing  # noqa: E402


def main(name: str, batch: int, size: int, repeats: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    options = {"googlenet": {"aux_logits": False, "init_weights": True}}.get(name, {})
    native = torchvision.models.get_model(name, weights=None, num_classes=10, **options)
    routed = bnn.convert(copy.deepcopy(native))[0]
    unrouted = bnn.convert(copy.deepcopy(native))[0]
    routing.uninstall(unrouted)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def step(model, cross_entropy):
        def run():
            loss = cross_entropy(model(x), y)
            model.zero_grad(set_to_none=True)
            loss.backward()

        return run

    steps = {
        "routed": step(routed, BF.cross_entropy),
        "unrouted": step(unrouted, BF.cross_entropy),
        "native": step(native, torch.nn.functional.cross_entropy),
    }
    for run in steps.values():  # warm-up
        run()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, run in steps.items():
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{name}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()),
        f"routed/unrouted {med['routed'] / med['unrouted']:.2f}, routed/native {med['routed'] / med['native']:.2f}",
        sep="\n",
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
