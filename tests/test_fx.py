"""torch.fx: a traced bp_torch model keeps the hand-derived functions as graph leaves, computes the same values and
gradients, and still runs the hand-derived backward; so does torchvision's feature extraction of a converted model."""

import copy

import torch
import torchvision.models as tvm
from torchvision.models.feature_extraction import create_feature_extractor

from bp_torch import functional as BF
from bp_torch.models import LeNet
from bp_torch.nn import convert

OURS = {BF.conv2d, BF.avg_pool2d, BF.sigmoid, BF.linear}


def _called(graph_module) -> set:
    return {node.target for node in graph_module.graph.nodes if node.op == "call_function"}


def _grad_functions(output) -> set[str]:
    """The names of every node of the autograd graph behind ``output``."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in seen:
            seen.add(type(node).__name__)
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    return seen


def test_symbolic_trace_keeps_the_hand_derived_functions_and_their_gradients():
    model = LeNet()
    traced = torch.fx.symbolic_trace(model)
    assert OURS <= _called(traced)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    out, traced_out = model(x), traced(x)
    torch.testing.assert_close(traced_out, out)
    grads = torch.autograd.grad(out.sum(), [x, *model.parameters()])
    traced_grads = torch.autograd.grad(traced_out.sum(), [x, *traced.parameters()])
    for g, t in zip(grads, traced_grads):
        torch.testing.assert_close(t, g)
    assert {
        "Conv2dFunctionBackward",
        "AvgPool2dFunctionBackward",
        "SigmoidFunctionBackward",
        "LinearFunctionBackward",
    } <= _grad_functions(traced_out)


def test_feature_extraction_of_a_converted_resnet18_runs_the_hand_derived_backward():
    model = convert(tvm.resnet18(num_classes=10).eval())[0]
    extractor = create_feature_extractor(model, {"layer2": "features", "fc": "logits"})
    assert {BF.conv2d, BF.linear} <= _called(extractor)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = extractor(x)
    eager = copy.deepcopy(model)
    eager_features = torch.nn.Sequential(*list(eager.children())[:6])(x)  # conv1, bn1, relu, maxpool, layer1, layer2
    torch.testing.assert_close(out["features"], eager_features)
    torch.testing.assert_close(out["logits"], eager(x))
    assert {"Conv2dFunctionBackward", "LinearFunctionBackward"} <= _grad_functions(out["logits"])
    (gx,) = torch.autograd.grad(out["logits"].sum(), x)
    (gx_eager,) = torch.autograd.grad(eager(x).sum(), x)
    torch.testing.assert_close(gx, gx_eager)
