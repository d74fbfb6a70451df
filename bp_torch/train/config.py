"""The recipe: a run's ``Config`` — each setting written once, its help, type and allowed values in its field, from
which the command line's flags and ``validate`` are derived — its presets, and what a config builds (the loaders,
loss, model, optimizer, learning-rate schedule)."""

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
from bp_torch.train.data import DATASETS, DeviceLoader, load_dataset
from bp_torch.train.distributed import local_batch_size

__all__ = ["Config", "PRESETS", "validate", "config_from_dict", "make_loaders", "Loss", "build", "steps_per_epoch"]

# what a field's "must" metadata promises, and its test ("not >=": NaN fails too)
POSITIVE, NON_NEGATIVE, FRACTION = "a positive integer", ">= 0", "in [0, 1)"
_MUST = {
    POSITIVE: lambda v: v >= 1,
    NON_NEGATIVE: lambda v: v >= 0,
    FRACTION: lambda v: 0 <= v < 1,
    "a finite number > 0": lambda v: 0 < v < math.inf,
    "finite and >= 0": lambda v: 0 <= v < math.inf,
    "in [0, 2**63)": lambda v: 0 <= v < 2**63,  # torch.manual_seed's range
    "in [0, 27]": lambda v: 0 <= v <= 27,  # a shift of 28 pixels or more moves a digit out of its 28x28 image
}


def setting(default: Any, help: str, choices=(), must: str | None = None, metavar=None, runtime=False) -> Any:
    """A ``Config`` field: its default, its help (the flag's), its allowed values (``choices``, or ``must``, a key of
    ``_MUST``); ``runtime``: it changes no weight, and may differ when a run is resumed."""
    meta = dict(help=help, choices=tuple(choices), must=must, metavar=metavar, runtime=runtime)
    return dataclasses.field(default=default, metadata=meta)


def runtime(default: Any, help: str, choices=(), must: str | None = None, metavar=None) -> Any:
    """A ``setting`` that only decides how the run is executed and watched: it may change when a run is resumed."""
    return setting(default, help, choices, must, metavar, runtime=True)


# each preset's changes to the defaults: Note B / DeepLearnToolbox's test_example_CNN is sigmoid outputs under
# ½Σ(ŷ−y)², plain SGD with α = 1, batch 50, one epoch, eq. 1–3 init, pixels in [0, 1]; it asserts test error < 12%
PRESET_CHANGES: dict[str, dict[str, Any]] = {
    "default": {},  # the best recipe found for Note B's 3,898-parameter network; see README for its measured result
    "seed": dict(
        epochs=1, batch_size=50, lr=1.0, optimizer="sgd", schedule="constant", loss="mse", normalize=False, shift=0
    ),
}


@dataclass
class Config:
    """Everything a run depends on; printed at the start and logged to TensorBoard as text and hparams.

    Each field's metadata (``setting``) holds its help and allowed values: ``python train.py --help`` lists them.
    Fields marked ``runtime`` only decide how the run is executed and watched, and may change when it is resumed.
    """

    preset: str = setting("default", "'default': the best recipe found; 'seed': Note B's exactly", PRESET_CHANGES)
    dataset: str = setting("mnist", "dataset", DATASETS)
    impl: str = setting("manual", "'manual': hand-derived backward; 'native': torch's autograd", ("manual", "native"))
    rule: str = setting("backprop", "backward rule of the conv and linear layers (bp_torch.feedback)", RULES)
    epochs: int = setting(20, "number of epochs to train", must=POSITIVE)
    batch_size: int = setting(128, "training batch; under torchrun split evenly over the processes", must=POSITIVE)
    lr: float = setting(0.03, "learning rate (the peak with --schedule onecycle)", must="a finite number > 0")
    optimizer: str = setting("adam", "optimizer", ("sgd", "adam", "adamw"))
    momentum: float = setting(0.0, "SGD momentum", must="finite and >= 0")
    nesterov: bool = setting(False, "Nesterov momentum for SGD")
    weight_decay: float = setting(0.0, "weight decay", must="finite and >= 0")
    schedule: str = setting("onecycle", "learning-rate schedule over all steps", ("constant", "onecycle", "cosine"))
    warmup: float = setting(0.25, "onecycle: fraction of the steps spent warming up", must=FRACTION)
    loss: str = setting("ce", "'ce': cross-entropy on logits; 'mse': Note B's ½Σ(σ(z)−y)², batch mean", ("ce", "mse"))
    label_smoothing: float = setting(0.0, "label smoothing for --loss ce", must=FRACTION)
    normalize: bool = setting(True, "standardise pixels with the dataset's mean and std (else in [0, 1])")
    shift: int = setting(1, "augmentation: random translation by up to N pixels, 0 for none", must="in [0, 27]")
    seed: int = setting(0, "random seed (init, data order, augmentation)", must="in [0, 2**63)")
    limit_train_batches: int = setting(0, "train on at most N batches per epoch, 0 for all", must=NON_NEGATIVE)
    test_batch_size: int = runtime(1000, "evaluation batch size, per process", must=POSITIVE)
    limit_test_batches: int = runtime(0, "evaluate the first N*test-batch-size images, 0 for all", must=NON_NEGATIVE)
    device: str = runtime("auto", "auto: cuda if available; under torchrun GPU LOCAL_RANK", ("auto", "cpu", "cuda"))
    data_dir: str | None = runtime(None, "folder holding MNIST/raw/ (default: $BP_TORCH_DATA or ./data)", metavar="DIR")
    download: bool = runtime(True, "download missing data (never under torchrun); a failed one leaves nothing behind")
    log_interval: int = runtime(50, "steps between training-scalar logs", must=NON_NEGATIVE)
    grad_check_interval: int = runtime(200, "steps between manual-vs-native gradient checks", must=NON_NEGATIVE)
    num_threads: int = runtime(0, "CPU threads for torch, 0 for torch's default", must=NON_NEGATIVE)
    compile: bool = runtime(False, "torch.compile the training step, the derived backward included (slow first steps)")


PRESETS = {name: Config(preset=name, **changes) for name, changes in PRESET_CHANGES.items()}


def validate(cfg: Config, name=lambda field: field) -> Config:
    """Raise ``ValueError`` naming the first setting out of range, spelled ``name(field)``."""
    for f in dataclasses.fields(Config):
        value, choices, must, called = getattr(cfg, f.name), f.metadata["choices"], f.metadata["must"], name(f.name)
        if choices and value not in choices:
            raise ValueError(f"{called} must be one of {', '.join(choices)}, but got {called}={value!r}")
        if must and not _MUST[must](value):
            raise ValueError(f"{called} must be {must}, but got {called}={value}")
    if cfg.rule != "backprop" and cfg.impl != "manual":
        raise ValueError(
            f"{name('rule')}={cfg.rule!r} needs {name('impl')}='manual' (torch's own backward is exact), but got "
            f"{name('impl')}={cfg.impl!r}"
        )
    return cfg


# the Python types each annotation of Config admits (a float field takes an int, as argparse's type=float would)
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "str | None": (str, type(None))}


def config_from_dict(d: Any) -> Config:
    """The ``Config`` a checkpoint recorded, checked field by field.

    Raises ``ValueError`` naming the first wrong field as ``config.<name>``: a field missing or unknown, a value of
    the wrong type, or one ``validate`` refuses.
    """
    if not isinstance(d, dict):
        raise ValueError(f"config must be a dict of Config's fields, but got a {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    missing, unknown = [n for n in fields if n not in d], [k for k in d if k not in fields]
    if missing or unknown:
        raise ValueError(f"config {'lacks ' + ', '.join(missing) if missing else 'has unknown ' + repr(unknown)}")
    for name, f in fields.items():
        value, allowed = d[name], _TYPES[f.type]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"config.{name} must be of type {f.type}, but got {value!r}")
    return validate(Config(**d), name=lambda field: f"config.{field}")


def make_loaders(
    cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[DeviceLoader, DeviceLoader]:
    """The shuffled, augmented training loader and the test loader of rank ``rank`` of ``world_size``, on ``device``.

    Training: ``DistributedSampler``'s shards of each epoch's order, ``cfg.batch_size // world_size`` per rank, so
    that batch ``i`` of all ranks together is batch ``i`` of a single process with ``cfg.batch_size`` (the order is
    interleaved over ranks). Test: the first ``limit_test_batches * test_batch_size`` images (all if 0), cut into
    contiguous shards that together hold each image once.

    Raises ``DatasetNotFoundError`` (a FileNotFoundError) or ``ValueError`` for corrupt files or a batch size the
    world size does not divide.
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
    cfg: Config, device: torch.device, steps_per_epoch: int
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
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        warmup = cfg.warmup
        if float(warmup * total) - 1 == 0:  # a one-step warmup: torch's OneCycleLR divides by its steps less one
            warmup = math.nextafter(warmup, 1)  # the next float up: the same schedule, defined
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total, pct_start=warmup)
    elif cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return model, optimizer, scheduler
