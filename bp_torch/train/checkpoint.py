"""Checkpoint files: written so that they survive a crash mid-write, read only if whole and unchanged.

What a training checkpoint holds, and the checks it passes before a run resumes from it, are
``bp_torch.train.resume``'s.

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

import hashlib
import io
import itertools
import os
import pickle
import re
import socket
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "checksum"]


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, not one of ours, or does not fit the run; or it cannot be
    written. The message says which file and why, in one line."""


_saves = itertools.count()  # with the host and pid: a temporary name no other save, here or elsewhere, uses
_TEMPORARY = r"\.{name}\.(?P<host>.+)\.(?P<pid>\d+)\.\d+\.tmp"  # .<name>.<host>.<pid>.<n>.tmp


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
            if m and m["host"] == host and not _alive(int(m["pid"])):
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
        with warnings.catch_warnings():  # torch's note that it validates a sparse tensor: not the user's concern
            warnings.simplefilter("ignore", UserWarning)
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
