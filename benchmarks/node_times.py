"""Each backward node of a training step timed as the autograd engine runs it, converted model against native.

A converted model and the native one with the same weights train in turn; in each step's backward a pre-hook and a
hook on every node of the graph take the time between the node's start and its end: its backward formula, the
Python around it (a Function's bookkeeping, ours) and the memory it meets in that step. Per node type (or, with
``--layer``, per module of that class, in forward order), the medians over the steps, ms a step::

    python benchmarks/node_times.py --model shufflenet_v2_x0_5
    python benchmarks/node_times.py --model regnet_y_400mf --layer ReLU
    python benchmarks/node_times.py --model googlenet --layer Conv2d --steps 8

The hooks cost a few µs a node on both sides; the totals are for comparing the two, not the step's time
(``bench.py --parts models`` times that).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from models import BATCH, SIZE, build  # noqa: E402

import bp_torch.functional as BF  # noqa: E402
from bp_torch.audit import _walk  # noqa: E402  (every node of the graph, each once)

IMPLS = ("manual", "native")


def _layer_nodes(model, layer: str):
    """Forward hooks recording, for each module of class ``layer``, its output's node: {module name: node}."""
    nodes, handles, cls = {}, [], getattr(torch.nn, layer)  # bp_torch's modules are subclasses of torch's
    for name, module in model.named_modules():
        if isinstance(module, cls):

            def record(_module, _inputs, output, name=name):
                output = output[0] if isinstance(output, tuple) else output
                nodes[name] = (output.grad_fn, tuple(output.shape))

            handles.append(module.register_forward_hook(record))
    return nodes, handles


def step_times(model, x, y, impl: str, layer: str | None) -> dict:
    """One training step's backward; the time of each node, summed by type (or by module of class ``layer``)."""
    nodes, handles = _layer_nodes(model, layer) if layer else ({}, [])
    loss = (BF.cross_entropy if impl == "manual" else F.cross_entropy)(model(x), y)
    for handle in handles:
        handle.remove()
    if layer:
        keyed = {node: f"{name} {list(shape)}" for name, (node, shape) in nodes.items() if node is not None}
    else:
        keyed = {node: type(node).__name__ for node in _walk(loss.grad_fn)}
    starts, totals, hooks = {}, defaultdict(float), []
    for node, key in keyed.items():
        hooks.append(node.register_prehook(lambda grads, node=node: starts.__setitem__(node, time.perf_counter())))
        hooks.append(node.register_hook(lambda gi, go, node=node, key=key: totals.__setitem__(
            key, totals[key] + time.perf_counter() - starts[node])))  # fmt: skip
    start = time.perf_counter()
    loss.backward()
    totals["whole backward"] = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    model.zero_grad(set_to_none=True)
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--steps", type=int, default=12, help="timed steps (after two warm-up steps)")
    parser.add_argument("--layer", help="a module class (Conv2d, BatchNorm2d, ReLU ...): its modules one by one")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    models = {impl: build(args.model, impl) for impl in IMPLS}
    samples = {impl: defaultdict(list) for impl in IMPLS}
    for step in range(args.steps + 2):
        for impl in IMPLS if step % 2 else IMPLS[::-1]:
            totals = step_times(models[impl], x, y, impl, args.layer)
            if step >= 2:
                for key, seconds in totals.items():
                    samples[impl][key].append(seconds)
    medians = {impl: {k: statistics.median(v) * 1e3 for k, v in samples[impl].items()} for impl in IMPLS}
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}: ms a step, medians over {args.steps} steps")
    if args.layer:  # the same modules on both sides: one row each
        print(f"| {args.layer} | bp_torch | native | bp_torch / native |\n|---|---|---|---|")
        for key in medians["native"]:
            if key != "whole backward":
                ours, theirs = medians["manual"].get(key, float("nan")), medians["native"][key]
                print(f"| {key} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
        return 0
    for impl in IMPLS:
        print(f"\n{impl}:\n| node | ms |\n|---|---|")
        for key, ms in sorted(medians[impl].items(), key=lambda item: -item[1]):
            print(f"| {key} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
