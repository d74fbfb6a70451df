"""Every property, for every operation of the op table (tests/op_db.py), in both formula modes.

- values, dtypes, layouts, in-place updates and gradients against torch, for a random subset of the differentiable
  inputs requiring grad and sometimes a non-finite upstream gradient; in half precision and float32 each judged
  against a float64 reference: ours may be no further from it than twice torch's own distance, plus a few ulps;
- second order: the double backward against torch's (float64);
- gradcheck, gradgradcheck and forward-mode AD (float64);
- non-reentrant activation checkpointing: the same gradients;
- invalid arguments: torch's exception type;
- PyTorch's own OpInfo samples (``common_methods_invocations.op_db``), first and second order.

More draws (the differential run of the closing notes)::

    BP_TORCH_OP_EXAMPLES=5000 python -m pytest tests/test_op_table.py -k matches_torch
"""

from __future__ import annotations

import itertools
import os
import random
import warnings

import pytest
import torch
from op_db import HALF, OPS, OpEntry, Sample, samples
from torch.autograd import gradcheck, gradgradcheck

EXAMPLES = int(os.environ.get("BP_TORCH_OP_EXAMPLES", "120"))
GRADCHECK_EXAMPLES = int(os.environ.get("BP_TORCH_OP_GRADCHECK_EXAMPLES", "6"))

pytestmark = pytest.mark.usefixtures("both_formulas")
ops = pytest.mark.parametrize("op", OPS, ids=str)


# --------------------------------------------------------------------------------------- running a call


def _copy(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """A copy with the same strides (non-contiguous and channels_last kept), optionally cast."""
    dtype = dtype or t.dtype
    out = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=t.device)
    return out.copy_(t.detach())


def _wider(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64 if dtype.is_floating_point else dtype


def _prepare(sample: Sample, wanted: set, widen: bool = False, contiguous: bool = False):
    """Fresh copies of the sample's tensors (cast to float64/complex128 if ``widen``), ``wanted`` requiring grad;
    returns (args, kwargs, leaves by key). ``contiguous``: every tensor laid out plainly."""
    leaves, args, kwargs = {}, list(sample.args), dict(sample.kwargs)

    def fresh(key, a):
        if isinstance(a, torch.dtype) and widen:  # softmax's dtype: the reference computes in float64 all the same
            return _wider(a)
        if not isinstance(a, torch.Tensor):
            return a
        t = a.detach().contiguous() if contiguous else a
        t = _copy(t, _wider(a.dtype) if widen else None)
        if key in wanted:
            leaves[key] = t.requires_grad_()
            if key == 0 and sample.inplace:
                return t.clone()  # an in-place op may not overwrite a leaf
        return t

    args = [fresh(i, a) for i, a in enumerate(args)]
    kwargs = {k: fresh(k, v) for k, v in kwargs.items()}
    return args, kwargs, leaves


class Outcome:
    """A call's result: ``error`` (where and which type) or the outputs, the gradients of the leaves, and the tensor
    arguments as they are after the call (running statistics are updated in place)."""

    def __init__(self, function, sample: Sample, wanted: set, upstream=None, widen=False, contiguous=False):
        self.error = self.outputs = self.grads = None
        args, kwargs, leaves = _prepare(sample, wanted, widen, contiguous)
        self.args = args + list(kwargs.values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if sample.seed is not None:
                    torch.manual_seed(sample.seed)
                out = function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the type is what is compared
                self.error = ("forward", type(error), str(error)[:200])
                return
        self.outputs = out if isinstance(out, tuple) else (out,)
        self.leaves = leaves
        first = self.outputs[0]
        if upstream is None or not first.requires_grad:
            return
        try:
            grads = torch.autograd.grad(first, list(leaves.values()), upstream.to(first.dtype), allow_unused=True)
        except Exception as error:  # noqa: BLE001
            self.error = ("backward", type(error), str(error)[:200])
            return
        self.grads = dict(zip(leaves, grads))


def _upstream(output: torch.Tensor, rng: random.Random, nonfinite: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.getrandbits(32))
    upstream = torch.randn(output.shape, generator=g, dtype=torch.float64)
    if output.is_complex():
        upstream = torch.complex(upstream, torch.randn(output.shape, generator=g, dtype=torch.float64))
    # complex infinities: C's rules (Annex G) and a plain product differ by kernel, not by derivation
    if nonfinite and not output.is_complex() and upstream.numel() and rng.random() < 0.1:
        upstream.view(-1)[rng.randrange(upstream.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
    return upstream


# --------------------------------------------------------------------------------------- judging


def _layout(t: torch.Tensor) -> str:
    """The memory format a drop-in must match: contiguous, channels_last, or another (transposed, sliced) order,
    which torch's kernels choose for speed and no user can ask for."""
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "other"


def _judge(ours, theirs, ref, what: str, elementwise: bool, precision: torch.dtype | None = None, layout=True,
           float64_ulps: float = 64, terms: float = 0.0, torch_distance: float = 2):  # fmt: skip
    """``ours`` as close to the float64 ``ref`` as ``theirs`` (torch) is, within twice its distance and a few ulps
    of ``precision`` (the lowest of the call; None: ``ref`` is torch's own float64 result, not a truth, and only a
    gross difference counts); non-finite entries where torch has them, the same ones (or the truth's)."""
    assert (ours is None) == (theirs is None), f"{what}: {ours is None=} but torch's {theirs is None=}"
    if ours is None:
        return
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} vs torch's {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs torch's {tuple(theirs.shape)}"
    if layout and _layout(theirs) != "other":
        assert _layout(ours) == _layout(theirs), f"{what}: strides {ours.stride()} vs torch's {theirs.stride()}"
    if not (ours.is_floating_point() or ours.is_complex()):
        assert torch.equal(ours, theirs), f"{what}: {ours} vs torch's {theirs}"
        return
    wide = _wider(ours.dtype)
    o, t, r = ours.detach().to(wide), theirs.detach().to(wide), ref.detach().to(wide)
    finite_o, finite_t = torch.isfinite(o), torch.isfinite(t)
    # non-finite where torch is, the same values; or, where torch's rounding moved them (a statistic rounded to an
    # exact zero, or a residue where there should be one, turns inf into NaN or back), where the truth is
    finite_r = torch.isfinite(r)
    same = (finite_o == finite_t) & (finite_o | (o == t) | (o.isnan() & t.isnan()))
    same |= (finite_o == finite_r) & (finite_o | (o == r) | (o.isnan() & r.isnan()))
    bad = (~same).nonzero()
    assert not len(bad), f"{what}: at {bad[0].tolist()} ours {o[tuple(bad[0])]} but torch's {t[tuple(bad[0])]}"
    m = finite_o & torch.isfinite(r) & finite_t
    if not m.any():
        return
    err_o, err_t, scale = (o - r).abs()[m], (t - r).abs()[m], r.abs()[m]
    eps = torch.finfo(precision or ours.dtype).eps
    if precision is None:  # against torch's float64 (or the op's reference): sums in another order, any formulation
        bound = torch_distance * err_t + 2 * eps * scale + float64_ulps * eps * max(scale.max().item(), 1.0)
    elif elementwise:  # each value rounded once or twice where torch rounds it once (a complex product's parts
        # against its factors' size: ``terms``)
        bound = torch_distance * err_t + 4 * eps * scale + 4 * eps * terms + 4 * torch.finfo(precision).tiny
    else:  # sums in another order: a few ulps of the largest value, in float32 for half precision ("opmath")
        opmath = torch.finfo(torch.float32).eps if precision in HALF else eps
        bound = torch_distance * err_t + 2 * eps * scale + 32 * opmath * max(scale.max(), terms)
        bound = bound + 4 * torch.finfo(precision).tiny
    worst = torch.argmax(err_o - bound)
    assert err_o[worst] <= bound[worst], (
        f"{what}: off the float64 truth by {err_o[worst]:.3g} where torch is off by {err_t[worst]:.3g} "
        f"(value {r[m][worst]:.6g})"
    )


def _differentiable(sample: Sample) -> list:
    tensors = sample.tensors()
    return [k for k in sample.grads if k in tensors and (tensors[k].is_floating_point() or tensors[k].is_complex())]


def compare(op: OpEntry, sample: Sample, rng: random.Random, what: str) -> bool:
    """One differential check of ``op`` on ``sample``: a random subset of its differentiable tensors requiring grad.
    Returns whether torch accepted the call."""
    candidates = _differentiable(sample)
    wanted = {k for k in candidates if rng.random() < 0.6}
    theirs = Outcome(op.theirs, sample, wanted)
    upstream = None
    if theirs.error is None and theirs.outputs[0].requires_grad:
        # rounded to the output's dtype once: the float64 reference gets the very δ both sides get
        upstream = _upstream(theirs.outputs[0], rng, op.nonfinite_upstream).to(theirs.outputs[0].dtype)
        theirs = Outcome(op.theirs, sample, wanted, upstream)
    ours = Outcome(op.ours, sample, wanted, upstream)
    what = f"{what} requiring grad {sorted(map(str, wanted))}"
    plain = False
    if theirs.error and theirs.error[0] == "backward" and any(bug in theirs.error[2] for bug in op.torch_bugs):
        # torch's backward refuses what its forward accepted (README "Limits"): torch on plain copies is the reference
        theirs, plain = Outcome(op.theirs, sample, wanted, upstream, contiguous=True), True
        if theirs.error and any(bug in theirs.error[2] for bug in op.torch_bugs):  # refused whatever the layout
            assert ours.error is None, f"{what}: ours {ours.error} where torch's backward refuses the call"
            return False
    assert (ours.error and ours.error[:2]) == (theirs.error and theirs.error[:2]), (
        f"{what}: ours {ours.error} but torch's {theirs.error}"
    )
    if ours.error:
        return theirs.error[0] == "backward"
    floats = [t.dtype for t in [*sample.tensors().values(), *ours.outputs] if t.is_floating_point() or t.is_complex()]
    precision = max(floats, key=lambda d: torch.finfo(d).eps, default=torch.float64)
    precision = {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(precision, precision)
    truth = precision != torch.float64 and sample.seed is None  # dropout's draw: torch's own result is the reference
    # float64 calls: judged against torch's own float64, or where that is no truth the op's better-conditioned one
    widened = truth or (op.reference is not None and sample.seed is None)
    reference = op.reference or op.theirs
    ref = Outcome(reference, sample, wanted, upstream, widen=True, contiguous=plain) if widened else theirs
    if ref.error:  # float64 raises where the low precision does not (not seen): judge against torch itself
        ref, truth = theirs, False
    precision = precision if truth else None
    assert len(ours.outputs) == len(theirs.outputs), what
    for i, (a, b, r) in enumerate(zip(ours.outputs, theirs.outputs, ref.outputs)):
        assert a.requires_grad == b.requires_grad, f"{what}: output {i} requires_grad {a.requires_grad}"
        _judge(a, b, r, f"{what} output {i}", op.elementwise, precision, not plain, op.float64_ulps)
    for a, b, r in zip(ours.args, theirs.args, ref.args):  # arguments updated in place (running statistics)
        if isinstance(a, torch.Tensor) and not a.requires_grad:
            _judge(a, b, r, f"{what} argument updated in place", False, precision, True, op.float64_ulps)
    complex_ = any(t.is_complex() for t in sample.tensors().values())
    cancel = (op.sums_cancel or complex_) and upstream is not None and upstream.numel()
    terms = upstream[torch.isfinite(upstream)].abs().max().item() if cancel and torch.isfinite(upstream).any() else 0.0
    for key in wanted:
        _judge(
            ours.grads and ours.grads[key],
            theirs.grads and theirs.grads[key],
            ref.grads and ref.grads[key],
            f"{what} gradient of {key}",
            op.elementwise,
            precision,
            not plain and str(key) not in op.layout_exempt,
            op.float64_ulps,
            terms,
            op.torch_distance,
        )
    return True


# --------------------------------------------------------------------------------------- the properties


@ops
def test_matches_torch(op: OpEntry, both_formulas):
    """The differential run; prints how many draws torch accepted (``-s`` shows it)."""
    accepted = sum(compare(op, sample, random.Random(i), f"{op.name} draw {i} {sample.describe()}")
                   for i, sample in samples(op, EXAMPLES))  # fmt: skip
    print(f"\n{op.name} ({both_formulas}): {EXAMPLES} draws, {accepted} valid (torch accepted), all as torch")
    assert accepted >= EXAMPLES // 2, "most draws should be valid calls: the samples drift from what torch accepts"


def _widened(a):
    if isinstance(a, torch.dtype):
        return _wider(a)
    return _copy(a, _wider(a.dtype)) if isinstance(a, torch.Tensor) else a


def _finite_float64(op: OpEntry, count: int, seed: int = 1):
    """Float64 (complex128) copies of samples without non-finite values, and their differentiable keys."""
    for i, sample in samples(op, count * 4, seed):
        tensors = sample.tensors()
        if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point() or t.is_complex()):
            continue
        args = [_widened(a) for a in sample.args]
        kwargs = {k: _widened(v) for k, v in sample.kwargs.items()}
        wide = Sample(tuple(args), kwargs, sample.grads, sample.inplace, sample.seed)
        keys = [k for k in _differentiable(wide) if wide.tensors()[k].numel()]
        torchs = Outcome(op.theirs, wide, set())
        # torch accepts this spelling, and its result is finite (a mean over no weight is NaN: nothing to check)
        if (
            keys
            and torchs.error is None
            and all(torch.isfinite(o).all() for o in torchs.outputs if o.is_floating_point())
        ):
            yield i, wide, keys
        count -= 1
        if count == 0:
            return


def _as_function(op: OpEntry, sample: Sample, keys: list, which: str = "ours"):
    """``op`` as a function of the tensors at ``keys``, the rest of ``sample`` fixed."""
    function = op.ours if which == "ours" else op.theirs

    def call(*tensors):
        # fresh copies of the fixed tensors (running statistics change in place), then the variables
        args = [_copy(a) if isinstance(a, torch.Tensor) else a for a in sample.args]
        kwargs = {k: _copy(v) if isinstance(v, torch.Tensor) else v for k, v in sample.kwargs.items()}
        for key, t in zip(keys, tensors):
            if isinstance(key, int):
                args[key] = t.clone() if key == 0 and sample.inplace else t
            else:
                kwargs[key] = t
        if which != "ours" and op.torch_bugs:  # torch's backward refuses some layouts its forward accepts
            args = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
            kwargs = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        if sample.seed is not None:
            torch.manual_seed(sample.seed)
        out = function(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    return call


@ops
def test_second_order_matches_torch(op: OpEntry):
    """The gradient of ⟨∂e/∂inputs, v⟩ with respect to every input, against torch's double backward."""
    for i, sample, keys in _finite_float64(op, 12):
        results = []
        for which in ("ours", "theirs"):
            try:
                results.append(_second_order(op, sample, keys, which, i))
            except RuntimeError:
                if which == "ours":
                    raise
                # torch has no double backward here (its CPU attention kernel; layer_norm's without a weight): ours
                # is held by gradgradcheck (README "Limits")
                results.append("torch raised")
        ours, theirs = results
        if theirs == "refused":  # ours is judged by gradgradcheck alone
            continue
        what = f"{op.name} draw {i} {sample.describe()} second order"
        if isinstance(theirs, str):
            continue
        if ours is None or theirs is None:
            assert ours is theirs, what
            continue
        for key, a, b in zip(keys, ours, theirs):
            if b is None:  # torch's double backward gives nothing (a zero): ours must be zero too
                assert a is None or not a.any(), f"{what} of {key}: ours nonzero where torch's is None"
                continue
            # torch's zero is a tensor, and so must ours be: None would leave a parameter's .grad unset, and
            # autograd.grad would call it unused (an input-gradient penalty, WGAN-GP's or R1's, through a ReLU)
            if a is None and key == 0 and op.input_unlinked_at_second_order:
                assert not b.any(), f"{what} of {key}"
                continue
            assert a is not None, f"{what} of {key}: ours None where torch's is a tensor"
            torch.testing.assert_close(a, b, equal_nan=True, msg=f"{what} of {key}")


def _second_order(op, sample, keys, which, i):
    """The gradient of ⟨∂e/∂inputs, v⟩ with respect to the inputs at ``keys`` (None: nothing requires grad)."""
    primals = [sample.tensors()[k].detach().clone().requires_grad_() for k in keys]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _as_function(op, sample, keys, which)(*primals)
        if not out.requires_grad:
            return None
        g = torch.Generator().manual_seed(i)
        upstream = torch.randn(out.shape, generator=g, dtype=out.dtype)
        grads = torch.autograd.grad(out, primals, upstream, create_graph=True, allow_unused=True)
        v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in primals]
        total = sum((gr * vi).sum().real for gr, vi in zip(grads, v) if gr is not None and gr.requires_grad)
        if not isinstance(total, torch.Tensor):
            return [None] * len(primals)
        return torch.autograd.grad(total, primals, allow_unused=True)


@ops
def test_gradcheck_gradgradcheck_and_forward_ad(op: OpEntry):
    for i, sample, keys in _finite_float64(op, GRADCHECK_EXAMPLES, seed=2):
        primals = [sample.tensors()[k].detach().clone().requires_grad_() for k in keys]
        fn = _as_function(op, sample, keys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not fn(*primals).requires_grad:
                continue
            what = f"{op.name} draw {i} {sample.describe()}"
            # an in-place op: gradcheck's vmapped forward mode re-wraps the tangent; dropout: legacy vmap cannot draw.
            # Batched gradients: the legacy vmap over δ (is_grads_batched, jacobian(vectorize=True)) through every
            # backward, and through the backward of every backward
            batched = not sample.inplace and sample.seed is None
            assert gradcheck(
                fn, primals, check_forward_ad=True, check_batched_forward_grad=batched,
                check_batched_grad=sample.seed is None, fast_mode=True,
            ), what  # fmt: skip
            assert gradgradcheck(fn, primals, check_batched_grad=sample.seed is None, fast_mode=True), what


@ops
def test_non_reentrant_checkpointing_gives_the_same_gradients(op: OpEntry):
    """Under ``torch.utils.checkpoint`` (non-reentrant, torch's recommended mode) the forward is recomputed for the
    backward, and each saved tensor may be unpacked once: the same gradients as without it."""
    from torch.utils.checkpoint import checkpoint

    for i, sample, keys in _finite_float64(op, 2, seed=5):
        fn = _as_function(op, sample, keys)
        results = []
        for checkpointed in (False, True):
            primals = [sample.tensors()[k].detach().clone().requires_grad_() for k in keys]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = checkpoint(fn, *primals, use_reentrant=False) if checkpointed else fn(*primals)
                if not out.requires_grad:
                    break
                upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(i), dtype=out.dtype)
                results.append(torch.autograd.grad(out, primals, upstream, allow_unused=True))
        if results:
            what = f"{op.name} draw {i} {sample.describe()} checkpointed"
            torch.testing.assert_close(results[1], results[0], equal_nan=True, msg=what)


@ops
@pytest.mark.parametrize("transform", ["jacrev", "jacfwd"])
def test_torch_func_jacobians_match_torchs(op: OpEntry, transform):
    """torch.func's reverse- and forward-mode Jacobians (vmap over our backward, or over our jvp) against torch's:
    the same values, or the same exception type (a random op under vmap: its randomness rule)."""
    for i, sample, keys in _finite_float64(op, 3, seed=4):
        results = []
        for which in ("ours", "theirs"):
            fn = _as_function(op, sample, keys, which)
            primals = [sample.tensors()[k].detach().clone() for k in keys]
            jacobian = getattr(torch.func, transform)(fn, argnums=tuple(range(len(keys))))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    results.append(jacobian(*primals))
                except Exception as error:  # noqa: BLE001 - the type is what is compared
                    results.append(type(error))
        ours, theirs = results
        what = f"{op.name} draw {i} {sample.describe()} {transform}"
        if isinstance(theirs, type) and not isinstance(ours, type) and not all(j.numel() for j in ours):
            continue  # an empty output: torch's vmap over zero rows raises, ours gives the empty Jacobian
        if theirs is NotImplementedError and not isinstance(ours, type):
            continue  # torch's kernel has no forward-mode AD (attention): ours is held by gradcheck's forward AD
        if isinstance(theirs, type) or isinstance(ours, type):
            assert ours == theirs, f"{what}: ours {ours} but torch's {theirs}"
            continue
        torch.testing.assert_close(ours, theirs, equal_nan=True, msg=what)


@ops
def test_forward_over_forward_matches_torchs(op: OpEntry):
    """A second directional derivative by forward mode twice (jvp of jvp, as jacfwd of jacfwd): torch differentiates
    no Function's jvp at an outer forward level (a silent zero), so there each op's forward runs on torch's ops."""
    for i, sample, keys in _finite_float64(op, 2, seed=5):
        results = []
        for which in ("ours", "theirs"):
            fn = _as_function(op, sample, keys, which)
            primals = tuple(sample.tensors()[k].detach().clone() for k in keys)
            g = torch.Generator().manual_seed(i)
            inner, outer = ([torch.randn(p.shape, dtype=p.dtype, generator=g) for p in primals] for _ in range(2))

            def directional(*p, fn=fn, inner=tuple(inner)):
                return torch.func.jvp(fn, p, inner)[1]

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    results.append(torch.func.jvp(directional, primals, tuple(outer))[1])
                except Exception as error:  # noqa: BLE001 - the type is what is compared
                    results.append(type(error))
        ours, theirs = results
        what = f"{op.name} draw {i} {sample.describe()} forward over forward"
        if theirs is NotImplementedError and not isinstance(ours, type):
            continue  # torch's kernel has no forward-mode AD (attention)
        if isinstance(theirs, type) or isinstance(ours, type):
            assert ours == theirs, f"{what}: ours {ours} but torch's {theirs}"
            continue
        torch.testing.assert_close(ours, theirs, equal_nan=True, msg=what)


@ops
def test_invalid_arguments_raise_torchs_exception_type(op: OpEntry):
    """Each fault of the entry on a few valid samples: where torch refuses the call, ours refuses it with the same
    exception type; where torch accepts it, ours gives the same result."""
    for i, sample in samples(op, 4, seed=3):
        rng = random.Random(i)
        for key, bad in op.faults(sample, rng):
            broken = sample.replace(key, bad)
            compare(op, broken, rng, f"{op.name} draw {i} with {key}={bad!r} {broken.describe()}")


# --------------------------------------------------------------------------------------- torch's own samples


def _opinfo_samples(op: OpEntry, dtype: torch.dtype):
    from torch.testing._internal.common_methods_invocations import op_db

    for info in op_db:
        variant = f"{info.name}.{info.variant_test_name}" if info.variant_test_name else info.name
        if variant in op.opinfo:  # "div.no_rounding_mode": a variant by name
            for sample in info.sample_inputs("cpu", dtype, requires_grad=True):
                yield info.name, sample


@ops
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_opinfo_samples(op: OpEntry, dtype):
    """torch's OpInfo samples, given to ours and torch's: values and first-order gradients; second order in
    float64."""
    found = False
    for n, (name, s) in enumerate(_opinfo_samples(op, dtype)):
        found = True
        sample = Sample((s.input, *s.args), dict(s.kwargs))
        sample.grads = tuple(k for k, t in sample.tensors().items() if t.requires_grad)  # as torch's sample marks
        compare(op, sample, random.Random(n), f"OpInfo {name} sample {n} {sample.describe()}")
    assert found or not op.opinfo, f"no OpInfo samples for {op.opinfo}"


def test_every_function_has_an_entry():
    from bp_torch import functional as BF

    named = {op.name for op in OPS}
    aliases = {"relu_", "leaky_relu_", "max_pool2d_with_indices", "hardtanh_"}  # spellings of an entry's function
    assert set(BF.__all__) - aliases <= named, set(BF.__all__) - aliases - named


def test_subsets_of_differentiable_inputs_are_drawn():
    """The draws reach every subset of an op's differentiable inputs (the frozen-stem case among them)."""
    op = next(o for o in OPS if o.name == "batch_norm")
    seen = set()
    for i, sample in samples(op, 200):
        rng = random.Random(i)
        seen.add(frozenset(k for k in _differentiable(sample) if rng.random() < 0.6))
    assert {frozenset(), frozenset({0}), frozenset({"weight", "bias"})} <= seen
    assert len(seen) == len(list(itertools.chain.from_iterable(
        itertools.combinations([0, "weight", "bias"], r) for r in range(4))))  # fmt: skip
