"""train.py and bp_torch.train end to end: the CLI, presets, resume, Ctrl-C, errors, TensorBoard's own server.

Most tests train on a small fake MNIST written to a temporary folder (``fake_data``, conftest.py); the seed-preset
accuracy test needs the real one (``$BP_TORCH_DATA`` or ``../shared/data`` beside the repository) and is skipped
without it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import train_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bp_torch.models import LeNet
from bp_torch.train import cli as train
from bp_torch.train.config import PRESETS, Config, Loss
from bp_torch.train.monitor import grad_check
from bp_torch.train.resume import load_training_checkpoint
from bp_torch.train.tensorboard import confusion_figure, error_map_images, filters_image, misclassified_figure

ROOT = Path(__file__).resolve().parents[1]


SMALL = ["--batch-size", "32", "--test-batch-size", "64"]


# --- configuration -------------------------------------------------------------------------------------------


def test_seed_preset_is_note_b():
    seed = PRESETS["seed"]
    assert (seed.impl, seed.loss, seed.optimizer, seed.momentum, seed.weight_decay) == ("manual", "mse", "sgd", 0, 0)
    assert (seed.lr, seed.batch_size, seed.epochs, seed.schedule) == (1.0, 50, 1, "constant")
    assert (seed.normalize, seed.shift) == (False, 0)  # pixels in [0, 1], no augmentation


def test_flags_override_the_preset_and_help_states_defaults():
    parser = train.build_parser()
    cfg = train.resolve_config(parser.parse_args(["--preset", "seed", "--epochs", "3"]), None)
    assert cfg.epochs == 3 and cfg.lr == 1.0 and cfg.loss == "mse"
    assert train.resolve_config(parser.parse_args([]), None) == Config()
    assert "(default: 0.03; seed: 1.0)" in parser.format_help()


def test_mse_loss_is_note_b_eq_13():
    logits, target = torch.randn(4, 10), torch.tensor([0, 3, 9, 3])
    y = torch.nn.functional.one_hot(target, 10).float()
    expected = (0.5 * (torch.sigmoid(logits) - y).pow(2).sum()) / 4  # ½Σ(ŷ − y)², averaged over the batch
    torch.testing.assert_close(Loss("mse", "manual")(logits, target), expected)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_grad_check_finds_the_derivation_equal_to_autograd(loss):
    model, twin = LeNet("manual"), LeNet("native")
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    differences = grad_check(model, twin, x, y, Loss(loss, "manual"), Loss(loss, "native"))
    assert set(differences) == {f"{m}.{p}" for m in ("conv1", "conv2", "fc") for p in ("weight", "bias")}
    assert max(differences.values()) < 1e-4  # float32 rounding; a wrong formula gives O(1)
    assert all(p.grad is None for p in model.parameters())


def test_filters_are_laid_out_one_row_per_output_map():
    assert filters_image(torch.randn(6, 1, 5, 5)).shape == (3, 44, 6 * 42 + 2)  # 40-px tiles, 2-px gaps
    assert filters_image(torch.randn(12, 6, 5, 5), scale=6).shape == (3, 12 * 32 + 2, 6 * 32 + 2)


def test_confusion_matrix_shows_counts_and_class_labels():
    confusion = torch.eye(10, dtype=torch.long) * 98
    confusion[3, 5], confusion[9, 4] = 2, 1  # at 99% accuracy the mistakes must still be readable
    fig = confusion_figure(confusion)
    fig.canvas.draw()  # it renders
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells[(3, 5)] == "2" and cells[(9, 4)] == "1" and cells[(0, 0)] == "98" and (1, 2) not in cells
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in range(10)]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true" and "99.69%" in ax.get_title()


def test_misclassified_digits_are_titled_with_both_labels():
    fig = misclassified_figure(torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3]), torch.tensor([7, 8, 9]))
    fig.canvas.draw()
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["1 (true 7)", "2 (true 8)", "3 (true 9)"]


# --- the CLI, in process -------------------------------------------------------------------------------------


def test_dry_run_trains_logs_and_checkpoints(fake_data, tmp_path, capsys):
    assert train.main(train_args(fake_data, tmp_path, *SMALL, "--dry-run", "--run-name", "dry")) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "tensorboard --logdir" in out
    ckpt = load_training_checkpoint(tmp_path / "dry-run" / "dry" / "checkpoint.pt")  # apart from real runs
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["step"] == 2
    assert list((tmp_path / "dry-run" / "dry").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "dry-run" / "dry"))
    events.Reload()
    assert {f"error_maps/{k}" for k in ("C1", "S1", "C2", "S2")} <= set(events.Tags()["images"])
    assert "backward_graph/text_summary" in events.Tags()["tensors"]


@pytest.mark.parametrize(
    "impl, preset, expected",
    [
        ("manual", "default", "backward graph: 15 nodes, all hand-derived (8 derived, 7 structural); no aten"),
        ("manual", "seed", "backward graph: 16 nodes, all hand-derived (9 derived, 7 structural); no aten"),
        ("native", "default", "native: NllLossBackward0, LogSoftmaxBackward0, AddmmBackward0 (fc)"),
    ],
)
def test_the_run_starts_with_the_audit_of_its_backward_graph(fake_data, tmp_path, capsys, impl, preset, expected):
    args = train_args(
        fake_data, tmp_path, *SMALL, "--dry-run", "--impl", impl, "--preset", preset, "--grad-check-interval", "0"
    )
    assert train.main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("backward graph:")]
    assert len(lines) == 1 and expected in lines[0]


def test_error_maps_are_note_b_deltas(fake_data):
    """The error maps show δ = ∂L/∂(layer output) of each probe digit: the S2 map equals autograd's gradient."""
    torch.manual_seed(0)
    model = LeNet("manual")
    digits, labels = torch.rand(3, 1, 28, 28), torch.tensor([0, 5, 9])
    loss_fn = Loss("ce", "manual")
    images = error_map_images(model, digits, labels, loss_fn)
    assert set(images) == {"C1", "S1", "C2", "S2"}
    assert images["C1"].shape == (3, 3 * 58 + 2, 7 * 58 + 2) and images["S2"].shape == (3, 3 * 58 + 2, 13 * 58 + 2)
    assert all(p.grad is None for p in model.parameters()) and model.training
    S2 = model.pool2(model.act2(model.conv2(model.pool1(model.act1(model.conv1(digits))))))
    (delta,) = torch.autograd.grad(loss_fn(model.fc(S2.flatten(1)), labels), S2)
    # digit 0's row, map 0 (column 1; the digit is column 0): each tile 56 pixels and a 2-pixel gap; in a tile the
    # 4x4 map is scaled by 6 and centred in 28 pixels (offset 2), then the tile by 2: δ[0, 0, 2, 2] covers 28..39
    for digit, (i, j) in ((0, (2, 2)), (2, (0, 3))):
        value = (delta[digit, 0, i, j] / delta[digit].abs().max()).item()  # each digit's layer on its own scale
        pixel = images["S2"][:, 2 + digit * 58 + 2 * (2 + 6 * i) + 1, 2 + 58 + 2 * (2 + 6 * j) + 1]
        expected = (1 - max(value, 0), 1 - abs(value), 1 - max(-value, 0))  # white 0, blue > 0, red < 0
        torch.testing.assert_close(pixel, torch.tensor(expected), atol=1e-5, rtol=0)


def test_runs_are_never_overwritten(fake_data, tmp_path, capsys):
    for _ in range(2):
        assert train.main(train_args(fake_data, tmp_path, *SMALL, "--dry-run", "--run-name", "same")) == 0
    assert sorted(p.name for p in (tmp_path / "dry-run").iterdir()) == ["same", "same-2"]


@pytest.mark.parametrize(
    ("stop_at", "rule"),
    [
        ("epoch_end", "backprop"),
        ("mid_epoch", "backprop"),
        ("mid_epoch", "fa"),
        ("mid_epoch", "brsf"),
        ("mid_epoch", "dfa"),
    ],
)
def test_resume_ends_with_the_same_weights(fake_data, tmp_path, capsys, stop_at, rule):
    """An interrupted and resumed run and an uninterrupted one end bit-identical (default recipe, augmentation on);
    under a backward rule too: fa's and dfa's feedback matrices are restored from the checkpoint, brsf's draws continue
    the restored random stream (and the alignment monitor, every 2 steps, draws from a forked one)."""
    common = train_args(
        fake_data, tmp_path, *SMALL, "--epochs", "3", "--limit-train-batches", "5", "--limit-test-batches", "1"
    )
    common += ["--rule", rule, "--grad-check-interval", "2"]
    assert train.main([*common, "--run-name", "whole"]) == 0

    def stop(state):  # as Ctrl-C would: polled before each epoch and after each step
        return (state.epoch, state.batch) == ((1, 0) if stop_at == "epoch_end" else (1, 2))

    assert train.main([*common, "--run-name", "cut"], should_stop=stop) == train.EXIT_INTERRUPTED
    interrupted = load_training_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert interrupted["state"]["step"] == (5 if stop_at == "epoch_end" else 7)
    assert train.main(["--resume", str(tmp_path / "cut"), "--data-dir", str(fake_data)]) == 0

    whole = load_training_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    resumed = load_training_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert resumed["state"]["step"] == whole["state"]["step"] == 15
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for i, group in whole["optimizer"]["state"].items():
        assert all(torch.equal(v, resumed["optimizer"]["state"][i][k]) for k, v in group.items())
    # and TensorBoard shows one test point per epoch, the interrupted session's included (sorted by step, as it plots
    # them: it reads the two sessions' event files in name order, which puts a writer numbered 10 before one numbered 9)
    events = EventAccumulator(str(tmp_path / "cut"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("test/accuracy")) == [5, 10, 15]


def test_compiled_training_matches_eager(fake_data, tmp_path, capsys, monkeypatch):
    """--compile (inductor, over the traced hand-written backward) trains to the eager weights, up to float rounding;
    the checkpoint holds the plain module's state_dict."""
    compiled_modules, real_compile = [], torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: compiled_modules.append(model) or real_compile(model, **kw)
    )
    common = train_args(
        fake_data, tmp_path, *SMALL, "--epochs", "1", "--limit-train-batches", "3", "--limit-test-batches", "1"
    )
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        assert train.main([*common, *flags, "--grad-check-interval", "0", "--run-name", name]) == 0
    assert [type(m).__name__ for m in compiled_modules] == ["LeNet"]  # the compiled run, and only it, compiled
    eager, compiled = (load_training_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("eager", "compiled"))
    assert compiled["config"]["compile"] and list(compiled["model"]) == list(eager["model"])
    for name, tensor in eager["model"].items():
        # inductor fuses and reorders float32 sums, so 3 Adam steps agree to rounding, not bit for bit
        torch.testing.assert_close(compiled["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_refuses_to_change_the_recipe(fake_data, tmp_path, capsys):
    assert train.main(train_args(fake_data, tmp_path, *SMALL, "--dry-run", "--run-name", "r")) == 0
    assert train.main(["--resume", str(tmp_path / "dry-run" / "r"), "--lr", "0.5"]) == train.EXIT_ERROR
    assert "--lr cannot change when resuming" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "dry-run" / "r"), "--rule", "fa"]) == train.EXIT_ERROR
    assert "--rule cannot change when resuming" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert (
        train.main(train_args(tmp_path / "nowhere", tmp_path, *SMALL, "--dry-run", "--no-download")) == train.EXIT_ERROR
    )
    err = capsys.readouterr().err
    assert "not found" in err and "--data-dir" in err and "Traceback" not in err


def test_missing_data_is_downloaded_by_default(tmp_path, capsys, monkeypatch):
    """A user's first ``python train.py`` fetches MNIST through torchvision (here a stand-in: no network in CI)."""
    fake = tmp_path / "fetched"
    downloads = []

    def mnist(root, train, download):
        downloads.append((root, train, download))
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: offline")

    monkeypatch.setattr("torchvision.datasets.MNIST", mnist)
    assert train.main(train_args(fake, tmp_path, *SMALL, "--dry-run")) == train.EXIT_ERROR
    assert downloads == [(str(fake.absolute()), True, True)]
    err = capsys.readouterr().err
    assert "downloading them failed (RuntimeError: Error downloading" in err and "Traceback" not in err


def test_corrupt_data_is_a_clear_error(fake_data, tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "MNIST" / "raw").mkdir(parents=True)
    for f in (fake_data / "MNIST" / "raw").iterdir():
        data = f.read_bytes()
        (broken / "MNIST" / "raw" / f.name).write_bytes(data[: len(data) // 2] if "train-images" in f.name else data)
    assert train.main(train_args(broken, tmp_path, *SMALL, "--dry-run")) == train.EXIT_ERROR
    assert "cannot read the dataset" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_dict"])
def test_corrupt_checkpoint_is_a_clear_error(fake_data, tmp_path, capsys, damage):
    assert train.main(train_args(fake_data, tmp_path, *SMALL, "--dry-run", "--run-name", "c")) == 0
    path = tmp_path / "dry-run" / "c" / "checkpoint.pt"
    if damage == "garbage":
        path.write_bytes(os.urandom(1000))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    else:
        torch.save([1, 2, 3], path)
    capsys.readouterr()
    assert train.main(["--resume", str(path)]) == train.EXIT_ERROR
    err = capsys.readouterr().err
    assert str(path) in err and "checkpoint" in err


# --- subprocesses: the real CLI, Ctrl-C, TensorBoard ---------------------------------------------------------


def _spawn(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


@pytest.mark.slow
def test_cli_dry_run(fake_data, tmp_path):
    proc = _spawn("train.py", *train_args(fake_data, tmp_path, *SMALL, "--dry-run", "--run-name", "cli"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "test accuracy" in out.splitlines()[-3]
    torch.load(tmp_path / "dry-run" / "cli" / "checkpoint.pt", weights_only=True)


@pytest.mark.slow
def test_ctrl_c_leaves_a_loadable_checkpoint(fake_data, tmp_path):
    proc = _spawn("train.py", *train_args(fake_data, tmp_path, *SMALL, "--epochs", "200", "--run-name", "sigint"))
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # wait until training has finished an epoch
            if line.startswith("epoch") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == train.EXIT_INTERRUPTED, err
    assert "--resume" in out and "Traceback" not in err
    ckpt = torch.load(tmp_path / "sigint" / "checkpoint.pt", weights_only=True)
    assert 1 <= ckpt["state"]["epoch"] < 200 and ckpt["state"]["step"] >= 16
    assert not list((tmp_path / "sigint").glob(".*.tmp"))  # the temporary file was renamed, not left behind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_server_shows_the_run(fake_data, tmp_path, capsys):
    logdir = tmp_path / "runs"
    args = train_args(
        fake_data, logdir, *SMALL, "--epochs", "2", "--limit-train-batches", "4", "--limit-test-batches", "2"
    )
    assert train.main([*args, "--run-name", "tb", "--log-interval", "2", "--grad-check-interval", "3"]) == 0
    ckpt = load_training_checkpoint(logdir / "tb" / "checkpoint.pt")

    port = _free_port()
    server = _spawn(
        "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
        "--load_fast", "false", "--reload_interval", "1",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline, tags = time.monotonic() + 120, {}
        while time.monotonic() < deadline and "test/accuracy" not in tags:
            assert server.poll() is None, server.stderr.read()
            try:
                tags = _get_json(f"{base}/scalars/tags").get("tb", {})
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)

        def scalars(tag):
            query = urllib.parse.urlencode({"run": "tb", "tag": tag})
            return [(step, value) for _, step, value in _get_json(f"{base}/scalars/scalars?{query}")]

        expected = {"train/loss", "train/accuracy", "train/lr", "perf/images_per_sec", "perf/epoch_time_s"}
        expected |= {"test/loss", "test/accuracy"} | {f"gradcheck/{n}" for n, _ in LeNet().named_parameters()}
        assert expected <= set(tags)
        assert [s for s, _ in scalars("train/loss")] == [2, 4, 6, 8]
        assert [s for s, _ in scalars("gradcheck/conv1.weight")] == [0, 3, 6]
        assert max(v for tag in tags if tag.startswith("gradcheck/") for _, v in scalars(tag)) < 1e-4
        step, accuracy = scalars("test/accuracy")[-1]
        assert step == 8 and accuracy == pytest.approx(ckpt["state"]["metrics"]["test_accuracy"], rel=1e-6)
        images = _get_json(f"{base}/images/tags").get("tb", {})
        assert {"filters/C1", "filters/C2", "feature_maps/C1", "test/misclassified", "test/confusion_matrix"} <= set(
            images
        )
        assert {"error_maps/C1", "error_maps/S1", "error_maps/C2", "error_maps/S2"} <= set(images)
    finally:
        server.kill()
        server.communicate(timeout=30)


# --- real MNIST ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_seed_preset_matches_deeplearntoolbox(mnist_root, tmp_path, capsys):
    """Note B's recipe, one epoch: DeepLearnToolbox's test_example_CNN asserts test error < 12% (it quotes ~11%)."""
    args = ["--preset", "seed", "--data-dir", str(mnist_root), "--logdir", str(tmp_path), "--run-name", "seed"]
    assert train.main(args) == 0
    accuracy = load_training_checkpoint(tmp_path / "seed" / "checkpoint.pt")["state"]["metrics"]["test_accuracy"]
    assert 1 - accuracy < 0.12
