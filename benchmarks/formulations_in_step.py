"""Each formulation of ∂e/∂k timed inside real training steps: the evidence for the fast mode's rules.

Timed alone (``formulations.py``), a formulation meets cold caches and freshly mapped memory on every call, and on
this CPU that reorders the ranking (oneDNN's reorder of a 512x512x3x3 result costs several times more alone than
within a step: benchmarks/README.md, "How each gradient is computed"). Here each converted model trains as usual,
and inside every convolution's backward, on that step's own x and δ, native's weight gradient
(``aten.convolution_backward``, only as the yardstick) and each formulation of ``bp_torch._conv.WEIGHT_GRAD`` run
once each, in shuffled order, their result laid out as the weight (as the Function returns it); then the backward
carries on. Per layer: the medians over the steps of each, the cost model's pick and the fastest; per model: the
sums::

    python benchmarks/formulations_in_step.py --threads 1                          # the zoo's models
    python benchmarks/formulations_in_step.py --threads 1 --models resnet18,vgg11_bn --steps 5
    python benchmarks/formulations_in_step.py --threads 1 --models resnet18 --size 224 --steps 2  # ImageNet's side

Writes ``formulations-in-step-<device>.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench import _load, machine_info, model_step  # noqa: E402
from models import BATCH, SIZE  # noqa: E402

from bp_torch import _conv  # noqa: E402
from bp_torch.autograd.conv import Conv2dFunction  # noqa: E402

ZOO = "resnet18,vgg11_bn,densenet121,googlenet,squeezenet1_1,mobilenet_v2,shufflenet_v2_x0_5,regnet_y_400mf"


def timed_backward(samples: dict, sync) -> callable:
    """Conv2dFunction's backward, timing every formulation of ∂e/∂k on its x and δ first (into ``samples``)."""
    backward = Conv2dFunction._direct.backward

    def seconds(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def timing(ctx, grad_output):
        input, _ = ctx.saved_tensors
        if input is not None and ctx.needs_input_grad[1]:
            stride, padding, dilation, groups = ctx.options
            args = (input, grad_output, ctx.kernel_size, *ctx.options)
            shape = (grad_output.shape[1], input.shape[1] // groups, *ctx.kernel_size)
            key = (tuple(input.shape), shape, stride, padding, groups, _conv.choose_weight_grad(*args))
            weight = torch.empty(shape, dtype=input.dtype, device=input.device)
            mask = (False, True, False)
            fns = {
                "native": lambda: torch.ops.aten.convolution_backward(
                    grad_output, input, weight, None, stride, padding, dilation, False, (0, 0), groups, mask
                )
            }
            depthwise = input.shape[1] == grad_output.shape[1] == groups
            for name, f in _conv.WEIGHT_GRAD.items():
                if name != "depthwise" or depthwise:
                    fns[name] = lambda f=f: f(*args).contiguous()
            order = list(fns)
            random.shuffle(order)
            for name in order:
                samples[key][name].append(seconds(fns[name]))
        return backward(ctx, grad_output)

    return timing


def model_rows(name: str, device, steps: int, sync, size: int = SIZE) -> tuple[list[str], dict]:
    samples: dict = defaultdict(lambda: defaultdict(list))
    step = model_step(name, "manual", BATCH, size, device)[0]
    step()  # warm-up, untimed
    original = Conv2dFunction._direct.backward
    Conv2dFunction._direct.backward = staticmethod(timed_backward(samples, sync))
    try:
        for _ in range(steps):
            step()
    finally:
        Conv2dFunction._direct.backward = original
    rows, sums = [], defaultdict(float)
    for (x, w, stride, padding, groups, chosen), times in samples.items():
        calls = len(times["native"]) // steps
        # per step: the median call times the calls per step (a layer shape may occur several times)
        t = {n: statistics.median(v) * calls for n, v in times.items()}
        best = min((n for n in t if n != "native"), key=t.get)
        sums["native"] += t["native"]
        sums["picked"] += t[chosen]
        sums["fastest"] += t[best]
        each = ", ".join(f"{n} {v * 1e3:.3g}" for n, v in t.items() if n != "native")
        label = f"{x[1]}->{w[0]} {w[2]}x{w[3]} {x[2]}x{x[3]} s{stride[0]} p{padding[0]} g{groups}"
        rows.append(
            f"| {name} | {label} | {calls} | {t['native'] * 1e3:.3g} | {each} | {chosen} | {best} "
            f"| {t[chosen] / t[best]:.2f} |"
        )
    return rows, sums


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--models", default=ZOO, help=f"comma-separated torchvision models (default: {ZOO})")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model (default: 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"image side (default: {SIZE})")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="default: benchmarks/results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    info = machine_info(device)
    random.seed(0)
    rows, totals = [], []
    for name in args.models.split(","):
        model_rows_, sums = model_rows(name, device, args.steps, sync, args.size)
        rows += model_rows_
        totals.append(
            f"| {name} | {sums['native'] * 1e3:.1f} | {sums['picked'] * 1e3:.1f} | {sums['fastest'] * 1e3:.1f} "
            f"| {sums['picked'] / sums['native']:.2f} |"
        )
        print(totals[-1], flush=True)
    command = "python benchmarks/formulations_in_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}"
    machine += f"; load average (1, 5, 15 min) {info['load_average']} before, {_load()} after"
    text = [
        f"Device `{info['device']}` — {machine}. Command: `{command.strip()}`. Batch {BATCH}, {args.size}x{args.size}; "
        "ms per training step (medians over the steps, times the layer's calls per step).",
        "",
        "| model | ∂e/∂k, all layers: native | cost model's picks | fastest of each | picks/native |",
        "|---|---|---|---|---|",
        *totals,
        "",
        "| model | layer | calls | native | each formulation | cost model picks | fastest | picked/fastest |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"formulations-in-step-{device.type}.md").write_text("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
