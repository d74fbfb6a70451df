"""Each formulation of a convolution's two gradients, timed alone on every conv layer of the benchmark's models.

Per layer and gradient: native's time (``aten.convolution_backward``, here only as the yardstick — never in
bp_torch), each formulation's that ``bp_torch._conv`` has for it, the one its cost model picks (``fast`` mode) and
the one that measured fastest. ``chosen/best`` over all layers is the cost model's validation: how much time its
deterministic choice leaves to the measured one (what ``bp_torch.formulas("autotune")`` picks)::

    python benchmarks/formulations.py                    # every distinct conv layer of the five models
    python benchmarks/formulations.py --only resnet18    # one model's layers (or any text of the label)
    python benchmarks/formulations.py --quick            # resnet18 at batch 2, 32x32, one sample: a smoke test

The formulations of one gradient take turns (interleaved), medians; writes ``formulations-<device>.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench import _load, interleaved, machine_info  # noqa: E402
from models import MODELS, distinct_calls  # noqa: E402

from bp_torch import _conv  # noqa: E402


def extra_calls() -> list:
    """LeNet's two layers at batch 64 and 256 and bench.py's 56x56 ResNet-like layers, as recorded calls."""
    from models import Call

    def conv(x, w, stride=1, padding=0, groups=1, needs_input=True):
        options = ((stride, stride), (padding, padding), (1, 1), groups)
        return Call("conv2d", torch.conv2d, (torch.Size(x), torch.Size(w), None, *options), (needs_input, True), ())

    calls = []
    for B in (64, 256):
        calls += [(conv((B, 1, 28, 28), (6, 1, 5, 5), needs_input=False), [f"LeNet b{B}"])]
        calls += [(conv((B, 6, 12, 12), (12, 6, 5, 5)), [f"LeNet b{B}"])]
    x = (32, 64, 56, 56)
    for w, stride, padding, groups in [((64, 64, 3, 3), 1, 1, 1), ((64, 64, 3, 3), 2, 1, 1), ((64, 64, 1, 1), 1, 0, 1)]:
        calls += [(conv(x, w, stride, padding, groups), ["bench.py"])]
    return calls


def candidates(kind: str, groups: int, depthwise: bool) -> list[str]:
    table = _conv.INPUT_GRAD if kind == "dx" else _conv.WEIGHT_GRAD
    return [name for name in table if name != "depthwise" or depthwise]


def time_layer(call, device, args) -> dict:
    (x, w, *_), _ = call.inputs(device)
    stride, padding, dilation, groups = call.args[3:7]
    x, w = x.detach(), w.detach()
    delta = torch.randn_like(torch.conv2d(x, w, None, stride, padding, dilation, groups))
    options = (stride, padding, dilation, groups)
    kernel, size = tuple(w.shape[2:]), tuple(x.shape[2:])
    depthwise = groups == x.shape[1] == w.shape[0]
    result = {}
    for kind in ("dx", "dk") if call.needs[0] else ("dk",):
        mask = [kind == "dx", kind == "dk", False]
        fns = {
            "native": lambda mask=mask: torch.ops.aten.convolution_backward(
                delta, x, w, None, stride, padding, dilation, False, [0, 0], groups, mask
            )
        }
        for name in candidates(kind, groups, depthwise):
            if kind == "dx":
                fns[name] = lambda f=_conv.INPUT_GRAD[name]: f(delta, w, size, *options)
            else:
                fns[name] = lambda f=_conv.WEIGHT_GRAD[name]: f(x, delta, kernel, *options)
        times = interleaved(fns, device, args.repeats, args.warmup, args.min_time)
        if kind == "dx":
            chosen = _conv.choose_input_grad(delta, w, size, *options)
        else:
            chosen = _conv.choose_weight_grad(x, delta, kernel, stride, padding, dilation, groups)
        best = min((n for n in times if n != "native"), key=times.get)
        result[kind] = {"times": times, "chosen": chosen, "best": best}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="resnet18 at batch 2, 32x32, one sample (default: off)")
    parser.add_argument("--only", default="", help="only the layers whose label or model contains this")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per formulation (default: 9)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per sample (default: 0.02)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="default: benchmarks/results")
    args = parser.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (1 if quick else 9)
    args.min_time = (0.0 if quick else 0.02) if args.min_time is None else args.min_time
    args.warmup = 1 if quick else args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(device)
    calls = distinct_calls(("resnet18",), 2, 32) if quick else distinct_calls(MODELS) + extra_calls()
    rows, lost = [], []
    for call, models in calls:
        label = call.label()
        if call.op != "conv2d" or (args.only and args.only not in label and args.only not in " ".join(models)):
            continue
        for kind, r in time_layer(call, device, args).items():
            t = r["times"]
            chosen, best = t[r["chosen"]], t[r["best"]]
            lost.append(chosen / best)
            others = ", ".join(f"{n} {v * 1e3:.3g}" for n, v in t.items() if n != "native")
            rows.append(
                f"| {label} | {kind} | {t['native'] * 1e3:.3g} | {others} | {r['chosen']} | {r['best']} "
                f"| {chosen / best:.2f} | {chosen / t['native']:.2f} |"
            )
            print(rows[-1], flush=True)
    summary = (
        f"Cost model's choice over the fastest formulation, {len(lost)} gradients: median "
        f"{sorted(lost)[len(lost) // 2]:.2f}, worst {max(lost):.2f}; "
        f"{sum(v <= 1.10 for v in lost)} within 10% of the fastest."
    )
    print(summary)
    command = "python benchmarks/formulations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}"
    machine += f"; load average (1, 5, 15 min) {info['load_average']} before, {_load()} after"
    header = [
        f"Device `{info['device']}` — {machine}. Command: `{command.strip()}`. Times in ms (medians).",
        "",
        "| layer | gradient | native | each formulation | cost model picks | fastest | picked/fastest "
        "| picked/native |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"formulations-{device.type}.md").write_text("\n".join(header + rows + ["", summary]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
