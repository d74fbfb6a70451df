"""The operations beyond the notes (docs/derivation.md eq. D1–D12) against torch: forward-mode AD, layouts, unbatched
and empty inputs, in-place variants, dropout's masks, autocast, torch.func and torch.compile.

gradcheck, gradgradcheck and float32/float64/half parity of the same cases run in test_gradcheck.py and
test_parity.py (``bp_torch.check.CASES``)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from cases import CHECK_CASES
from torch.func import grad, jacrev, jvp, vmap

from bp_torch import functional as BF
from bp_torch.check import passes_gradcheck

OURS = [c for c in CHECK_CASES if c.name.split()[0] not in ("conv2d", "avg_pool2d", "sigmoid", "linear")]


@pytest.mark.usefixtures("both_formulas")
@pytest.mark.parametrize("case", OURS, ids=lambda c: c.name)
def test_forward_mode_ad_and_forward_over_reverse(case, device):
    """The hand-written jvp equals the numerical directional derivative, and vmapped the batched one — but for an
    in-place op, whose tangent gradcheck's legacy vmap re-wraps so that no jvp can return it modified in place, and
    for dropout, whose draw legacy vmap refuses (as it refuses torch's)."""
    batched = "inplace" not in case.name and "dropout" not in case.name
    assert passes_gradcheck(case, device, fast_mode=False, check_forward_ad=True, check_batched_forward_grad=batched)
    assert passes_gradcheck(case, device, second_order=True, check_fwd_over_rev=True)


@pytest.mark.parametrize("case", OURS, ids=lambda c: c.name)
def test_graph_node_is_ours(case):
    node = case.manual(*case.inputs("cpu", torch.float64), **case.options).grad_fn
    if type(node).__name__.startswith("Squeeze"):  # an unbatched input, unsqueezed for the Function
        node = node.next_functions[0][0]
    assert type(node).__name__.endswith("FunctionBackward"), type(node).__name__


def _run(f, *args, **kwargs):
    """Output and the gradients of every argument that requires grad, for one random upstream gradient."""
    out = f(*args, **kwargs)
    # in the output's layout, as the next layer's gradient would be
    upstream = torch.empty_like(out).copy_(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return out, torch.autograd.grad(out, leaves, upstream) if out.numel() else ()


def _same(manual, native, *args, exact=False, **kwargs):
    """manual and native on copies of ``args``: outputs and gradients agree (NaNs where native has them)."""
    copies = [[_copy(a) for a in args] for _ in range(2)]
    (out, grads), (out_n, grads_n) = _run(manual, *copies[0], **kwargs), _run(native, *copies[1], **kwargs)
    assert out.dtype == out_n.dtype and out.shape == out_n.shape
    tolerance = {"rtol": 0, "atol": 0} if exact else {}
    torch.testing.assert_close(out, out_n, equal_nan=True, **tolerance)
    for g, g_n in zip(grads, grads_n):
        torch.testing.assert_close(g, g_n, equal_nan=True, **tolerance)
    return out, grads


def _copy(a):
    return a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a


ELEMENTWISE = [
    ("relu", BF.relu, F.relu, {}),
    ("leaky_relu", BF.leaky_relu, F.leaky_relu, {"negative_slope": 0.3}),
    ("tanh", BF.tanh, torch.tanh, {}),
    ("softmax", BF.softmax, F.softmax, {"dim": 1}),
    ("log_softmax", BF.log_softmax, F.log_softmax, {"dim": 1}),
]


@pytest.mark.parametrize("name, manual, native, options", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_channels_last_in_channels_last_out(name, manual, native, options, device):
    x = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    out, (gx,) = _same(manual, native, x, **options)
    x_native = x.detach().clone(memory_format=torch.channels_last).requires_grad_()
    out_native = native(x_native, **options)
    (gx_native,) = torch.autograd.grad(out_native, x_native, torch.empty_like(out_native).normal_())
    assert out.stride() == out_native.stride() and gx.stride() == gx_native.stride()
    if name != "softmax" and name != "log_softmax":  # torch's softmax along the channels returns contiguous
        assert gx.is_contiguous(memory_format=torch.channels_last)


def test_cross_entropy_on_channels_last_maps(device):
    x = torch.randn(2, 4, 3, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    target = torch.randint(0, 4, (2, 3, 5), device=device)
    _same(BF.cross_entropy, F.cross_entropy, x, target, label_smoothing=0.1)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 4), (0,)], ids=str)
@pytest.mark.parametrize("name, manual, native, options", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_empty_inputs(name, manual, native, options, shape, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    options = {**options, "dim": 0} if "dim" in options and len(shape) == 1 else options
    out, _ = _same(manual, native, x, **options)
    assert out.shape == shape


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_losses(reduction, device):
    """No elements: a mean is NaN, a sum 0, as torch's."""
    x = torch.randn(0, 5, device=device, requires_grad=True)
    indices, probabilities = torch.zeros(0, dtype=torch.long, device=device), torch.rand(0, 5, device=device)
    _same(BF.cross_entropy, F.cross_entropy, x, indices, reduction=reduction)
    _same(BF.cross_entropy, F.cross_entropy, x, probabilities, reduction=reduction)
    _same(BF.nll_loss, F.nll_loss, x, indices, reduction=reduction)
    _same(BF.mse_loss, F.mse_loss, x, probabilities, reduction=reduction)


def test_unbatched_losses_and_softmax(device):
    x = torch.randn(5, device=device, requires_grad=True)
    for reduction in ("mean", "none"):
        _same(BF.cross_entropy, F.cross_entropy, x, torch.tensor(3, device=device), reduction=reduction)
        _same(BF.cross_entropy, F.cross_entropy, x, torch.rand(5, device=device).softmax(0), reduction=reduction)
        _same(BF.nll_loss, F.nll_loss, x, torch.tensor(1, device=device), reduction=reduction)
    _same(BF.mse_loss, F.mse_loss, torch.randn((), device=device, requires_grad=True), torch.randn((), device=device))
    _same(BF.log_softmax, F.log_softmax, torch.randn((), device=device, requires_grad=True), dim=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.4])
def test_every_target_ignored_gives_torch_nan_and_zero_gradient(label_smoothing, device):
    x = torch.randn(3, 4, device=device, requires_grad=True)
    ignored = torch.full((3,), -100, device=device)
    out, (gx,) = _same(BF.cross_entropy, F.cross_entropy, x, ignored, label_smoothing=label_smoothing)
    assert out.isnan() and torch.equal(gx, torch.zeros_like(gx))


def test_negative_label_smoothing_is_none_as_in_torch(device):
    x, target = torch.randn(3, 4, device=device, requires_grad=True), torch.tensor([0, 2, 1], device=device)
    _same(BF.cross_entropy, F.cross_entropy, x, target, label_smoothing=-0.5)


def test_uint8_targets(device):
    x, target = torch.randn(3, 4, device=device, requires_grad=True), torch.tensor([0, 3, 1], device=device)
    _same(BF.cross_entropy, F.cross_entropy, x, target.to(torch.uint8), label_smoothing=0.2)


def test_complex_tanh_conjugates_as_torch(device):
    z = torch.randn(3, 4, dtype=torch.complex128, device=device, requires_grad=True)
    _same(BF.tanh, torch.tanh, z)
    assert torch.autograd.gradcheck(BF.tanh, (z,), check_forward_ad=True)


def test_mse_loss_broadcasts_with_torch_warning(device):
    x, y = torch.randn(3, 4, device=device, requires_grad=True), torch.randn(4, device=device, requires_grad=True)
    with pytest.warns(UserWarning, match="Using a target size") as record:
        _same(BF.mse_loss, F.mse_loss, x, y)
    assert all(w.filename == __file__ for w in record)  # stacklevel=2: the warning points at the caller, as torch's


def test_mse_loss_promotes_mixed_dtypes_as_torch(device):
    x = torch.randn(3, 4, device=device, dtype=torch.bfloat16, requires_grad=True)
    _, (gx,) = _same(BF.mse_loss, F.mse_loss, x, torch.randn(3, 4, device=device))
    assert gx.dtype == torch.bfloat16


def test_legacy_reduction_arguments_warn_and_apply_as_torch():
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        ours = BF.mse_loss(x, y, size_average=False)
    assert torch.equal(ours, F.mse_loss(x, y, reduction="sum"))


# --- in place ----------------------------------------------------------------------------------------------------

INPLACE = [
    ("relu", lambda t: BF.relu(t, inplace=True), lambda t: F.relu(t, inplace=True)),
    ("relu_", BF.relu_, torch.relu_),
    ("leaky_relu", lambda t: BF.leaky_relu(t, 0.2, inplace=True), lambda t: F.leaky_relu(t, 0.2, inplace=True)),
    ("leaky_relu_", BF.leaky_relu_, F.leaky_relu_),
    ("dropout", lambda t: BF.dropout(t, 0.4, inplace=True), lambda t: F.dropout(t, 0.4, inplace=True)),
]


@pytest.mark.parametrize("name, manual, native", INPLACE, ids=[i[0] for i in INPLACE])
def test_inplace_modifies_its_input_with_torch_gradient(name, manual, native, device):
    x = torch.randn(3, 4, device=device)
    leaves = [x.clone().requires_grad_() for _ in range(2)]
    results = []
    for f, leaf in ((manual, leaves[0]), (native, leaves[1])):
        torch.manual_seed(3)
        h = leaf * 2
        version = h._version
        out = f(h)
        assert out is h and h._version > version
        out.backward(torch.arange(12.0, device=device).view(3, 4))
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.mark.parametrize("name, manual, native", INPLACE, ids=[i[0] for i in INPLACE])
def test_inplace_on_a_leaf_raises_torch_error(name, manual, native):
    with pytest.raises(RuntimeError) as theirs:
        native(torch.randn(3, requires_grad=True))
    with pytest.raises(RuntimeError) as ours:
        manual(torch.randn(3, requires_grad=True))
    assert str(ours.value) == str(theirs.value)


def test_inplace_leaky_relu_with_negative_slope_raises_in_backward_as_torch():
    messages = []
    for f in (BF.leaky_relu_, F.leaky_relu_):
        h = torch.randn(4, requires_grad=True) * 1
        out = f(h, -0.1)  # the forward is fine; the backward cannot tell x's sign from the output's
        with pytest.raises(RuntimeError) as error:
            out.sum().backward()
        messages.append(str(error.value))
    assert "negative slope" in messages[0] and messages[0].split(".")[0] in messages[1]


@pytest.mark.parametrize("name, manual, native", INPLACE, ids=[i[0] for i in INPLACE])
def test_inplace_under_torch_func_and_compile(name, manual, native):
    """torch.func and torch.compile run the in-place ops out of place on a copy, then copy back: same values and
    gradients."""
    x = torch.randn(3, 4)

    def loss(f):
        return lambda t: (torch.manual_seed(5), f(t * 1).pow(2).sum())[1]

    torch.testing.assert_close(grad(loss(manual))(x), grad(loss(native))(x))
    compiled = torch.compile(lambda t: f_twice(manual, t), fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)  # aot_eager draws from the global generator, as eager does
    out = compiled(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, f_twice(native, x))


def f_twice(f, t):
    h = t * 1
    return f(h) + h  # h is modified: the sum reads the modified h twice


# --- dropout ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_draws_torch_mask_for_the_same_seed(p, layout):
    """On the CPU torch draws bernoulli_(1 − p) on an empty_like(input) and divides by 1 − p: so do we, bit for bit,
    in every layout; the backward is the same mask over 1 − p."""
    x = torch.randn(4, 3, 5, 6)
    x = {"contiguous": x, "channels_last": x.to(memory_format=torch.channels_last), "transposed": x.transpose(1, 3)}[
        layout
    ].requires_grad_()
    results = []
    for f in (BF.dropout, F.dropout):
        torch.manual_seed(11)
        results.append(_run(f, x, p))
    (out, (gx,)), (out_n, (gx_n,)) = results
    assert torch.equal(out, out_n) and torch.equal(gx, gx_n) and out.stride() == out_n.stride()
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gx, torch.where(out_n != 0, upstream / (1 - p), 0))  # eq. D4, to rounding


def test_dropout_identity_cases_return_the_input_as_torch():
    x = torch.randn(3, 4, requires_grad=True)
    for kwargs in ({"training": False}, {"p": 0.0}, {"p": 0.7, "training": False, "inplace": True}):
        assert BF.dropout(x, **kwargs) is x and F.dropout(x, **kwargs) is x
    empty = torch.randn(0, 3)
    assert BF.dropout(empty) is empty


def test_dropout_with_p_one_multiplies_by_zero_as_torch():
    x = torch.tensor([1.0, float("nan"), -2.0], requires_grad=True)
    _same(BF.dropout, F.dropout, x, 1.0, exact=True)


@pytest.mark.parametrize("randomness", ["error", "different", "same"])
def test_dropout_under_vmap_follows_the_randomness_rule(randomness):
    x = torch.randn(4, 6)
    outcomes = []
    for f in (BF.dropout, F.dropout):
        torch.manual_seed(2)
        try:
            outcomes.append(vmap(lambda row, f=f: f(row, 0.5), randomness=randomness)(x))
        except RuntimeError as error:
            outcomes.append(type(error))
    if randomness == "error":
        assert outcomes == [RuntimeError, RuntimeError]
    else:
        assert outcomes[0].shape == outcomes[1].shape == x.shape
        zeros = outcomes[0] == 0
        assert torch.equal(zeros[0], zeros[1]) == (randomness == "same")


# --- transforms ----------------------------------------------------------------------------------------------------

TARGET = torch.tensor([1, 0, 3])
PROBABILITIES = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
WEIGHT = torch.tensor([0.5, 1.0, 2.0, 1.5])
SCALARS = [  # (name, f(functional module, x) -> tensor), x of shape (3, 4)
    ("relu", lambda f, x: f.relu(x)),
    ("leaky_relu", lambda f, x: f.leaky_relu(x, 0.1)),
    ("tanh", lambda f, x: f.tanh(x) if f is BF else torch.tanh(x)),
    ("softmax", lambda f, x: f.softmax(x, dim=-1)),
    ("log_softmax", lambda f, x: f.log_softmax(x, dim=-1)),
    ("nll_loss", lambda f, x: f.nll_loss(x, TARGET, WEIGHT)),
    ("cross_entropy", lambda f, x: f.cross_entropy(x, TARGET, WEIGHT, label_smoothing=0.2)),
    ("cross_entropy probabilities", lambda f, x: f.cross_entropy(x, PROBABILITIES, WEIGHT, reduction="sum")),
    ("mse_loss", lambda f, x: f.mse_loss(x, PROBABILITIES)),
    ("mse_loss weight", lambda f, x: f.mse_loss(x, PROBABILITIES, reduction="sum", weight=WEIGHT.expand(3, 4))),
]


@pytest.mark.parametrize("name, f", SCALARS, ids=[s[0] for s in SCALARS])
def test_torch_func_transforms_match_native(name, f):
    x = torch.randn(3, 4)
    torch.testing.assert_close(jacrev(lambda t: f(BF, t))(x), jacrev(lambda t: f(F, t))(x))
    tangent = torch.randn_like(x)
    torch.testing.assert_close(jvp(lambda t: f(BF, t), (x,), (tangent,)), jvp(lambda t: f(F, t), (x,), (tangent,)))
    batch = torch.randn(5, 3, 4)
    per_sample = vmap(grad(lambda t: f(BF, t).sum()))(batch)
    torch.testing.assert_close(per_sample, vmap(grad(lambda t: f(F, t).sum()))(batch))


@pytest.mark.parametrize("name, f", SCALARS, ids=[s[0] for s in SCALARS])
def test_torch_compile_fullgraph_matches_eager(name, f):
    x = torch.randn(3, 4, requires_grad=True)
    torch._dynamo.reset()  # each case compiles the same lambda anew: ten cases would pass Dynamo's recompile limit
    # aot_eager traces the Functions as torch.compile does, without spending a minute compiling C++ on a CPU
    compiled = torch.compile(lambda t: f(BF, t).sum(), fullgraph=True, backend="aot_eager")
    (g,) = torch.autograd.grad(compiled(x), x)
    (g_eager,) = torch.autograd.grad(f(BF, x).sum(), x)
    torch.testing.assert_close(g, g_eager)


def test_torch_compile_dropout_keeps_mask_and_gradient_together():
    x = torch.randn(4, 5, requires_grad=True)
    out = torch.compile(lambda t: BF.dropout(t, 0.5), fullgraph=True, backend="aot_eager")(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() * 2)  # eq. D4: δ m / (1 − p)


AUTOCAST = SCALARS + [
    ("cross_entropy bf16 probabilities", lambda f, x: f.cross_entropy(x, PROBABILITIES.bfloat16())),
    ("softmax with dtype", lambda f, x: f.softmax(x, dim=0, dtype=torch.float64)),
    ("dropout", lambda f, x: (torch.manual_seed(0), f.dropout(x, 0.5))[1]),
]


@pytest.mark.parametrize("name, f", AUTOCAST, ids=[s[0] for s in AUTOCAST])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autocast_follows_torch_cast_policy(name, f, dtype, device):
    """Under autocast each op runs in the dtype torch's policy gives it (the losses in float32; the activations in
    their input's dtype; softmax in float32 on CUDA only), and gradients come back in the input's dtype."""
    results, x0 = [], torch.randn(3, 4, device=device, dtype=dtype)
    for module in (BF, F):
        x = x0.clone().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = f(module, x.to(device))
        (gx,) = torch.autograd.grad(out.float().sum(), x)
        results.append((out, gx))
    (out, gx), (out_n, gx_n) = results
    assert out.dtype == out_n.dtype and gx.dtype == gx_n.dtype == dtype
    scale = out_n.abs().max().float().clamp(min=1)
    assert (out.float() - out_n.float()).abs().max() <= 2e-2 * scale  # 8-bit mantissas, different order


def test_deprecated_implicit_softmax_dim_warns_at_the_caller_as_torch():
    x = torch.randn(2, 3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        torch.testing.assert_close(BF.softmax(x), F.softmax(x))
    assert [w.filename for w in record] == [__file__, __file__]
