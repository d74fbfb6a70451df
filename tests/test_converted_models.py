"""convert()-ed torchvision models: every layer runs its hand-derived backward, the loss's too.

For resnet18, vgg11_bn and alexnet under bp_torch's CrossEntropyLoss, ``bp_torch.audit`` walks the loss's backward
graph node by node and ``backward_kernels`` watches the backward pass kernel by kernel: no native node, no aten
``*_backward`` kernel. Unconverted, the same checks see torch's. vgg11_bn trains as native does, and the converted
resnet18 compiles in one graph.
"""

import copy

import pytest
import torch
import torchvision.models as tvm

import bp_torch
from bp_torch import nn as bnn
from bp_torch.audit import backward_kernels, label_modules

MODELS = [(tvm.resnet18, 64), (tvm.vgg11_bn, 32), (tvm.alexnet, 64)]


def converted_loss(build, size, convert=True):
    torch.manual_seed(0)
    model = build(num_classes=10)  # train mode: batch statistics, dropout
    model, summary = bnn.convert(model) if convert else (model, None)
    criterion = bnn.CrossEntropyLoss() if convert else torch.nn.CrossEntropyLoss()
    x, y = torch.randn(2, 3, size, size), torch.tensor([3, 7])
    with label_modules(model):
        loss = criterion(model(x), y)
    return loss, summary


@pytest.mark.parametrize(("build", "size"), MODELS, ids=["resnet18", "vgg11_bn", "alexnet"])
def test_every_backward_node_is_hand_derived(build, size):
    loss, summary = converted_loss(build, size)
    assert not summary.left, summary  # every layer was swapped
    report = bp_torch.audit(loss)
    assert report.all_derived, str(report)
    ours = {n.name for n in report.nodes if n.kind == "derived"}
    assert {"Conv2dFunctionBackward", "MaxPool2dFunctionBackward", "AdaptiveAvgPool2dFunctionBackward"} <= ours
    assert {"ReluFunctionBackward", "CrossEntropyFunctionBackward", "LinearFunctionBackward"} <= ours
    assert ("BatchNormFunctionBackward" in ours) == ("BatchNorm2d" in summary.swapped)


@pytest.mark.parametrize(("build", "size"), MODELS, ids=["resnet18", "vgg11_bn", "alexnet"])
def test_no_native_gradient_kernel_runs(build, size):
    """The same at run time: the backward pass calls no aten gradient kernel (convolution_backward,
    native_batch_norm_backward, max_pool2d_with_indices_backward, threshold_backward, nll_loss_backward ...)."""
    loss, _ = converted_loss(build, size)
    with backward_kernels() as kernels:
        loss.backward()
    assert kernels.seen == []


def test_the_checks_see_native_gradients():
    """Unconverted, the same model's backward is torch's, and both checks above say so."""
    loss, _ = converted_loss(tvm.resnet18, 64, convert=False)
    native = {n.name for n in bp_torch.audit(loss).native}
    assert {"NativeBatchNormBackward0", "MaxPool2DWithIndicesBackward0", "ConvolutionBackward0"} <= native
    with backward_kernels() as kernels:
        loss.backward()
    seen = {name.split(".")[1] for name in kernels.seen}
    assert {"convolution_backward", "native_batch_norm_backward", "max_pool2d_with_indices_backward"} <= seen


def test_converted_vgg11_bn_trains_as_native():
    """vgg11_bn (batch norm after every convolution, five max pools, adaptive pooling to 7×7 from 1×1): the converted
    model's loss and gradients equal the native model's (resnet18 and alexnet: tests/test_nn.py)."""
    torch.manual_seed(0)
    native = tvm.vgg11_bn(num_classes=10)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    runs = []
    for convert in (False, True):
        model = bnn.convert(native)[0] if convert else native
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        loss = torch.nn.CrossEntropyLoss()(model(x), y)
        loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, grads), (native_loss, native_grads) = runs[1], runs[0]
    torch.testing.assert_close(loss, native_loss)
    scale = max(g.abs().max().item() for g in native_grads.values())
    for name, g in native_grads.items():
        # float32 through 11 layers, summed in another order: relative to the largest gradient
        torch.testing.assert_close(grads[name], g, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}")


def test_converted_resnet18_compiles_in_one_graph():
    """torch.compile(fullgraph=True) traces a converted resnet18 whole — the batch norms' running-statistics update,
    every hand-written backward — to eager's outputs, gradients and buffers (aot_eager: as torch.compile traces,
    without compiling C++ on a CPU)."""
    torch.manual_seed(0)
    model = bnn.convert(tvm.resnet18(num_classes=10))[0]
    eager = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    reference = eager(x)
    torch.testing.assert_close(out, reference)
    out.sum().backward()
    reference.sum().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        # the compiled backward's products run torch's @ where eager's run oneDNN's (bp_torch._gemm, the stem's
        # im2col product): the same sums in another order, a few ulps of the largest value apart
        ulps = 16 * torch.finfo(q.grad.dtype).eps * q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=1.3e-6, atol=ulps, msg=lambda m, n=name: f"{n}: {m}")
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), eager.buffers()))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_input_gradient_penalty_reaches_the_parameters_as_natives(train):
    """An input-gradient penalty (WGAN-GP's, R1's): ‖∂D/∂x‖² differentiated again with respect to the parameters.
    Every parameter torch reaches gets a gradient (zeros where no first derivative varies with it: the biases in
    front of a ReLU, batch norm's β), the same values; and the whole model under non-reentrant checkpointing gives
    the same first derivatives."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    native = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
        torch.nn.LeakyReLU(0.2), torch.nn.GroupNorm(2, 4), torch.nn.Hardtanh(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 1),
    ).double().train(train)  # fmt: skip
    ours = bnn.convert(copy.deepcopy(native))[0]
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    results = []
    for model in (native, ours):
        leaf = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(leaf).sum(), leaf, create_graph=True)
        results.append(torch.autograd.grad(grad.pow(2).sum(), list(model.parameters()), allow_unused=True))
    for (name, _), theirs, mine in zip(native.named_parameters(), *results):
        assert (mine is None) == (theirs is None), name
        if theirs is not None:
            torch.testing.assert_close(mine, theirs, msg=name)
    grads = []
    for model, checkpointed in ((native, False), (ours, True)):
        leaf = x.clone().requires_grad_()
        out = checkpoint(model, leaf, use_reentrant=False) if checkpointed else model(leaf)
        grads.append(torch.autograd.grad(out.sum(), leaf)[0])
    torch.testing.assert_close(grads[1], grads[0])
