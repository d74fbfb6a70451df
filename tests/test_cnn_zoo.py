"""One model of each torchvision classification family, convert()-ed: a training step under bp_torch's
CrossEntropyLoss has no native node in ``bp_torch.audit`` and runs no aten ``*_backward`` kernel but basic
indexing's (structural: δ written into zeros), the eval outputs
equal native's, and ``rule="fa"`` gives every Linear and Conv2d its feedback matrix.

Functions the models call inside ``forward`` (googlenet's ``F.relu``, shufflenet's ``x.mean([2, 3])``, the
squeeze-excitation ``scale * x``, stochastic depth) reach bp_torch through ``bp_torch.routing``. Inputs are tiny
(batch 2, the smallest size each model takes) to keep the CPU time down; still, these are big models: slow.
"""

import copy

import pytest
import torch
import torchvision

import bp_torch
from bp_torch import nn as bnn
from bp_torch.audit import backward_kernels, label_modules
from bp_torch.feedback import feedback_matrix

# (model, input size): the smallest each takes at batch 2 (alexnet's features need 63, inception_v3's 75)
ZOO = [
    ("alexnet", 64),
    ("vgg11_bn", 32),
    ("resnet18", 32),
    ("resnext50_32x4d", 32),
    ("wide_resnet50_2", 32),
    ("densenet121", 32),
    ("googlenet", 32),
    ("inception_v3", 75),
    ("inception_v3-aux", 299),
    ("squeezenet1_1", 32),
    ("shufflenet_v2_x0_5", 32),
    ("mobilenet_v2", 32),
    ("mobilenet_v3_small", 32),
    ("mnasnet0_5", 32),
    ("efficientnet_b0", 32),
    ("efficientnet_v2_s", 32),
    ("regnet_y_400mf", 32),
    # the transformers and the modern CNN (issue 24): layer norm, GELU, attention, and swin's shifted windows (roll,
    # padding) and relative position bias (an index), as maxvit's; maxvit's 7x7 partitions need 224x224
    ("convnext_tiny", 32),
    ("vit_b_16", 32),
    ("swin_t", 32),
    ("maxvit_t", 224),
]
# googlenet keeps its two auxiliary classifiers (their losses are added, as its training recipe does); inception_v3's
# auxiliary classifier pools 5x5 windows, stride 3, from a 17x17 map: it needs 299x299 inputs ("inception_v3-aux"),
# the smallest inputs (75x75) run without it
OPTIONS = {
    "googlenet": {"aux_logits": True, "init_weights": True},
    "inception_v3": {"aux_logits": False},
    "inception_v3-aux": {"aux_logits": True},
    "vit_b_16": {"image_size": 32},
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name.split("-")[0], weights=None, num_classes=10, **OPTIONS.get(name, {}))


def training_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    criterion = bnn.CrossEntropyLoss()
    out = model(x)
    if isinstance(out, tuple):  # (logits, auxiliary logits ...): the auxiliary losses weighted 0.3
        with bp_torch.routed():  # the weighting's * and + are ours too
            return criterion(out[0], y) + 0.3 * sum(criterion(aux, y) for aux in out[1:])
    return criterion(out, y)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), ZOO, ids=[name for name, _ in ZOO])
def test_converted_zoo_model_is_hand_derived(name, size):
    native = build(name)
    model, summary = bnn.convert(copy.deepcopy(native))
    x, y = torch.randn(2, 3, size, size), torch.tensor([3, 7])

    # a training step: every backward node hand-derived (or only moving δ), no aten gradient kernel
    torch.manual_seed(1)
    with label_modules(model):
        loss = training_loss(model, x, y)
    report = bp_torch.audit(loss)
    assert report.all_derived, f"{name}: {report}"
    assert summary.native_calls == {}, summary
    with backward_kernels() as kernels:
        loss.backward()
    # basic indexing stays torch's view, so that code may write through it (eq. S1's note): its backward writes δ
    # into zeros, structural in the audit (vit's class token, swin's patch merging); no other aten gradient kernel
    assert set(kernels.seen) <= {"aten.select_backward.default", "aten.slice_backward.default"}, name
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    # eval: the converted model computes native's outputs
    native.eval()
    model.load_state_dict(native.state_dict())  # the running statistics the training step moved, reset
    model.eval()
    with torch.no_grad():
        expected = native(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    # feedback alignment: every Linear and Conv2d gets its fixed random feedback matrix
    bnn.convert(model, rule="fa")
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert layers and all(m.rule == "fa" and feedback_matrix(m) is m.feedback for m in layers), name
    assert all(m.feedback.shape == m.weight.shape for m in layers)
