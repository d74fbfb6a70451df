"""Resuming: what a training checkpoint holds (``checkpoint_state``, written by ``save_training_checkpoint``), the
checks a file passes before a run resumes from it (``check_training_checkpoint``: every field, then the fit to the
model, optimizer and schedule the run builds), and ``restore``. Each failure is a ``CheckpointError`` whose one-line
message names the field."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch
from torch import nn

from bp_torch.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bp_torch.train.config import config_from_dict
from bp_torch.train.loop import TrainState

__all__ = [
    "checkpoint_state",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "check_training_checkpoint",
    "restore",
]

CHECKPOINT_FORMAT = 2  # 1 was never released
TRAINING_KEYS = ("format", "config", "model", "optimizer", "scheduler", "state", "rng", "checksum")


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg,
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


def save_training_checkpoint(path: str | os.PathLike, model, optimizer, scheduler, cfg, state: TrainState) -> None:
    """``save_checkpoint`` of ``checkpoint_state``: atomic; raises ``CheckpointError`` if it cannot be written."""
    save_checkpoint(path, checkpoint_state(model, optimizer, scheduler, cfg, state))


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``load_checkpoint``, then ``check_training_checkpoint``; raises ``CheckpointError`` naming the file."""
    ckpt = load_checkpoint(path)
    try:
        check_training_checkpoint(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return ckpt


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__} ({text[:40]}...)"


def _expect(ok: bool, name: str, what: str, value: Any) -> None:
    if not ok:
        raise CheckpointError(f"{name} must be {what}, but got {_show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_training_checkpoint(ckpt: dict[str, Any]) -> None:
    """Every check a training checkpoint passes that needs no model: its format, keys, config, position and RNG.

    Raises ``CheckpointError`` naming the first field that is wrong (``state.batch``, ``config.lr`` ...).
    """
    fmt = ckpt.get("format")
    if _is_int(fmt) and fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"format {fmt} is newer than this bp_torch reads ({CHECKPOINT_FORMAT})")
    _expect(_is_int(fmt) and fmt == CHECKPOINT_FORMAT, "format", str(CHECKPOINT_FORMAT), fmt)
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"not a bp_torch training checkpoint: it lacks {', '.join(missing)}")
    try:
        cfg = config_from_dict(ckpt["config"])
    except ValueError as e:
        raise CheckpointError(str(e)) from None

    state = ckpt["state"]
    _expect(isinstance(state, dict), "state", "a dict of TrainState's fields", state)
    names = [f.name for f in dataclasses.fields(TrainState)]
    missing, unknown = [n for n in names if n not in state], [k for k in state if k not in names]
    if missing or unknown:
        raise CheckpointError(f"state {'lacks ' + ', '.join(missing) if missing else 'has unknown ' + repr(unknown)}")
    for name in ("batch", "step"):
        _expect(_is_int(state[name]) and state[name] >= 0, f"state.{name}", "an integer >= 0", state[name])
    epoch, epochs = state["epoch"], cfg.epochs
    ok = _is_int(epoch) and 0 <= epoch <= epochs
    _expect(ok, "state.epoch", f"an integer in [0, {epochs}] (config.epochs)", epoch)
    _expect(epoch < epochs or state["batch"] == 0, "state.batch", "0 once every epoch is done", state["batch"])
    _expect(_is_number(state["elapsed"]) and state["elapsed"] >= 0, "state.elapsed", "seconds >= 0", state["elapsed"])
    metrics = state["metrics"]
    ok = isinstance(metrics, dict) and all(isinstance(k, str) and _is_number(v) for k, v in metrics.items())
    _expect(ok, "state.metrics", "a dict of names to numbers", metrics)
    sums = state["train_sums"]
    ok = isinstance(sums, list) and len(sums) == 3 and all(_is_number(v) and v >= 0 for v in sums)
    _expect(ok, "state.train_sums", "3 numbers >= 0 (loss sum, correct, samples)", sums)

    rng = ckpt["rng"]
    _expect(isinstance(rng, dict) and set(rng) == {"torch", "cuda"}, "rng", "a dict of 'torch' and 'cuda'", rng)
    size = torch.get_rng_state().numel()
    t = rng["torch"]
    ok = isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == (size,)
    _expect(ok, "rng.torch", f"a uint8 tensor of shape ({size},) (torch.get_rng_state())", t)
    cuda = rng["cuda"]
    ok = isinstance(cuda, list) and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda)
    _expect(ok, "rng.cuda", "a list of uint8 tensors (torch.cuda.get_rng_state_all())", cuda)


# --- fitting a checkpoint to the objects a run builds ---------------------------------------------------------

# hyperparameters a learning-rate schedule moves as it steps: their values are checked for type, not equality
_SCHEDULED = frozenset({"lr", "initial_lr", "max_lr", "min_lr", "betas", "momentum", "max_momentum", "base_momentum"})
_EVOLVING = frozenset({"last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr"})


def _equal(value: Any, reference: Any) -> bool:
    """Equal, and of the same type (a tensor is never equal to a plain value)."""
    return type(value) is type(reference) and not isinstance(value, torch.Tensor) and value == reference


def _like(value: Any, reference: Any) -> bool:
    """Same structure as ``reference``: numbers for numbers, bools for bools, equal-length sequences alike."""
    if isinstance(reference, bool):
        return isinstance(value, bool)
    if isinstance(reference, (int, float)):
        return _is_number(value)
    if isinstance(reference, (list, tuple)):
        return isinstance(value, (list, tuple)) and len(value) == len(reference) and all(map(_like, value, reference))
    return type(value) is type(reference)


def _differences(saved: dict, fresh: dict) -> str:
    """The keys ``saved`` has beyond ``fresh``'s, and those it lacks."""
    has, lacks = sorted(set(saved) - set(fresh), key=str), sorted(set(fresh) - set(saved), key=str)
    parts = [
        f"it has {', '.join(map(str, has))}" if has else "",
        f"it lacks {', '.join(map(str, lacks))}" if lacks else "",
    ]
    return "; ".join(part for part in parts if part)


def _check_model(saved: Any, expected: dict[str, torch.Tensor]) -> None:
    _expect(isinstance(saved, dict), "model", "a state_dict (a dict of tensors)", saved)
    if set(saved) != set(expected):
        raise CheckpointError(f"model does not match this network's state_dict: {_differences(saved, expected)}")
    for name, ref in expected.items():
        value = saved[name]
        ok = isinstance(value, torch.Tensor) and value.shape == ref.shape and value.dtype == ref.dtype
        _expect(ok, f"model.{name}", f"a {ref.dtype} tensor of shape {tuple(ref.shape)}", value)


def _state_keys(optimizer: torch.optim.Optimizer) -> set[str] | None:
    """The keys of one parameter's state after a step of ``optimizer`` (None: a kind not checked here)."""
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.SGD):
        return {"momentum_buffer"}
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())
    return None


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    kind, fresh = type(optimizer).__name__, optimizer.state_dict()
    ok = isinstance(saved, dict) and set(saved) == {"state", "param_groups"}
    _expect(ok, "optimizer", "an optimizer's state_dict (state and param_groups)", saved)
    groups = saved["param_groups"]
    n = len(fresh["param_groups"])
    _expect(isinstance(groups, list) and len(groups) == n, "optimizer.param_groups", f"a list of {n} dict(s)", groups)
    for i, (group, ref) in enumerate(zip(groups, fresh["param_groups"])):
        _expect(isinstance(group, dict), f"optimizer.param_groups[{i}]", "a dict", group)
        if set(group) != set(ref):
            raise CheckpointError(
                f"optimizer holds another optimizer's state than the configured {kind} (config.optimizer): "
                f"param_groups[{i}]: {_differences(group, ref)}"
            )
        for key, value in group.items():
            name = f"optimizer.param_groups[{i}].{key}"
            if key in _SCHEDULED:
                _expect(_like(value, ref[key]), name, f"like {ref[key]!r}", value)
            else:
                _expect(_equal(value, ref[key]), name, f"{ref[key]!r}, as the config builds it", value)
    shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
    keys = _state_keys(optimizer)
    _expect(isinstance(saved["state"], dict), "optimizer.state", "a dict", saved["state"])
    for index, entry in saved["state"].items():
        _expect(_is_int(index) and 0 <= index < len(shapes), "optimizer.state's keys", "parameter indices", index)
        name = f"optimizer.state[{index}]"
        _expect(isinstance(entry, dict), name, "a dict", entry)
        if keys is not None and set(entry) != keys:
            raise CheckpointError(f"{name} is not {kind}'s state for a parameter: {_differences(entry, keys)}")
        for key, value in entry.items():
            if key == "step":  # a count of steps, as Adam keeps it (a float tensor)
                if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
                    value = value.item()
                ok = _is_number(value) and 0 <= value < math.inf
                _expect(ok, f"{name}.step", "a finite number >= 0 (a float tensor or a number)", value)
            else:
                ok = value is None or (isinstance(value, torch.Tensor) and value.shape == shapes[index])
                _expect(ok, f"{name}.{key}", f"a tensor of shape {tuple(shapes[index])}", value)


def _check_scheduler(saved: Any, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    kind, fresh = type(scheduler).__name__, scheduler.state_dict()
    _expect(isinstance(saved, dict), "scheduler", "a learning-rate scheduler's state_dict", saved)
    if set(saved) != set(fresh):
        raise CheckpointError(
            f"scheduler holds another schedule's state than the configured {kind} (config.schedule): "
            f"{_differences(saved, fresh)}"
        )
    for key, ref in fresh.items():
        if key in _EVOLVING:
            _expect(_like(saved[key], ref), f"scheduler.{key}", f"like {ref!r}", saved[key])
        else:  # fixed when the schedule is built: by the config and the number of batches in an epoch
            _expect(_equal(saved[key], ref), f"scheduler.{key}", f"{ref!r} for this config and data", saved[key])


def restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    steps_per_epoch: int,
) -> TrainState:
    """Check a ``checkpoint_state`` against freshly built objects, then load it into them and the RNGs.

    Args:
        ckpt: a checkpoint that passed ``check_training_checkpoint`` (``load_training_checkpoint`` does it).
        model, optimizer, scheduler: built from the checkpoint's config, as at the start of the run.
        steps_per_epoch: the training steps in an epoch of this config and data.

    Returns:
        Where training stands.

    Raises:
        CheckpointError: naming the first field that does not fit; then nothing has been loaded.
    """
    _check_model(ckpt["model"], model.state_dict())
    _check_optimizer(ckpt["optimizer"], optimizer)
    _check_scheduler(ckpt["scheduler"], scheduler)
    state = TrainState(**ckpt["state"])
    _expect(state.batch <= steps_per_epoch, "state.batch", f"at most {steps_per_epoch}, an epoch's steps", state.batch)
    step = state.epoch * steps_per_epoch + state.batch
    _expect(state.step == step, "state.step", f"state.epoch × {steps_per_epoch} + state.batch = {step}", state.step)
    last = ckpt["scheduler"]["last_epoch"]
    _expect(last == state.step, "scheduler.last_epoch", f"state.step = {state.step}", last)

    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available():  # a checkpoint from a machine with more GPUs (a DDP run's) sets what there is
        for index, rng_state in enumerate(ckpt["rng"]["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng_state, index)
    return state
