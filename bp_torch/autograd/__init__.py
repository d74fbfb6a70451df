"""The operations of the derivations as ``torch.autograd.Function``s whose ``backward`` is the derived formula.

Equation numbers cite the two notes summarised in ``docs/derivation.md``: Note A (Ji & Xie, fully connected to
convolutional layers) and Note B (Zhang, backpropagation in the LeNet CNN). One module per operation family:

- ``conv``: ``Conv2dFunction`` (Note A eq. 10, 14, 17, 35; Note B eq. 40, 45, 51) and its two gradients as
  Functions, ``Conv2dInputGradFunction`` and ``Conv2dWeightGradFunction``, so every order of derivative is ours;
- ``pool``: ``AvgPool2dFunction`` (Note B eq. 32, 52);
- ``activation``: ``SigmoidFunction`` (Note B eq. 37, 57); ``ReluFunction``, ``LeakyReluFunction``, ``TanhFunction``
  (eq. D1–D3);
- ``linear``: ``LinearFunction`` (Note A eq. 5, 7, 8; Note B eq. 19, 24, 30);
- ``dropout``: ``DropoutFunction`` (eq. D4);
- ``softmax``: ``SoftmaxFunction``, ``LogSoftmaxFunction`` (eq. D5, D6);
- ``loss``: ``MSELossFunction`` (Note B eq. 13–16, eq. D7, D8), ``NllLossFunction`` (eq. D9),
  ``CrossEntropyFunction`` (eq. D10–D12).

Beyond the notes (equation labels D and M are ours, derived in ``docs/derivation.md``):

- ``max_pool``: ``MaxPool2dFunction`` (eq. M1, M2) and its gradient's pair of Functions, the scatter
  ``MaxPool2dInputGradFunction`` and the gather ``MaxPool2dGatherFunction`` (eq. M2, M3), each the other's backward;
- ``adaptive_pool``: ``AdaptiveAvgPool2dFunction`` (eq. M4, M5) and ``AdaptiveAvgPool2dInputGradFunction``;
- ``batch_norm``: ``BatchNormFunction`` (eq. M6–M12);
- ``hard_activations``: ``HardtanhFunction`` (ReLU6 too), ``HardsigmoidFunction``, ``HardswishFunction``,
  ``SiluFunction`` (eq. H1–H4), and the in-place twins of the last two, which keep a copy of x;
- ``elementwise``: ``MulFunction``, ``DivFunction`` with broadcasting (eq. E1–E3);
- ``reduction``: ``SumFunction``, ``MeanFunction`` over dimensions (eq. R1, R2).

The transformer's operations (equation labels T, ours):

- ``layer_norm``: ``LayerNormFunction``, ``GroupNormFunction`` (eq. T1–T4);
- ``gelu``: ``GeluFunction`` (eq. T5, T6);
- ``matmul``: ``MatmulFunction`` (matmul, bmm) and ``AddmmFunction`` (addmm, baddbmm) (eq. T7, T8);
- ``attention``: ``ScaledDotProductAttentionFunction`` (eq. T9–T12);
- ``movement``: ``GetItemFunction`` and its scatter ``IndexScatterFunction``, each the other's backward,
  ``RollFunction``, ``ConstantPadFunction`` (eq. S1–S3: swin's shifted windows, the relative position bias).

Direct feedback alignment (``bp_torch.direct_feedback``, eq. F1–F4): ``direct``: ``OutputErrorFunction``, which keeps
the output error, and ``DirectFeedbackFunction``, which sends it to a layer's input through the layer's B.

Every backward is written with forward tensor ops only (conv2d, matmul, pad, flip, sum ...): never autograd,
``torch.nn.grad``, ``torch.func`` or an ``aten.*_backward`` op. Arguments arrive validated and normalised by
``bp_torch.functional``.
"""

from bp_torch.autograd.activation import LeakyReluFunction, ReluFunction, SigmoidFunction, TanhFunction
from bp_torch.autograd.adaptive_pool import AdaptiveAvgPool2dFunction, AdaptiveAvgPool2dInputGradFunction
from bp_torch.autograd.attention import ScaledDotProductAttentionFunction
from bp_torch.autograd.batch_norm import BatchNormFunction
from bp_torch.autograd.conv import (
    Conv2dFunction,
    Conv2dInputGradFunction,
    Conv2dWeightGradFunction,
    conv2d_input_grad,
    conv2d_weight_grad,
)
from bp_torch.autograd.direct import DirectFeedbackFunction, OutputErrorFunction
from bp_torch.autograd.dropout import DropoutFunction
from bp_torch.autograd.elementwise import DivFunction, MulFunction
from bp_torch.autograd.gelu import GeluFunction
from bp_torch.autograd.hard_activations import (
    HardsigmoidFunction,
    HardswishFunction,
    HardswishInplaceFunction,
    HardtanhFunction,
    SiluFunction,
    SiluInplaceFunction,
)
from bp_torch.autograd.layer_norm import GroupNormFunction, LayerNormFunction
from bp_torch.autograd.linear import LinearFunction
from bp_torch.autograd.loss import CrossEntropyFunction, MSELossFunction, NllLossFunction
from bp_torch.autograd.matmul import AddmmFunction, MatmulFunction
from bp_torch.autograd.max_pool import MaxPool2dFunction, MaxPool2dGatherFunction, MaxPool2dInputGradFunction
from bp_torch.autograd.movement import ConstantPadFunction, GetItemFunction, IndexScatterFunction, RollFunction
from bp_torch.autograd.pool import AvgPool2dFunction, avg_pool2d_divisor
from bp_torch.autograd.reduction import MeanFunction, SumFunction
from bp_torch.autograd.softmax import LogSoftmaxFunction, SoftmaxFunction

__all__ = [
    "Conv2dFunction",
    "Conv2dInputGradFunction",
    "Conv2dWeightGradFunction",
    "AvgPool2dFunction",
    "SigmoidFunction",
    "LinearFunction",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "avg_pool2d_divisor",
    # beyond the notes (eq. D1–D12)
    "ReluFunction",
    "LeakyReluFunction",
    "TanhFunction",
    "DropoutFunction",
    "SoftmaxFunction",
    "LogSoftmaxFunction",
    "MSELossFunction",
    "NllLossFunction",
    "CrossEntropyFunction",
    "MaxPool2dFunction",
    "MaxPool2dInputGradFunction",
    "MaxPool2dGatherFunction",
    "AdaptiveAvgPool2dFunction",
    "AdaptiveAvgPool2dInputGradFunction",
    "BatchNormFunction",
    # the CNN zoo's activations, products and reductions (eq. H, E, R)
    "HardtanhFunction",
    "HardsigmoidFunction",
    "HardswishFunction",
    "SiluFunction",
    "HardswishInplaceFunction",
    "SiluInplaceFunction",
    "MulFunction",
    "DivFunction",
    "SumFunction",
    "MeanFunction",
    # the transformer's operations (eq. T1–T12)
    "LayerNormFunction",
    "GroupNormFunction",
    "GeluFunction",
    "MatmulFunction",
    "AddmmFunction",
    "ScaledDotProductAttentionFunction",
    # data movement (eq. S1–S3)
    "GetItemFunction",
    "IndexScatterFunction",
    "RollFunction",
    "ConstantPadFunction",
    # direct feedback alignment (eq. F1–F4)
    "OutputErrorFunction",
    "DirectFeedbackFunction",
]
