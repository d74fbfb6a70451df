"""Train and evaluate LeNet: the config and its presets, the loss, the loop, evaluation, checkpoints, the grad check.

No CLI here (``train.py`` is the CLI) and no TensorBoard code (``bp_torch.tensorboard``): ``fit`` takes a logger
and a checkpoint path, and a process that is not the main one (rank > 0 under ``torchrun``) passes neither.

Distributed (``bp_torch.distributed``): ``make_loaders(cfg, device, rank, world_size)`` gives each rank its shard of
every epoch's order and ``cfg.batch_size // world_size`` samples of each global batch; ``fit`` takes the model
wrapped in ``DistributedDataParallel`` and checkpoints, logs and evaluates the module inside it; ``evaluate`` sums
the loss and the confusion matrix over the ranks' disjoint test shards.

Example::

    >>> cfg = Config(epochs=1, limit_train_batches=10)
    >>> device = torch.device("cpu")
    >>> train_loader, test_loader = make_loaders(cfg, device)
    >>> model, optimizer, scheduler = build(cfg, device, train_loader)
    >>> result = fit(model, optimizer, scheduler, train_loader, test_loader, cfg, TrainState())
    >>> result.accuracy
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bp_torch import functional as BF
from bp_torch.checkpoint import load_checkpoint, save_checkpoint
from bp_torch.data import DATASETS, DeviceLoader, load_dataset
from bp_torch.distributed import all_reduce_sum, unwrap
from bp_torch.models import LeNet

__all__ = [
    "Config",
    "PRESETS",
    "RUNTIME_FIELDS",
    "Loss",
    "TrainState",
    "EvalResult",
    "Interrupted",
    "local_batch_size",
    "make_loaders",
    "build",
    "fit",
    "evaluate",
    "grad_check",
    "checkpoint_state",
    "restore",
    "load_training_checkpoint",
]

NUM_CLASSES = 10
CHECKPOINT_FORMAT = 1


@dataclass
class Config:
    """Everything a run depends on; printed at the start and logged to TensorBoard as text and hparams.

    The fields above ``test_batch_size`` decide the trained weights; those from it on (``RUNTIME_FIELDS``) only
    how the run is executed and watched, and may change when a run is resumed.
    """

    preset: str = "default"
    dataset: str = "mnist"
    impl: str = "manual"  # "manual": bp_torch's hand-derived backward; "native": torch.nn's
    epochs: int = 20
    batch_size: int = 128  # global: split evenly over the processes of a distributed run
    lr: float = 0.03  # the peak learning rate with schedule="onecycle"
    optimizer: str = "adam"  # "sgd" | "adam" | "adamw"
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # "constant" | "onecycle" (warmup then cosine down) | "cosine"
    warmup: float = 0.25  # onecycle: fraction of the steps spent warming up
    loss: str = "ce"  # "ce": cross-entropy on the logits; "mse": Note B's ½Σ(σ(z) − y)², batch mean
    label_smoothing: float = 0.0  # ce only
    normalize: bool = True  # standardise pixels with the dataset's mean/std, else pixels in [0, 1]
    shift: int = 1  # augmentation: random translation by up to this many pixels (0: off)
    seed: int = 0
    limit_train_batches: int = 0  # train on at most this many batches per epoch (0: all)
    test_batch_size: int = 1000  # per process
    limit_test_batches: int = 0  # evaluate on the first limit_test_batches * test_batch_size test images (0: all)
    device: str = "auto"
    data_dir: str | None = None
    download: bool = True  # fetch missing data with torchvision (single process only: ranks would race)
    log_interval: int = 50
    grad_check_interval: int = 200
    num_threads: int = 0  # CPU threads for torch (0: torch's default)
    compile: bool = False  # torch.compile the training forward and backward (the derived backward is traced too)


# changing these changes no weight: they may differ when a run is resumed
RUNTIME_FIELDS = frozenset(
    {
        "test_batch_size",
        "limit_test_batches",
        "device",
        "data_dir",
        "download",
        "log_interval",
        "grad_check_interval",
        "num_threads",
        "compile",
    }
)

PRESETS: dict[str, Config] = {
    # the best recipe found for Note B's 3,898-parameter network; see README for its measured result
    "default": Config(),
    # exactly Note B / DeepLearnToolbox's test_example_CNN: sigmoid outputs under ½Σ(ŷ−y)², plain SGD with α = 1,
    # batch 50, one epoch, eq. 1–3 init, pixels in [0, 1]; DeepLearnToolbox asserts test error < 12% after it
    "seed": Config(
        preset="seed",
        epochs=1,
        batch_size=50,
        lr=1.0,
        optimizer="sgd",
        schedule="constant",
        loss="mse",
        normalize=False,
        shift=0,
    ),
}


def validate(cfg: Config) -> Config:
    """Raise ``ValueError`` naming the first setting out of range."""
    choices = {
        "impl": ("manual", "native"),
        "optimizer": ("sgd", "adam", "adamw"),
        "schedule": ("constant", "onecycle", "cosine"),
        "loss": ("ce", "mse"),
        "dataset": tuple(DATASETS),
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, but got {name}={getattr(cfg, name)!r}")
    for name in ("epochs", "batch_size", "test_batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, but got {name}={getattr(cfg, name)}")
    for name in ("limit_train_batches", "limit_test_batches", "log_interval", "grad_check_interval", "shift"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, but got {name}={getattr(cfg, name)}")
    if cfg.lr <= 0 or not 0 <= cfg.warmup < 1:
        raise ValueError(f"lr must be > 0 and warmup in [0, 1), but got lr={cfg.lr}, warmup={cfg.warmup}")
    return cfg


class Loss:
    """The training loss on LeNet's logits, as a batch mean.

    ``"ce"``: cross-entropy. ``"mse"``: Note B eq. 13, L = ½Σ(ŷ − y)² with ŷ = σ(z) and y one-hot, averaged over
    the batch as DeepLearnToolbox does; ``impl="manual"`` takes σ from bp_torch (its backward ŷ(1−ŷ), eq. 17).
    """

    def __init__(self, kind: str = "ce", impl: str = "manual", label_smoothing: float = 0.0) -> None:
        self.kind, self.label_smoothing = kind, label_smoothing
        self.sigmoid = BF.sigmoid if impl == "manual" else torch.sigmoid

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "ce":
            return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        y = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        return 0.5 * (self.sigmoid(logits) - y).pow(2).sum(1).mean()


@dataclass
class TrainState:
    """Where training stands: ``epoch`` epochs done, plus ``batch`` batches of the next; ``step`` in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0  # seconds spent training and evaluating, summed over resumed sessions
    metrics: dict[str, float] = field(default_factory=dict)  # the latest test loss/accuracy


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


class Interrupted(Exception):
    """Training stopped at a step boundary on request (Ctrl-C); the state is consistent and checkpointed."""


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of a global batch; ``ValueError`` unless the world size divides it."""
    if batch_size % world_size:
        raise ValueError(
            f"batch_size is the global batch, split evenly over the processes: it must be divisible by the "
            f"world size, but got batch_size={batch_size}, world_size={world_size}"
        )
    return batch_size // world_size


def make_loaders(
    cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[DeviceLoader, DeviceLoader]:
    """The shuffled, augmented training loader and the test loader of rank ``rank`` of ``world_size``, on ``device``.

    Training: ``DistributedSampler``'s shards of each epoch's order, ``cfg.batch_size // world_size`` per rank, so
    that batch ``i`` of all ranks together is batch ``i`` of a single process with ``cfg.batch_size`` (the order is
    interleaved over ranks). Test: the first ``limit_test_batches * test_batch_size`` images (all if 0), cut into
    contiguous shards that together hold each image once.

    Raises ``bp_torch.data.DatasetNotFoundError`` (a FileNotFoundError) or ``ValueError`` for corrupt files or a
    batch size the world size does not divide.
    """
    batch_size = local_batch_size(cfg.batch_size, world_size)
    info = DATASETS[cfg.dataset]
    mean, std = (info.mean, info.std) if cfg.normalize else (0.0, 1.0)
    common = dict(mean=mean, std=std, device=device, rank=rank, world_size=world_size)
    # under torchrun every process would write the same files at once: there the data must be in place beforehand
    download = cfg.download and world_size == 1
    images, labels = load_dataset(cfg.dataset, True, cfg.data_dir, download)
    train = DeviceLoader(images, labels, batch_size, shuffle=True, seed=cfg.seed, shift=cfg.shift, **common)
    images, labels = load_dataset(cfg.dataset, False, cfg.data_dir, download)
    if cfg.limit_test_batches:  # a prefix of the test set, whatever the world size: the same images are evaluated
        n = cfg.limit_test_batches * cfg.test_batch_size
        images, labels = images[:n], labels[:n]
    test = DeviceLoader(images, labels, cfg.test_batch_size, even_shards=False, **common)
    return train, test


def steps_per_epoch(loader: DeviceLoader, cfg: Config) -> int:
    return min(loader.num_batches, cfg.limit_train_batches or loader.num_batches)


def build(
    cfg: Config, device: torch.device, train_loader: DeviceLoader
) -> tuple[LeNet, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Seed, then make the model (eq. 1–3 init), its optimizer and its learning-rate schedule."""
    torch.manual_seed(cfg.seed)
    model = LeNet(cfg.impl).to(device)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    else:
        kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        optimizer = kind(model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch(train_loader, cfg)
    if cfg.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total, pct_start=cfg.warmup)
    elif cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return model, optimizer, scheduler


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, loss_fn: Loss, keep: int = 32) -> EvalResult:
    """Loss sum and confusion matrix over ``loader``, and up to ``keep`` misclassified samples (``make_loaders``
    applies ``limit_test_batches`` to the test set itself, so that every world size evaluates the same images).

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


def grad_check(
    model: nn.Module, twin: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, twin_loss_fn: Loss
) -> dict[str, float]:
    """Gradients of the loss on one batch from the hand-derived ``model`` and from native autograd in ``twin``.

    The twin (``LeNet(impl="native")``) is given ``model``'s weights first. Returns, per parameter tensor,
    ``max|g_manual − g_native| / max|g_native|``: the largest difference relative to the gradient's scale, about
    1e-7 in float32 when the derivation holds. Neither model's ``.grad`` is touched.
    """
    twin.load_state_dict(model.state_dict())
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), params)
    twin_grads = torch.autograd.grad(twin_loss_fn(twin(x), y), list(twin.parameters()))
    tiny = torch.finfo(x.dtype).tiny
    return {
        name: ((g - t).abs().max() / t.abs().max().clamp_min(tiny)).item()
        for name, g, t in zip(names, grads, twin_grads)
    }


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: Config,
    state: TrainState,
) -> dict[str, Any]:
    """Everything needed to continue exactly: weights, optimizer, schedule, position, RNG states and config.

    The data order needs no state of its own: ``DeviceLoader`` derives it from ``(seed, epoch)`` and skips to
    ``state.batch``.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dataclasses.asdict(state),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def load_training_checkpoint(path) -> dict[str, Any]:
    """``load_checkpoint`` requiring this module's keys; raises ``CheckpointError``."""
    return load_checkpoint(path, required=("format", "config", "model", "optimizer", "scheduler", "state", "rng"))


def restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Load a ``checkpoint_state`` into freshly ``build``-t objects and the RNGs; return where training stands."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available():  # a checkpoint from a machine with more GPUs (a DDP run's) sets what there is
        for index, rng_state in enumerate(ckpt["rng"]["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng_state, index)
    return TrainState(**ckpt["state"])


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: DeviceLoader,
    test_loader: DeviceLoader,
    cfg: Config,
    state: TrainState,
    *,
    logger=None,
    checkpoint_path=None,
    should_stop: Callable[[TrainState], bool] = lambda state: False,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> EvalResult | None:
    """Train from ``state`` to ``cfg.epochs`` epochs, evaluating and checkpointing after each.

    ``model`` may be wrapped in ``DistributedDataParallel`` (then every rank calls ``fit``, with its own shard in
    each loader, and ``should_stop`` must answer alike on all ranks: ``bp_torch.distributed.any_rank``); the
    module inside it is what is checkpointed, logged, grad-checked and evaluated.

    Args:
        logger: a ``bp_torch.tensorboard.TensorBoardLogger`` (or anything with its methods), or None.
        checkpoint_path: where to write the checkpoint after each epoch and on interruption, or None.
        should_stop: polled before each epoch and after every step; when it returns True, training writes the
            checkpoint and raises ``Interrupted`` (``train.py`` sets it from SIGINT).
        progress: show a tqdm progress bar per epoch.
        echo: receives one summary line per epoch.

    Returns:
        The last epoch's test result (None if there was no epoch left to train).
    """
    loss_fn = Loss(cfg.loss, cfg.impl, cfg.label_smoothing)
    core = unwrap(model)  # the LeNet itself: its state_dict has no "module." prefix, its forward no collective
    distributed = train_loader.world_size > 1
    twin = twin_loss_fn = None
    if logger is not None and cfg.grad_check_interval and cfg.impl == "manual":
        twin = LeNet("native").to(next(core.parameters()).device)
        twin_loss_fn = Loss(cfg.loss, "native", cfg.label_smoothing)
    steps = steps_per_epoch(train_loader, cfg)
    # compiled, the Functions' forward and hand-written backward are traced into one graph and fused (inductor);
    # evaluation and the grad check stay eager, on the plain module
    train_forward = torch.compile(model) if cfg.compile else model
    result = None
    try:
        while state.epoch < cfg.epochs:
            if should_stop(state):  # e.g. Ctrl-C during the evaluation: stop on the epoch boundary
                raise Interrupted
            start = time.perf_counter()
            train_loader.set_epoch(state.epoch, state.batch)
            model.train()
            bar = _progress_bar(progress, state, cfg, steps)
            totals = torch.zeros(3, dtype=torch.float64, device=train_loader.device)  # loss sum, correct, count
            interval = totals.clone()
            tick = time.perf_counter()
            for x, y in islice(train_loader, steps - state.batch):
                if twin is not None and state.step % cfg.grad_check_interval == 0:
                    # on rank 0 alone, through the plain module: autograd.grad, no DDP hook, no collective
                    logger.log_grad_check(state.step, grad_check(core, twin, x, y, loss_fn, twin_loss_fn))
                logits = train_forward(x)
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                state.step, state.batch = state.step + 1, state.batch + 1
                correct = (logits.argmax(1) == y).sum().double()
                batch = torch.stack([loss.detach().double() * len(y), correct, torch.ones_like(correct) * len(y)])
                totals += batch
                interval += batch
                if bar is not None:
                    bar.update()
                if cfg.log_interval and state.step % cfg.log_interval == 0:
                    if distributed:
                        all_reduce_sum(interval)
                    loss_sum, correct, count = interval.tolist()
                    now = time.perf_counter()
                    if logger is not None:
                        logger.log_train(state.step, loss_sum / count, correct / count, lr, count / (now - tick))
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{correct / count:.2%}")
                    interval.zero_()
                    tick = now
                if should_stop(state):
                    raise Interrupted
            if bar is not None:
                bar.close()
            train_time = time.perf_counter() - start
            state.epoch, state.batch = state.epoch + 1, 0
            result = evaluate(core, test_loader, loss_fn)
            state.elapsed += time.perf_counter() - start
            state.metrics = {"test_loss": result.loss, "test_accuracy": result.accuracy}
            if distributed:
                all_reduce_sum(totals)
            loss_sum, correct, count = totals.tolist()
            images_per_sec = count / train_time
            if logger is not None:
                logger.log_epoch(state.step, state.epoch, result, train_time, core)
            echo(
                f"epoch {state.epoch:>{len(str(cfg.epochs))}}/{cfg.epochs}  "
                f"train loss {loss_sum / max(count, 1):.4f} acc {correct / max(count, 1):.2%}  "
                f"test loss {result.loss:.4f} acc {result.accuracy:.2%}  "
                f"{train_time:.1f}s {images_per_sec:,.0f} img/s"
            )
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, checkpoint_state(core, optimizer, scheduler, cfg, state))
    except Interrupted:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, checkpoint_state(core, optimizer, scheduler, cfg, state))
        raise
    return result


def _progress_bar(enabled: bool, state: TrainState, cfg: Config, steps: int):
    if not enabled:
        return None
    from tqdm import tqdm

    desc = f"epoch {state.epoch + 1:>{len(str(cfg.epochs))}}/{cfg.epochs}"
    return tqdm(total=steps, initial=state.batch, desc=desc, unit="batch", leave=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}m{seconds:04.1f}s" if minutes else f"{seconds:.1f}s"
