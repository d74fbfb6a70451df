"""Manual (bp_torch's hand-derived backward) vs native (torch.nn.functional / torch.nn autograd), same process.

Every pair runs interleaved (manual, native, manual, native, ...) after a warm-up; the table reports the medians and
the manual/native ratio (below 1: ours is faster). Writes ``bench-<device>.json`` and ``bench-<device>.md``::

    python benchmarks/bench.py                     # CPU, torch's default thread count, into benchmarks/results/
    python benchmarks/bench.py --device cuda
    python benchmarks/bench.py --quick --out /tmp  # tiny shapes, a few steps: a smoke test, not a measurement
    python benchmarks/bench.py --profile           # torch.profiler tables of one LeNet training step, both ways
    python benchmarks/bench.py --profile resnet18  # the same for a torchvision model's training step
    python benchmarks/bench.py --parts models      # only the torchvision models' training steps (parts: below)
    python benchmarks/bench.py --parts models --models mobilenet_v3_small,efficientnet_b0 --threads 1  # any models
    python benchmarks/bench.py --parts models --models inception_v3 --size 96 --threads 1  # another image side
    python benchmarks/bench.py --only resnet18     # only the rows whose name contains "resnet18"

Parts: ``functions`` (each function's forward + backward, LeNet's shapes and ResNet-like ones), ``steps`` and
``compiled`` (a LeNet training step, eager and both sides torch.compile'd), ``memory`` (its peak), ``literal`` (the
LeNet step and layers with ``bp_torch.formulas("literal")``), ``layers`` (every distinct conv2d, pooling and linear
call of torchvision's resnet18, resnet50, vgg11, mobilenet_v2 and alexnet at batch 16, 64x64: forward and every
gradient the model needs), ``models`` (each of those models' SGD training step after ``convert()``, and its peak
memory), ``epochs`` (a full MNIST epoch). ``--parts`` writes ``bench-<device>-<parts>.{json,md}``, so a part's
table is regenerated alone.

Peak memory of a training step: on CUDA ``torch.cuda.max_memory_allocated``; on CPU (where tracemalloc does not
see torch's allocator) the peak of the running sum of the allocations ``torch.profiler(profile_memory=True)``
records, and the bytes autograd saves for the backward (``saved_tensors_hooks``, each storage counted once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # models.py beside it

import bp_torch  # noqa: E402
from bp_torch import functional as BF  # noqa: E402
from bp_torch._function import apply, with_direct_call  # noqa: E402
from bp_torch.models import LeNet  # noqa: E402


@with_direct_call
class CloneFunction(torch.autograd.Function):
    """No derivation at all (forward copies, backward passes δ through), called as bp_torch calls its Functions:
    its time over native ``clone`` is the fixed price of a Python Function, the floor under every manual row."""

    @staticmethod
    def forward(input):
        return input.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


IMPLS = ("manual", "native")
OPS = {
    "manual": {"conv2d": BF.conv2d, "avg_pool2d": BF.avg_pool2d, "sigmoid": BF.sigmoid, "linear": BF.linear},
    "native": {"conv2d": F.conv2d, "avg_pool2d": F.avg_pool2d, "sigmoid": torch.sigmoid, "linear": F.linear},
}
OPS["manual"]["clone"], OPS["native"]["clone"] = (lambda x: apply(CloneFunction, x)), torch.clone
# beyond the notes (docs/derivation.md eq. D1–D12): torch.nn.functional's names on both sides
for _name in ("relu", "leaky_relu", "tanh", "dropout", "log_softmax", "nll_loss", "cross_entropy", "mse_loss"):
    OPS["manual"][_name], OPS["native"][_name] = getattr(BF, _name), getattr(F, _name)


def _batch_norm(f):
    """batch_norm as a BatchNorm2d runs it: with running statistics (updated in training)."""

    def run(x, weight, bias, training=True):
        stats = torch.zeros(x.shape[1], device=x.device), torch.ones(x.shape[1], device=x.device)
        return f.batch_norm(x, *stats, weight, bias, training)

    return run


for _impl, _f in (("manual", BF), ("native", F)):
    OPS[_impl].update(max_pool2d=_f.max_pool2d, adaptive_avg_pool2d=_f.adaptive_avg_pool2d, batch_norm=_batch_norm(_f))


@dataclass
class Row:
    group: str
    name: str
    shape: str
    manual: float  # median, in `unit`
    native: float
    unit: str = "ms"
    ratio: float = field(init=False)

    def __post_init__(self):
        self.ratio = self.manual / self.native if self.native else float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], device, repeats: int, warmup: int, min_time: float):
    """Median seconds per call of each function, timed in turns (A B A B ...) so drift hits both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    # calls per sample: enough that one sample lasts ``min_time`` (timer and launch noise stay small)
    start = time.perf_counter()
    fns["native"]()
    sync(device)
    number = max(1, int(min_time / max(time.perf_counter() - start, 1e-6)))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(number):
                fn()
            sync(device)
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------------------------------------------------------
# each function's forward + backward


def function_cases(quick: bool):
    """(label, op, shape text, make(device) -> (args, requires_grad mask), options)."""
    big_n, big_c, big_hw = (2, 8, 14) if quick else (32, 64, 56)
    batches = (4,) if quick else (64, 256)
    # the fixed cost of a Python Function, on one element and on LeNet's C2 map
    cases = [
        (f"floor: do-nothing Function vs clone, {where}", "clone", [shape], (True,), {})
        for where, shape in (("1 element", (1,)), (f"C2 map b{batches[0]}", (batches[0], 12, 8, 8)))
    ]
    for B in batches:
        cases += [
            (f"conv2d LeNet C1 b{B}", "conv2d", [(B, 1, 28, 28), (6, 1, 5, 5), (6,)], (False, True, True), {}),
            (f"conv2d LeNet C2 b{B}", "conv2d", [(B, 6, 12, 12), (12, 6, 5, 5), (12,)], (True, True, True), {}),
            (f"avg_pool2d LeNet S1 b{B}", "avg_pool2d", [(B, 6, 24, 24)], (True,), {"kernel_size": 2}),
            (f"avg_pool2d LeNet S2 b{B}", "avg_pool2d", [(B, 12, 8, 8)], (True,), {"kernel_size": 2}),
            (f"sigmoid LeNet C1 map b{B}", "sigmoid", [(B, 6, 24, 24)], (True,), {}),
            (f"sigmoid LeNet C2 map b{B}", "sigmoid", [(B, 12, 8, 8)], (True,), {}),
            (f"linear LeNet FC b{B}", "linear", [(B, 192), (10, 192), (10,)], (True, True, True), {}),
        ]
    x, w3 = (big_n, big_c, big_hw, big_hw), (big_c, big_c, 3, 3)
    lin_n, lin_in, lin_out = (4, 256, 100) if quick else (128, 4096, 1000)
    cases += [
        ("conv2d 3x3 pad 1", "conv2d", [x, w3], (True, True), {"padding": 1}),
        ("conv2d 3x3 pad 1 stride 2", "conv2d", [x, w3], (True, True), {"padding": 1, "stride": 2}),
        ("conv2d depthwise 3x3", "conv2d", [x, (big_c, 1, 3, 3)], (True, True), {"padding": 1, "groups": big_c}),
        ("conv2d 1x1", "conv2d", [x, (big_c, big_c, 1, 1)], (True, True), {}),
        ("avg_pool2d 3x3 stride 2 pad 1", "avg_pool2d", [x], (True,), {"kernel_size": 3, "stride": 2, "padding": 1}),
        ("linear 4096->1000", "linear", [(lin_n, lin_in), (lin_out, lin_in), (lin_out,)], (True, True, True), {}),
    ]
    # the activations on a ResNet's first maps, dropout on AlexNet's classifier, the losses on LeNet's and ImageNet's
    # logits; an option given as a function of the device is a target, made once
    logits, classes = ((4, 10), (4, 100)) if quick else ((256, 10), (256, 1000))
    cases += [(f"{op} 64x56x56 b{big_n}", op, [x], (True,), {}) for op in ("relu", "leaky_relu", "tanh")]
    cases += [
        ("dropout p=0.5 4096 features", "dropout", [(lin_n, lin_in)], (True,), {"p": 0.5}),
        ("log_softmax 1000 classes", "log_softmax", [classes], (True,), {"dim": 1}),
        ("nll_loss 1000 classes", "nll_loss", [classes], (True,), {"target": _classes(classes)}),
        *[(f"cross_entropy {c} classes b{n}", "cross_entropy", [(n, c)], (True,), {"target": _classes((n, c))})
          for n, c in (logits, classes)],
        ("mse_loss LeNet seed b256", "mse_loss", [logits], (True,), {"target": lambda d: torch.rand(logits, device=d)}),
        ("mse_loss 784 pixels b256", "mse_loss", [(logits[0], 784)], (True,),
         {"target": lambda d: torch.rand(logits[0], 784, device=d)}),
    ]  # fmt: skip
    # the layers of a resnet18 beyond the notes (docs/derivation.md, eq. M)
    head, alex = (big_n, 8 * big_c, 7, 7), (big_n, 4 * big_c, 13, 13)
    bn = [x, (big_c,), (big_c,)]
    cases += [
        ("max_pool2d 3x3 stride 2 pad 1", "max_pool2d", [x], (True,), {"kernel_size": 3, "stride": 2, "padding": 1}),
        ("max_pool2d 2x2", "max_pool2d", [x], (True,), {"kernel_size": 2}),
        ("batch_norm training", "batch_norm", bn, (True, True, True), {}),
        ("batch_norm eval", "batch_norm", bn, (True, True, True), {"training": False}),
        ("adaptive_avg_pool2d 7x7 to 1x1", "adaptive_avg_pool2d", [head], (True,), {"output_size": 1}),
        ("adaptive_avg_pool2d 13x13 to 6x6", "adaptive_avg_pool2d", [alex], (True,), {"output_size": 6}),
    ]
    return cases


def _classes(shape):
    return lambda device: torch.randint(0, shape[1], shape[:1], device=device)


def bench_functions(device, args, mode: str = "fast", lenet_only: bool = False) -> list[Row]:
    rows = []
    suffix = f", {mode} formulas" if mode != "fast" else ""
    for label, op, shapes, needs, options in function_cases(args.quick):
        if lenet_only and "LeNet" not in label:
            continue
        label += suffix
        if not selected(label, args):
            continue
        tensors = [torch.randn(s, device=device) for s in shapes]
        params = [t.requires_grad_() for t, n in zip(tensors, needs) if n]
        options = {k: v(device) if callable(v) else v for k, v in options.items()}
        grad_out = torch.randn_like(OPS["native"][op](*tensors, **options))

        def run(fn, impl, tensors=tensors, options=options, params=params, grad_out=grad_out):
            with bp_torch.formulas(mode if impl == "manual" else "fast"):
                return torch.autograd.grad(fn(*tensors, **options), params, grad_out)

        fns = {impl: (lambda f=OPS[impl][op], impl=impl: run(f, impl)) for impl in IMPLS}
        times = interleaved(fns, device, args.repeats, args.warmup, args.min_time)
        shape = " ".join("x".join(map(str, s)) for s, n in zip(shapes, needs) if s)
        group = "literal" if mode == "literal" else "fwd+bwd"
        rows.append(Row(group, label, shape, times["manual"] * 1e3, times["native"] * 1e3))
        print(_line(rows[-1]), flush=True)
    return rows


def selected(name: str, args) -> bool:
    """Whether a row of this name runs under ``--only``."""
    return not args.only or args.only in name


# ---------------------------------------------------------------------------------------------------------------
# the LeNet training step and its peak memory


def lenet_step(impl: str, batch: int, device, compile: bool = False, mode: str = "fast"):
    """One training step of the LeNet (forward, cross-entropy, backward, Adam step) as a closure, same seed both.

    ``compile``: the model under ``torch.compile`` (default inductor), which traces the Functions' forward and
    hand-written backward into its graph, as it traces native autograd's. ``mode``: the formulas the manual
    backward runs (``bp_torch.formulas``).
    """
    torch.manual_seed(0)
    model = LeNet(impl).to(device)
    forward = torch.compile(model) if compile else model
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with bp_torch.formulas(mode):
            loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return step, model, x


def bench_steps(device, args, compile: bool = False, mode: str = "fast") -> list[Row]:
    rows = []
    label = ", both torch.compile'd" if compile else f", manual with {mode} formulas" if mode != "fast" else ""
    for B in (4,) if args.quick else (64, 256):
        name = f"LeNet training step b{B}{label}"
        if not selected(name, args):
            continue
        steps = {impl: lenet_step(impl, B, device, compile, mode if impl == "manual" else "fast")[0] for impl in IMPLS}
        # compiled, the warm-up also compiles (tens of seconds on a CPU) and settles recompilation before timing
        warmup = max(args.warmup, 3) if compile else args.warmup
        times = interleaved(steps, device, args.repeats, warmup, args.min_time)
        group = "literal" if mode == "literal" else "train step"
        rows.append(Row(group, name, f"{B}x1x28x28", *(times[i] * 1e3 for i in IMPLS)))
        print(_line(rows[-1]), flush=True)
    return rows


def bench_compiled_steps(device, args) -> list[Row]:
    return bench_steps(device, args, compile=True)


def bench_literal(device, args) -> list[Row]:
    """The LeNet's training step and its layers with the manual backward in literal mode, against native."""
    return bench_steps(device, args, mode="literal") + bench_functions(device, args, "literal", lenet_only=True)


def saved_bytes(model, x) -> int:
    """Bytes of the tensors autograd keeps for the backward of one forward, each storage counted once."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.data_ptr(), t.device)] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(storages.values())


def peak_bytes(step, device) -> int:
    """Peak memory allocated during one training step, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    peak = total = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return peak


def bench_memory(device, args) -> list[Row]:
    rows = []
    for B in (4,) if args.quick else (64, 256):
        if not selected(f"peak of a training step b{B}", args):
            continue
        peak, saved = {}, {}
        for impl in IMPLS:
            step, model, x = lenet_step(impl, B, device)
            step()  # optimizer state and gradients exist from here on, as in training
            peak[impl] = peak_bytes(step, device)
            saved[impl] = saved_bytes(model, x)
        how = "max_memory_allocated" if device.type == "cuda" else "profiler"
        rows.append(Row("memory", f"peak of a training step b{B} ({how})", f"{B}x1x28x28", *_mib(peak), unit="MiB"))
        rows.append(Row("memory", f"saved for backward b{B}", f"{B}x1x28x28", *_mib(saved), unit="MiB"))
        print(_line(rows[-2]), _line(rows[-1]), sep="\n", flush=True)
    return rows


def _mib(values: dict[str, int]):
    return tuple(values[i] / 2**20 for i in IMPLS)


# ---------------------------------------------------------------------------------------------------------------
# torchvision's models: every distinct layer call, each model's training step after convert() and its peak memory


def _models_and_input(args):
    from models import BATCH, MODELS, SIZE

    chosen = tuple(m for m in args.models.split(",") if m) or MODELS
    size = args.size or SIZE
    return (chosen[:1] if args.models else ("resnet18",), 2, args.size or 32) if args.quick else (chosen, BATCH, size)


def bench_layers(device, args) -> list[Row]:
    """Each distinct conv2d, pooling and linear call of the models' forwards, forward and the gradients the model
    needs (not the image's), manual against native; calls bp_torch has no twin for get a row saying so."""
    from models import distinct_calls

    rows = []
    for call, models in distinct_calls(*_models_and_input(args)):
        name = f"{call.label()} [{', '.join(models)}]"
        if not selected(name, args):
            continue
        if call.manual is None:
            rows.append(Row("layer", f"{name}: no bp_torch twin yet, native in convert()-ed models", "", 0.0, 0.0))
            print(rows[-1].name, flush=True)
            continue
        args_, params = call.inputs(device)
        kwargs = dict(call.kwargs)
        grad_out = torch.randn_like(call.native(*args_, **kwargs))

        def run(fn, args_=args_, kwargs=kwargs, params=params, grad_out=grad_out):
            return torch.autograd.grad(fn(*args_, **kwargs), params, grad_out)

        fns = {"manual": lambda f=call.manual: run(f), "native": lambda f=call.native: run(f)}
        times = interleaved(fns, device, args.repeats, args.warmup, args.min_time)
        rows.append(Row("layer", name, call.shape_text(), times["manual"] * 1e3, times["native"] * 1e3))
        print(_line(rows[-1]), flush=True)
    return rows


def model_step(name: str, impl: str, batch: int, size: int, device):
    """One SGD training step (forward, cross-entropy, backward, step) of torchvision's ``name`` as a closure; the
    manual model is the native one's weights, ``convert()``-ed."""
    from models import build

    model = build(name, impl, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    cross_entropy = BF.cross_entropy if impl == "manual" else F.cross_entropy  # the loss's backward is ours too

    def step():
        loss = cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model, x


def bench_models(device, args) -> list[Row]:
    """Each model's training step, manual (convert()-ed) against native, interleaved; then its peak memory."""
    models, batch, size = _models_and_input(args)
    rows = []
    for name in models:
        label = f"{name} training step (SGD)"
        if not selected(label, args):
            continue
        shape = f"{batch}x3x{size}x{size}"
        steps = {impl: model_step(name, impl, batch, size, device) for impl in IMPLS}
        times = interleaved({i: steps[i][0] for i in IMPLS}, device, args.repeats, args.warmup, args.min_time)
        rows.append(Row("model step", label, shape, *(times[i] * 1e3 for i in IMPLS)))
        peak = {impl: peak_bytes(steps[impl][0], device) for impl in IMPLS}
        how = "max_memory_allocated" if device.type == "cuda" else "profiler"
        rows.append(Row("model memory", f"{name} peak of a training step ({how})", shape, *_mib(peak), unit="MiB"))
        print(_line(rows[-2]), _line(rows[-1]), sep="\n", flush=True)
        del steps
    return rows


# ---------------------------------------------------------------------------------------------------------------
# a full MNIST epoch


def bench_epochs(device, args) -> list[Row]:
    from bp_torch.train.config import PRESETS, Loss, build, make_loaders
    from bp_torch.train.data import DatasetNotFoundError

    rows = []
    recipes = [("default", PRESETS["default"]), ("seed at b256", _replace(PRESETS["seed"], batch_size=256))]
    limit = 5 if args.quick else 0
    for label, recipe in recipes:
        if not selected(f"MNIST epoch, {label} recipe", args):
            continue
        cfg = _replace(recipe, data_dir=args.data, limit_train_batches=limit)
        try:
            train, _ = make_loaders(cfg, device)
        except DatasetNotFoundError as error:
            print(f"MNIST epoch ({label}): skipped, no data: {error}".splitlines()[0], flush=True)
            rows.append(Row("epoch", f"MNIST epoch, {label} recipe: skipped (no MNIST data)", "", 0.0, 0.0, "s"))
            continue
        steps = min(train.num_batches, limit or train.num_batches)

        def epoch(impl, steps=steps, cfg=cfg, train=train):
            impl_cfg = _replace(cfg, impl=impl)
            model, optimizer, scheduler = build(impl_cfg, device, steps)
            loss_fn = Loss(impl_cfg.loss, impl, impl_cfg.label_smoothing)
            train.set_epoch(0)
            sync(device)
            start = time.perf_counter()
            for i, (x, y) in enumerate(train):
                if i == steps:
                    break
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            sync(device)
            return time.perf_counter() - start

        images = min(train.num_samples, steps * cfg.batch_size)
        times = {impl: [] for impl in IMPLS}
        for impl in IMPLS:  # warm-up: the first epoch pays for one-time initialisation
            epoch(impl, steps=min(steps, 3))
        for _ in range(args.epoch_repeats):
            for impl in IMPLS:
                times[impl].append(epoch(impl))
        med = {impl: statistics.median(t) for impl, t in times.items()}
        shape = f"{images} images, batch {cfg.batch_size}, {cfg.optimizer}"
        rows.append(Row("epoch", f"MNIST epoch, {label} recipe", shape, med["manual"], med["native"], "s"))
        rows.append(
            Row("epoch", f"MNIST epoch, {label} recipe", shape, images / med["manual"], images / med["native"], "img/s")
        )
        print(_line(rows[-2]), _line(rows[-1]), sep="\n", flush=True)
    return rows


def _replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------------------------------------------------------
# machine, output, profile


def machine_info(device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average": _load(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(value: float, unit: str) -> str:
    if unit == "img/s":
        return f"{value:,.0f} img/s"
    return f"{value:.3f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def _line(row: Row) -> str:
    return f"{row.name:44s} {_fmt(row.manual, row.unit):>14s} {_fmt(row.native, row.unit):>14s}  {row.ratio:.2f}"


def markdown(rows: list[Row], info: dict, command: str) -> str:
    machine = f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}"
    if "gpu" in info:
        machine += f", {info['gpu']}"
    load = info.get("load_average")
    if isinstance(load, dict):
        machine += f"; load average (1, 5, 15 min) {load['before']} before, {load['after']} after"
    lines = [
        f"Device `{info['device']}` — {machine}. Command: `{command}`.",
        "",
        "| benchmark | shape | manual | native | manual/native |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.native == 0:
            lines.append(f"| {r.name} | | | | |")
            continue
        lines.append(f"| {r.name} | {r.shape} | {_fmt(r.manual, r.unit)} | {_fmt(r.native, r.unit)} | {r.ratio:.2f} |")
    return "\n".join(lines) + "\n"


def profile_step(device, batch: int, model: str = "lenet") -> None:
    """Print torch.profiler's top operators for 20 training steps, manual then native: the LeNet's at ``batch``, or
    (``model``: a torchvision name) that model's at the benchmark's batch 16, 64x64."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for impl in IMPLS:
        if model == "lenet":
            step, what = lenet_step(impl, batch, device)[0], f"LeNet training step, batch {batch}"
        else:
            from models import BATCH, SIZE

            step, what = model_step(model, impl, BATCH, SIZE, device)[0], f"{model} training step, batch {BATCH}"
        for _ in range(5):
            step()
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(20):
                step()
            sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"== {impl}, {what}, 20 steps ==")
        print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=48))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats: a smoke test (default: off)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="default: benchmarks/results")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per side (default: 15, quick 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per side first (default: 3)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per sample (default: 0.05, quick 0)")
    parser.add_argument("--epoch-repeats", type=int, default=2, help="timed MNIST epochs per side (default: 2)")
    parser.add_argument("--data", default=None, help="MNIST folder (default: $BP_TORCH_DATA, else ./data)")
    parser.add_argument("--only", default="", help="run only the rows whose name contains this (default: all)")
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated torchvision models for the layers and models parts (default: "
        "benchmarks/models.py's MODELS); any of torchvision.models.get_model's names",
    )
    parser.add_argument(
        "--size", type=int, default=None,
        help="image side for the layers and models parts (default: benchmarks/models.py's SIZE, 64; inception_v3 "
        "needs 75 or more)",
    )  # fmt: skip
    parser.add_argument("--parts", default="", help=f"comma-separated parts to run (default: all): {','.join(PARTS)}")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip (default: none; --quick: compiled)")
    parser.add_argument(
        "--profile", nargs="?", const="lenet", default=None,
        help="print torch.profiler tables of a training step: the LeNet's, or a model's (--profile resnet18)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 0.05
    if args.quick:
        args.warmup, args.epoch_repeats = 1, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile_step(device, 4 if args.quick else 256, args.profile)
        return 0

    info = machine_info(device)
    print(json.dumps(info), flush=True)
    parts = [p for p in args.parts.split(",") if p] or list(PARTS)
    skip = set(filter(None, args.skip.split(",")))
    if unknown := (set(parts) | skip) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; the parts are {', '.join(PARTS)}")
    if args.quick and not args.parts:
        skip.add("compiled")  # a smoke test has no minute to spend compiling
    print(f"load average before: {_load()}", flush=True)
    rows = []
    for part in parts:
        if part not in skip:
            rows += PARTS[part](device, args)
    info["load_average"] = {"before": info.pop("load_average"), "after": _load()}

    command = "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "data")}
    stem = f"bench-{device.type}" + (f"-{'-'.join(parts)}" if args.parts else "")
    (out / f"{stem}.json").write_text(
        json.dumps(
            {"machine": info, "settings": settings, "command": command.strip(), "rows": [asdict(r) for r in rows]},
            indent=1,
        )
        + "\n"  # fmt: skip
    )
    (out / f"{stem}.md").write_text(markdown(rows, info, command.strip()))
    print(f"wrote {out / f'{stem}.json'} and .md; load average after: {info['load_average']['after']}")
    return 0


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


PARTS = {
    "functions": bench_functions,
    "steps": bench_steps,
    "compiled": bench_compiled_steps,
    "memory": bench_memory,
    "literal": bench_literal,
    "layers": bench_layers,
    "models": bench_models,
    "epochs": bench_epochs,
}

if __name__ == "__main__":
    sys.exit(main())
