"""Train Note B's LeNet on MNIST with the hand-derived backward, logging to TensorBoard.

    python train.py                        # the default recipe (see README for its result); or python -m bp_torch.train
    python train.py --preset seed          # Note B / DeepLearnToolbox exactly: 1 epoch, test error < 12%
    python train.py --impl native          # the same with torch's own autograd, for comparison
    python train.py --resume runs/NAME     # continue a stopped run (Ctrl-C and SIGTERM save a checkpoint)
    python train.py --dry-run              # a few batches end to end, in runs/dry-run/: checks the installation
    tensorboard --logdir runs              # watch: losses, accuracy, filters, feature maps, gradient check
    torchrun --nproc_per_node=4 train.py   # DistributedDataParallel: 4 processes, one GPU each (gloo on CPU)
    python -m bp_torch.train.torchrun --nproc_per_node=4 train.py   # the same; Ctrl-C ends in one line

Flags given on the command line override the preset's values. Under torchrun --batch-size is the global batch,
split evenly over the processes, so a recipe means the same at any world size; only rank 0 prints, logs and
writes checkpoints.

Exit codes: 0 done, or the run was already complete; 1 a checkpoint could not be written (the previous one is
kept); 2 bad arguments, missing or corrupt data or checkpoint; 130 stopped by Ctrl-C (SIGINT), 143 by SIGTERM,
each after saving a checkpoint at the next step boundary (a second signal stops at once; the last checkpoint
saved is intact).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import torch

import bp_torch
from bp_torch.feedback import RULES
from bp_torch.train import distributed
from bp_torch.train.checkpoint import CheckpointError
from bp_torch.train.config import PRESETS, RUNTIME_FIELDS, Config, build, config_from_dict, steps_per_epoch, validate
from bp_torch.train.data import DATASETS, DatasetNotFoundError, make_loaders, resolve_data_root
from bp_torch.train.loop import fit
from bp_torch.train.monitor import Interrupted, Watch, report_backward_graph
from bp_torch.train.resume import TrainState, load_training_checkpoint, restore
from bp_torch.train.signals import StopOnSignal

CHECKPOINT = "checkpoint.pt"
# a stop asked by a signal exits with 128 + its number, as a shell reports a process it ended: 130 for Ctrl-C
# (SIGINT), 143 for SIGTERM; EXIT_INTERRUPTED for a stop asked otherwise (should_stop)
EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train Note B's 3,898-parameter LeNet on MNIST with hand-derived backpropagation.",
        epilog="Defaults are the default preset's; '--preset seed' changes those marked 'seed:'. "
        "Flags given explicitly override the preset. Scale out with 'torchrun --nproc_per_node=N train.py ...': "
        "DistributedDataParallel over N processes (one GPU each, or gloo on CPU), the same recipe and schedule. "
        "Exit codes: 0 done (or already complete); 1 a checkpoint could not be written; 2 bad arguments, missing or "
        "corrupt data or checkpoint; 130 Ctrl-C, 143 SIGTERM, each after saving a checkpoint.",
    )
    seed = PRESETS["seed"]

    def add(flag: str, help: str, **kwargs) -> None:
        # config flags default to SUPPRESS, so that only flags the user gave override the preset
        name = flag[2:].replace("-", "_")
        default, seeded = getattr(Config(), name), getattr(seed, name)
        note = (
            f" (default: {default}" + (f"; seed: {seeded})" if seeded != default else ")")
            if default is not None
            else ""
        )
        parser.add_argument(flag, help=help + note, default=argparse.SUPPRESS, **kwargs)

    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=argparse.SUPPRESS,
        help="named configuration: 'default' is the best recipe found for this network, 'seed' is exactly "
        "Note B / DeepLearnToolbox (sigmoid outputs, squared error, SGD lr 1, batch 50, 1 epoch) (default: default)",
    )
    add("--dataset", "dataset", choices=sorted(DATASETS))
    add("--data-dir", "folder holding MNIST/raw/ (default: $BP_TORCH_DATA, else ./data)", metavar="DIR")
    add(
        "--download", "let torchvision download missing data into --data-dir, leaving nothing behind if it fails "
        "(never under torchrun: fetch it first, e.g. with one plain --dry-run)", action=argparse.BooleanOptionalAction,
    )  # fmt: skip
    add("--impl", "'manual': hand-derived backward; 'native': torch's autograd", choices=("manual", "native"))
    add(
        "--rule",
        "the backward rule of the conv and linear layers: exact backprop, feedback alignment (fa), sign "
        "symmetry (usf, brsf, frsf) or direct feedback alignment (dfa); bp_torch.feedback",
        choices=RULES,
    )
    add("--epochs", "number of epochs to train", type=int, metavar="N")
    add(
        "--batch-size", "training batch size; under torchrun the global batch, split evenly over the processes "
        "(it must divide by their number)", type=int, metavar="N",
    )  # fmt: skip
    add("--test-batch-size", "evaluation batch size, per process", type=int, metavar="N")
    add("--lr", "learning rate (the peak with --schedule onecycle)", type=float)
    add("--optimizer", "optimizer", choices=("sgd", "adam", "adamw"))
    add("--momentum", "SGD momentum", type=float)
    add("--nesterov", "Nesterov momentum for SGD", action=argparse.BooleanOptionalAction)
    add("--weight-decay", "weight decay", type=float)
    add("--schedule", "learning-rate schedule over all steps", choices=("constant", "onecycle", "cosine"))
    add("--warmup", "onecycle: fraction of the steps spent warming up", type=float)
    add("--loss", "'ce': cross-entropy on logits; 'mse': Note B's ½Σ(σ(z)−y)², batch mean", choices=("ce", "mse"))
    add("--label-smoothing", "label smoothing for --loss ce", type=float)
    add("--normalize", "standardise pixels (else in [0, 1])", action=argparse.BooleanOptionalAction)
    add("--shift", "augmentation: random translation by up to N pixels, 0 for none", type=int, metavar="N")
    add("--seed", "random seed (init, data order, augmentation)", type=int)
    add(
        "--device", "'auto' picks cuda when available; under torchrun each process takes GPU LOCAL_RANK",
        choices=("auto", "cpu", "cuda"),
    )  # fmt: skip
    add("--log-interval", "steps between training-scalar logs", type=int, metavar="N")
    add("--grad-check-interval", "steps between manual-vs-native gradient checks, 0 for none", type=int, metavar="N")
    add("--limit-train-batches", "train on at most N batches per epoch, 0 for all", type=int, metavar="N")
    add(
        "--limit-test-batches",
        "evaluate on the first N*test-batch-size test images, 0 for all",
        type=int,
        metavar="N",
    )
    add("--num-threads", "CPU threads for torch, 0 for torch's default", type=int, metavar="N")
    add(
        "--compile", "torch.compile the training step's forward and hand-derived backward (the first steps "
        "spend seconds compiling)", action=argparse.BooleanOptionalAction,
    )  # fmt: skip
    parser.add_argument("--logdir", default="runs", help="folder of TensorBoard runs (default: runs)")
    parser.add_argument(
        "--run-name", help="this run's folder under --logdir; never overwritten: a suffix is added if it exists "
        "(default: date-time-preset-impl)",
    )  # fmt: skip
    parser.add_argument(
        "--resume",
        metavar="PATH",
        help="continue a run from its checkpoint (file or run folder); flags that would change the weights are "
        "refused. Under torchrun rank 0 reads it and sends it to the others; any world size may resume any run",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="1 epoch of 2 training batches and 1 test batch, logging every step: a quick end-to-end check. Its run "
        "goes to <logdir>/dry-run/, without hparams, apart from real runs",
    )  # fmt: skip
    return parser


def resolve_config(args: argparse.Namespace, checkpoint: dict | None) -> Config:
    """The preset (or the checkpoint's config), overridden by the flags given; raises ValueError."""
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(Config)}}
    if checkpoint is None:
        return validate(dataclasses.replace(PRESETS[given.get("preset", "default")], **given))
    cfg = config_from_dict(checkpoint["config"])
    for name, value in given.items():
        if name not in RUNTIME_FIELDS and value != getattr(cfg, name):
            raise ValueError(
                f"--{name.replace('_', '-')} cannot change when resuming: the run has {getattr(cfg, name)!r}, "
                f"got {value!r}. Start a new run instead."
            )
    return validate(dataclasses.replace(cfg, **given))


def new_run_dir(logdir: str, name: str | None, cfg: Config) -> Path:
    """A fresh folder under ``logdir``: ``name`` or date-time-preset-impl, with -2, -3 ... if taken."""
    base = name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.preset}-{cfg.impl}"
    for i in range(1, 10_000):
        path = Path(logdir) / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)  # atomic: two runs started together get different folders
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder named {base}[-N] in {logdir}")


def probe_digits(test_loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The first test digit of each class, as fed to the model, and their labels: fixed digits for the feature-map
    and error-map images."""
    x, y = next(iter(test_loader))
    first = [int((y == k).nonzero()[0]) for k in range(10) if (y == k).any()]
    return x[first], y[first]


def environment(device: torch.device, run_dir: Path, world_size: int) -> dict:
    return {
        "torch": torch.__version__,
        "bp_torch": bp_torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "world_size": world_size,
        "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "run_dir": str(run_dir),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def fail(message: str) -> int:
    print(f"train.py: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: list[str] | None = None, should_stop=None) -> int:
    """Run the CLI; returns the exit code. ``should_stop(state)`` lets tests interrupt as Ctrl-C would."""
    args = build_parser().parse_args(argv)
    try:
        with distributed.process_group() as ctx:  # torchrun's job, if any: joined here, left on every way out
            return run(args, ctx, should_stop)
    except KeyboardInterrupt:  # before training, or a second Ctrl-C: the last checkpoint is intact (atomic writes)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # torchrun passes on its own copy of the Ctrl-C: one line
        if os.environ.get("RANK", "0") == "0":  # torchrun's rank 0 alone speaks, as in training
            print("train.py: interrupted; the last checkpoint saved, if any, is intact", file=sys.stderr)
        return EXIT_INTERRUPTED


class Refused(Exception):
    """Why a run cannot start, for the user: bad arguments, missing or corrupt data or checkpoint."""


def read_checkpoint(args: argparse.Namespace, ctx: distributed.Context) -> dict | None:
    """The checkpoint to resume from, read by rank 0 alone (on several machines only its disk has it) and sent to
    the others; every rank takes part in the broadcast, error or not, so that none is left waiting in it."""
    if args.dry_run and args.resume:
        raise Refused("--dry-run cannot be combined with --resume: it would change the run's schedule")
    checkpoint = problem = None
    if args.resume and ctx.is_main:
        try:
            checkpoint = load_training_checkpoint(checkpoint_file(args))
        except CheckpointError as e:
            problem = str(e)
    checkpoint, problem = distributed.broadcast((checkpoint, problem))
    if problem is not None:
        raise Refused(problem)
    return checkpoint


def checkpoint_file(args: argparse.Namespace) -> Path:
    path = Path(args.resume)
    return path / CHECKPOINT if path.is_dir() else path


def configure(args: argparse.Namespace, checkpoint: dict | None, ctx: distributed.Context):
    """The run's config and this process's device; raises ``Refused``."""
    try:
        cfg = resolve_config(args, checkpoint)
        # the folder actually read ($BP_TORCH_DATA's, or ./data), recorded in the config and the checkpoint
        cfg = dataclasses.replace(cfg, data_dir=str(resolve_data_root(cfg.data_dir).absolute()))
        if args.dry_run:
            cfg = dataclasses.replace(
                cfg, epochs=1, limit_train_batches=2, limit_test_batches=1, log_interval=1, grad_check_interval=1
            )
        distributed.local_batch_size(cfg.batch_size, ctx.world_size)
        device = distributed.local_device(cfg.device, ctx)
    except ValueError as e:
        raise Refused(str(e)) from None
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return cfg, device


def load_data(cfg: Config, device: torch.device, ctx: distributed.Context):
    try:
        return make_loaders(cfg, device, ctx.rank, ctx.world_size)
    except DatasetNotFoundError as e:
        raise Refused(missing_data(e, ctx)) from None
    except ValueError as e:  # a corrupt or truncated data file, labels or image sizes out of range
        raise Refused(f"cannot read the dataset: {e}") from None


def missing_data(e: DatasetNotFoundError, ctx: distributed.Context) -> str:
    """Two lines: where the data was looked for and what was expected there; what to do, in this CLI's flags."""
    raw = e.folders[0]
    looked = f"{e.dataset} not found: looked in {', '.join(map(str, e.folders))} for {' and '.join(e.files)} (or .gz)"
    elsewhere = f"copy the raw IDX files into {raw}, or point --data-dir at a folder that holds {e.dataset}/raw/"
    if ctx.world_size > 1:
        return (
            f"{looked}.\nProcesses under torchrun never download (each would write the same files): fetch the data "
            f"first with a plain run, python train.py --dry-run --data-dir {raw.parent.parent}, then start again."
        )
    if e.failure:
        return f"{looked}; downloading them failed ({e.failure}).\nRun again when online, {elsewhere}."
    return f"{looked}.\nRun again with --download to fetch them (needs internet), {elsewhere}."


def resume(path: Path, checkpoint: dict, model, optimizer, scheduler, steps: int) -> TrainState:
    try:
        return restore(checkpoint, model, optimizer, scheduler, steps)
    except CheckpointError as e:
        raise Refused(f"{path}: {e}") from None


def run_folder(args: argparse.Namespace, cfg: Config, resumed: bool) -> Path:
    """The resumed run's folder, or a new one (rank 0 only); a dry run's under <logdir>/dry-run/."""
    if resumed:
        return checkpoint_file(args).parent
    try:
        return new_run_dir(Path(args.logdir) / ("dry-run" if args.dry_run else ""), args.run_name, cfg)
    except OSError as e:
        raise Refused(f"cannot make a run folder: {e.strerror or e}") from None


def run(args: argparse.Namespace, ctx: distributed.Context, should_stop=None) -> int:
    """Prepare, train, report; returns the exit code. Under torchrun every rank runs it; rank 0 alone speaks."""
    checkpoint = run_dir = problem = None
    try:  # the same on every rank, but for the run folder (rank 0's)
        checkpoint = read_checkpoint(args, ctx)
        cfg, device = configure(args, checkpoint, ctx)
        train_loader, test_loader = load_data(cfg, device, ctx)
        model, optimizer, scheduler = build(cfg, device, train_loader)
        steps = steps_per_epoch(train_loader, cfg)
        state = resume(checkpoint_file(args), checkpoint, model, optimizer, scheduler, steps) if checkpoint else None
        run_dir = run_folder(args, cfg, checkpoint is not None) if ctx.is_main else None
    except Refused as e:
        problem = str(e)
    problem = distributed.first_error(problem)  # any rank's error stops them all, before any of them waits on it
    if problem is not None:
        if checkpoint is None and run_dir is not None:
            run_dir.rmdir()  # rank 0's new, still empty folder: a run that never started leaves none
            if args.dry_run and not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
        return fail(problem) if ctx.is_main else EXIT_ERROR
    resumed, state = checkpoint is not None, state or TrainState()
    if resumed and state.epoch == cfg.epochs:  # nothing left to train: say so, and write nothing
        if ctx.is_main:
            accuracy = state.metrics.get("test_accuracy", float("nan"))
            print(
                f"run {run_dir} is already complete: {state.epoch} of {cfg.epochs} epochs, test accuracy "
                f"{accuracy:.2%}; nothing to resume (start a new run to train more)"
            )
        return 0
    model = distributed.wrap(model)  # DistributedDataParallel under torchrun
    progress = ctx.is_main and sys.stderr.isatty()
    echo = print if ctx.is_main else lambda line: None
    if progress:
        from tqdm import tqdm

        echo = tqdm.write
    logger = None
    if ctx.is_main:
        from bp_torch.train.tensorboard import TensorBoardLogger

        # resuming at step s: hide what the interrupted session logged after its checkpoint (steps > s)
        logger = TensorBoardLogger(run_dir, probe_digits(test_loader), purge_step=state.step + 1 if resumed else None)
        if not resumed:
            # a dry run stays out of TensorBoard's hparams table, where real runs are compared
            logger.log_start(dataclasses.asdict(cfg), environment(device, run_dir, ctx.world_size), not args.dry_run)
        announce(cfg, distributed.unwrap(model), device, ctx, state, run_dir, resumed)
        report_backward_graph(distributed.unwrap(model), cfg, test_loader, logger)  # "backward graph: N nodes, ..."
    stop = StopOnSignal(escalate=not distributed.under_torchrun())
    try:
        with stop:
            asked = should_stop or stop
            watch = Watch(
                distributed.unwrap(model), cfg, logger=logger, progress=progress, echo=echo,
                should_stop=lambda state: distributed.any_rank(asked(state)),  # all ranks stop at the same step
                distributed=ctx.world_size > 1, device=device,
            )  # fmt: skip
            checkpoint_path = run_dir / CHECKPOINT if ctx.is_main else None
            result = fit(model, optimizer, scheduler, train_loader, test_loader, cfg, state,
                         checkpoint_path=checkpoint_path, watch=watch)  # fmt: skip
    except Interrupted:
        # torchrun stops every rank as soon as one exits non-zero: wait here until rank 0 has saved the checkpoint,
        # and exit with the same code on every rank (the signal that reached any of them)
        signum = distributed.largest(stop.signum)
        if ctx.is_main:
            by = f" by {signal.Signals(signum).name}" if signum else ""
            print(
                f"\ninterrupted{by} at epoch {state.epoch + 1}, step {state.step}; checkpoint saved. Continue with:\n"
                f"  {'python' if ctx.world_size == 1 else 'torchrun [its options]'} train.py --resume {run_dir}",
                flush=True,
            )
        return 128 + signum if signum else EXIT_INTERRUPTED
    except CheckpointError as e:  # only rank 0 writes: the others are stopped by torchrun when it exits
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if logger is not None:
            logger.close()
    if ctx.is_main:
        print(
            f"test accuracy {result.accuracy:.2%} (error {1 - result.accuracy:.2%}) on {result.count:,} images, "
            f"{state.epoch} epoch{'s' * (state.epoch != 1)} in {format_seconds(state.elapsed)}\n"
            f"run: {run_dir}\n"
            f"see it: tensorboard --logdir {run_dir.parent}",
            flush=True,
        )
    return 0


def announce(cfg: Config, model, device, ctx: distributed.Context, state: TrainState, run_dir: Path, resumed: bool):
    what = f"resuming {run_dir} at epoch {state.epoch + 1}, step {state.step}" if resumed else f"run {run_dir}"
    where = str(device)
    if ctx.world_size > 1:
        share = cfg.batch_size // ctx.world_size
        where = f"{ctx.world_size} processes on {device.type}, {share} images of each batch each"
    print(
        f"LeNet ({cfg.impl}, {model.count_parameters():,} parameters) on {cfg.dataset}, {where}: {what}\n"
        + textwrap.fill(" ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()), 120),
        flush=True,
    )


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}m{seconds:04.1f}s" if minutes else f"{seconds:.1f}s"


if __name__ == "__main__":
    sys.exit(main())
