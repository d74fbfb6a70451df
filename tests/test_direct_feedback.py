"""Direct feedback alignment (rule "dfa", bp_torch.direct_feedback): every δ and weight gradient against the explicit
DFA reference written out by hand (a convolution's through bp_torch.dense's B̃), forward mode exact, B a buffer
(state_dict, convert, checkpoints, DDP), and the errors that say how to use it."""

import copy
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bp_torch import direct_feedback
from bp_torch import nn as bnn
from bp_torch.dense import conv2d_matrix
from bp_torch.feedback import exact
from bp_torch.models import LeNet

D = torch.float64
both_formulas = pytest.mark.usefixtures("both_formulas")


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(D)
    return bnn.convert(model, rule="dfa")[0]


@both_formulas
def test_mlp_deltas_and_weight_gradients_are_nøklands():
    """δ_x = B₁ᵀe, δ_a = θ'(a) ⊙ Bᵀe at every hidden layer, the output layer's δ = e; ∂L/∂W = δᵀx everywhere."""
    model = _mlp()
    x, y = torch.randn(7, 5, dtype=D, requires_grad=True), torch.randint(0, 3, (7,))
    W = [model[i].weight for i in (0, 2, 4)]
    B = [model[i].feedback for i in (0, 2, 4)]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [x, *W])
    with torch.no_grad():  # the reference, by hand
        h1 = torch.tanh(x @ W[0].T + model[0].bias)
        h2 = torch.tanh(h1 @ W[1].T + model[2].bias)
        out = h2 @ W[2].T + model[4].bias
        e = (out.softmax(1) - F.one_hot(y, 3)) / len(y)  # eq. D10–D12: the loss's own δ at the output
        delta2 = (e @ B[2]) * (1 - h2**2)  # eq. F2 into h2, then tanh's derivative (eq. D3)
        delta1 = (e @ B[1]) * (1 - h1**2)
        expected = [e @ B[0], delta1.T @ x, delta2.T @ h1, e.T @ h2]
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@both_formulas
@pytest.mark.parametrize(
    "options",
    [dict(stride=2, padding=1), dict(padding="same", dilation=2), dict(kernel_size=2, padding="same"),
     dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2))],
    ids=str,
)  # fmt: skip
def test_conv_input_delta_is_b_tilde_transposed_times_the_repeated_error(options):
    """δ_x = B̃ ê (eq. F3): B̃ built from the feedback kernel as W̃ is from the weight (Note A eq. 23), ê the error
    repeated at every output position; the weight gradient is the derived one with the δ that arrives."""
    kernel_size = options.pop("kernel_size", 3)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size, **options)
    x = torch.randn(2, 3, 7, 6, dtype=D, requires_grad=True)
    flat = conv.to(D)(x).numel() // 2
    model = bnn.convert(nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(flat, 5)).to(D), rule="dfa")[0]
    out = model(x)  # K = 5: the last Linear's out_features
    e = torch.randn_like(out)
    grad_x, grad_w = torch.autograd.grad(out, (x, conv.weight), e)
    B_tilde = conv2d_matrix(conv.feedback, (7, 6), conv.stride, options.get("padding", 0), conv.dilation, dense=True)
    with torch.no_grad():
        s = model[0](x)
        h = model[1](s).flatten(1)
    H_out, W_out = s.shape[-2:]
    e_hat = e[:, :, None, None].expand(2, 5, H_out, W_out).reshape(2, -1)
    torch.testing.assert_close(grad_x, (B_tilde @ e_hat.T).T.reshape(x.shape), rtol=1e-10, atol=1e-12)
    delta = ((e @ model[3].feedback).reshape(h.shape) * (1 - h**2)).reshape(2, 4, H_out, W_out)  # eq. F2, D3
    with exact():
        expected_w = torch.autograd.grad(model[0](x), conv.weight, delta)[0]  # B 40 with that δ
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-10, atol=1e-12)


@both_formulas
def test_lenet_dfa_is_the_reference_and_exact_is_backprop():
    torch.manual_seed(0)
    model, reference = LeNet(rule="dfa").double(), LeNet().double()
    reference.load_state_dict(model.state_dict(), strict=False)
    x, y = torch.randn(3, 1, 28, 28, dtype=D), torch.tensor([1, 2, 3])
    with exact():  # the alignment monitor's reference: exact backprop, the same weights
        got = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    want = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert torch.equal(grads[-2], want[-2]) and torch.equal(grads[-1], want[-1])  # fc's δ is e: exact
    assert not torch.allclose(grads[0], want[0])  # conv1's is not


@both_formulas
def test_forward_mode_is_exact():
    torch.manual_seed(0)
    model = LeNet(rule="dfa").double()
    x, t = torch.randn(2, 1, 28, 28, dtype=D), torch.randn(2, 1, 28, 28, dtype=D)
    with exact():
        _, want = torch.func.jvp(model, (x,), (t,))
    _, got = torch.func.jvp(model, (x,), (t,))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():  # with a graph being recorded too: through both identity nodes (eq. F4)
        out = model(fwAD.make_dual(x.requires_grad_(), t))
        assert isinstance(out.grad_fn, torch.autograd.function.BackwardCFunction)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, want, rtol=1e-12, atol=1e-14)


def test_b_is_a_buffer_that_round_trips(tmp_path):
    torch.manual_seed(0)
    model = LeNet(rule="dfa")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith("feedback")}
    assert shapes == {"conv1.feedback": (10, 1, 5, 5), "conv2.feedback": (10, 6, 5, 5), "fc.feedback": (10, 192)}
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(1)
    other = LeNet(rule="dfa")
    assert not torch.equal(other.fc.feedback, model.fc.feedback)
    other.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    assert other.double().fc.feedback.dtype == torch.float64
    clone = copy.deepcopy(model)  # hooks and buffers travel with a copy
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    for m in (model, clone):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), clone.parameters()))


def test_convert_again_keeps_the_matrices_and_to_native_removes_them():
    """issue 22: convert(model, rule=R) on a model that has R keeps its matrices — a checkpoint restored before it
    survives — for dfa and for fa alike."""
    for rule in ("dfa", "fa"):
        torch.manual_seed(0)
        model = bnn.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)), rule=rule)[0]
        saved = copy.deepcopy(model.state_dict())
        torch.manual_seed(1)
        restored = bnn.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)), rule=rule)[0]
        restored.load_state_dict(saved)
        bnn.convert(restored, rule=rule)
        assert all(torch.equal(saved[k], v) for k, v in restored.state_dict().items()), rule
        # fa hooks nothing of its own (convert's routing hooks once); dfa once, however often
        own = [h for h in restored._forward_pre_hooks.values() if h is direct_feedback._begin]
        assert len(own) == (rule == "dfa")
        bnn.to_native(restored)
        assert not any(k.endswith("feedback") for k in restored.state_dict()) and not restored._forward_pre_hooks


@pytest.mark.parametrize("rule", ["fa", "usf", "brsf", "frsf", "dfa"])
def test_a_frozen_weight_still_sends_delta_through_b(rule):
    """issue 22: the rule is about the path of δ, not whether W trains."""
    torch.manual_seed(0)
    model = bnn.convert(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double(), rule=rule)[0]
    x, y = torch.randn(6, 4, dtype=D, requires_grad=True), torch.randint(0, 3, (6,))
    torch.manual_seed(2)  # brsf's draw
    trained = torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(2)
    frozen = torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]
    with exact():
        exact_grad = torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]
    torch.testing.assert_close(frozen, trained, rtol=0, atol=0)
    assert not torch.allclose(frozen, exact_grad)


def test_errors_say_what_to_do():
    layer = bnn.Linear(4, 3, rule="dfa")
    with pytest.raises(RuntimeError, match="must run inside the forward of a model marked as the network"):
        layer(torch.randn(2, 4, requires_grad=True))
    assert layer(torch.randn(2, 4)).shape == (2, 3)  # no δ to send: a first layer or evaluation runs as it is
    model = direct_feedback.attach(nn.Sequential(layer, nn.Flatten(0)), 3)
    with pytest.raises(RuntimeError, match="drawn for 3 outputs, but Sequential's output has shape \\[6\\]"):
        model(torch.randn(2, 4, requires_grad=True))
    model = direct_feedback.attach(nn.Sequential(bnn.Linear(4, 5, rule="dfa"), bnn.Linear(5, 3, rule="dfa")), 3)
    hidden = []
    model[0].register_forward_hook(lambda m, args, output: hidden.append(output))
    x = torch.randn(2, 4, requires_grad=True)
    model(x)
    with pytest.raises(RuntimeError, match="did not pass through the network's output"):
        torch.autograd.grad(hidden[0].sum(), x)  # a loss of a hidden layer: no output error to send
    with pytest.raises(ValueError, match="outputs must be a positive int"):
        direct_feedback.attach(model, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os

    from bp_torch.train import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with distributed.process_group():  # gone, its threads joined, before this process exits
        torch.manual_seed(rank)  # each rank draws its own B: DDP must broadcast rank 0's
        model = LeNet(rule="dfa").double()
        ddp = distributed.wrap(model)
        torch.manual_seed(10)
        x, y = torch.randn(8, 1, 28, 28, dtype=D), torch.randint(0, 10, (8,))
        half = slice(4 * rank, 4 * rank + 4)
        F.cross_entropy(ddp(x[half]), y[half]).backward()
        if rank == 0:
            torch.save({"state": model.state_dict(), "grads": [p.grad for p in model.parameters()]}, out)
        del ddp


def test_ddp_broadcasts_b_and_averages_the_dfa_gradients(tmp_path):
    """Two processes on halves of a batch: rank 0's B on both, and the all-reduced DFA gradients are one process's
    on the whole batch (each sample's update depends on its own error alone)."""
    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(_free_port(), out), nprocs=2)
    result = torch.load(out)
    torch.manual_seed(0)
    model = LeNet(rule="dfa").double()
    assert all(torch.equal(result["state"][k], v) for k, v in model.state_dict().items() if k.endswith("feedback"))
    torch.manual_seed(10)
    x, y = torch.randn(8, 1, 28, 28, dtype=D), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    for p, g in zip(model.parameters(), result["grads"]):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-15)


def test_alignment_monitor_measures_dfa():
    """TensorBoard's alignment/<layer>/... under dfa: fc receives e itself, so its weight gradient is exact (angle 0);
    the layers below receive B̃ᵀe, far from backprop's δ at the start."""
    from bp_torch.feedback import alignment
    from bp_torch.train.config import Loss

    torch.manual_seed(0)
    values = alignment(LeNet(rule="dfa"), torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)), Loss("ce"))
    assert len(values) == 12 and values["fc/weight_grad_angle"] == pytest.approx(0, abs=1e-3)
    assert values["conv2/weight_grad_angle"] > 10 and values["fc/delta_angle"] > 10
