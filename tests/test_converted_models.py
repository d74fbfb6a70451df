"""convert()-ed torchvision models: every layer bp_torch has a twin for runs its hand-derived backward.

For resnet18, vgg11_bn and alexnet under CrossEntropyLoss, the loss's backward graph is walked node by node and the
backward pass is watched kernel by kernel: besides bp_torch's Functions and structural nodes, only the layers still
without a twin (ReLU, dropout, the loss: issue 16's part A) remain native, and no native convolution, batch norm or
pooling backward kernel runs. Once ``bp_torch.audit`` is merged, the walk becomes a call to it. vgg11_bn trains as
native does, and the converted resnet18 compiles in one graph.
"""

import copy

import pytest
import torch
import torchvision.models as tvm
from torch.utils._python_dispatch import TorchDispatchMode

from bp_torch import nn as bnn

# nodes that move, reshape, add or accumulate gradients: no derivative to derive
STRUCTURAL = {"AccumulateGrad", "ViewBackward0", "ReshapeAliasBackward0", "AddBackward0", "TBackward0"}
# native nodes of the layers bp_torch has no twin for yet (ReLU, dropout, the loss): issue 16's part A
NOT_YET = {"ReluBackward0", "MulBackward0", "NativeDropoutBackward0", "NllLossBackward0", "LogSoftmaxBackward0"}
# and their aten backward kernels
NOT_YET_KERNELS = {"threshold_backward", "nll_loss_backward", "_log_softmax_backward_data", "native_dropout_backward"}

MODELS = [(tvm.resnet18, 64), (tvm.vgg11_bn, 32), (tvm.alexnet, 64)]


def graph_nodes(tensor: torch.Tensor) -> list:
    """Every node of ``tensor``'s backward graph, each once."""
    seen, stack = {}, [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen[node] = None
            stack.extend(next_node for next_node, _ in node.next_functions)
    return list(seen)


def is_ours(node) -> bool:
    """A node of a bp_torch Function (its forward class is defined in bp_torch)."""
    forward_cls = getattr(type(node), "_forward_cls", None)
    return forward_cls is not None and forward_cls.__module__.startswith("bp_torch.")


class BackwardKernels(TorchDispatchMode):
    """Records the name of every aten kernel whose name says it computes a gradient ("..._backward...")."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "backward" in name:
            self.names.add(name)
        return func(*args, **(kwargs or {}))


def converted_loss(build, size):
    torch.manual_seed(0)
    model, summary = bnn.convert(build(num_classes=10))  # train mode: batch statistics, dropout
    x, y = torch.randn(2, 3, size, size), torch.tensor([3, 7])
    return torch.nn.CrossEntropyLoss()(model(x), y), summary


@pytest.mark.parametrize(("build", "size"), MODELS, ids=["resnet18", "vgg11_bn", "alexnet"])
def test_no_native_node_remains_among_the_layers_bp_torch_covers(build, size):
    loss, summary = converted_loss(build, size)
    assert set(summary.left) <= {"ReLU", "Dropout"}  # every other layer was swapped
    nodes = graph_nodes(loss)
    native = {type(n).__name__ for n in nodes if not is_ours(n)} - STRUCTURAL
    assert native <= NOT_YET, f"native backward nodes of layers bp_torch covers: {native - NOT_YET}"
    ours = {type(n).__name__ for n in nodes if is_ours(n)}
    assert {"Conv2dFunctionBackward", "MaxPool2dFunctionBackward", "AdaptiveAvgPool2dFunctionBackward"} <= ours
    assert ("BatchNormFunctionBackward" in ours) == ("BatchNorm2d" in summary.swapped)


@pytest.mark.parametrize(("build", "size"), MODELS, ids=["resnet18", "vgg11_bn", "alexnet"])
def test_no_native_gradient_kernel_runs_for_the_layers_bp_torch_covers(build, size):
    """The same at run time: of the aten kernels the backward pass calls, none computes a convolution, batch norm
    or pooling gradient (convolution_backward, native_batch_norm_backward, max_pool2d_with_indices_backward ...)."""
    loss, _ = converted_loss(build, size)
    with BackwardKernels() as kernels:
        loss.backward()
    assert kernels.names <= NOT_YET_KERNELS, kernels.names - NOT_YET_KERNELS


def test_the_watch_sees_native_gradient_kernels():
    """Unconverted, the same model's backward runs native kernels, and both checks above would say so."""
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=10)
    loss = torch.nn.CrossEntropyLoss()(model(torch.randn(2, 3, 64, 64)), torch.tensor([3, 7]))
    native = {type(n).__name__ for n in graph_nodes(loss) if not is_ours(n)} - STRUCTURAL - NOT_YET
    assert {"NativeBatchNormBackward0", "MaxPool2DWithIndicesBackward0", "ConvolutionBackward0"} <= native
    with BackwardKernels() as kernels:
        loss.backward()
    assert {"convolution_backward", "native_batch_norm_backward", "max_pool2d_with_indices_backward"} <= kernels.names


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
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, n=name: f"{n}: {m}")
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), eager.buffers()))
