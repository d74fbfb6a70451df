"""Each of bp_torch's backwards against torch's kernel for the same gradient, on the same tensors, inside real
training steps.

A converted model trains; inside the backward of every Conv2d, Linear, BatchNorm, LayerNorm, ReLU and GELU Function,
on that step's own saved tensors and δ, bp_torch's backward and torch's own kernel for the same gradients
(``aten.convolution_backward``, the two matrix products of Linear's, ``native_batch_norm_backward``,
``native_layer_norm_backward``, ``threshold_backward``, ``gelu_backward`` — only as yardsticks: the backward then
carries on with bp_torch's result) run once each in random order. Per Function: ms a step, summed over its calls::

    python benchmarks/backward_in_step.py --model resnet18 --threads 1
    python benchmarks/backward_in_step.py --model maxvit_t --size 224 --batch 2 --threads 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from models import BATCH, SIZE  # noqa: E402

import bp_torch.functional as BF  # noqa: E402
from bp_torch.autograd.activation import ReluFunction  # noqa: E402
from bp_torch.autograd.batch_norm import BatchNormFunction  # noqa: E402
from bp_torch.autograd.conv import Conv2dFunction  # noqa: E402
from bp_torch.autograd.gelu import GeluFunction  # noqa: E402
from bp_torch.autograd.layer_norm import LayerNormFunction  # noqa: E402
from bp_torch.autograd.linear import LinearFunction  # noqa: E402
from bp_torch.nn import convert  # noqa: E402


def _conv(ctx, grad):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.options
    mask = list(ctx.needs_input_grad[:3])
    if weight is None:  # only ∂e/∂k needed: the kernel's shape is all torch's kernel reads of it
        weight = grad.new_empty((grad.shape[1], input.shape[1] // groups, *ctx.kernel_size))
    if input is None:
        input = grad.new_empty((grad.shape[0], weight.shape[1] * groups, *ctx.input_size))
    bias = [weight.shape[0]] if mask[2] else None
    return lambda: torch.ops.aten.convolution_backward(
        grad, input, weight, bias, stride, padding, dilation, False, (0, 0), groups, mask
    )


def _linear(ctx, grad):
    input, weight = ctx.saved_tensors
    rows = grad.reshape(-1, grad.shape[-1])

    def products():  # native's Linear backward: δW and δᵀx (MKL), Σδ
        if weight is not None:
            rows @ weight
        if input is not None:
            rows.T @ input.reshape(-1, input.shape[-1])
        if ctx.needs_input_grad[2]:
            rows.sum(0)

    return products


def _batch_norm(ctx, grad):
    input, weight, mean, invstd = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:3])
    return lambda: torch.ops.aten.native_batch_norm_backward(
        grad, input, weight, None, None, mean, invstd, ctx.training, ctx.eps, mask
    )


def _layer_norm(ctx, grad):
    input, weight, mean, invstd = ctx.saved_tensors
    shape = list(input.shape[input.dim() - len(ctx.dims) :])
    weight = weight if weight is not None else input.new_ones(shape)
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]]
    bias = input.new_zeros(shape)
    return lambda: torch.ops.aten.native_layer_norm_backward(grad, input, shape, mean, invstd, weight, bias, mask)


def _relu(ctx, grad):
    (output,) = ctx.saved_tensors
    return lambda: torch.ops.aten.threshold_backward(grad, output, 0)


def _gelu(ctx, grad):
    (input,) = ctx.saved_tensors
    return lambda: torch.ops.aten.gelu_backward(grad, input, approximate=ctx.approximate)


KERNELS = {
    Conv2dFunction: _conv,
    LinearFunction: _linear,
    BatchNormFunction: _batch_norm,
    LayerNormFunction: _layer_norm,
    ReluFunction: _relu,
    GeluFunction: _gelu,
}


def timed(function, kernel, samples):
    """``function``'s direct backward, timing itself and torch's kernel (random order) into ``samples`` first."""
    backward = function._direct.backward

    def run(ctx, grad, *rest):
        runs = {"torch's kernel": kernel(ctx, grad), "bp_torch": lambda: backward(ctx, grad, *rest)}
        for name in random.sample(list(runs), len(runs)):
            start = time.perf_counter()
            runs[name]()
            samples[function.__name__][name] += time.perf_counter() - start
        return backward(ctx, grad, *rest)

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision model (default: resnet18)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"image side (default: {SIZE})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"images a step (default: {BATCH})")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (default: 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchvision

    random.seed(0)
    torch.manual_seed(0)
    options = {"image_size": args.size} if args.model.startswith("vit") else {}
    options.update({"googlenet": {"aux_logits": False, "init_weights": True}}.get(args.model, {}))
    options.update({"inception_v3": {"aux_logits": False}}.get(args.model, {}))
    model = convert(torchvision.models.get_model(args.model, weights=None, num_classes=10, **options))[0]
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    BF.cross_entropy(model(x), y).backward()  # warm-up, untimed
    samples = defaultdict(lambda: defaultdict(float))
    originals = {function: function._direct.backward for function in KERNELS}
    try:
        for function, kernel in KERNELS.items():
            function._direct.backward = staticmethod(timed(function, kernel, samples))
        for _ in range(args.steps):
            model.zero_grad(set_to_none=True)
            BF.cross_entropy(model(x), y).backward()
    finally:
        for function, backward in originals.items():
            function._direct.backward = staticmethod(backward)
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}: ms a training step, summed over the calls")
    print("| Function | torch's kernel | bp_torch | bp_torch / torch's kernel |")
    print("|---|---|---|---|")
    for name, times in samples.items():
        kernel, ours = (times[k] / args.steps * 1e3 for k in ("torch's kernel", "bp_torch"))
        print(f"| {name} | {kernel:.1f} | {ours:.1f} | {ours / kernel:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
