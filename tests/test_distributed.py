"""train.py under DistributedDataParallel: 2 CPU processes, gloo on 127.0.0.1, compared with a single process.

The workers are started once for the module (importing torch twice costs more than the runs themselves) and go
through every scenario in turn, each on a fresh process group joined from the environment torchrun would give
(``env://``); the tests then compare what they left with single-process runs made here. One slow test runs the
real ``torchrun``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import train_args

from bp_torch.models import LeNet
from bp_torch.train import cli as train
from bp_torch.train import distributed
from bp_torch.train.config import Config, Loss, make_loaders
from bp_torch.train.data import DeviceLoader
from bp_torch.train.distributed import local_batch_size
from bp_torch.train.loop import evaluate
from bp_torch.train.resume import load_training_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# one xdist worker runs the whole module, so that the workers below are started once (pyproject: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("distributed")

WORLD = 2
PORTS = 8  # one per process group the workers make


ONE_THREAD = ["--num-threads", "1"]


def _steps_args(data: Path, logdir: Path) -> list[str]:
    """Plain SGD over 2 epochs of 3 global batches of 32, augmentation on: DDP's mean of the two halves' mean
    gradients is the whole batch's mean gradient, so one process and two take the same steps."""
    return train_args(
        data, logdir, *ONE_THREAD, "--optimizer", "sgd", "--schedule", "constant", "--lr", "0.5", "--epochs", "2",
        "--batch-size", "32", "--limit-train-batches", "3", "--test-batch-size", "25",
    )  # fmt: skip


def _resume_args(data: Path, logdir: Path) -> list[str]:
    """The default recipe (Adam, one-cycle schedule, shifts), 2 epochs of 4 batches of 32, 2 test batches of 25, under
    feedback alignment: its fixed matrices are buffers DDP broadcasts from rank 0, and the checkpoints hold them."""
    return train_args(
        data, logdir, *ONE_THREAD, "--epochs", "2", "--batch-size", "32", "--limit-train-batches", "4",
        "--test-batch-size", "25", "--limit-test-batches", "2", "--rule", "fa",
    )  # fmt: skip


def _stop_at(epoch: int, batch: int, rank: int | None = None):
    """A should_stop that asks, as Ctrl-C would, at (epoch, batch) — on one rank only if ``rank`` is given."""

    def should_stop(state) -> bool:
        here = rank is None or rank == int(os.environ.get("RANK", 0))
        return here and (state.epoch, state.batch) == (epoch, batch)

    return should_stop


@contextlib.contextmanager
def _group(rank: int, port: int):
    """The environment torchrun gives rank ``rank`` of ``WORLD`` on one machine, for one process group."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    try:
        yield
    finally:
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)


def _worker(rank: int, ports: list[int], data: Path, logdir: Path, out: Path) -> None:
    """Every scenario, in turn, as rank ``rank``; exit codes and evaluation sums are saved for the tests."""
    torch.set_num_threads(1)
    codes = {}
    ports = iter(ports)
    with open(out / f"rank{rank}.out", "w") as stdout, open(out / f"rank{rank}.err", "w") as stderr:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            with _group(rank, next(ports)):
                codes["steps"] = train.main([*_steps_args(data, logdir), "--run-name", "ddp-steps"])
            with _group(rank, next(ports)), distributed.process_group() as ctx:
                _evaluate_shards(ctx, data, logdir / "ddp-steps" / "checkpoint.pt", out)
            resume = _resume_args(data, logdir)
            with _group(rank, next(ports)):
                codes["whole"] = train.main([*resume, "--run-name", "ddp-whole"])
            with _group(rank, next(ports)):  # only rank 1 is asked to stop: both must stop at the same step
                codes["cut"] = train.main([*resume, "--run-name", "ddp-cut"], should_stop=_stop_at(1, 0, rank=1))
            if rank == 0:  # the interrupted checkpoint, before the resumed run overwrites it
                shutil.copytree(logdir / "ddp-cut", logdir / "ddp-cut-at-1")
            with _group(rank, next(ports)):
                codes["resume"] = train.main(["--resume", str(logdir / "ddp-cut"), "--data-dir", str(data)])
            with _group(rank, next(ports)):  # a single process's checkpoint, continued by two
                codes["single-cut"] = train.main(["--resume", str(logdir / "single-cut"), "--data-dir", str(data)])
            with _group(rank, next(ports)):  # 33 does not split over 2
                codes["odd-batch"] = train.main(
                    [*train_args(data, logdir, *ONE_THREAD, "--batch-size", "33", "--run-name", "odd")]
                )
            print("-- rank 1 misses the data --", file=sys.stderr)
            with _group(rank, next(ports)):  # one rank's error: all exit, none waits for it in a collective
                no_data = logdir / "nowhere" if rank == 1 else data
                codes["no-data"] = train.main(
                    [*train_args(no_data, logdir, *ONE_THREAD, "--dry-run", "--run-name", "no-data")]
                )
            left = _gloo_threads()  # after eight groups, one per scenario, each left by process_group()
    torch.save(codes, out / f"codes{rank}.pt")
    torch.save(left, out / f"threads{rank}.pt")


def _gloo_threads() -> list[str]:
    """The names of this process's gloo threads (``pt_gloo_runloop``, ``gloo_tcp_loop``); Linux only."""
    tasks = Path("/proc/self/task")
    names = (task.joinpath("comm").read_text().strip() for task in tasks.iterdir()) if tasks.is_dir() else ()
    return [name for name in names if "gloo" in name]


def _evaluate_shards(ctx: distributed.Context, data: Path, checkpoint: Path, out: Path) -> None:
    """Evaluate a checkpoint's weights on this rank's test shard: the whole set of 251, then its first 75."""
    model = LeNet()
    ckpt = distributed.broadcast(load_training_checkpoint(checkpoint) if ctx.is_main else None)
    model.load_state_dict(ckpt["model"])
    results = {}
    for limit in (0, 3):  # batch 25: shards of 126 and 125 images take 6 and 5 batches; of 38 and 37, 2 each
        cfg = Config(data_dir=str(data), test_batch_size=25, limit_test_batches=limit)
        _, test_loader = make_loaders(cfg, torch.device("cpu"), ctx.rank, ctx.world_size)
        result = evaluate(model, test_loader, Loss())
        results[limit] = (result.loss_sum, result.confusion, test_loader.num_samples)
    torch.save(results, out / f"eval{ctx.rank}.pt")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def runs(fake_data, tmp_path_factory) -> Path:
    """Launch the 2-process scenarios once; returns the folder of their runs (``runs/``) and outputs."""
    root = tmp_path_factory.mktemp("ddp")
    logdir, out = root / "runs", root / "out"
    out.mkdir()
    # the single-process run that two processes will continue, interrupted mid-epoch
    code = train.main([*_resume_args(fake_data, logdir), "--run-name", "single-cut"], should_stop=_stop_at(1, 1))
    assert code == train.EXIT_INTERRUPTED
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME")}
    os.environ["OMP_NUM_THREADS"] = "1"  # 2 processes on 2 cores: more threads would only fight
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on the loopback too, not the hostname's
    try:
        ctx = mp.start_processes(
            _worker, (_free_ports(PORTS), fake_data, logdir, out), nprocs=WORLD, join=False, start_method="spawn"
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    deadline = time.monotonic() + 300
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail("the 2-process runs did not finish in 300 s (a collective waiting for a rank?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return root


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_training_checkpoint(path / "checkpoint.pt")["model"]


def test_every_rank_exits_with_the_same_code(runs):
    codes = [torch.load(runs / "out" / f"codes{r}.pt") for r in range(WORLD)]
    expected = {"steps": 0, "whole": 0, "cut": 130, "resume": 0, "single-cut": 0, "odd-batch": 2, "no-data": 2}
    assert codes[0] == codes[1] == expected


def test_an_error_on_any_rank_is_reported_once_by_rank_0(runs):
    odd_batch, no_data = (runs / "out" / "rank0.err").read_text().split("-- rank 1 misses the data --")
    assert "--batch-size=33, world_size=2" in odd_batch
    errors = [line for line in no_data.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: rank 1: MNIST not found")
    assert "fetch the data first with a plain run" in no_data
    assert "train.py: error" not in (runs / "out" / "rank1.err").read_text()


def test_two_processes_take_the_same_steps_as_one(runs, fake_data, tmp_path, capsys):
    assert train.main([*_steps_args(fake_data, tmp_path), "--run-name", "one"]) == 0
    one, two = _weights(tmp_path / "one"), _weights(runs / "runs" / "ddp-steps")
    assert set(two) == {f"{m}.{p}" for m in ("conv1", "conv2", "fc") for p in ("weight", "bias")}  # no "module."
    assert not torch.equal(two["fc.weight"], LeNet().state_dict()["fc.weight"])  # it did train
    for name in one:  # the same arithmetic summed in another order: float32 rounding only
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    one_state = load_training_checkpoint(tmp_path / "one" / "checkpoint.pt")["state"]
    two_state = load_training_checkpoint(runs / "runs" / "ddp-steps" / "checkpoint.pt")["state"]
    assert two_state["step"] == one_state["step"] == 6
    assert two_state["metrics"]["test_accuracy"] == one_state["metrics"]["test_accuracy"]
    assert two_state["metrics"]["test_loss"] == pytest.approx(one_state["metrics"]["test_loss"], rel=1e-5)


@pytest.mark.parametrize("limit", [0, 3])
def test_evaluation_counts_every_test_image_once(runs, fake_data, limit):
    """251 test images (prime) in shards of 126 and 125, batches of 25: the sums over ranks are one process's."""
    shards = [torch.load(runs / "out" / f"eval{r}.pt")[limit] for r in range(WORLD)]
    model = LeNet()
    model.load_state_dict(_weights(runs / "runs" / "ddp-steps"))
    cfg = Config(data_dir=str(fake_data), test_batch_size=25, limit_test_batches=limit)
    _, loader = make_loaders(cfg, torch.device("cpu"))
    whole = evaluate(model, loader, Loss())
    assert whole.count == (251 if limit == 0 else 75)
    assert [n for _, _, n in shards] == ([126, 125] if limit == 0 else [38, 37])
    for loss_sum, confusion, _ in shards:  # every rank holds the sums over both
        assert torch.equal(confusion, whole.confusion)
        assert loss_sum == pytest.approx(whole.loss_sum, rel=1e-6)


def test_a_stop_asked_on_one_rank_stops_both_and_resumes_exactly(runs):
    interrupted = load_training_checkpoint(runs / "runs" / "ddp-cut-at-1" / "checkpoint.pt")
    assert (interrupted["state"]["epoch"], interrupted["state"]["step"]) == (1, 4)
    whole = load_training_checkpoint(runs / "runs" / "ddp-whole" / "checkpoint.pt")
    resumed = load_training_checkpoint(runs / "runs" / "ddp-cut" / "checkpoint.pt")
    assert resumed["state"]["step"] == whole["state"]["step"] == 8
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for i, group in whole["optimizer"]["state"].items():
        assert all(torch.equal(v, resumed["optimizer"]["state"][i][k]) for k, v in group.items())


def test_a_ddp_checkpoint_resumes_in_one_process_and_back(runs, fake_data, tmp_path, capsys):
    shutil.copytree(runs / "runs" / "ddp-cut-at-1", tmp_path / "cut")
    assert train.main(["--resume", str(tmp_path / "cut"), "--data-dir", str(fake_data)]) == 0
    whole = _weights(runs / "runs" / "ddp-whole")
    # two processes, then one; one, then two (the single-process run stopped mid-epoch): Adam over float32 rounding
    for continued in (_weights(tmp_path / "cut"), _weights(runs / "runs" / "single-cut")):
        for name in whole:
            torch.testing.assert_close(continued[name], whole[name], rtol=1e-4, atol=1e-5, msg=name)


def test_only_rank_0_prints_and_writes(runs):
    out0, out1 = ((runs / "out" / f"rank{r}.out").read_text() for r in range(WORLD))
    assert out1 == ""
    assert out0.count("test accuracy") == 4 and "2 processes on cpu, 16 images of each batch each" in out0
    assert "interrupted at epoch 2, step 4" in out0 and "torchrun" in out0
    expected = {"single-cut", "ddp-steps", "ddp-whole", "ddp-cut", "ddp-cut-at-1"}
    assert {p.name for p in (runs / "runs").iterdir()} == expected  # one folder per run, none from rank 1
    assert not list((runs / "runs").rglob(".*.tmp"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc")
def test_every_process_group_is_gone_when_its_run_ends(runs):
    """No gloo thread outlives its group: one still releasing a collective's tensor while the interpreter exits
    needs the GIL, and Python's finalization then aborts the worker ("terminate called without an active
    exception"), failing the job after a finished run. torch._dynamo, first imported by DistributedDataParallel's
    constructor, kept the group alive past destroy_process_group."""
    for r in range(WORLD):
        assert torch.load(runs / "out" / f"threads{r}.pt") == [], f"rank {r}"


def test_batch_size_must_divide_by_the_world_size():
    assert local_batch_size(128, 4) == 32
    with pytest.raises(ValueError, match="batch_size=50, world_size=3"):
        local_batch_size(50, 3)


def test_without_torchrun_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = LeNet()
    with distributed.process_group() as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
        assert distributed.wrap(model) is model and distributed.unwrap(model) is model
        assert distributed.any_rank(True) and distributed.broadcast(3) == 3 and distributed.first_error("x") == "x"
        assert not torch.distributed.is_initialized()


def test_evaluation_of_a_shard_needs_the_process_group():
    images, labels = torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.long)
    loader = DeviceLoader(images, labels, 2, rank=1, world_size=2, even_shards=False)
    with pytest.raises((RuntimeError, ValueError)):  # a shard's sums alone would be silently wrong
        evaluate(LeNet(), loader, Loss())


@pytest.mark.slow
def test_torchrun_dry_run(fake_data, tmp_path):
    """The real launcher: two workers, one run folder, one report, a checkpoint without "module."."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "train.py",
        *train_args(fake_data, tmp_path, *ONE_THREAD, "--dry-run", "--batch-size", "32", "--run-name", "cli"),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy") == 1 and "2 processes on cpu" in proc.stdout
    assert [p.name for p in (tmp_path / "dry-run").iterdir()] == ["cli"]
    assert set(_weights(tmp_path / "dry-run" / "cli")) == set(LeNet().state_dict())
