"""Validate the hand-derived gradients on your own device: ``python -m bp_torch.check [--device cpu|cuda]``.

For each function it runs a set of configurations and prints one row: the largest forward and gradient errors
against PyTorch's own autograd (float32), and whether ``gradcheck`` and ``gradgradcheck`` pass (float64).
Exits 1 if any check fails. The test suite uses :func:`compare_with_native` and :data:`CASES` too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bp_torch import functional as BF


@dataclass(frozen=True)
class Case:
    """One configuration: ``make(device, dtype)`` returns the tensor arguments; ``options`` the rest."""

    name: str
    manual: Callable
    native: Callable
    make: Callable[[torch.device, torch.dtype], tuple]
    options: dict = field(default_factory=dict)

    def inputs(self, device, dtype, requires_grad=True) -> tuple:
        args = self.make(torch.device(device), dtype)
        return tuple(a.requires_grad_(requires_grad) if isinstance(a, torch.Tensor) else a for a in args)


def _randn(*shape):
    return lambda device, dtype: torch.randn(*shape, device=device, dtype=dtype)


def _conv(name, x, w, bias=True, **options) -> Case:
    def make(device, dtype):
        tensors = [torch.randn(*x, device=device, dtype=dtype), torch.randn(*w, device=device, dtype=dtype)]
        if bias:
            tensors.append(torch.randn(w[0], device=device, dtype=dtype))
        return tuple(tensors)

    return Case(f"conv2d {name}", BF.conv2d, F.conv2d, make, options)


def _pool(name, x, **options) -> Case:
    return Case(f"avg_pool2d {name}", BF.avg_pool2d, F.avg_pool2d, lambda d, t: (_randn(*x)(d, t),), options)


def _linear(name, x, w, bias=True) -> Case:
    def make(device, dtype):
        tensors = [torch.randn(*x, device=device, dtype=dtype), torch.randn(*w, device=device, dtype=dtype)]
        if bias:
            tensors.append(torch.randn(w[0], device=device, dtype=dtype))
        return tuple(tensors)

    return Case(f"linear {name}", BF.linear, F.linear, make)


def _max_pool(name, x, **options) -> Case:
    return Case(f"max_pool2d {name}", BF.max_pool2d, F.max_pool2d, lambda d, t: (_randn(*x)(d, t),), options)


def _adaptive(name, x, output_size) -> Case:
    make = lambda d, t: (_randn(*x)(d, t),)  # noqa: E731
    return Case(f"adaptive_avg_pool2d {name}", BF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, make,
                {"output_size": output_size})  # fmt: skip


def _batch_norm(name, x, training=True, affine=True, running=True, **options) -> Case:
    """batch_norm of an ``x``-shaped input: ``(x, weight, bias)`` (or ``(x,)``) as the arguments, the running
    statistics fixed (fresh copies each call: training updates them in place), ``options`` the rest."""
    g = torch.Generator().manual_seed(x[1])
    stats = torch.randn(x[1], generator=g, dtype=torch.float64), torch.rand(x[1], generator=g, dtype=torch.float64)

    def call(batch_norm):
        def run(input, weight=None, bias=None, **kwargs):
            rm, rv = (s.to(input.device, input.dtype) for s in (stats[0], stats[1] + 0.5)) if running else (None,) * 2
            return batch_norm(input, rm, rv, weight, bias, training, **kwargs)

        return run

    def make(device, dtype):
        return tuple(torch.randn(*shape, device=device, dtype=dtype) for shape in [x, *[(x[1],)] * (2 * affine)])

    return Case(f"batch_norm {name}", call(BF.batch_norm), call(F.batch_norm), make, options)


# Small shapes so float64 gradcheck stays quick; between them they cover every option.
CASES: list[Case] = [
    _conv("LeNet C1", (2, 1, 9, 9), (3, 1, 5, 5)),
    _conv("LeNet C2 (fewer maps)", (1, 6, 6, 6), (4, 6, 5, 5)),
    _conv("stride 2, padding 1", (2, 3, 7, 8), (4, 3, 3, 3), stride=2, padding=1),
    _conv("stride (3, 2), dilation 2, no bias", (1, 2, 11, 9), (3, 2, 3, 2), bias=False, stride=(3, 2), dilation=2),
    _conv("groups 2, padding (2, 0)", (2, 4, 6, 7), (6, 2, 3, 3), groups=2, padding=(2, 0)),
    _conv("depthwise, stride 2", (2, 4, 7, 7), (4, 1, 3, 3), groups=4, stride=2, padding=1),
    _conv("padding same, even kernel, dilation 2", (1, 3, 7, 6), (2, 3, 4, 3), padding="same", dilation=2),
    _conv("padding valid, 1x1", (2, 3, 5, 5), (4, 3, 1, 1), padding="valid"),
    _conv("unbatched", (3, 6, 6), (2, 3, 3, 3), padding=1),
    _conv("padding larger than kernel reach", (1, 2, 5, 5), (2, 2, 3, 3), padding=3),
    _pool("LeNet 2x2", (2, 3, 8, 8), kernel_size=2),
    _pool("3x3 stride 2 padding 1", (2, 3, 9, 8), kernel_size=3, stride=2, padding=1),
    _pool("ceil_mode, no pad counted", (1, 2, 7, 9), kernel_size=3, stride=2, padding=1, ceil_mode=True,
          count_include_pad=False),
    _pool("ceil_mode 2x2 on odd", (1, 2, 5, 7), kernel_size=2, ceil_mode=True),
    _pool("divisor_override", (2, 2, 6, 6), kernel_size=(3, 2), stride=(1, 2), divisor_override=5),
    _pool("unbatched, overlapping", (2, 7, 7), kernel_size=3, stride=1, padding=1),
    Case("sigmoid", BF.sigmoid, torch.sigmoid, lambda d, t: (_randn(3, 4, 5)(d, t),)),
    _linear("LeNet FC", (4, 192), (10, 192)),
    _linear("leading dims, no bias", (2, 3, 5), (4, 5), bias=False),
    _linear("unbatched", (5,), (3, 5)),
    _max_pool("2x2", (2, 3, 6, 6), kernel_size=2),
    _max_pool("3x3 stride 2 padding 1", (2, 3, 9, 8), kernel_size=3, stride=2, padding=1),
    _max_pool("dilation 2, ceil_mode", (1, 2, 9, 7), kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=2,
              ceil_mode=True),
    _max_pool("unbatched, overlapping", (2, 7, 7), kernel_size=3, stride=1, padding=1),
    _adaptive("global 1x1", (2, 3, 5, 4), 1),
    _adaptive("disjoint windows", (2, 3, 6, 9), (3, 3)),
    _adaptive("overlapping windows", (2, 2, 7, 9), (3, 4)),
    _adaptive("upsampling, None keeps a size", (1, 2, 2, 3), (5, None)),
    _adaptive("unbatched", (3, 5, 5), 2),
    _batch_norm("training", (3, 2, 4, 5)),
    _batch_norm("training, no affine, no running statistics", (3, 2, 4, 3), affine=False, running=False),
    _batch_norm("eval", (3, 2, 4, 5), training=False),
    _batch_norm("(N, C) training, momentum 0.3", (6, 4), momentum=0.3),
    _batch_norm("(N, C, L) eval, eps 0.1", (2, 3, 5), training=False, eps=0.1),
]  # fmt: skip


def compare_with_native(case: Case, device="cpu", dtype=torch.float32, grad_output_transform=None):
    """Run ``case`` through bp_torch and through torch on the same inputs and the same upstream gradient.

    Returns ``(forward_error, {argument index: gradient error})``, each the largest absolute difference.
    ``grad_output_transform`` may reshape the layout of the upstream gradient (e.g. make it non-contiguous).
    """
    manual_inputs = case.inputs(device, dtype)
    native_inputs = tuple(a.detach().clone().requires_grad_() for a in manual_inputs)
    manual_out = case.manual(*manual_inputs, **case.options)
    native_out = case.native(*native_inputs, **case.options)
    grad_output = torch.randn_like(native_out)
    if grad_output_transform is not None:
        grad_output = grad_output_transform(grad_output)
    manual_grads = torch.autograd.grad(manual_out, manual_inputs, grad_output)
    native_grads = torch.autograd.grad(native_out, native_inputs, grad_output)
    forward_error = (manual_out - native_out).abs().max().item() if native_out.numel() else 0.0
    grad_errors = {
        i: ((m - n).abs().max().item() if n.numel() else 0.0)
        for i, (m, n) in enumerate(zip(manual_grads, native_grads))
    }
    return forward_error, grad_errors


def passes_gradcheck(case: Case, device="cpu", second_order=False, fast_mode=True, **kwargs) -> bool:
    """float64 ``gradcheck`` (or ``gradgradcheck``) of the bp_torch function; ``fast_mode`` checks random
    projections of the Jacobian (PyTorch's fast gradcheck) instead of every entry."""
    inputs = case.inputs(device, torch.float64)
    fn = lambda *args: case.manual(*args, **case.options)  # noqa: E731
    check = torch.autograd.gradgradcheck if second_order else torch.autograd.gradcheck
    return check(fn, inputs, raise_exception=False, fast_mode=fast_mode, **kwargs)


@dataclass
class Row:
    function: str
    cases: int = 0
    forward_error: float = 0.0
    grad_error: float = 0.0
    gradcheck: bool = True
    gradgradcheck: bool = True

    def ok(self, tolerance: float) -> bool:
        return self.gradcheck and self.gradgradcheck and max(self.forward_error, self.grad_error) <= tolerance


def run(device="cpu") -> list[Row]:
    rows: dict[str, Row] = {}
    for case in CASES:
        row = rows.setdefault(case.name.split()[0], Row(case.name.split()[0]))
        forward_error, grad_errors = compare_with_native(case, device)
        row.cases += 1
        row.forward_error = max(row.forward_error, forward_error)
        row.grad_error = max(row.grad_error, *grad_errors.values())
        row.gradcheck &= passes_gradcheck(case, device)
        row.gradgradcheck &= passes_gradcheck(case, device, second_order=True)
    return list(rows.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bp_torch.check", description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"device to check on (default: {default})")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest float32 difference from native autograd that passes (default: 1e-4)",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = run(args.device)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"bp_torch.check on {args.device} ({name}), torch {torch.__version__}\n")
    print("| function | cases | max forward error | max gradient error | gradcheck | gradgradcheck |")
    print("|---|---|---|---|---|---|")
    mark = {True: "pass", False: "FAIL"}
    for r in rows:
        print(
            f"| {r.function} | {r.cases} | {r.forward_error:.2e} | {r.grad_error:.2e} | "
            f"{mark[r.gradcheck]} | {mark[r.gradgradcheck]} |"
        )
    failed = [r.function for r in rows if not r.ok(args.tolerance)]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
