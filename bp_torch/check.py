"""Validate the hand-derived gradients on your own device: ``python -m bp_torch.check [--device cpu|cuda]``.

For each function it runs a set of configurations and prints one row: the largest forward and gradient errors
against PyTorch's own autograd (float32), and whether ``gradcheck`` and ``gradgradcheck`` pass (float64).
Exits 0 if every check passes, 1 if any fails, 2 for bad arguments (a device this machine does not have). The test
suite uses :func:`compare_with_native` and :data:`CASES` too.
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
    """One configuration: ``make(device, dtype)`` returns the tensor arguments; ``options`` the rest; ``grads`` the
    positions of the arguments that are differentiated (all, if None; class indices and a loss's class weight not)."""

    name: str
    manual: Callable
    native: Callable
    make: Callable[[torch.device, torch.dtype], tuple]
    options: dict = field(default_factory=dict)
    grads: tuple[int, ...] | None = None

    def inputs(self, device, dtype, requires_grad=True) -> tuple:
        args = self.make(torch.device(device), dtype)
        return tuple(
            a.requires_grad_(requires_grad) if isinstance(a, torch.Tensor) and self.differentiated(i) else a
            for i, a in enumerate(args)
        )

    def differentiated(self, i: int) -> bool:
        return self.grads is None or i in self.grads


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


def _on_copy(f: Callable) -> Callable:
    """``f`` on a copy of its first argument: an in-place op may not overwrite a leaf that requires grad."""
    return lambda x, *args, **kw: f(x.clone(), *args, **kw)


def _seeded(f: Callable) -> Callable:
    """``f`` after reseeding: the same dropout mask on every call (gradcheck calls many times) and on both sides."""
    return lambda *args, **kw: (torch.manual_seed(7), f(*args, **kw))[1]


def _classes(shape, device, with_ignored=True) -> torch.Tensor:
    """Class indices for logits of ``shape`` (classes along dim 1, or dim 0 unbatched), one of them ignored (-100)."""
    C = shape[1] if len(shape) > 1 else shape[0]
    target = torch.randint(0, C, (shape[0], *shape[2:]) if len(shape) > 1 else (), device=device)
    if with_ignored and target.dim():
        target.view(-1)[1] = -100
    return target


def _nll(name, shape, weight=False, **options) -> Case:
    def make(device, dtype):
        C = shape[1] if len(shape) > 1 else shape[0]
        log_p = torch.randn(*shape, device=device, dtype=dtype).log_softmax(1 if len(shape) > 1 else 0)
        w = (torch.rand(C, device=device, dtype=dtype) + 0.5,) if weight else ()
        return (log_p, _classes(shape, device), *w)

    return Case(f"nll_loss {name}", BF.nll_loss, F.nll_loss, make, options, grads=(0,))


def _cross_entropy(name, shape, probabilities=False, weight=False, **options) -> Case:
    def make(device, dtype):
        C = shape[1] if len(shape) > 1 else shape[0]
        x = torch.randn(*shape, device=device, dtype=dtype)
        if probabilities:
            target = torch.randn(*shape, device=device, dtype=dtype).softmax(1 if len(shape) > 1 else 0)
        else:
            target = _classes(shape, device, with_ignored=len(shape) > 1)
        return (x, target, *((torch.rand(C, device=device, dtype=dtype) + 0.5,) if weight else ()))

    # class probabilities and their weight are differentiated too; class indices and their weight are not
    grads = (0, 1, 2) if probabilities else (0,)
    return Case(f"cross_entropy {name}", BF.cross_entropy, F.cross_entropy, make, options, grads=grads)


def _mse(name, **options) -> Case:
    """A weighted squared error: input, target and weight all differentiated."""

    def make(device, dtype):
        return (
            *(torch.randn(3, 4, device=device, dtype=dtype) for _ in range(2)),
            torch.rand(3, 4, device=device, dtype=dtype) + 0.5,
        )

    return Case(
        f"mse_loss {name}",
        lambda x, y, w, **o: BF.mse_loss(x, y, weight=w, **o),
        lambda x, y, w, **o: F.mse_loss(x, y, weight=w, **o),
        make,
        options,
    )


def _max_pool(name, x, **options) -> Case:
    return Case(f"max_pool2d {name}", BF.max_pool2d, F.max_pool2d, lambda d, t: (_randn(*x)(d, t),), options)


def _adaptive(name, x, output_size) -> Case:
    make = lambda d, t: (_randn(*x)(d, t),)  # noqa: E731
    return Case(
        f"adaptive_avg_pool2d {name}", BF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, make, {"output_size": output_size}
    )


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
    # beyond the notes (docs/derivation.md eq. D1–D12)
    Case("relu", BF.relu, F.relu, lambda d, t: (_randn(3, 4, 5)(d, t),)),
    Case("relu inplace", _on_copy(BF.relu), _on_copy(F.relu), lambda d, t: (_randn(4, 5)(d, t),), {"inplace": True}),
    Case("leaky_relu", BF.leaky_relu, F.leaky_relu, lambda d, t: (_randn(3, 4, 5)(d, t),), {"negative_slope": 0.2}),
    Case("leaky_relu inplace", _on_copy(BF.leaky_relu), _on_copy(F.leaky_relu), lambda d, t: (_randn(4, 5)(d, t),),
         {"negative_slope": 0.1, "inplace": True}),
    Case("tanh", BF.tanh, torch.tanh, lambda d, t: (_randn(3, 4, 5)(d, t),)),
    # native in place draws its mask as out-of-place dropout does on the CPU, and on CUDA too (no fused kernel)
    Case("dropout", _seeded(BF.dropout), _seeded(_on_copy(F.dropout)), lambda d, t: (_randn(3, 4, 5)(d, t),),
         {"p": 0.3}),
    Case("dropout inplace", _seeded(_on_copy(BF.dropout)), _seeded(_on_copy(F.dropout)),
         lambda d, t: (_randn(4, 5)(d, t),), {"p": 0.5, "inplace": True}),
    Case("softmax", BF.softmax, F.softmax, lambda d, t: (_randn(3, 4, 5)(d, t),), {"dim": 1}),
    Case("log_softmax", BF.log_softmax, F.log_softmax, lambda d, t: (_randn(3, 4, 5)(d, t),), {"dim": -1}),
    _nll("weight, ignore_index", (4, 5), weight=True),
    _nll("2-D maps, none", (2, 3, 4, 4), reduction="none"),
    _cross_entropy("class indices, weight, ignore_index", (4, 5), weight=True),
    _cross_entropy("label smoothing, weight, sum", (4, 5), weight=True, reduction="sum", label_smoothing=0.2),
    _cross_entropy("2-D maps, smoothing, none", (2, 3, 4, 4), reduction="none", label_smoothing=0.1),
    _cross_entropy("unbatched", (5,)),
    _cross_entropy("probabilities, weight, smoothing", (4, 5), probabilities=True, weight=True, label_smoothing=0.3),
    _cross_entropy("probabilities, 2-D maps, none", (2, 3, 4, 4), probabilities=True, reduction="none"),
    Case("mse_loss", BF.mse_loss, F.mse_loss, lambda d, t: (_randn(3, 4)(d, t), _randn(3, 4)(d, t))),
    _mse("weight, sum", reduction="sum"),
    _mse("weight, mean"),
    Case("mse_loss none", BF.mse_loss, F.mse_loss, lambda d, t: (_randn(3, 4)(d, t), _randn(3, 4)(d, t)),
         {"reduction": "none"}),
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
    native_inputs = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in manual_inputs)
    manual_out = case.manual(*manual_inputs, **case.options)
    native_out = case.native(*native_inputs, **case.options)
    grad_output = torch.randn_like(native_out)
    if grad_output_transform is not None:
        grad_output = grad_output_transform(grad_output)
    manual_grads = torch.autograd.grad(manual_out, [a for a in manual_inputs if a.requires_grad], grad_output)
    native_grads = torch.autograd.grad(native_out, [a for a in native_inputs if a.requires_grad], grad_output)
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


def usable_device(name: str) -> str | None:
    """Why ``name`` is not a device this machine can run on (one line), or None if it can."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name} is not a device: expected e.g. cpu, cuda or cuda:1"
    if device.type == "meta":
        return f"--device {name} holds shapes, not values: there is nothing to compare"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: no CUDA device is available here (torch {torch.__version__})"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # another backend this build of torch lacks, or without hardware
        reason = str(e).strip().split(". ")[0].splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return f"--device {name} cannot be used: {reason}"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bp_torch.check",
        description="Validate the hand-derived gradients against PyTorch's autograd on your own device.",
        epilog="Exit codes: 0 every check passed, 1 a check failed, 2 bad arguments.",
    )
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"device to check on (default: {default})")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest float32 difference from native autograd that passes (default: 1e-4)",
    )
    args = parser.parse_args(argv)
    problem = usable_device(args.device)
    if problem is not None:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
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
