"""The recipe: a run's ``Config``, its presets and their validation, and what a config builds (loss, model,
optimizer, learning-rate schedule)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bp_torch import functional as BF
from bp_torch.feedback import RULES
from bp_torch.models import LeNet
from bp_torch.train.data import DATASETS, DeviceLoader

__all__ = ["Config", "PRESETS", "RUNTIME_FIELDS", "validate", "config_from_dict", "Loss", "build", "steps_per_epoch"]


@dataclass
class Config:
    """Everything a run depends on; printed at the start and logged to TensorBoard as text and hparams.

    The fields above ``test_batch_size`` decide the trained weights; those from it on (``RUNTIME_FIELDS``) only
    how the run is executed and watched, and may change when a run is resumed.
    """

    preset: str = "default"
    dataset: str = "mnist"
    impl: str = "manual"  # "manual": bp_torch's hand-derived backward; "native": torch.nn's
    rule: str = "backprop"  # the backward rule of the manual LeNet's conv and linear layers (bp_torch.feedback)
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
        "preset": tuple(PRESETS),
        "impl": ("manual", "native"),
        "rule": RULES,
        "optimizer": ("sgd", "adam", "adamw"),
        "schedule": ("constant", "onecycle", "cosine"),
        "loss": ("ce", "mse"),
        "dataset": tuple(DATASETS),
        "device": ("auto", "cpu", "cuda"),
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, but got {name}={getattr(cfg, name)!r}")
    for name in ("epochs", "batch_size", "test_batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, but got {name}={getattr(cfg, name)}")
    for name in ("limit_train_batches", "limit_test_batches", "log_interval", "grad_check_interval", "shift",
                 "num_threads", "momentum", "weight_decay"):  # fmt: skip
        if not getattr(cfg, name) >= 0:  # "not >=": NaN fails too
            raise ValueError(f"{name} must be >= 0, but got {name}={getattr(cfg, name)}")
    if not (0 < cfg.lr < math.inf and 0 <= cfg.warmup < 1):
        raise ValueError(f"lr must be > 0 and warmup in [0, 1), but got lr={cfg.lr}, warmup={cfg.warmup}")
    if cfg.rule != "backprop" and cfg.impl != "manual":
        raise ValueError(
            f"rule={cfg.rule!r} needs impl='manual' (torch's own backward is exact), but got impl={cfg.impl!r}"
        )
    if not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), but got label_smoothing={cfg.label_smoothing}")
    return cfg


# fields newer than the checkpoints that lack them, with the value those runs had
ADDED_LATER = {"rule": "backprop"}

# the Python types each annotation of Config admits (a float field takes an int, as argparse's type=float would)
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "str | None": (str, type(None))}


def config_from_dict(d: Any) -> Config:
    """The ``Config`` a checkpoint recorded, checked field by field.

    Raises ``ValueError`` naming the first wrong field as ``config.<name>``: a field missing or unknown, a value of
    the wrong type, or one ``validate`` refuses.
    """
    if not isinstance(d, dict):
        raise ValueError(f"config must be a dict of Config's fields, but got a {type(d).__name__}")
    d = {**ADDED_LATER, **d}
    fields = {f.name: f for f in dataclasses.fields(Config)}
    missing, unknown = [n for n in fields if n not in d], [k for k in d if k not in fields]
    if missing or unknown:
        raise ValueError(f"config {'lacks ' + ', '.join(missing) if missing else 'has unknown ' + repr(unknown)}")
    for name, f in fields.items():
        value, allowed = d[name], _TYPES[f.type]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"config.{name} must be of type {f.type}, but got {value!r}")
    try:
        return validate(Config(**d))
    except ValueError as e:
        raise ValueError(f"config.{e}") from None


class Loss:
    """The training loss on LeNet's logits, as a batch mean.

    ``"ce"``: cross-entropy. ``"mse"``: Note B eq. 13, L = ½Σ(ŷ − y)² with ŷ = σ(z) and y one-hot, averaged over
    the batch as DeepLearnToolbox does. ``impl="manual"`` takes the loss and σ from bp_torch, so that the whole
    backward is derived: the loss gradient ŷ − y (eq. 13–16, or the softmax minus the one-hot target for "ce") and
    σ's ŷ(1−ŷ) (eq. 17).
    """

    def __init__(self, kind: str = "ce", impl: str = "manual", label_smoothing: float = 0.0) -> None:
        self.kind, self.label_smoothing = kind, label_smoothing
        functional = BF if impl == "manual" else F
        self.sigmoid = BF.sigmoid if impl == "manual" else torch.sigmoid
        self.cross_entropy, self.mse_loss = functional.cross_entropy, functional.mse_loss

    @classmethod
    def of(cls, cfg: Config, impl: str | None = None) -> Loss:
        """The loss ``cfg`` trains with (with ``impl`` in place of ``cfg.impl`` if given)."""
        return cls(cfg.loss, impl or cfg.impl, cfg.label_smoothing)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "ce":
            return self.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        y = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        half_mean = torch.full_like(y, 0.5 / len(target))  # ½ per image, averaged over the batch: ½/N each
        return self.mse_loss(self.sigmoid(logits), y, reduction="sum", weight=half_mean)  # Note B eq. 13: ½Σ(ŷ − y)²


def steps_per_epoch(loader: DeviceLoader, cfg: Config) -> int:
    return min(loader.num_batches, cfg.limit_train_batches or loader.num_batches)


def build(
    cfg: Config, device: torch.device, train_loader: DeviceLoader
) -> tuple[LeNet, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Seed, then make the model (eq. 1–3 init), its optimizer and its learning-rate schedule."""
    torch.manual_seed(cfg.seed)
    model = LeNet(cfg.impl, cfg.rule).to(device)
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
