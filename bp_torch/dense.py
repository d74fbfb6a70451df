"""A convolution as the explicit matrix W̃ of a fully connected layer (Note A, sections 3.3 and 3.4).

A convolution is a fully connected layer s = W̃ᵀx (Note A eq. 23) whose matrix W̃ is sparse (an output reads only
its receptive field) and weight-shared (every column holds the same kernel, shifted). Its backward is therefore the
fully connected one, δ = θ' ⊙ W̃δ' (eq. 28, which is eq. 8): multiplying by W̃ instead of W̃ᵀ is what turns into the
*flipped* kernel of eq. 17. With M input and N output channels, W̃ is an M×N grid of such blocks, all of them
non-zero: the channels are fully connected (section 3.4, eq. 35).

- :func:`conv2d_matrix` builds W̃ for every option of ``conv2d``.
- :class:`DenseConv2dFunction`, :func:`dense_conv2d` and :class:`DenseConv2d` compute ``conv2d`` through W̃, with
  the fully connected backward written by hand.

Draw W̃'s sparsity pattern, coloured by kernel weight (``docs/conv_matrix.png``)::

    python -m bp_torch.dense --plot docs/conv_matrix.png
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.autograd import Function

from bp_torch._arguments import _pair, _positive_pair, check_conv2d, check_same_dtype_and_device, conv2d_padding
from bp_torch._function import apply, with_combined_twin

__all__ = ["conv2d_matrix", "DenseConv2dFunction", "dense_conv2d", "DenseConv2d", "plot_conv_matrices"]

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]  # ((top, bottom), (left, right))


def _options(weight_shape, input_size, stride, padding, dilation, groups, op: str):
    """Validate W̃'s options; return input size, stride, pads, dilation, groups and output size.

    Raises ValueError naming the argument (TypeError for a wrong type), so that every option is checked once here.
    """
    try:
        size = _positive_pair(input_size, "input_size", op)
        stride = _positive_pair(stride, "stride", op)
        dilation = _positive_pair(dilation, "dilation", op)
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise RuntimeError(f"{op}: padding must be 'same', 'valid', an int or a pair, but got padding={padding!r}")
        if not isinstance(padding, str) and min(_pair(padding, "padding", op)) < 0:
            raise RuntimeError(f"{op}: padding must be non-negative, but got padding={padding!r}")
        if padding == "same" and stride != (1, 1):
            raise RuntimeError(f"{op}: padding='same' needs stride 1, but got stride={stride}")
        # 'same' pads the dilated reach d·(k−1), its odd one at the bottom/right, as torch does
        pad, extra = conv2d_padding(padding, weight_shape[2:], stride, dilation)
    except RuntimeError as err:  # _arguments raises torch's RuntimeError; a new function raises ValueError
        raise ValueError(str(err)) from None
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"{op}(): argument 'groups' must be int, but got {type(groups).__name__}")
    if groups <= 0 or weight_shape[0] % groups:
        raise ValueError(
            f"{op}: groups must be positive and divide out_channels={weight_shape[0]}, but got groups={groups}"
        )
    pads = ((pad[0], pad[0] + extra[0]), (pad[1], pad[1] + extra[1]))
    out = []
    for side, L, k, s, (before, after), d in zip(("height", "width"), size, weight_shape[2:], stride, pads, dilation):
        span = L + before + after - d * (k - 1)  # the padded input less the dilated kernel's reach
        if span < 1:
            raise ValueError(
                f"{op}: the dilated kernel {side} {d * (k - 1) + 1} (kernel {k}, dilation {d}) is larger than the "
                f"padded input {side} {L + before + after} (input_size={input_size!r}, padding={padding!r})"
            )
        out.append((span - 1) // s + 1)
    return size, stride, pads, dilation, groups, tuple(out)


def _taps(weight_shape, size: Pair, stride: Pair, pads: Pads, dilation: Pair, groups: int, out: Pair, device):
    """W̃'s non-zeros in coalesced order: their (input, output) indices (2, nnz) and the weight each one holds.

    Output (o, p, q) reads, through tap (i, u, v) of its kernel, input (g·C_in_g + i, p·s + u·d − pad, q·s + v·d − pad)
    (Note A eq. 10, strided, dilated and grouped); taps that land in the padding read a zero and are dropped.
    """
    C_out, C_in_g, kh, kw = weight_shape
    H, W = size
    H_out, W_out = out
    a = [torch.arange(n, device=device) for n in (C_out, C_in_g, H_out, W_out, kh, kw)]
    o, i, p, q, u, v = (t.reshape([-1 if j == k else 1 for k in range(6)]) for j, t in enumerate(a))
    # every tensor below broadcasts over (C_out, C_in_g, H_out, W_out, kh, kw): one entry per (output, tap)
    row = p * stride[0] + u * dilation[0] - pads[0][0]  # Note A eq. 10: s_pq reads x_{p+u, q+v} through w_uv
    col = q * stride[1] + v * dilation[1] - pads[1][0]
    channel = o // (C_out // groups) * C_in_g + i  # the input channel tap i of output channel o reads
    inside = ((row >= 0) & (row < H) & (col >= 0) & (col < W)).expand(C_out, C_in_g, H_out, W_out, kh, kw)
    x_index = ((channel * H + row) * W + col).expand_as(inside)[inside]
    s_index = ((o * H_out + p) * W_out + q).expand_as(inside)[inside]
    k_index = (((o * C_in_g + i) * kh + u) * kw + v).expand_as(inside)[inside]
    order = torch.argsort(x_index * (C_out * H_out * W_out) + s_index)  # row-major: a coalesced COO tensor
    return torch.stack((x_index[order], s_index[order])), k_index[order]


def _matrix(weight: torch.Tensor, size: Pair, stride: Pair, pads: Pads, dilation: Pair, groups: int, out: Pair):
    """W̃ as a sparse COO tensor whose values are gathered from ``weight`` (so it is differentiable w.r.t. it)."""
    indices, taps = _taps(weight.shape, size, stride, pads, dilation, groups, out, weight.device)
    C_out, C_in_g = weight.shape[:2]
    shape = (C_in_g * groups * size[0] * size[1], C_out * out[0] * out[1])
    values = weight.reshape(-1)[taps]  # weight sharing: many entries of W̃ hold the same kernel weight
    return torch.sparse_coo_tensor(indices, values, shape, is_coalesced=True, check_invariants=False)


def conv2d_matrix(weight, input_size, stride=1, padding=0, dilation=1, groups=1, *, dense=False) -> torch.Tensor:
    """The matrix W̃ of Note A eq. 23: ``conv2d(x, weight, ...)`` flattened equals ``W̃ᵀ`` times ``x`` flattened.

    Row ``(c, h, w)`` of W̃ is an input element, column ``(o, p, q)`` an output element (both flattened in
    ``(C, H, W)`` order); column ``(o, p, q)`` holds kernel ``weight[o]`` at the inputs that output reads.
    W̃'s values are gathered from ``weight``, so W̃ is differentiable with respect to it.

    Args:
        weight: ``(C_out, C_in / groups, kH, kW)``. A 1-D convolution is the case ``kH = 1`` and input height 1.
        input_size: ``(H, W)`` or an int; the input has ``C_in = weight.shape[1] · groups`` channels.
        stride, padding, dilation, groups: as in :func:`bp_torch.functional.conv2d` (``padding`` an int, a pair,
            ``'valid'`` or ``'same'``, whose odd extra row/column goes to the bottom/right as in torch).
        dense: return a strided tensor instead of a sparse COO one.

    Shape:
        ``(C_in·H·W, C_out·H_out·W_out)`` with ``H_out = floor((H + 2·padding − dilation·(kH − 1) − 1) / stride) + 1``,
        likewise ``W_out``. Each column has ``C_in/groups · kH · kW`` entries, fewer where taps fall in the padding.

    Raises:
        ValueError: an option out of range, naming the argument and the value received.

    Example::

        >>> conv2d_matrix(torch.tensor([[[[1.0, 2.0, 3.0]]]]), (1, 4), dense=True)  # a 1-D kernel over 4 inputs
        tensor([[1., 0.],
                [2., 1.],
                [3., 2.],
                [0., 3.]])
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"conv2d_matrix(): argument 'weight' must be Tensor, not {type(weight).__name__}")
    if weight.dim() != 4:
        raise ValueError(
            f"conv2d_matrix: weight must be 4-D (C_out, C_in / groups, kH, kW), but got weight of size "
            f"{list(weight.shape)}"
        )
    size, stride, pads, dilation, groups, out = _options(
        weight.shape, input_size, stride, padding, dilation, groups, "conv2d_matrix"
    )
    matrix = _matrix(weight, size, stride, pads, dilation, groups, out)
    return matrix.to_dense() if dense else matrix


@with_combined_twin
class DenseConv2dFunction(Function):
    """``conv2d`` computed as a fully connected layer through W̃, with the fully connected backward.

    Forward s = W̃ᵀx + b (Note A eq. 23); backward ∂e/∂x = W̃δ (eq. 8 = eq. 28), ∂e/∂W̃ = xδᵀ (eq. 7) summed over
    the entries that share a kernel weight (Note A section 3.3, Note B eq. 40), ∂e/∂b = Σδ (Note B eq. 45).

    Takes the normalised options of :func:`dense_conv2d`: a 4-D input, ``pads = ((top, bottom), (left, right))``.
    """

    @staticmethod
    def forward(input, weight, bias, stride: Pair, pads: Pads, dilation: Pair, groups: int, out: Pair):
        N, C_in, H, W = input.shape
        W_tilde = _matrix(weight, (H, W), stride, pads, dilation, groups, out)  # (C_in·H·W, C_out·H_out·W_out)
        x = input.reshape(N, C_in * H * W)
        s = torch.sparse.mm(W_tilde.t(), x.T).T  # Note A eq. 23: s = W̃ᵀx, one column per sample
        s = s.reshape(N, weight.shape[0], *out)  # (N, C_out, H_out, W_out)
        return s if bias is None else s + bias[:, None, None]

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, pads, dilation, groups, out = inputs
        needs_input, needs_weight = ctx.needs_input_grad[:2]
        # W̃δ reads the kernel; xδᵀ the input (and W̃'s pattern, which depends only on the shapes)
        ctx.save_for_backward(input if needs_weight else None, weight if needs_input else None)
        ctx.input_shape, ctx.weight_shape = input.shape, weight.shape
        ctx.options = (stride, pads, dilation, groups, out)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        stride, pads, dilation, groups, out = ctx.options
        N, C_in, H, W = ctx.input_shape
        grad_input = grad_weight = grad_bias = None
        delta = grad_output.reshape(N, ctx.weight_shape[0] * out[0] * out[1])  # (N, C_out·H_out·W_out)
        if ctx.needs_input_grad[0]:
            W_tilde = _matrix(weight, (H, W), stride, pads, dilation, groups, out)
            # Note A eq. 8 = eq. 28: ∂e/∂x = W̃δ — W̃ itself, not transposed (the flipped kernel of eq. 17)
            grad_input = torch.sparse.mm(W_tilde, delta.T).T.reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            (x_index, s_index), taps = _taps(
                ctx.weight_shape, (H, W), stride, pads, dilation, groups, out, grad_output.device
            )
            x = input.reshape(N, C_in * H * W)
            # Note A eq. 7: ∂e/∂W̃ = xδᵀ (summed over the batch), needed only at W̃'s entries: its zeros are
            # structure, not parameters
            grad_entries = (x[:, x_index] * delta[:, s_index]).sum(0)  # (nnz,)
            # weight sharing (Note A section 3.3, Note B eq. 40): a kernel weight's gradient is the sum over the
            # entries of W̃ that hold it
            grad_weight = grad_entries.new_zeros(ctx.weight_shape.numel()).index_add_(0, taps, grad_entries)
            grad_weight = grad_weight.reshape(ctx.weight_shape)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))  # Note B eq. 45: Δb = ΣΔC_σ
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def dense_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """:func:`bp_torch.functional.conv2d` computed through W̃ (:class:`DenseConv2dFunction`), for teaching.

    Same arguments, shapes (unbatched inputs too) and results as ``conv2d``; a sparse matrix product is far slower
    than a convolution, so use it to see the fully connected view, not to train. Tensors are checked as ``conv2d``
    checks them; the options as :func:`conv2d_matrix` does (ValueError).

    Example::

        >>> dense_conv2d(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), padding="same").shape
        torch.Size([2, 4, 8, 8])
    """
    check_conv2d(input, weight, bias, stride, dilation, groups)
    check_same_dtype_and_device("conv2d", input=input, weight=weight, bias=bias)
    size, stride, pads, dilation, groups, out = _options(
        weight.shape, tuple(input.shape[-2:]), stride, padding, dilation, groups, "dense_conv2d"
    )
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    s = apply(DenseConv2dFunction, input, weight, bias, stride, pads, dilation, groups, out)
    return s.squeeze(0) if unbatched else s


class DenseConv2d(torch.nn.Conv2d):
    """:class:`torch.nn.Conv2d` (same arguments, parameters and state_dict) computed through W̃ by
    :func:`dense_conv2d`.

    Example::

        >>> DenseConv2d(1, 6, 5)(torch.randn(8, 1, 28, 28)).shape  # Note B's C1
        torch.Size([8, 6, 24, 24])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad explicitly, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return dense_conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def plot_conv_matrices(path: str) -> None:
    """Draw W̃ for a 1-D and two 2-D convolutions, each entry coloured by the kernel weight it holds, to ``path``.

    In the spirit of Note A's figure 1: (a) input 6, kernel 3; (b) a 4×4 input, 3×3 kernel; (c) 2 input and 2 output
    channels, 3×3 inputs, 2×2 kernels — a 2×2 grid of blocks, each a single-channel W̃ (section 3.4).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cases = [  # (title, kernel shape, input size, label of kernel weight number n (0-based))
        ("(a) 1-D: input 6, kernel 3", (1, 1, 1, 3), (1, 6), lambda n: f"$w_{n}$"),
        ("(b) 2-D: input 4×4, kernel 3×3", (1, 1, 3, 3), (4, 4), lambda n: f"$w_{{{n // 3}{n % 3}}}$"),
        ("(c) 2 → 2 channels: input 3×3, kernel 2×2", (2, 2, 2, 2), (3, 3), None),
    ]
    matrices = []
    for _, shape, size, _ in cases:
        numbers = torch.arange(1, torch.Size(shape).numel() + 1, dtype=torch.float64).reshape(shape)
        matrices.append(conv2d_matrix(numbers, size, dense=True).to(torch.int64))  # entry = 1 + which weight
    colours = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(
        1, 3, figsize=(10, 9.5), gridspec_kw={"width_ratios": [m.shape[1] for m in matrices]}, layout="constrained"
    )
    for ax, (title, shape, _, label), M in zip(axes, cases, matrices):
        n = int(M.max())
        masked = torch.where(M > 0, M.double(), float("nan")).numpy()
        ax.imshow(masked, cmap=ListedColormap(colours[:n]), vmin=0.5, vmax=n + 0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("output element  (column of $\\tilde W$)")
        ax.set_ylabel("input element  (row of $\\tilde W$)")
        ax.set_xticks(range(M.shape[1]))
        ax.set_yticks(range(M.shape[0]))
        ax.tick_params(labelsize=7)
        ax.set_xticks([j - 0.5 for j in range(M.shape[1] + 1)], minor=True)
        ax.set_yticks([j - 0.5 for j in range(M.shape[0] + 1)], minor=True)
        ax.grid(which="minor", color="0.85", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        if label is not None:
            for (r, c), value in zip(torch.nonzero(M).tolist(), M[M > 0].tolist()):
                ax.text(c, r, label(value - 1), ha="center", va="center", fontsize=8)
        else:  # channel blocks: input channel m (rows) × output channel o (columns) holds kernel weight[o, m]
            C_out, C_in = shape[:2]
            rows, cols = M.shape[0] // C_in, M.shape[1] // C_out
            for m in range(1, C_in):
                ax.axhline(m * rows - 0.5, color="k", linewidth=1.2)
            for o in range(1, C_out):
                ax.axvline(o * cols - 0.5, color="k", linewidth=1.2)
            for m in range(C_in):
                for o in range(C_out):  # in the block's empty upper-right corner
                    ax.text(o * cols + cols - 1, m * rows + 1, f"w[{o},{m}]", ha="center", va="center", fontsize=9)
    fig.suptitle(
        "$s = \\tilde W^{\\top} x$ (Note A eq. 23): each column is one output's kernel; colour = which kernel weight",
        fontsize=11,
    )
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bp_torch.dense", description=__doc__.split("\n")[0])
    parser.add_argument("--plot", metavar="PNG", required=True, help="write W̃'s sparsity pattern figure to PNG")
    args = parser.parse_args(argv)
    plot_conv_matrices(args.plot)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
