"""What a run shows in TensorBoard, and the pictures it draws, with no plotting library.

Tags (step = optimizer steps taken):

- scalars: ``train/loss``, ``train/accuracy``, ``train/lr``, ``perf/images_per_sec`` every log interval;
  ``test/loss``, ``test/accuracy``, ``perf/epoch_time_s`` per epoch; ``gradcheck/<parameter>`` every grad-check
  interval: max|g_manual − g_native| / max|g_native| on the same batch;
- histograms: ``weights/<parameter>``, ``grads/<parameter>`` per epoch;
- images: ``filters/C1``, ``filters/C2``, ``feature_maps/C1``, ``feature_maps/C2`` (one test digit of each
  class), ``error_maps/C1``, ``error_maps/S1``, ``error_maps/C2``, ``error_maps/S2`` (Note B's δ of those digits:
  ΔC¹, ΔS¹, ΔC², ΔS², blue positive, red negative), ``test/misclassified`` (predicted label in red, true in green),
  ``test/confusion_matrix`` (rows true, columns predicted, each row normalised);
- text: ``config``, ``environment``, ``backward_graph`` (the audit of the backward graph: which nodes are
  hand-derived), ``test/confusion_counts``; and hparams (the config, with ``test/accuracy`` and ``test/loss`` as
  metrics), but for dry runs, which are kept out of the hparams table.

Images are drawn as tensors; digits are written with a 3x5 pixel font.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

__all__ = ["TensorBoardLogger", "digits_image", "confusion_image", "filters_image", "grid", "error_map_images"]

# 3x5 bitmaps of 0-9, row by row
_FONT = (
    "111101101101111 010110010010111 111001111100111 111001111001111 101101111001001 "
    "111100111001111 111100111101111 111001001001001 111101111101111 111101111001111"
).split()
RED, GREEN, BLACK = (1.0, 0.25, 0.25), (0.3, 1.0, 0.3), (0.0, 0.0, 0.0)


def _glyph(digit: int, scale: int) -> torch.Tensor:
    """(5·scale, 3·scale) mask of a digit."""
    mask = torch.tensor([int(c) for c in _FONT[digit]], dtype=torch.float32).view(5, 3)
    return _upscale(mask, scale)


def _upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def _stamp(canvas: torch.Tensor, digit: int, top: int, left: int, color, scale: int = 2) -> None:
    """Write ``digit`` onto the (3, H, W) ``canvas`` in ``color``, its top-left corner at (top, left)."""
    mask = _glyph(digit, scale)
    h, w = mask.shape
    region = canvas[:, top : top + h, left : left + w]
    region.mul_(1 - mask).add_(mask * torch.tensor(color).view(3, 1, 1))


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale each image of (N, ...) to [0, 1]."""
    flat = x.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)


def grid(tiles: torch.Tensor, ncols: int, pad: int = 2, pad_value: float = 0.5) -> torch.Tensor:
    """Lay (N, C, H, W) tiles out row by row, ``ncols`` to a row: a (C, H', W') image."""
    N, C, H, W = tiles.shape
    nrows = -(-N // ncols)
    out = torch.full((C, nrows * (H + pad) + pad, ncols * (W + pad) + pad), pad_value)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        out[:, pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = tile
    return out


def filters_image(weight: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """(C_out, C_in, k, k) kernels as a grid, one row per output map (one row in all if C_in = 1), grey 0.5 = 0."""
    w = weight.detach().float().cpu()
    C_out, C_in, kh, kw = w.shape
    w = 0.5 + 0.5 * w / w.abs().max().clamp_min(1e-12)
    tiles = _upscale(w.reshape(C_out * C_in, 1, kh, kw), scale).expand(-1, 3, -1, -1)
    return grid(tiles, ncols=C_in if C_in > 1 else C_out)


def digits_image(images: torch.Tensor, pred: torch.Tensor, true: torch.Tensor, ncols: int = 8) -> torch.Tensor:
    """Digits, each with its predicted label (red, left) and true label (green, right) beneath it."""
    x = _upscale(_unit(images.detach().float().cpu()), 2).expand(-1, 3, -1, -1)  # (N, 3, 56, 56)
    N, _, H, W = x.shape
    tiles = torch.zeros(N, 3, H + 14, W)
    tiles[:, :, :H] = x
    for tile, p, t in zip(tiles, pred.tolist(), true.tolist()):
        _stamp(tile, p, H + 2, 8, RED)
        _stamp(tile, t, H + 2, W - 14, GREEN)
    return grid(tiles, ncols)


def confusion_image(confusion: torch.Tensor, cell: int = 16) -> torch.Tensor:
    """A heat map of the row-normalised confusion matrix, white (0) to dark blue (1), labelled with digits."""
    K = confusion.shape[0]
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1)
    blue = torch.tensor([0.05, 0.2, 0.55]).view(3, 1, 1)
    heat = 1 - rates.float().unsqueeze(0) * (1 - blue)  # (3, K, K)
    canvas = torch.ones(3, (K + 1) * cell, (K + 1) * cell)
    canvas[:, cell:, cell:] = _upscale(heat, cell)
    off = (cell - 10) // 2, (cell - 6) // 2  # centre a 10x6 glyph in a cell
    for k in range(K):
        _stamp(canvas, k, (k + 1) * cell + off[0], off[1], BLACK)  # true class, left column
        _stamp(canvas, k, off[0], (k + 1) * cell + off[1], BLACK)  # predicted class, top row
    return canvas


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
        out[key] = grid(_upscale(tiles, 2).expand(-1, 3, -1, -1), ncols=C + 1)
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

    def log_epoch(self, step: int, epoch: int, result, epoch_time: float, model: nn.Module) -> None:
        w = self.writer
        w.add_scalar("test/loss", result.loss, step)
        w.add_scalar("test/accuracy", result.accuracy, step)
        w.add_scalar("perf/epoch_time_s", epoch_time, step)
        for name, p in model.named_parameters():
            w.add_histogram(f"weights/{name}", p.detach(), step)
            if p.grad is not None:
                w.add_histogram(f"grads/{name}", p.grad, step)
        w.add_image("filters/C1", filters_image(model.conv1.weight), step)
        w.add_image("filters/C2", filters_image(model.conv2.weight, scale=6), step)
        if self.probe is not None:
            for key, image in feature_map_images(model, self.probe).items():
                w.add_image(f"feature_maps/{key}", image, step)
        if len(result.wrong_true):
            wrong = digits_image(result.wrong_images, result.wrong_pred, result.wrong_true)
            w.add_image("test/misclassified", wrong, step)
        w.add_image("test/confusion_matrix", confusion_image(result.confusion), step)
        w.add_text("test/confusion_counts", _confusion_table(result.confusion), step)
        w.flush()

    def log_backward_graph(self, summary: str, table: str) -> None:
        """The audit of the training step's backward graph (``bp_torch.audit``): its line and its table."""
        self.writer.add_text("backward_graph", f"{summary}\n\n{table}", 0)

    def log_error_maps(self, step: int, model: nn.Module, loss_fn) -> None:
        """Note B's δ at C1, S1, C2, S2 for the probe digits (needs their labels)."""
        if self.probe is None or self.probe_labels is None:
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
