"""Draw W̃, the matrix of a convolution seen as a fully connected layer (Note A eq. 23), to a PNG:
``python docs/plot_conv_matrix.py docs/conv_matrix.png`` (needs matplotlib, in the ``train`` extra).
"""

from __future__ import annotations

import argparse

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from bp_torch.dense import conv2d_matrix  # noqa: E402


def plot_conv_matrices(path: str) -> None:
    """Draw W̃ for a 1-D and two 2-D convolutions, each entry coloured by the kernel weight it holds, to ``path``.

    In the spirit of Note A's figure 1: (a) input 6, kernel 3; (b) a 4×4 input, 3×3 kernel; (c) 2 input and 2 output
    channels, 3×3 inputs, 2×2 kernels — a 2×2 grid of blocks, each a single-channel W̃ (section 3.4).
    """
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
    parser = argparse.ArgumentParser(prog="python docs/plot_conv_matrix.py", description=__doc__.split("\n")[0])
    parser.add_argument("png", help="where to write W̃'s sparsity pattern figure")
    args = parser.parse_args(argv)
    plot_conv_matrices(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
