"""Checkpoints: what a training checkpoint holds, files that survive a crash mid-write, and the checks a file passes
before a run resumes from it.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (state_dicts, RNG states as uint8
tensors, the config as a plain dict), so ``torch.load(..., weights_only=True)`` reads it without unpickling code.
``save_checkpoint`` adds a SHA-256 of those contents under ``"checksum"`` and ``load_checkpoint`` recomputes it:
torch.load reads a flipped byte inside a tensor record without a word (the weight becomes NaN), we refuse the file.

A file that is not a checkpoint, is truncated, damaged or edited, or does not fit the model, optimizer and schedule
the run builds is a ``CheckpointError`` whose one-line message names the file and the first field that is wrong;
nothing is loaded from it then.

Example::

    >>> save_checkpoint("runs/demo/checkpoint.pt", {"model": model.state_dict(), "epoch": 3})
    >>> load_checkpoint("runs/demo/checkpoint.pt")["epoch"]
    3
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import math
import os
import pickle
import re
import socket
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bp_torch.train.config import config_from_dict

__all__ = [
    "CheckpointError",
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
    "checksum",
    "checkpoint_state",
    "load_training_checkpoint",
    "check_training_checkpoint",
    "restore",
]

# 2: a "checksum" of the contents and state.train_sums; 1 (still read, no longer written): neither
CHECKPOINT_FORMAT = 2
FORMATS = (1, 2)
TRAINING_KEYS = ("format", "config", "model", "optimizer", "scheduler", "state", "rng")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, not one of ours, or does not fit the run; or it cannot be
    written. The message says which file and why, in one line."""


# --- files ---------------------------------------------------------------------------------------------------

_saves = itertools.count()  # with the host and pid: a temporary name no other save, here or elsewhere, uses
# .<name>.<host>.<pid>.<n>.tmp; before format 2, .<name>.<pid>.tmp (this host's)
_TEMPORARY = r"\.{name}\.(?:(?P<host>.+)\.(?P<pid>\d+)\.\d+|(?P<old_pid>\d+))\.tmp"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state``, with its ``checksum`` added, to ``path`` atomically: to a temporary file beside it, flushed
    to disk, renamed over it, and the folder flushed too so that the rename itself survives a power cut.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` always holds either the previous checkpoint or the
    new one, whole — never half of one, even if the process is killed while writing. The temporary file's name
    carries the host, the process id and a counter: two saves never share one, and a killed process's leftover
    is removed by the next save on its host. A symlink is written through (its target replaced, the link kept);
    an existing file keeps its permission bits, a new one gets the umask's, as ``open`` would give it.

    Raises:
        CheckpointError: it could not be written (disk full, no permission ...); ``path`` is then unchanged.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    payload = io.BytesIO()  # serialised first, so that a failed write below is an OSError and nothing else
    torch.save({**state, "checksum": checksum(state)}, payload)
    tmp = target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.{next(_saves)}.tmp")
    try:
        _remove_stale_temporaries(target)
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() makes it
        try:
            with os.fdopen(fd, "wb") as f:
                if mode is not None:
                    os.chmod(tmp, mode)
                f.write(payload.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_folder(target.parent)
    except OSError as e:
        raise CheckpointError(
            f"cannot write the checkpoint {path}: {e.strerror or e}; the previous checkpoint, if any, is unchanged"
        ) from None
    return path


def _remove_stale_temporaries(target: Path) -> None:
    """Delete this host's temporary files of ``target`` whose process is gone (killed while writing); best effort."""
    pattern = re.compile(_TEMPORARY.format(name=re.escape(target.name)))
    host = socket.gethostname()
    try:
        for tmp in target.parent.iterdir():
            m = pattern.fullmatch(tmp.name)
            if m and m["host"] in (host, None) and not _alive(int(m["pid"] or m["old_pid"])):
                tmp.unlink(missing_ok=True)
    except OSError:  # a folder not there yet, or a file not ours to delete: the save itself will tell
        pass


def _alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder to flush it
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a folder; the rename has happened all the same
        pass
    finally:
        os.close(fd)


def checksum(state: dict[str, Any]) -> str:
    """SHA-256 of ``state``'s contents (its own ``"checksum"`` left out): every key, type, number, string, and each
    tensor's dtype, shape and bytes, in order; ``"sha256:<hex>"``. The same after a round trip through a file."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}".encode())
            for k, v in obj.items():
                feed(k)
                feed(v)
        elif isinstance(obj, (list, tuple)):
            h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
            for v in obj:
                feed(v)
        else:  # str, int, float, bool, None: the type and an exact repr
            h.update(f"{type(obj).__name__}:{obj!r};".encode())

    feed({k: v for k, v in state.items() if k != "checksum"})
    return f"sha256:{h.hexdigest()}"


def _damage(path: Path) -> str | None:
    """What is wrong with the file as a zip archive (torch.save's container), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            return "is empty"
        if head != b"PK\x03\x04":
            return "is not a checkpoint: torch.save writes a zip archive, and this file does not begin as one"
        if not zipfile.is_zipfile(path):
            return f"is truncated: it begins as a checkpoint, but its end is missing ({path.stat().st_size} bytes)"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return f"is damaged: its record {bad} does not match the CRC stored with it" if bad else None
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except Exception as e:  # zipfile's own errors on a mangled archive: BadZipFile, zlib.error, EOFError ...
        return f"is damaged: its zip structure cannot be read ({type(e).__name__})"


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``, after checking the file and before its checksum.

    Args:
        path: the checkpoint file.
        required: keys the checkpoint must have.

    Raises:
        CheckpointError: the file is missing, empty, truncated, damaged, not a checkpoint, not a dict, lacks a
            required key, or its contents differ from its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    problem = _damage(path)
    if problem is not None:
        raise CheckpointError(f"{path} {problem}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only's refusal; torch's own advice (weights_only=False) is unsafe
        raise CheckpointError(
            f"{path} is not a bp_torch checkpoint: it holds Python objects other than tensors and plain data"
        ) from None
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: torch.load fails on it ({type(e).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a bp_torch checkpoint: it holds a {type(state).__name__}, not a dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a bp_torch training checkpoint: it lacks {', '.join(missing)}")
    if "checksum" in state and state["checksum"] != checksum(state):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum saved with them")
    return state


# --- what a training checkpoint holds ------------------------------------------------------------------------


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
        raise CheckpointError(f"format {fmt} is newer than this bp_torch reads (1 to {CHECKPOINT_FORMAT})")
    _expect(_is_int(fmt) and fmt in FORMATS, "format", f"one of {', '.join(map(str, FORMATS))}", fmt)
    missing = [k for k in (*TRAINING_KEYS, *(("checksum",) if fmt >= 2 else ())) if k not in ckpt]
    if missing:
        raise CheckpointError(f"not a bp_torch training checkpoint: it lacks {', '.join(missing)}")
    try:
        cfg = config_from_dict(ckpt["config"])
    except ValueError as e:
        raise CheckpointError(str(e)) from None

    state = ckpt["state"]
    _expect(isinstance(state, dict), "state", "a dict of TrainState's fields", state)
    names = [f.name for f in dataclasses.fields(TrainState)]
    optional = {"train_sums"} if fmt == 1 else set()
    missing, unknown = [n for n in names if n not in state and n not in optional], [k for k in state if k not in names]
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
    sums = state.get("train_sums", [0.0, 0.0, 0.0])
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
    extra, lacking = sorted(set(saved) - set(fresh), key=str), sorted(set(fresh) - set(saved), key=str)
    return "; ".join(
        part for part in (f"it has {', '.join(map(str, extra))}" if extra else "",
                          f"it lacks {', '.join(map(str, lacking))}" if lacking else "") if part
    )  # fmt: skip


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
            if key == "step":
                ok = _is_number(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)
                _expect(ok, f"{name}.step", "a number", value)
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
