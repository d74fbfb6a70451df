"""Direct feedback alignment's two nodes (docs/derivation.md eq. F1–F4): the output error kept where the network ends,
and a layer's input gradient replaced by that error sent through the layer's fixed matrix B.

Both are the identity forward. ``OutputErrorFunction`` sits on the network's output: its backward is the first of
the network's to run, and keeps the δ the loss derived there, e = ∂L/∂y (eq. F1). ``DirectFeedbackFunction`` sits on a
layer's input: its backward discards the δ the layer sends down (W̃ᵀδ, Note A eq. 8 / 17) and returns B̃ᵀe instead
(eq. F2, F3). ``bp_torch.direct_feedback`` places them.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from bp_torch._function import in_layout, is_channels_last, with_direct_call
from bp_torch.autograd.conv import conv2d_input_grad


class OutputError:
    """One forward's output error: ``value`` is e = ∂L/∂y once the backward has passed the output (None before);
    ``outputs``, the K of the B that the forward's layers drew on (None: no layer did)."""

    __slots__ = ("value", "outputs")

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.outputs: int | None = None


@with_direct_call
class OutputErrorFunction(Function):
    """y ↦ y on the network's output; backward keeps δ_y in ``error.value`` and passes it on unchanged."""

    generate_vmap_rule = True

    @staticmethod
    def forward(output, error: OutputError):
        return output.view_as(output)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.error = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        ctx.error.value = grad_output.detach()  # eq. F1: e = ∂L/∂y, the loss's own derived δ at the output
        return grad_output, None

    @staticmethod
    def jvp(ctx, output_t, _):
        return output_t.view_as(output_t)  # eq. F4: the identity's tangent is the tangent


@with_direct_call
class DirectFeedbackFunction(Function):
    """x ↦ x on a layer's input; backward returns B̃ᵀe in place of the δ from the layer above.

    ``feedback`` is the layer's B: ``(K, in_features)`` for a linear layer, a ``(K, C_in, kH, kW)`` kernel for a
    convolution, K the network's outputs. ``geometry`` is None for a linear layer; for a convolution
    ``(stride, padding, extra, dilation)`` as conv2d normalises them (``extra``: padding='same''s bottom/right one).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, feedback, error: OutputError, geometry):
        return input.view_as(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, feedback, error, geometry = inputs
        ctx.save_for_backward(feedback)
        ctx.error, ctx.geometry = error, geometry
        ctx.input_shape, ctx.dtype, ctx.channels_last = input.shape, input.dtype, is_channels_last(input)

    @staticmethod
    def backward(ctx, grad_output):  # grad_output, W̃ᵀδ from the layer above: discarded (direct feedback)
        (B,) = ctx.saved_tensors
        e = _error(ctx, B.shape[0])
        shape = ctx.input_shape
        if ctx.geometry is None:
            delta = e @ B  # eq. F2: δ_in = Bᵀe, with B stored (K, in): e B
            # every position of a (N, ..., in) input receives its sample's error alike
            delta = delta.reshape(delta.shape[0], *(1,) * (len(shape) - 2), shape[-1]) if len(shape) > 1 else delta[0]
            return delta.expand(shape).to(ctx.dtype), None, None, None
        stride, padding, extra, dilation = ctx.geometry
        size = (shape[-2] + extra[0], shape[-1] + extra[1])
        H_out, W_out = (
            (size[d] + 2 * padding[d] - dilation[d] * (B.shape[2 + d] - 1) - 1) // stride[d] + 1 for d in (0, 1)
        )
        K = B.shape[0]
        units = torch.eye(K, dtype=B.dtype, device=B.device)[:, :, None, None].expand(K, K, H_out, W_out)
        # each unit error ê_k repeated at every output position, sent back as Note A eq. 17 sends δ, with B for W
        T = conv2d_input_grad(units.contiguous(), B, size, stride, padding, dilation, 1)  # eq. F3: T_k = B̃ᵀê_k
        delta = (e @ T.flatten(1)).reshape(e.shape[0], *T.shape[1:])  # eq. F3: B̃ᵀê = Σ_k e_k T_k
        delta = delta[..., : shape[-2], : shape[-1]]  # padding='same''s extra row and column: no input there
        delta = delta[0] if len(shape) == 3 else delta
        return in_layout(delta.to(ctx.dtype), ctx.channels_last), None, None, None

    @staticmethod
    def jvp(ctx, input_t, *_):
        return input_t.view_as(input_t)  # eq. F4: the identity's tangent: forward mode stays exact


def _error(ctx, outputs: int) -> torch.Tensor:
    """The output error of the forward that recorded ``ctx``, checked against B's K and the input's batch."""
    e = ctx.error.value
    if e is None:
        raise RuntimeError(
            "rule='dfa': this backward did not pass through the network's output, so its error e = ∂L/∂y is unknown; "
            "differentiate a loss of the model's output (bp_torch.direct_feedback.attach marks which module's output)"
        )
    unbatched = len(ctx.input_shape) == (1 if ctx.geometry is None else 3)
    batch = 1 if unbatched else ctx.input_shape[0]
    if e.dim() != 2 or e.shape[1] != outputs or e.shape[0] != batch:
        raise RuntimeError(
            f"rule='dfa': the network's output error has shape {list(e.shape)}, but this layer's B expects "
            f"({batch}, {outputs}): (batch, outputs), the batch of the layer's input {list(ctx.input_shape)}"
        )
    return e.to(ctx.saved_tensors[0].dtype)
