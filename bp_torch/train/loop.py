"""Train and evaluate: ``fit`` (epoch → train one epoch → evaluate → report → checkpoint), ``train_one_epoch`` and
``evaluate``, in the shape of pytorch/examples' MNIST, and ``TrainState``, where training stands.

Reporting lives in ``bp_torch.train.monitor.Watch``, the recipe in ``bp_torch.train.config``, checkpoints in
``bp_torch.train.resume``. Under ``torchrun`` every rank calls ``fit`` with its own shard in each loader and the
model wrapped in ``DistributedDataParallel``; the module inside it is what is checkpointed, logged and evaluated.

Example::

    >>> cfg = Config(epochs=1, limit_train_batches=10)
    >>> train_loader, test_loader = make_loaders(cfg, torch.device("cpu"))
    >>> model, optimizer, scheduler = build(cfg, torch.device("cpu"), steps_per_epoch(train_loader, cfg))
    >>> result = fit(model, optimizer, scheduler, train_loader, test_loader, cfg, TrainState())
    >>> result.accuracy
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import torch
from torch import nn

from bp_torch.train.config import Config, Loss, steps_per_epoch
from bp_torch.train.data import NUM_CLASSES, DeviceLoader
from bp_torch.train.distributed import all_reduce_sum, unwrap
from bp_torch.train.monitor import Watch
from bp_torch.train.signals import Interrupted

__all__ = ["TrainState", "EvalResult", "evaluate", "train_one_epoch", "fit"]


@dataclass
class TrainState:
    """Where training stands: ``epoch`` epochs done, plus ``batch`` batches of the next; ``step`` in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0  # seconds spent training and evaluating, summed over resumed sessions
    metrics: dict[str, float] = field(default_factory=dict)  # the latest test loss/accuracy
    # the current epoch's training sums over every rank so far (loss sum, correct, samples), saved when a run
    # stops mid-epoch: the epoch's report after a resume then covers the whole epoch
    train_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


@dataclass
class EvalResult:
    """Sums over the evaluated samples (all-reducible), and the first misclassified digits for display."""

    loss_sum: float
    confusion: torch.Tensor  # (10, 10) int64 counts, rows true class, columns predicted
    wrong_images: torch.Tensor  # (K, 1, 28, 28) as fed to the model
    wrong_pred: torch.Tensor  # (K,)
    wrong_true: torch.Tensor  # (K,)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(self.confusion.trace()) / max(self.count, 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, loss_fn: Loss, keep: int = 32) -> EvalResult:
    """Loss sum and confusion matrix over ``loader``, and up to ``keep`` misclassified samples.

    A sharded loader (``world_size`` > 1) makes this a collective: every rank evaluates its own shard and the
    sums are added over the ranks, so all get the result for the whole set; the misclassified samples stay each
    rank's own. Pass the plain module, not its ``DistributedDataParallel`` wrapper: shards may differ in batches.
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    confusion = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.long, device=loader.device)
    wrong: list[tuple[torch.Tensor, ...]] = []
    kept = 0
    for x, y in loader:
        logits = model(x)
        loss_sum += loss_fn(logits, y).double() * len(y)
        pred = logits.argmax(1)
        confusion += torch.bincount(y * NUM_CLASSES + pred, minlength=NUM_CLASSES * NUM_CLASSES)
        if kept < keep:
            miss = (pred != y).nonzero().squeeze(1)[: keep - kept]
            wrong.append((x[miss], pred[miss], y[miss]))
            kept += len(miss)
    if loader.world_size > 1:
        all_reduce_sum(loss_sum, confusion)
    images, pred, true = (torch.cat(t).cpu() for t in zip(*wrong)) if wrong else (torch.empty(0),) * 3
    return EvalResult(loss_sum.item(), confusion.view(NUM_CLASSES, NUM_CLASSES).cpu(), images, pred, true)


def train_one_epoch(model, optimizer, scheduler, loader: DeviceLoader, loss_fn, cfg: Config, state, watch) -> None:
    """Train from batch ``state.batch`` to the end of epoch ``state.epoch``; ``watch`` sums the metrics."""
    steps = steps_per_epoch(loader, cfg)
    loader.set_epoch(state.epoch, state.batch)
    model.train()
    watch.start_epoch(state, steps)
    for x, y in islice(loader, steps - state.batch):
        watch.before_step(state, x, y)
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the hand-derived backward of every bp_torch layer
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()  # with --optimizer sgd, Note B eq. 65–70: θ ← θ − α·Δθ
        scheduler.step()
        state.step, state.batch = state.step + 1, state.batch + 1
        watch.after_step(state, loss, logits, y, lr)


def fit(
    model,
    optimizer,
    scheduler,
    train_loader,
    test_loader,
    cfg: Config,
    state: TrainState,
    *,
    watch=None,
    save: Callable[[TrainState], None] = lambda state: None,
) -> EvalResult | None:
    """Train from ``state`` to ``cfg.epochs`` epochs, evaluating, reporting and saving (``save(state)``) after each.

    ``watch`` reports and relays stop requests (``Interrupted`` is raised at a step boundary, after ``save``); by
    default a silent one. Returns the last epoch's test result (None if no epoch was left).
    """
    core = unwrap(model)  # the plain module: its state_dict has no "module." prefix, its forward no collective
    watch = watch or Watch(core, cfg, echo=lambda line: None)
    loss_fn = Loss.of(cfg)
    # compiled, the Functions' forward and hand-written backward are traced into one graph and fused (inductor);
    # evaluation and the grad check stay eager, on the plain module
    train_forward = torch.compile(model) if cfg.compile else model
    result = None
    try:
        while state.epoch < cfg.epochs:
            watch.check_stop(state)  # e.g. Ctrl-C during the evaluation: stop on the epoch boundary
            start = time.perf_counter()
            train_one_epoch(train_forward, optimizer, scheduler, train_loader, loss_fn, cfg, state, watch)
            train_time = time.perf_counter() - start
            state.epoch, state.batch = state.epoch + 1, 0
            result = evaluate(core, test_loader, loss_fn)
            state.elapsed += time.perf_counter() - start
            state.metrics = {"test_loss": result.loss, "test_accuracy": result.accuracy}
            watch.end_epoch(state, result, train_time)
            save(state)
    except Interrupted:
        save(state)
        raise
    return result
