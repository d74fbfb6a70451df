"""train.py under faults: crafted checkpoints, failed writes, signals to a real process, bad or missing data, and
the first minutes of a new user (``bp_torch.check``'s arguments, dry runs, the first epoch after a resume).

Each fault asserts the exit code, the message (one line naming what is wrong, or two for missing data), that no
traceback is printed, and that the checkpoint already there is byte-identical afterwards. Runs are tiny (3 batches
of 32 on the fake MNIST of conftest.py); the ones that start processes are marked slow.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import train_args, write_idx
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bp_torch import check
from bp_torch.train import cli as train
from bp_torch.train import distributed
from bp_torch.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bp_torch.train.data import DatasetNotFoundError
from bp_torch.train.resume import load_training_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--batch-size",
    "32",
    "--test-batch-size",
    "64",
    "--limit-train-batches",
    "3",
    "--limit-test-batches",
    "1",
    "--grad-check-interval",
    "0",
    "--num-threads",
    "1",
]


def _one_line(err: str, *parts: str) -> str:
    """The single line ``train.py: error: ...`` that ``err`` must be, holding each of ``parts``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def stopped(fake_data, tmp_path_factory) -> Path:
    """A run of 2 epochs of 3 steps (default recipe: Adam, one-cycle), stopped at epoch 1, batch 1 (step 4)."""
    logdir = tmp_path_factory.mktemp("stopped")
    stop = lambda state: (state.epoch, state.batch) == (1, 1)  # noqa: E731
    assert train.main(train_args(fake_data, logdir, *TINY, "--epochs", "2", "--run-name", "r"), should_stop=stop) == 130
    return logdir / "r"


@pytest.fixture
def run(stopped, tmp_path) -> Path:
    """A private copy of the stopped run's folder."""
    return Path(shutil.copytree(stopped, tmp_path / "r"))


def _resume(run: Path, capsys, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = train.main(["--resume", str(run), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# --- checkpoints: crafted contents -----------------------------------------------------------------------------


def _step_lr_state() -> dict:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1)
    return torch.optim.lr_scheduler.StepLR(optimizer, 3).state_dict()


def _setter(*keys, value):
    def edit(c):
        target = c
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(target[keys[-1]]) if callable(value) else value

    return edit


CRAFTED = {  # each edit of a sound checkpoint (saved with a valid checksum) and what the message must name
    "state a list": (_setter("state", value=[1, 2]), "state must be a dict"),
    "state.batch 10**6": (_setter("state", "batch", value=10**6), "state.batch must be at most 3"),
    "state.batch -3": (_setter("state", "batch", value=-3), "state.batch must be an integer >= 0"),
    "state.epoch a string": (_setter("state", "epoch", value="1"), "state.epoch must be an integer in [0, 2]"),
    "state.epoch past the end": (_setter("state", "epoch", value=3), "state.epoch must be an integer in [0, 2]"),
    "state.step off": (_setter("state", "step", value=5), "state.step must be state.epoch × 3 + state.batch = 4"),
    "state.train_sums": (_setter("state", "train_sums", value=[1.0]), "state.train_sums must be 3 numbers"),
    "rng.torch a string": (_setter("rng", "torch", value="x"), "rng.torch must be a uint8 tensor of shape (5056,)"),
    "model None": (_setter("model", value=None), "model must be a state_dict"),
    "model key": (lambda c: c["model"].pop("fc.bias"), "model does not match this network's state_dict: it lacks"),
    "model shape": (_setter("model", "fc.weight", value=torch.zeros(10, 191)), "model.fc.weight must be a torch"),
    "config {}": (_setter("config", value={}), "config lacks preset"),
    "config.lr a string": (_setter("config", "lr", value="0.1"), "config.lr must be of type float"),
    "config.epochs 0": (_setter("config", "epochs", value=0), "config.epochs must be a positive integer"),
    "config sgd, Adam's state": (
        _setter("config", "optimizer", value="sgd"),
        "optimizer holds another optimizer's state than the configured SGD",
    ),
    "optimizer state shape": (
        _setter("optimizer", "state", 0, "exp_avg", value=torch.zeros(3)),
        "optimizer.state[0].exp_avg must be a tensor of shape (6, 1, 5, 5)",
    ),
    "StepLR into OneCycleLR": (
        _setter("scheduler", value=_step_lr_state()),
        "scheduler holds another schedule's state than the configured OneCycleLR",
    ),
    "schedule of other length": (
        _setter("scheduler", "total_steps", value=60),
        "scheduler.total_steps must be 6 for this config and data",
    ),
    "format 999": (_setter("format", value=999), "format 999 is newer than this bp_torch reads (2)"),
    "format a string": (_setter("format", value="2"), "format must be 2"),
    "no rng": (lambda c: c.pop("rng"), "not a bp_torch training checkpoint: it lacks rng"),
    # found by crafting files (a helper session): each raised a traceback from torch, exit 1
    "rng.torch random bytes": (
        _setter("rng", "torch", value=lambda t: torch.randint(0, 256, t.shape, dtype=torch.uint8)),
        "does not restore: RuntimeError",
    ),
    "Adam's step a bool": (_setter("optimizer", "state", 0, "step", value=torch.tensor(True)), "step must be a finite"),
    "Adam's step negative": (_setter("optimizer", "state", 0, "step", value=torch.tensor(-5.0)), "step must be a"),
    "Adam's step NaN": (_setter("optimizer", "state", 0, "step", value=torch.tensor(float("nan"))), "step must be"),
    "config.seed 10**30": (_setter("config", "seed", value=10**30), "config.seed must be in [0, 2**63)"),
    "config.shift 10**5": (_setter("config", "shift", value=10**5), "config.shift must be in [0, 27]"),
}


@pytest.mark.parametrize("fault", CRAFTED)
def test_crafted_checkpoint_is_refused_naming_the_field(run, capsys, fault):
    edit, message = CRAFTED[fault]
    path = run / "checkpoint.pt"
    c = load_checkpoint(path)
    edit(c)
    save_checkpoint(path, c)  # a valid checksum: the structure itself is what is wrong
    before = path.read_bytes()
    code, _, err = _resume(run, capsys)
    assert code == train.EXIT_ERROR
    _one_line(err, str(path), message)
    assert path.read_bytes() == before


def _flip_tensor_byte(path: Path) -> None:
    """Change one byte inside the first tensor record, as a bad disk would: the zip's CRC no longer matches."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 4] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_without_checksum(path: Path) -> None:
    """Change a weight and save with torch.save, keeping the old checksum: a file edited after it was written."""
    c = torch.load(path, weights_only=True)
    c["model"]["fc.weight"][0, 0] += 1
    torch.save(c, path)


def _without_checksum(path: Path) -> None:
    c = torch.load(path, weights_only=True)
    del c["checksum"]
    torch.save(c, path)


DAMAGED = {
    "flipped tensor byte": (_flip_tensor_byte, "is damaged: its record", "does not match the CRC"),
    "edited after saving": (_edit_without_checksum, "is damaged: its contents do not match the checksum"),
    "checksum removed": (_without_checksum, "it lacks checksum"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(3000)), "is not a checkpoint: torch.save writes a zip"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:5000]), "is truncated: it begins as a checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "python objects": (
        lambda p: torch.save({"when": __import__("datetime").date(2020, 1, 1)}, p),
        "holds Python objects other than tensors and plain data",
    ),
    "a list": (lambda p: torch.save([1, 2, 3], p), "holds a list, not a dict"),
}


@pytest.mark.parametrize("fault", DAMAGED)
def test_damaged_checkpoint_is_refused_in_our_words(run, capsys, fault):
    damage, *message = DAMAGED[fault]
    path = run / "checkpoint.pt"
    damage(path)
    before = path.read_bytes()
    code, _, err = _resume(run, capsys)
    assert code == train.EXIT_ERROR
    line = _one_line(err, str(path), *message)
    assert "weights_only" not in line and "Errno" not in line and "will likely succeed" not in line
    assert path.read_bytes() == before


def test_a_sound_checkpoint_still_resumes(run, capsys):
    """The stopped run, resumed as it is: it trains to the end (the checks above refuse nothing sound)."""
    code, out, _ = _resume(run, capsys)
    assert code == 0 and "resuming" in out
    assert load_training_checkpoint(run / "checkpoint.pt")["state"]["step"] == 6


def test_a_complete_run_says_so_and_writes_nothing(fake_data, tmp_path, capsys):
    assert train.main(train_args(fake_data, tmp_path, *TINY, "--epochs", "1", "--run-name", "done")) == 0
    folder = tmp_path / "done"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, out, err = _resume(folder, capsys)
    assert code == 0 and err == ""
    assert "is already complete: 1 of 1 epochs" in out and "resuming" not in out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no checkpoint rewritten, no new log


# --- checkpoints: writing -------------------------------------------------------------------------------------


def test_each_save_has_its_own_temporary_file(tmp_path, monkeypatch):
    sources, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: sources.append(Path(src).name) or real_replace(src, dst))
    path = tmp_path / "checkpoint.pt"
    threads = [
        threading.Thread(target=save_checkpoint, args=(path, {"n": n, "w": torch.randn(1000)})) for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(sources)) == 4  # two savers in one process never share a temporary name
    assert load_checkpoint(path)["n"] in range(4) and not list(tmp_path.glob(".*.tmp"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name != "posix", reason="finding a dead process by its pid is POSIX's os.kill(pid, 0)")
def test_a_killed_savers_leftovers_are_removed(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    stale = [f".checkpoint.pt.{host}.{dead}.0.tmp"]
    kept = [f".checkpoint.pt.{host}.{os.getpid()}.999.tmp", f".checkpoint.pt.otherhost.{dead}.0.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "checkpoint.pt", {"x": 1})
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted(kept)  # a live process's, another host's


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits and symlinks")
def test_a_save_keeps_permissions_and_symlinks(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # a new file: as open() makes it
    path.chmod(0o600)
    save_checkpoint(path, {"x": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    link = tmp_path / "latest.pt"
    link.symlink_to(path)
    save_checkpoint(link, {"x": 3})
    assert link.is_symlink() and os.readlink(link) == str(path)
    assert load_checkpoint(path)["x"] == 3 and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(os.name != "posix", reason="a folder is fsync'd where it can be opened")
def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append("replace") or real_replace(src, dst))
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        or real_fsync(fd)
    )  # fmt: skip
    save_checkpoint(tmp_path / "checkpoint.pt", {"x": 1})
    assert events == ["file", "replace", "folder"]


class _FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("fails", ["write", "replace"])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fails):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": 1})
    before = path.read_bytes()
    if fails == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(
            os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        )
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*: No space left on device; the previous"):
        save_checkpoint(path, {"x": 2})
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_failed_save_during_training_stops_with_one_line(fake_data, tmp_path, capsys, monkeypatch):
    """The second epoch's checkpoint cannot be written: exit 1, one line, the first epoch's checkpoint intact."""
    real_replace, written = os.replace, []

    def replace(src, dst):
        if Path(dst).name == "checkpoint.pt" and written:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)
        written.append(Path(dst).read_bytes())

    monkeypatch.setattr(os, "replace", replace)
    assert train.main(train_args(fake_data, tmp_path, *TINY, "--epochs", "2", "--run-name", "f")) == train.EXIT_FAILED
    path = tmp_path / "f" / "checkpoint.pt"
    _one_line(capsys.readouterr().err, f"cannot write the checkpoint {path}: No space left on device; the previous")
    assert path.read_bytes() == written[0] and not list(path.parent.glob(".*.tmp"))
    assert load_training_checkpoint(path)["state"]["epoch"] == 1


# --- signals: a real process ----------------------------------------------------------------------------------


def _spawn(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _after_first_epoch(proc: subprocess.Popen, send) -> tuple[str, str]:
    """Wait for the first epoch's line, ``send`` the signal, and return the rest of stdout and stderr."""
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            if line.startswith("epoch") or time.monotonic() > deadline:
                break
        send()
        return proc.communicate(timeout=120)
    finally:
        proc.kill()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_like_ctrl_c(fake_data, tmp_path):
    proc = _spawn("train.py", *train_args(fake_data, tmp_path, *TINY, "--epochs", "1000", "--run-name", "term"))
    out, err = _after_first_epoch(proc, lambda: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 143, err
    assert err == "" and "interrupted by SIGTERM" in out and f"--resume {tmp_path / 'term'}" in out
    state = load_training_checkpoint(tmp_path / "term" / "checkpoint.pt")["state"]
    assert 1 <= state["epoch"] < 1000 and not list((tmp_path / "term").glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to see torch being imported")
def test_ctrl_c_while_starting_is_one_line(fake_data, tmp_path):
    proc = _spawn("train.py", *train_args(fake_data, tmp_path, *TINY, "--epochs", "1000"))
    try:
        deadline = time.monotonic() + 120
        while "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)  # until torch is being imported
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: interrupted"), err


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="Ctrl-C as a terminal sends it: SIGINT to the process group")
def test_ctrl_c_under_torchrun_is_one_line(fake_data, tmp_path):
    """Our launcher (torchrun's own main): the workers checkpoint, torchrun's SignalException becomes one line."""
    proc = _spawn(
        "-m", "bp_torch.train.torchrun", "--standalone", "--nproc_per_node", "2",
        "train.py", *train_args(fake_data, tmp_path, *TINY, "--epochs", "1000", "--run-name", "ddp"),
        env={"OMP_NUM_THREADS": "1"}, start_new_session=True,
    )  # fmt: skip
    out, err = _after_first_epoch(proc, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("torchrun: stopped by SIGINT")
    assert "interrupted by SIGINT" in out
    assert load_training_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["state"]["epoch"] >= 1


# --- data -----------------------------------------------------------------------------------------------------


def _copy_data(fake_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fake_data, tmp_path / "data"))


@pytest.mark.parametrize(
    "fault, file, message",
    [
        ("label 10", "train-labels-idx1-ubyte", "labels must be in 0..9, but 1 are not (label 7 is 10)"),
        ("28x27 images", "train-images-idx3-ubyte", "images must be 28x28, but it holds 512 of 28x27"),
        ("1x1 images", "t10k-images-idx3-ubyte", "images must be 28x28, but it holds 251 of 1x1"),
    ],
)
def test_bad_data_is_refused_naming_the_file(fake_data, tmp_path, capsys, fault, file, message):
    data = _copy_data(fake_data, tmp_path)
    path = data / "MNIST" / "raw" / file
    if fault == "label 10":
        labels = torch.arange(512) % 10
        labels[7] = 10
        write_idx(path, labels)
    else:
        n, size = (512, (28, 27)) if fault == "28x27 images" else (251, (1, 1))
        write_idx(path, torch.zeros(n, *size))
    code = train.main(train_args(data, tmp_path / "runs", *TINY, "--dry-run"))
    assert code == train.EXIT_ERROR
    _one_line(capsys.readouterr().err, "cannot read the dataset", f"{path}: {message}")
    assert not (tmp_path / "runs").exists()


def _offline(monkeypatch, calls: list):
    """torchvision's MNIST as it behaves offline: it makes <root>/MNIST/raw, leaves a partial file, then fails."""

    def mnist(root, train, download):
        calls.append(root)
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error [Errno -3] name resolution>")

    monkeypatch.setattr("torchvision.datasets.MNIST", mnist)


@pytest.mark.parametrize("exists", ["nothing", "the data folder", "not even its parents"])
def test_offline_first_run_says_where_and_what_and_leaves_nothing(tmp_path, capsys, monkeypatch, exists):
    calls = []
    _offline(monkeypatch, calls)
    data = tmp_path / ("new/newer/nonexistent" if exists == "not even its parents" else "nonexistent")
    if exists == "the data folder":
        data.mkdir()
    assert train.main(train_args(data, tmp_path / "runs", *TINY)) == train.EXIT_ERROR
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    raw = data.absolute() / "MNIST" / "raw"
    assert f"MNIST not found: looked in {raw} for train-images-idx3-ubyte and train-labels-idx1-ubyte" in lines[0]
    assert "downloading them failed (RuntimeError: <urlopen error [Errno -3] name resolution>)" in lines[0]
    assert lines[1] == (
        f"Run again when online, copy the raw IDX files into {raw}, or point --data-dir at a folder that holds "
        "MNIST/raw/."
    )
    assert "download=True" not in err and len(calls) == 1
    assert data.exists() == (exists == "the data folder") and not (data / "MNIST").exists()  # nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == (["nonexistent"] if exists == "the data folder" else [])


@pytest.mark.parametrize("inner", ["MNIST", "MNIST/raw"])
def test_a_data_dir_inside_the_dataset_says_which_folder_to_pass(fake_data, tmp_path, capsys, monkeypatch, inner):
    calls = []
    _offline(monkeypatch, calls)
    assert train.main(train_args(fake_data / inner, tmp_path / "runs", *TINY)) == train.EXIT_ERROR
    _one_line(
        capsys.readouterr().err,
        f"the data folder {fake_data / inner} is inside the dataset: pass --data-dir "
        f"{fake_data}, the folder that holds MNIST/raw/",
    )
    assert calls == [] and not (fake_data / "MNIST" / "MNIST").exists()  # no nested second copy downloaded


def test_no_download_says_which_flag(tmp_path, capsys):
    assert train.main(train_args(tmp_path / "data", tmp_path / "runs", *TINY, "--no-download")) == train.EXIT_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Run again with --download to fetch them (needs internet)")
    assert not (tmp_path / "data").exists()


def test_under_torchrun_it_says_to_fetch_the_data_first(tmp_path):
    e = DatasetNotFoundError("MNIST", "train", [tmp_path / "MNIST" / "raw"], ("a", "b"), None)
    message = train.missing_data(e, distributed.Context(rank=0, world_size=2))
    assert message.splitlines()[1].startswith("Processes under torchrun never download")
    assert f"fetch the data first with a plain run, python train.py --dry-run --data-dir {tmp_path}" in message


def test_the_config_records_the_data_folder_used(fake_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BP_TORCH_DATA", str(fake_data))
    assert train.main(["--logdir", str(tmp_path), *TINY, "--epochs", "1", "--run-name", "env"]) == 0
    assert load_training_checkpoint(tmp_path / "env" / "checkpoint.pt")["config"]["data_dir"] == str(fake_data)
    assert f"data_dir={fake_data}" in capsys.readouterr().out.replace("\n", "")  # the printed config, unwrapped


# --- the command lines: bp_torch.check, --dry-run, reports ---------------------------------------------------


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "meta"])
def test_check_refuses_a_device_it_cannot_use_in_one_line(capsys, device):
    assert check.main(["--device", device]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith(f"python -m bp_torch.check: error: --device {device}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.slow
def test_check_device_cuda_without_a_gpu_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "bp_torch.check", "--device", "cuda"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"python -m bp_torch.check: error: --device cuda: no CUDA device is available here (torch {torch.__version__})"
    )


def test_check_help_has_no_markup(capsys):
    with pytest.raises(SystemExit):
        check.main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "Exit codes: 0" in out


def _hparams(run: Path) -> dict:
    events = EventAccumulator(str(run))
    events.Reload()
    try:
        return events.PluginTagToContent("hparams")
    except KeyError:  # no hparams summary at all
        return {}


def test_a_dry_run_is_kept_apart_from_real_runs(fake_data, tmp_path, capsys):
    assert train.main(train_args(fake_data, tmp_path, *TINY, "--dry-run", "--run-name", "d")) == 0
    assert train.main(train_args(fake_data, tmp_path, *TINY, "--epochs", "1", "--run-name", "real")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry-run", "real"]
    assert _hparams(tmp_path / "dry-run" / "d") == {}  # out of TensorBoard's hparams table
    assert _hparams(tmp_path / "real")  # where real runs are compared


def _epoch_lines(out: str) -> list[str]:
    """Each epoch's line without its timing: ``epoch 1/2  train loss ... acc ...  test loss ... acc ...``."""
    return [line.rsplit("  ", 1)[0] for line in out.splitlines() if line.startswith("epoch")]


def test_the_first_epoch_after_a_resume_reports_the_whole_epoch(fake_data, tmp_path, capsys):
    common = train_args(fake_data, tmp_path, *TINY, "--epochs", "2", "--limit-train-batches", "5")
    assert train.main([*common, "--run-name", "whole"]) == 0
    whole = _epoch_lines(capsys.readouterr().out)
    stop = lambda state: (state.epoch, state.batch) == (0, 2)  # noqa: E731
    assert train.main([*common, "--run-name", "cut"], should_stop=stop) == 130
    saved = load_training_checkpoint(tmp_path / "cut" / "checkpoint.pt")["state"]
    assert saved["batch"] == 2 and saved["train_sums"][2] == 64  # two batches of 32 carried
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "cut")]) == 0
    assert _epoch_lines(capsys.readouterr().out) == whole  # the same loss and accuracy as the uninterrupted run


# --- the command line ------------------------------------------------------------------------------------------


def test_a_misspelled_flag_is_one_line_naming_the_flag_meant(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--bach-size", "64", "--dry-run"])
    assert e.value.code == train.EXIT_ERROR
    _one_line(capsys.readouterr().err, "unrecognized arguments: --bach-size 64", "did you mean --batch-size?")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer, but got --batch-size=0"),
        (["--warmup", "1.5"], "--warmup must be in [0, 1), but got --warmup=1.5"),
        (["--rule", "fa", "--impl", "native"], "--rule='fa' needs --impl='manual'"),
    ],
)
def test_a_setting_out_of_range_is_named_by_its_flag(tmp_path, capsys, flags, message):
    assert train.main(["--logdir", str(tmp_path), "--dry-run", *flags]) == train.EXIT_ERROR
    _one_line(capsys.readouterr().err, message)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_says_what_to_use_instead(tmp_path, capsys):
    assert train.main(["--logdir", str(tmp_path), "--dry-run", "--device", "cuda"]) == train.EXIT_ERROR
    _one_line(capsys.readouterr().err, "no CUDA device is available: use --device cpu")


def test_run_folders_are_named_by_the_settings_that_tell_them_apart():
    parser = train.build_parser()
    args = parser.parse_args(["--rule", "fa", "--lr", "0.1", "--epochs", "20", "--log-interval", "5"])
    name = train.run_name(args, train.resolve_config(args, None))
    assert name.endswith("-default-manual-rule=fa-lr=0.1")  # epochs is the preset's, log-interval changes no weight
    args = parser.parse_args(["--preset", "seed", "--impl", "native", "--batch-size", "64"])
    assert train.run_name(args, train.resolve_config(args, None)).endswith("-seed-native-batch-size=64")


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "130 Ctrl-C, 143 SIGTERM" in help_text and "1 a checkpoint could not be written" in help_text
    docstring = (ROOT / "train.py").read_text()
    assert "130 stopped by" in docstring and "143 by SIGTERM" in docstring


def test_resuming_a_loose_checkpoint_never_overwrites_the_one_beside_it(run, capsys):
    """--resume FILE continues in FILE's folder, whose checkpoint.pt would be overwritten: another run's, or the newer
    state of the same run (a backup resumed). Refused, in one line; nothing is written."""
    backup = run / "epoch1.pt"
    shutil.copy(run / "checkpoint.pt", backup)
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = _resume(backup, capsys)
    assert code == train.EXIT_ERROR
    _one_line(err, str(backup), "would overwrite", "a folder of its own")
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_diverging_run_ends_its_epoch_and_saves(fake_data, tmp_path, capsys):
    """lr 1e30: the weights turn NaN; TensorBoard's histogram of them raised ("The histogram is empty") after the
    epoch, before its checkpoint. A NaN has no histogram: it is left out, and the run ends as any other."""
    args = train_args(fake_data, tmp_path, *TINY, "--epochs", "1", "--lr", "1e30", "--run-name", "nan")
    assert train.main(args) == 0
    assert load_training_checkpoint(tmp_path / "nan" / "checkpoint.pt")["state"]["epoch"] == 1


def test_a_one_step_warmup_schedules(fake_data, tmp_path):
    """warmup × epochs × steps = 1 (4 steps, the default 0.25): torch's OneCycleLR divided by zero."""
    args = train_args(fake_data, tmp_path, *TINY, "--epochs", "1", "--limit-train-batches", "4", "--run-name", "w")
    assert train.main(args) == 0


@pytest.mark.parametrize("flag, value", [("--seed", str(10**23)), ("--shift", "100000"), ("--momentum", "inf"),
                                         ("--weight-decay", "inf")])  # fmt: skip
def test_out_of_range_settings_are_refused_in_one_line(fake_data, tmp_path, capsys, flag, value):
    code = train.main(train_args(fake_data, tmp_path, *TINY, flag, value))
    assert code == train.EXIT_ERROR
    _one_line(capsys.readouterr().err, flag)


@pytest.mark.parametrize("when", ["start", "epoch"])
def test_logs_that_cannot_be_written_end_the_run_in_one_line(fake_data, tmp_path, capsys, monkeypatch, when):
    """A full disk under TensorBoard's writer (ENOSPC) at the start or after an epoch: one line, not a traceback."""
    from bp_torch.train.tensorboard import TensorBoardLogger

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "events"))

    monkeypatch.setattr(TensorBoardLogger, "log_start" if when == "start" else "log_epoch", full)
    code = train.main(train_args(fake_data, tmp_path, *TINY, "--epochs", "1", "--run-name", "full"))
    assert code == (train.EXIT_ERROR if when == "start" else train.EXIT_FAILED)
    _one_line(capsys.readouterr().err, "No space left on device")


@pytest.mark.parametrize("name", ["../escaped", "/abs/path", "a/b", ".."])
def test_a_run_name_stays_inside_the_logdir(fake_data, tmp_path, capsys, name):
    code = train.main(train_args(fake_data, tmp_path / "logs", *TINY, "--run-name", name))
    assert code == train.EXIT_ERROR
    _one_line(capsys.readouterr().err, "--run-name")
    assert not (tmp_path / "escaped").exists()


def test_an_empty_resume_path_is_refused(capsys):
    """--resume "" used to start a fresh run, silently."""
    assert train.main(["--resume", ""]) == train.EXIT_ERROR
    _one_line(capsys.readouterr().err, "--resume", "empty")


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_a_checkpoint_whose_tensors_cannot_be_read_is_refused_in_one_line(run, capsys, kind):
    """A tensor on the meta device or stored sparse (the checksum then cannot be computed): torch raised from
    inside the checksum, a traceback, exit 1."""
    path = run / "checkpoint.pt"
    c = load_checkpoint(path)
    weight = c["model"]["fc.weight"]
    c["model"]["fc.weight"] = weight.to("meta") if kind == "meta" else weight.to_sparse()
    torch.save({**c, "checksum": "sha256:x"}, path)
    code, _, err = _resume(run, capsys)
    assert code == train.EXIT_ERROR
    _one_line(err, str(path))
