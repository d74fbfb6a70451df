"""What a run shows in TensorBoard, its pictures laid out by torchvision and drawn by matplotlib.

Tags (step = optimizer steps taken):

- scalars: ``train/loss``, ``train/accuracy``, ``train/lr``, ``perf/images_per_sec`` every log interval;
  ``test/loss``, ``test/accuracy``, ``perf/epoch_time_s`` per epoch; ``gradcheck/<parameter>`` every grad-check
  interval: max|g_manual − g_native| / max|g_native| on the same batch; under a backward rule (``--rule``),
  ``alignment/<layer>/{delta,weight_grad}_{angle,norm_ratio}`` at the same steps: the rule against exact backprop;
- histograms: ``weights/<parameter>``, ``grads/<parameter>`` per epoch;
- images (``torchvision.utils.make_grid``): ``filters/C1``, ``filters/C2``, ``feature_maps/C1``,
  ``feature_maps/C2`` (one test digit of each class), ``error_maps/C1``, ``error_maps/S1``, ``error_maps/C2``,
  ``error_maps/S2`` (Note B's δ of those digits: ΔC¹, ΔS¹, ΔC², ΔS², blue positive, red negative);
- figures (matplotlib): ``test/confusion_matrix`` (counts in every cell, the mistakes shaded by their number, class
  labels on both axes) and ``test/misclassified`` (each digit titled with its predicted and true label);
- text: ``config``, ``environment``, ``backward_graph`` (the audit of the backward graph: which nodes are
  hand-derived), ``test/confusion_counts``; and hparams (the config, with ``test/accuracy`` and ``test/loss`` as
  metrics), but for dry runs, which are kept out of the hparams table.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn
from torchvision.utils import make_grid

__all__ = ["TensorBoardLogger", "filters_image", "confusion_figure", "misclassified_figure", "error_map_images"]

CLASSES = tuple(str(k) for k in range(10))


def _upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale each image of (N, ...) to [0, 1]."""
    flat = x.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)


def grid(tiles: torch.Tensor, ncols: int) -> torch.Tensor:
    """(N, C, H, W) tiles, ``ncols`` to a row, 2-pixel grey gaps: a (3, H', W') image."""
    return make_grid(tiles, nrow=ncols, padding=2, pad_value=0.5)


def filters_image(weight: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """(C_out, C_in, k, k) kernels as a grid, one row per output map (one row in all if C_in = 1), grey 0.5 = 0."""
    w = weight.detach().float().cpu()
    C_out, C_in, kh, kw = w.shape
    w = 0.5 + 0.5 * w / w.abs().max().clamp_min(1e-12)
    return grid(_upscale(w.reshape(C_out * C_in, 1, kh, kw), scale), ncols=C_in if C_in > 1 else C_out)


def confusion_figure(confusion: torch.Tensor, classes=CLASSES) -> Figure:
    """The confusion matrix (rows true, columns predicted) with its count in every cell: the mistakes off the
    diagonal shaded by their number, the correct answers on it plain, so the mistakes stand out at any accuracy."""
    counts = confusion.cpu()
    mistakes = counts.double().fill_diagonal_(float("nan"))
    worst = max(float(mistakes.nan_to_num(0).max()), 1.0)
    cmap = colormaps["Reds"].with_extremes(bad="#e3ebf3")  # bad: the diagonal
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(mistakes.numpy(), cmap=cmap, vmin=0, vmax=worst)
    fig.colorbar(image, ax=ax, label="misclassified images")
    K = len(classes)
    for i in range(K):
        for j in range(K):
            if (n := int(counts[i, j])) or i == j:
                dark = i != j and n > 0.6 * worst
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set(
        xticks=range(K), yticks=range(K), xticklabels=classes, yticklabels=classes, xlabel="predicted", ylabel="true"
    )
    accuracy = counts.trace().item() / max(counts.sum().item(), 1)
    ax.set_title(f"test accuracy {accuracy:.2%} on {int(counts.sum()):,} images")
    return fig


def misclassified_figure(images: torch.Tensor, pred: torch.Tensor, true: torch.Tensor, ncols: int = 8) -> Figure:
    """The misclassified digits, each titled with its predicted and its true label."""
    n = len(images)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(ncols * 1.1, nrows * 1.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i, 0].float().cpu().numpy(), cmap="gray")
            ax.set_title(f"{int(pred[i])} (true {int(true[i])})", fontsize=8, color="tab:red")
    return fig


def feature_map_images(model: nn.Module, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """C1 and C2 maps (after the sigmoid) of the ``probe`` digits: one row per digit, the digit first.

    Each map is stretched to its own min-max range, to show its pattern rather than its level.
    """
    maps = {}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, key=key: maps.__setitem__(key, o.detach().cpu()))
        for name, key in (("act1", "C1"), ("act2", "C2"))
    ]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    digits = _unit(probe.detach().float().cpu())  # (D, 1, 28, 28)
    out = {}
    for key, scale in (("C1", 1), ("C2", 3)):
        D, C = maps[key].shape[:2]
        m = _upscale(_unit(maps[key].flatten(0, 1)).view_as(maps[key]), scale)  # each map stretched to [0, 1]
        h, w = m.shape[2:]
        top, left = (28 - h) // 2, (28 - w) // 2
        rows = torch.nn.functional.pad(m, (left, 28 - w - left, top, 28 - h - top), value=0.5)
        tiles = torch.cat([digits, rows], 1).reshape(D * (C + 1), 1, 28, 28)
        out[key] = grid(_upscale(tiles, 2), ncols=C + 1)
    return out


# Note B's layers, the LeNet's module whose output each is, and the scale that brings its maps to about 24 pixels
ERROR_MAPS = (("C1", "act1", 1), ("S1", "pool1", 2), ("C2", "act2", 3), ("S2", "pool2", 6))


def error_map_images(model: nn.Module, probe: torch.Tensor, labels: torch.Tensor, loss_fn) -> dict[str, torch.Tensor]:
    """Note B's error maps of the ``probe`` digits: δ = ∂L/∂C¹, ∂L/∂S¹, ∂L/∂C², ∂L/∂S² (ΔC¹, ΔS¹, ΔC², ΔS²), one
    row per digit (the digit first), blue where δ > 0, red where δ < 0, white at 0.

    Tensor hooks on the layers' outputs catch each δ as the backward passes them (the model's own backward: the
    hand-derived one for ``impl="manual"``); parameters' ``.grad`` are not touched. Each digit's maps of one layer
    share one scale, its largest |δ|, so that the maps of a layer compare.
    """
    deltas: dict[str, torch.Tensor] = {}

    def catch(key):
        def hook(module, inputs, output):
            output.register_hook(lambda grad: deltas.__setitem__(key, grad.detach().float().cpu()))

        return hook

    hooks = [getattr(model, name).register_forward_hook(catch(key)) for key, name, _ in ERROR_MAPS]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss = loss_fn(model(probe), labels)
            torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    digits = _unit(probe.detach().float().cpu()).expand(-1, 3, -1, -1)  # (D, 3, 28, 28)
    out = {}
    for key, _, scale in ERROR_MAPS:
        delta = deltas[key]  # (D, C, h, w)
        D, C = delta.shape[:2]
        signed = delta / delta.flatten(1).abs().max(1).values.clamp_min(1e-30).view(D, 1, 1, 1)  # in [-1, 1]
        red, blue = signed.clamp(max=0).abs(), signed.clamp(min=0)
        rgb = torch.stack([1 - blue, 1 - red - blue, 1 - red], 2)  # (D, C, 3, h, w): white 0, blue +, red −
        m = _upscale(rgb.flatten(0, 1), scale)
        h, w = m.shape[2:]
        top, left = (28 - h) // 2, (28 - w) // 2
        tiles = torch.nn.functional.pad(m, (left, 28 - w - left, top, 28 - h - top), value=0.5).view(D, C, 3, 28, 28)
        rows = torch.cat([digits.unsqueeze(1), tiles], 1).reshape(D * (C + 1), 3, 28, 28)
        out[key] = grid(_upscale(rows, 2), ncols=C + 1)
    return out


class TensorBoardLogger:
    """Writes one run's TensorBoard events into ``run_dir``; only the main process makes one.

    Args:
        run_dir: the run's folder.
        probe: (D, 1, 28, 28) fixed test digits whose feature maps are drawn each epoch, or ``(digits, labels)``:
            then their error maps too.
        purge_step: hide the events at steps >= purge_step that an interrupted session wrote before.
    """

    def __init__(self, run_dir, probe=None, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        self.probe, self.probe_labels = probe if isinstance(probe, tuple) else (probe, None)

    def log_start(self, config: dict[str, Any], environment: dict[str, Any], hparams: bool = True) -> None:
        """The config and environment as text, and the config as hparams unless ``hparams`` is False."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        self.writer.add_text("config", _code_block(config), 0)
        self.writer.add_text("environment", _code_block(environment), 0)
        if not hparams:
            return
        # metrics name this run's own scalar tags: the HParams tab shows their latest value, the final one at the end
        hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
        for summary in hparams_summaries(hp, {"test/accuracy": 0.0, "test/loss": 0.0}):
            self.writer.file_writer.add_summary(summary)

    def log_train(self, step: int, loss: float, accuracy: float, lr: float, images_per_sec: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/accuracy", accuracy, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("perf/images_per_sec", images_per_sec, step)

    def log_grad_check(self, step: int, differences: dict[str, float]) -> None:
        for name, value in differences.items():
            self.writer.add_scalar(f"gradcheck/{name}", value, step)

    def log_alignment(self, step: int, alignment: dict[str, float]) -> None:
        """A backward rule against exact backprop, per layer (``bp_torch.feedback.alignment``)."""
        for name, value in alignment.items():
            self.writer.add_scalar(f"alignment/{name}", value, step)

    def log_epoch(self, step: int, epoch: int, result, epoch_time: float, model: nn.Module) -> None:
        w = self.writer
        w.add_scalar("test/loss", result.loss, step)
        w.add_scalar("test/accuracy", result.accuracy, step)
        w.add_scalar("perf/epoch_time_s", epoch_time, step)
        if not _finite(model):  # a diverged run: its scalars, not pictures of NaN
            w.flush()
            return
        for name, p in model.named_parameters():
            for tag, values in ((f"weights/{name}", p.detach()), (f"grads/{name}", p.grad)):
                if values is not None:
                    _histogram(w, tag, values, step)
        w.add_image("filters/C1", filters_image(model.conv1.weight), step)
        w.add_image("filters/C2", filters_image(model.conv2.weight, scale=6), step)
        if self.probe is not None:
            for key, image in feature_map_images(model, self.probe).items():
                w.add_image(f"feature_maps/{key}", image, step)
        if len(result.wrong_true):
            wrong = misclassified_figure(result.wrong_images, result.wrong_pred, result.wrong_true)
            w.add_figure("test/misclassified", wrong, step)
        w.add_figure("test/confusion_matrix", confusion_figure(result.confusion), step)
        w.add_text("test/confusion_counts", _confusion_table(result.confusion), step)
        w.flush()

    def log_backward_graph(self, summary: str, table: str) -> None:
        """The audit of the training step's backward graph (``bp_torch.audit``): its line and its table."""
        self.writer.add_text("backward_graph", f"{summary}\n\n{table}", 0)

    def log_error_maps(self, step: int, model: nn.Module, loss_fn) -> None:
        """Note B's δ at C1, S1, C2, S2 for the probe digits (needs their labels)."""
        if self.probe is None or self.probe_labels is None or not _finite(model):
            return
        for key, image in error_map_images(model, self.probe, self.probe_labels, loss_fn).items():
            self.writer.add_image(f"error_maps/{key}", image, step)

    def close(self) -> None:
        self.writer.close()


def _code_block(d: dict[str, Any]) -> str:
    # four-space indent: TensorBoard renders text as markdown
    return "\n".join("    " + line for line in json.dumps(d, indent=2, default=str).splitlines())


def _confusion_table(confusion: torch.Tensor) -> str:
    K = confusion.shape[0]
    rows = ["| true \\ predicted | " + " | ".join(map(str, range(K))) + " |", "|---" * (K + 1) + "|"]
    rows += [f"| **{k}** | " + " | ".join(map(str, confusion[k].tolist())) + " |" for k in range(K)]
    return "\n".join(rows)


def _histogram(writer, tag: str, values: torch.Tensor, step: int) -> None:
    """A histogram of ``values``, left out where it has none: a diverged run's NaN, or values so large that
    TensorBoard's bins overflow ("The histogram is empty"), would end the run after the epoch, before its checkpoint."""
    if not torch.isfinite(values).all():
        return
    try:
        writer.add_histogram(tag, values, step)
    except ValueError:
        pass


def _finite(model: nn.Module) -> bool:
    """Whether every weight is finite (a diverged run's are not: no picture or histogram of them)."""
    return all(torch.isfinite(p).all() for p in model.parameters())
