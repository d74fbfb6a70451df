"""The torchvision networks of the benchmark, and every layer call their forward makes.

A forward of the native model runs under a ``TorchFunctionMode`` that records each conv2d, pooling and linear call
with its argument shapes and options; :func:`distinct_calls` merges the calls of several models, each kept once with
the models it occurs in. ``bench.py`` times each call, manual against native, and each model's training step after
``convert()``; ``formulations.py`` times each formulation of a convolution's gradients on the recorded shapes::

    python benchmarks/models.py                 # print the distinct calls of every model at batch 16, 64x64
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bp_torch import functional as BF  # noqa: E402
from bp_torch.nn import convert  # noqa: E402

MODELS = ("resnet18", "resnet50", "vgg11", "mobilenet_v2", "alexnet")
BATCH, SIZE, CLASSES = 16, 64, 10  # a CPU-sized input: 16 images of 64x64, 10 classes
RECORDED = {"conv2d", "linear", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"}


@dataclass(frozen=True)
class Call:
    """One layer call: the op's name (as in torch.nn.functional), the native function that ran, its positional
    arguments with each tensor replaced by its shape, whether that tensor needed a gradient, and the keywords."""

    op: str
    native: object
    args: tuple  # a tensor argument is a torch.Size here
    needs: tuple[bool, ...]  # per tensor argument, in order
    kwargs: tuple[tuple[str, object], ...]

    @property
    def manual(self):
        """bp_torch.functional's twin of the op, or None where bp_torch has none."""
        return getattr(BF, self.op, None)

    def inputs(self, device) -> tuple[tuple, list[torch.Tensor]]:
        """Fresh random arguments (tensors on ``device``), and the tensors that need a gradient."""
        args, params, needs = [], [], iter(self.needs)
        for a in self.args:
            if isinstance(a, torch.Size):
                t = torch.randn(a, device=device).requires_grad_(next(needs))
                args.append(t)
                params += [t] if t.requires_grad else []
            else:
                args.append(a)
        return tuple(args), params

    def label(self) -> str:
        shapes = [a for a in self.args if isinstance(a, torch.Size)]
        kw = dict(self.kwargs)
        if self.op == "conv2d":
            (N, C, H, W), (C_out, _, kh, kw_), *_ = shapes
            stride, padding, _, groups = self.args[3:7]
            text = f"conv2d {C}->{C_out} {kh}x{kw_} {H}x{W}"
            text += f" s{stride[0]}" * (stride != (1, 1)) + f" p{padding[0]}" * (padding != (0, 0))
            text += (" depthwise" if groups == C == C_out else f" g{groups}") * (groups != 1)
            return text + " (dk only)" * (not self.needs[0])
        if self.op == "linear":
            return f"linear {shapes[0][-1]}->{shapes[1][0]}"
        size = "x".join(map(str, shapes[0][2:]))
        if self.op == "adaptive_avg_pool2d":
            return f"{self.op} {size}->{'x'.join(map(str, self.args[1]))}"
        k, s, p = self.args[1], kw.get("stride", self.args[2:3] or None), kw.get("padding", 0)
        return f"{self.op} {k}x{k} {size}" + f" s{s}" * (s not in (None, k)) + f" p{p}" * (p != 0)

    def shape_text(self) -> str:
        return " ".join("x".join(map(str, a)) for a in self.args if isinstance(a, torch.Size))


class Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[Call] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = getattr(func, "__name__", "").lstrip("_")
        if op in RECORDED:
            shapes = tuple(torch.Size(a.shape) if isinstance(a, torch.Tensor) else a for a in args)
            needs = tuple(a.requires_grad for a in args if isinstance(a, torch.Tensor))
            self.calls.append(Call(op, func, shapes, needs, tuple(kwargs.items())))
        return func(*args, **kwargs)


def build(name: str, impl: str = "native", device="cpu", seed: int = 0) -> torch.nn.Module:
    """torchvision's ``name`` with 10 classes, seeded; ``impl='manual'``: the same weights, ``convert()``-ed."""
    import torchvision

    torch.manual_seed(seed)
    options = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False}}
    model = torchvision.models.get_model(name, weights=None, num_classes=CLASSES, **options.get(name, {})).to(device)
    return convert(model)[0] if impl == "manual" else model


def layer_calls(name: str, batch: int = BATCH, size: int = SIZE) -> list[Call]:
    """Every recorded call of one training-mode forward of the native model, in order."""
    model = build(name)
    recorder = Recorder()
    with recorder:
        model(torch.randn(batch, 3, size, size))
    return recorder.calls


def distinct_calls(models=MODELS, batch: int = BATCH, size: int = SIZE) -> list[tuple[Call, list[str]]]:
    """Each distinct call of the models' forwards once, in order of first use, with the models that make it."""
    seen: dict[Call, list[str]] = {}
    for name in models:
        for call in layer_calls(name, batch, size):
            key = Call(call.op, None, call.args, call.needs, call.kwargs)
            if key not in seen:
                seen[key] = [call, []]
            if name not in seen[key][1]:
                seen[key][1].append(name)
    return [(call, names) for call, names in seen.values()]


if __name__ == "__main__":
    for call, names in distinct_calls():
        print(f"{call.label():48s} {call.shape_text():32s} {', '.join(names)}")
