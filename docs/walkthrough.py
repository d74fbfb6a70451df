# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Note B by hand, on one real digit
#
# This walkthrough follows Note B ("Derivation of backpropagation in CNN", Zhang) through bp_torch, one equation at
# a time: the forward pass of its LeNet on one MNIST digit, then every Δ of the note's section 2 — each computed by
# the one bp_torch backward that implements its equation, printed with the equation's number, and compared with
# PyTorch's own autograd. Then the convolution as a fully connected layer (Note A, section 3.3), the literal and the
# fast formulations agreeing, and a short training run.
#
# `docs/walkthrough.ipynb` is generated from `docs/walkthrough.py` (`jupytext --to ipynb docs/walkthrough.py`); run
# either (`jupyter notebook docs/walkthrough.ipynb`, or `python docs/walkthrough.py`). It reads real MNIST when it is
# on disk (`$BP_TORCH_DATA`, or `data/` beside the repository) and uses a small synthetic set
# otherwise. `BP_TORCH_FIGURES=DIR` also saves its figures as PNGs in DIR; `WALKTHROUGH_STEPS` sets the training
# steps (default 300).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import bp_torch
from bp_torch import functional as BF
from bp_torch.autograd import conv2d_input_grad, conv2d_weight_grad
from bp_torch.dense import conv2d_matrix
from bp_torch.models import LeNet

torch.manual_seed(0)
STEPS = int(os.environ.get("WALKTHROUGH_STEPS", "300"))
FIGURES = os.environ.get("BP_TORCH_FIGURES")


def show(fig, name: str) -> None:
    """Display a figure (inline in a notebook) and, with BP_TORCH_FIGURES set, save it there as NAME.png."""
    if FIGURES:
        Path(FIGURES).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIGURES) / f"{name}.png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.show()


# %% [markdown]
# ## The data: one real digit
#
# `bp_torch.train.data` reads MNIST's raw files (torchvision's layout). Without them, ten synthetic "digits" — a
# bright bar at a row of its own per class, plus noise — stand in, so the walkthrough runs anywhere.


# %%
def find_mnist() -> Path | None:
    """A folder holding MNIST/raw: $BP_TORCH_DATA, or data/ in the working folder or one above it."""
    candidates = [Path(os.environ["BP_TORCH_DATA"])] if os.environ.get("BP_TORCH_DATA") else []
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidates.append(folder / "data")
    return next((c for c in candidates if (c / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()), None)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, 3 + 2 * k : 5 + 2 * k, 4:24] = 255
    return images, labels


root = find_mnist()
if root is not None:
    from bp_torch.train.data import load_dataset

    train_images, train_labels = load_dataset("mnist", train=True, root=root)
    test_images, test_labels = load_dataset("mnist", train=False, root=root)
    print(f"real MNIST: {len(train_images):,} training and {len(test_images):,} test digits")
else:
    (train_images, train_labels), (test_images, test_labels) = synthetic(2048, 0), synthetic(512, 1)
    print("real MNIST not found: a synthetic set of bars stands in")
    if FIGURES:  # the saved figures show a real digit: bars must not replace them
        print(f"its figures are not saved in {FIGURES}: set BP_TORCH_DATA to a folder holding MNIST/raw")
        FIGURES = None

x = test_images[0].double().div(255)[None, None]  # (1, 1, 28, 28), pixels in [0, 1] as in Note B
label = int(test_labels[0])
y = F.one_hot(torch.tensor([label]), 10).double()  # the target, one-hot
fig, ax = plt.subplots(figsize=(2, 2))
ax.imshow(x[0, 0], cmap="gray")
ax.set_title(f"label {label}")
ax.axis("off")
show(fig, "walkthrough_digit")

# %% [markdown]
# ## The forward pass: 28 → 24 → 12 → 8 → 4
#
# Note B's network, with its initialisation (eq. 1–3: biases zero, weights
# $\mathcal U\big(\pm\sqrt{6/(\mathit{fan}_\mathrm{in} + \mathit{fan}_\mathrm{out})}\big)$), in float64
# so that every comparison below is exact to rounding. The layers are bp_torch's functions; PyTorch's conv2d is a
# cross-correlation (Note A eq. 10), Note B's a true convolution: with a rot180 kernel they are the same model.

# %%
model = LeNet().double()
k1, b1, k2, b2, W, b = (p.detach() for p in model.parameters())
s1 = BF.conv2d(x, k1, b1)  # C1 before the sigmoid
C1 = BF.sigmoid(s1)
S1 = BF.avg_pool2d(C1, 2)
s2 = BF.conv2d(S1, k2, b2)
C2 = BF.sigmoid(s2)
S2 = BF.avg_pool2d(C2, 2)
f = S2.flatten(1)
z = BF.linear(f, W, b)
y_hat = BF.sigmoid(z)
loss = 0.5 * (y_hat - y).pow(2).sum()  # Note B eq. 13
for name, t in [("x", x), ("C1", C1), ("S1", S1), ("C2", C2), ("S2", S2), ("f", f), ("ŷ", y_hat)]:
    print(f"{name:>3} {tuple(t.shape[1:])}")
print(f"L = ½Σ(ŷ − y)² = {loss.item():.4f}; predicted {int(y_hat.argmax())}, label {label}")


# %% [markdown]
# ## The backward pass, one equation at a time
#
# `backward_of(fn, inputs, grad)` runs one bp_torch function forward and then its hand-written backward alone, on the
# δ that arrives from above: the gradient with respect to each input. Each Δ of Note B's section 2 is one such call
# (or the plain formula, for the loss). The reference is PyTorch's autograd through `torch.nn.functional`, on the
# same weights, with every intermediate's gradient kept. From the loss down, Note B's section 2:
#
# $$\Delta\hat y = \hat y - y \ \text{(eq. 14–16)}, \qquad \Delta z = \Delta\hat y \odot \hat y\,(1 - \hat y)
# \ \text{(eq. 17)}, \qquad \Delta W = \Delta z\, f^\top, \qquad \Delta b = \Delta z, \qquad \Delta f = W^\top \Delta z
# \ \text{(eq. 19–30)}$$
#
# $$\Delta C^2 = \tfrac14 \operatorname{up}(\Delta S^2) \ \text{(eq. 32)}, \qquad
# \Delta C^2_\sigma = \Delta C^2 \odot C^2 (1 - C^2) \ \text{(eq. 37)}, \qquad
# \Delta k^2 = \operatorname{rot180}(S^1) * \Delta C^2_\sigma, \qquad \Delta b^2 = \textstyle\sum \Delta C^2_\sigma
# \ \text{(eq. 40, 45)}$$
#
# $$\Delta S^1 = \sum_q \Delta C^2_{\sigma,q} * \operatorname{rot180}(k^2_q) \ \text{(eq. 51)}$$
#
# and the same three steps again for C1 (eq. 52–64).


# %%
def backward_of(fn, *inputs, grad):
    """One bp_torch backward on its own: the gradients of ``fn(*inputs)`` w.r.t. ``inputs``, for upstream ``grad``."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    return torch.autograd.grad(fn(*leaves), leaves, grad)


def pool(t):
    return BF.avg_pool2d(t, 2)


ours = {}
ours["Δŷ"] = y_hat - y  # Note B eq. 14–16: ∂L/∂ŷ of L = ½Σ(ŷ − y)²
(ours["Δz"],) = backward_of(BF.sigmoid, z, grad=ours["Δŷ"])  # eq. 17: (ŷ − y) ⊙ ŷ(1 − ŷ)
ours["Δf"], ours["ΔW"], ours["Δb"] = backward_of(BF.linear, f, W, b, grad=ours["Δz"])  # eq. 19, 24, 30
ours["ΔS²"] = ours["Δf"].reshape(S2.shape)  # eq. 31: the flattening undone
(ours["ΔC²"],) = backward_of(pool, C2, grad=ours["ΔS²"])  # eq. 32: upsampling by ¼
(ours["ΔC²_σ"],) = backward_of(BF.sigmoid, s2, grad=ours["ΔC²"])  # eq. 37: ⊙ C²(1 − C²)
ours["ΔS¹"], ours["Δk²"], ours["Δb²"] = backward_of(BF.conv2d, S1, k2, b2, grad=ours["ΔC²_σ"])  # eq. 40, 45, 51
(ours["ΔC¹"],) = backward_of(pool, C1, grad=ours["ΔS¹"])  # eq. 52
(ours["ΔC¹_σ"],) = backward_of(BF.sigmoid, s1, grad=ours["ΔC¹"])  # eq. 57
_, ours["Δk¹"], ours["Δb¹"] = backward_of(BF.conv2d, x, k1, b1, grad=ours["ΔC¹_σ"])  # eq. 59, 64

# the reference: native autograd, every intermediate's gradient retained
leaves = [p.clone().requires_grad_() for p in (k1, b1, k2, b2, W, b)]
n_k1, n_b1, n_k2, n_b2, n_W, n_b = leaves
n = {}
n["s1"] = F.conv2d(x, n_k1, n_b1)
n["C1"] = torch.sigmoid(n["s1"])
n["S1"] = F.avg_pool2d(n["C1"], 2)
n["s2"] = F.conv2d(n["S1"], n_k2, n_b2)
n["C2"] = torch.sigmoid(n["s2"])
n["S2"] = F.avg_pool2d(n["C2"], 2)
n["f"] = n["S2"].flatten(1)
n["z"] = F.linear(n["f"], n_W, n_b)
n["ŷ"] = torch.sigmoid(n["z"])
for t in n.values():
    t.retain_grad()
(0.5 * (n["ŷ"] - y).pow(2).sum()).backward()
reference = {
    "Δŷ": n["ŷ"].grad, "Δz": n["z"].grad, "ΔW": n_W.grad, "Δb": n_b.grad, "Δf": n["f"].grad, "ΔS²": n["S2"].grad,
    "ΔC²": n["C2"].grad, "ΔC²_σ": n["s2"].grad, "Δk²": n_k2.grad, "Δb²": n_b2.grad, "ΔS¹": n["S1"].grad,
    "ΔC¹": n["C1"].grad, "ΔC¹_σ": n["s1"].grad, "Δk¹": n_k1.grad, "Δb¹": n_b1.grad,
}  # fmt: skip
EQUATIONS = {
    "Δŷ": "B 14–16", "Δz": "B 17", "ΔW": "B 19", "Δb": "B 24", "Δf": "B 30", "ΔS²": "B 31", "ΔC²": "B 32",
    "ΔC²_σ": "B 37", "Δk²": "B 40", "Δb²": "B 45", "ΔS¹": "B 51", "ΔC¹": "B 52", "ΔC¹_σ": "B 57", "Δk¹": "B 59",
    "Δb¹": "B 64",
}  # fmt: skip
print(f"{'':7} {'equation':9} {'shape':16} {'max |ours − autograd|'}")
for name, eq in EQUATIONS.items():
    error = (ours[name] - reference[name]).abs().max().item()
    print(f"{name:7} {eq:9} {str(tuple(ours[name].shape)):16} {error:.1e}")
assert all(torch.allclose(ours[k], reference[k], rtol=1e-10, atol=1e-14) for k in EQUATIONS)

# %% [markdown]
# Two of those lines are the convolution's backward, Note A's and Note B's central results. The kernel gradient is
# the input correlated with δ (Note B eq. 40) and the input gradient the full correlation of δ with the rot180 kernel
# (Note A eq. 17, Note B eq. 51). `bp_torch.autograd` exposes both as functions of their own:

# %%
dk2 = conv2d_weight_grad(S1, ours["ΔC²_σ"], (5, 5), (1, 1), (0, 0), (1, 1), 1)  # Note B eq. 40
dS1 = conv2d_input_grad(ours["ΔC²_σ"], k2, (12, 12), (1, 1), (0, 0), (1, 1), 1)  # Note B eq. 51
by_hand = F.conv2d(ours["ΔC²_σ"], k2.flip(2, 3).transpose(0, 1), padding=4)  # eq. 51 written out: full, rot180
print(torch.allclose(dk2, ours["Δk²"]), torch.allclose(dS1, ours["ΔS¹"]), torch.allclose(by_hand, ours["ΔS¹"]))

# %% [markdown]
# ## The error maps
#
# δ at every layer of the network for this digit: ΔC¹_σ (6 maps, 24×24), ΔS¹ (12×12), ΔC²_σ (12 maps, 8×8) and ΔS²
# (4×4) — red where increasing the activation raises the loss, blue where it lowers it. The mean pool's backward is
# in plain sight: each 2×2 block of ΔC_σ is one entry of ΔS, upsampled by ¼ (eq. 32, 52) and scaled by σ' (eq. 37,
# 57).


# %%
def error_maps(maps: dict[str, torch.Tensor]):
    rows = len(maps)
    cols = max(t.shape[1] for t in maps.values())
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.0), squeeze=False)
    for r, (name, t) in enumerate(maps.items()):
        scale = t.abs().max().item() or 1.0
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < t.shape[1]:
                ax.imshow(t[0, c], cmap="RdBu_r", vmin=-scale, vmax=scale)
        axes[r, 0].set_title(name, fontsize=9, loc="left")
    fig.tight_layout()
    return fig


show(error_maps({k: ours[k] for k in ("ΔC¹_σ", "ΔS¹", "ΔC²_σ", "ΔS²")}), "walkthrough_error_maps")

# %% [markdown]
# ## A convolution is a fully connected layer (Note A, section 3.3)
#
# `bp_torch.dense.conv2d_matrix` builds $\tilde W$: the sparse, weight-shared matrix with
# $\operatorname{conv2d}(x) = \tilde W^\top x$ (Note A eq. 23).
# The backward of a fully connected layer multiplies by W̃ itself (eq. 28, which is eq. 8) — and that is the flipped
# kernel of eq. 17. Here for C2's first kernel pair on S1's 12×12 map:

# %%
k = k2[:1, :1]  # one output map, one input map: a 5×5 kernel
W_tilde = conv2d_matrix(k, (12, 12), dense=True)  # (144, 64): 12·12 inputs, 8·8 outputs
s = F.conv2d(S1[:, :1], k)
print("W̃ᵀx = conv2d(x):", torch.allclose(S1[:, :1].flatten(1) @ W_tilde, s.flatten(1)))
delta = ours["ΔC²_σ"][:, :1]
through_w_tilde = (W_tilde @ delta.flatten()).reshape(12, 12)  # Note A eq. 28: W̃δ
eq17 = conv2d_input_grad(delta, k, (12, 12), (1, 1), (0, 0), (1, 1), 1)[0, 0]  # Note A eq. 17
print("W̃δ = Note A eq. 17:", torch.allclose(through_w_tilde, eq17))
fig, ax = plt.subplots(figsize=(4, 7))
ax.imshow(torch.where(W_tilde != 0, W_tilde, float("nan")), cmap="viridis", aspect="auto", interpolation="nearest")
ax.set_xlabel("output element (column of W̃)")
ax.set_ylabel("input element (row of W̃)")
ax.set_title(f"W̃ of a 5×5 kernel on 12×12: {int((W_tilde != 0).sum())} of {W_tilde.numel()} entries")
show(fig, "walkthrough_w_tilde")

# %% [markdown]
# ## Literal and fast formulations agree
#
# By default bp_torch computes each gradient with the fastest equivalent formulation for the shape (for C2's input
# gradient: Note A eq. 14's scatter, a transposed convolution). `bp_torch.formulas("literal")` runs every gradient
# exactly as the notes write it — eq. 17 with zeros inserted and full padding, eq. 40 as one correlation, eq. 32 as
# upsampling, eq. 37 as $\delta \odot \sigma\,(1 - \sigma)$. The same network's gradients, both ways:


# %%
def gradients(mode: str) -> list[torch.Tensor]:
    params = [p.clone().requires_grad_() for p in (k1, b1, k2, b2, W, b)]
    with bp_torch.formulas(mode):
        h = BF.avg_pool2d(BF.sigmoid(BF.conv2d(x, params[0], params[1])), 2)
        h = BF.avg_pool2d(BF.sigmoid(BF.conv2d(h, params[2], params[3])), 2)
        out = BF.sigmoid(BF.linear(h.flatten(1), params[4], params[5]))
        return list(torch.autograd.grad(0.5 * (out - y).pow(2).sum(), params))


fast, literal = gradients("fast"), gradients("literal")
for name, a, c in zip(["Δk¹", "Δb¹", "Δk²", "Δb²", "ΔW", "Δb"], fast, literal):
    print(f"{name:4} max |fast − literal| = {(a - c).abs().max().item():.1e}")

# %% [markdown]
# ## A short training run
#
# The LeNet with the hand-derived backward, Adam on the cross-entropy of its logits, batches of 64 — a few hundred
# steps (`python train.py` runs the full recipe and logs it to TensorBoard).

# %%
torch.manual_seed(0)
model = LeNet()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
mean, std = 0.1307, 0.3081
history = []
for _ in range(STEPS):
    index = torch.randint(0, len(train_images), (64,))
    xb = (train_images[index].float().div(255).unsqueeze(1) - mean) / std
    logits = model(xb)
    loss = F.cross_entropy(logits, train_labels[index])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append((loss.item(), (logits.argmax(1) == train_labels[index]).float().mean().item()))
with torch.no_grad():
    xt = (test_images[:1000].float().div(255).unsqueeze(1) - mean) / std
    test_accuracy = (model(xt).argmax(1) == test_labels[:1000]).float().mean().item()
print(f"after {STEPS} steps: test accuracy {test_accuracy:.2%} on {len(xt)} test digits")

window = 10
losses, accuracies = torch.tensor(history).T
smooth = [t.unfold(0, window, 1).mean(1) if len(t) >= window else t for t in (losses, accuracies)]
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
left.plot(losses, alpha=0.3)
left.plot(range(len(smooth[0])), smooth[0])
left.set(xlabel="step", ylabel="training loss", yscale="log")
right.plot(accuracies, alpha=0.3)
right.plot(range(len(smooth[1])), smooth[1])
right.set(xlabel="step", ylabel="training accuracy")
fig.tight_layout()
show(fig, "walkthrough_training")
