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
import contextlib
import dataclasses
import difflib
import os
import platform
import re
import signal
import sys
import textwrap
from datetime import datetime
from functools import partial
from pathlib import Path

import torch

import bp_torch
from bp_torch.train import distributed
from bp_torch.train.checkpoint import CheckpointError
from bp_torch.train.config import PRESETS, Config, build, config_from_dict, make_loaders, steps_per_epoch, validate
from bp_torch.train.data import DatasetNotFoundError, resolve_data_root
from bp_torch.train.loop import TrainState, fit
from bp_torch.train.monitor import Watch, report_backward_graph
from bp_torch.train.resume import load_training_checkpoint, restore, save_training_checkpoint
from bp_torch.train.signals import Interrupted, StopOnSignal

CHECKPOINT = "checkpoint.pt"
# a stop asked by a signal exits with 128 + its number, as a shell reports a process it ended: 130 for Ctrl-C
# (SIGINT), 143 for SIGTERM; EXIT_INTERRUPTED for a stop asked otherwise (should_stop)
EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130
SETTINGS = dataclasses.fields(Config)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage), naming the flag meant when one is misspelled."""

    def error(self, message: str) -> None:
        flags = [option for action in self._actions for option in action.option_strings]
        typos = re.findall(r"(?<!\S)--?[\w-]+", message) if message.startswith("unrecognized arguments") else []
        meant = [m for typo in typos for m in difflib.get_close_matches(typo, flags, n=1)]
        hint = f"; did you mean {' or '.join(meant)}?" if meant else " (--help lists the flags)"
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: a flag for each ``Config`` field, made from its metadata, and four of the run's own."""
    parser = Parser(
        prog="train.py",  # as every message of the run is signed, also under python -m bp_torch.train
        description="Train Note B's 3,898-parameter LeNet on MNIST with hand-derived backpropagation.",
        epilog="Defaults are the default preset's; '--preset seed' changes those marked 'seed:'. "
        "Flags given explicitly override the preset. Scale out with 'torchrun --nproc_per_node=N train.py ...': "
        "DistributedDataParallel over N processes (one GPU each, or gloo on CPU), the same recipe and schedule. "
        "Exit codes: 0 done (or already complete); 1 a checkpoint could not be written; 2 bad arguments, missing or "
        "corrupt data or checkpoint; 130 Ctrl-C, 143 SIGTERM, each after saving a checkpoint.",
    )
    for f in SETTINGS:  # default SUPPRESS: only the flags given override the preset
        default, seeded, meta = f.default, getattr(PRESETS["seed"], f.name), f.metadata
        seeded = f"; seed: {seeded}" if seeded != default and f.name != "preset" else ""
        note = "" if default is None else f" (default: {default}{seeded})"
        kind = {"bool": {"action": argparse.BooleanOptionalAction}, "int": {"type": int}, "float": {"type": float}}
        choices = {"choices": meta["choices"]} if meta["choices"] else {}
        parser.add_argument(
            flag(f.name),
            help=meta["help"] + note,
            default=argparse.SUPPRESS,
            metavar=meta["metavar"] or ("N" if f.type == "int" else None),
            **kind.get(f.type, {}),
            **choices,
        )
    parser.add_argument("--logdir", default="runs", help="folder of TensorBoard runs (default: runs)")
    parser.add_argument(
        "--run-name",
        help="this run's folder under --logdir; never overwritten: a suffix is added if "
        "it exists (default: date-time-preset-impl, then each setting given that differs from the "
        "preset, e.g. -rule=fa-lr=0.1)",
    )
    parser.add_argument(
        "--resume",
        metavar="PATH",
        help="continue a run from its checkpoint (file or run folder); "
        "flags that would change the weights are refused. Under torchrun rank 0 reads it and sends it "
        "to the others; any world size may resume any run",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="1 epoch of 2 training batches and 1 test batch, "
        "logging every step: a quick end-to-end check. Its run goes to <logdir>/dry-run/, without "
        "hparams, apart from real runs",
    )
    return parser


def given_settings(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in SETTINGS if hasattr(args, f.name)}


def resolve_config(args: argparse.Namespace, checkpoint: dict | None) -> Config:
    """The preset (or the checkpoint's config), overridden by the flags given; raises ValueError naming the flag."""
    given = given_settings(args)
    if checkpoint is None:
        return validate(dataclasses.replace(PRESETS[given.get("preset", "default")], **given), flag)
    cfg = config_from_dict(checkpoint["config"])
    for f in SETTINGS:
        if f.name in given and not f.metadata["runtime"] and given[f.name] != getattr(cfg, f.name):
            raise ValueError(
                f"{flag(f.name)} cannot change when resuming: the run has {getattr(cfg, f.name)!r}, "
                f"got {given[f.name]!r}. Start a new run instead."
            )
    return validate(dataclasses.replace(cfg, **given), flag)


def run_name(args: argparse.Namespace, cfg: Config) -> str:
    """date-time-preset-impl, then each setting given that changes the weights and differs from the preset (the rule,
    the learning rate ...), so that runs tell themselves apart in TensorBoard's list."""
    preset, given = PRESETS[cfg.preset], given_settings(args)
    changed = [
        f"-{f.name.replace('_', '-')}={given[f.name]}"
        for f in SETTINGS
        if f.name in given
        and not f.metadata["runtime"]
        and f.name not in ("preset", "impl")
        and given[f.name] != getattr(preset, f.name)
    ]
    return f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.preset}-{cfg.impl}" + "".join(changed)


def new_run_dir(logdir: Path, name: str) -> Path:
    """A fresh folder ``logdir/name``, with -2, -3 ... if taken."""
    for i in range(1, 10_000):
        path = logdir / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)  # atomic: two runs started together get different folders
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder named {name}[-N] in {logdir}")


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


def run(args: argparse.Namespace, ctx: distributed.Context, should_stop=None) -> int:
    """Prepare, start reporting, train; the exit code. Under torchrun every rank runs it; rank 0 alone speaks."""
    try:
        job = prepare(args, ctx)
    except Refused as e:
        return fail(str(e)) if ctx.is_main else EXIT_ERROR
    if job.state.epoch == job.cfg.epochs:  # a finished run resumed: nothing left to train; say so, write nothing
        if ctx.is_main:
            accuracy = job.state.metrics.get("test_accuracy", float("nan"))
            print(
                f"run {job.run_dir} is already complete: {job.state.epoch} of {job.cfg.epochs} epochs, test accuracy "
                f"{accuracy:.2%}; nothing to resume (start a new run to train more)"
            )
        return 0
    try:
        logger = start_reporting(job, args, ctx) if ctx.is_main else None
    except OSError as e:  # a full disk, a folder gone: TensorBoard's first writes
        return fail(f"cannot write the run's logs in {job.run_dir}: {_os_error(e)}")
    try:
        return train(job, ctx, logger, should_stop)
    except OSError as e:  # TensorBoard's writes during training (a checkpoint's own failure is CheckpointError)
        print(f"train.py: error: {_os_error(e)}; the last checkpoint saved is intact", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if logger is not None:
            with contextlib.suppress(OSError):  # the same full disk: said above
                logger.close()


def _os_error(e: OSError) -> str:
    return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")


class Refused(Exception):
    """Why a run cannot start, for the user: bad arguments, missing or corrupt data or checkpoint."""


@dataclasses.dataclass
class Job:
    """A run ready to train: what ``prepare`` made, the same on every rank but ``run_dir`` (rank 0's, else None)."""

    cfg: Config
    device: torch.device
    train_loader: object
    test_loader: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainState
    resumed: bool
    run_dir: Path | None


def prepare(args: argparse.Namespace, ctx: distributed.Context) -> Job:
    """Read the checkpoint, settle the config, load the data, build the model, restore; raises ``Refused`` on every
    rank if any rank cannot start (before any of them waits on it), leaving no folder behind."""
    checkpoint = run_dir = problem = None
    try:
        checkpoint = read_checkpoint(args, ctx)
        cfg, device = configure(args, checkpoint, ctx)
        train_loader, test_loader = load_data(cfg, device, ctx)
        steps = steps_per_epoch(train_loader, cfg)
        model, optimizer, scheduler = build(cfg, device, steps)
        state = restore_checked(checkpoint, model, optimizer, scheduler, steps) if checkpoint else None
        run_dir = run_folder(args, cfg, checkpoint is not None) if ctx.is_main else None
    except Refused as e:
        problem = str(e)
    except CheckpointError as e:  # restore's: the checkpoint does not fit the model, optimizer or schedule built
        problem = f"{checkpoint_file(args)}: {e}"
    problem = distributed.first_error(problem)  # any rank's error stops them all
    if problem is not None:
        if checkpoint is None and run_dir is not None:
            run_dir.rmdir()  # rank 0's new, still empty folder: a run that never started leaves none
            if args.dry_run and not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
        raise Refused(problem)
    resumed = checkpoint is not None
    return Job(
        cfg, device, train_loader, test_loader, model, optimizer, scheduler, state or TrainState(), resumed, run_dir
    )


# what torch raises on a checkpoint it can unpickle but not use (meta or sparse tensors, an RNG state that is not
# one, nesting past the recursion limit, a number out of a tensor's range)
UNREADABLE = (RuntimeError, ValueError, TypeError, NotImplementedError, RecursionError, OverflowError)


def read_checkpoint(args: argparse.Namespace, ctx: distributed.Context) -> dict | None:
    """The checkpoint to resume from, read by rank 0 alone (on several machines only its disk has it) and sent to
    the others; every rank takes part in the broadcast, error or not, so that none is left waiting in it."""
    if args.resume is not None and not args.resume.strip():
        raise Refused("--resume needs a checkpoint file or a run folder, but got an empty path")
    if args.dry_run and args.resume:
        raise Refused("--dry-run cannot be combined with --resume: it would change the run's schedule")
    checkpoint = problem = None
    if args.resume and ctx.is_main:
        path = checkpoint_file(args)
        try:
            if path.name != CHECKPOINT and (path.parent / CHECKPOINT).exists():  # the run continues in its folder
                raise CheckpointError(
                    f"{path}: resuming it would overwrite {path.parent / CHECKPOINT}, another checkpoint beside it; "
                    f"copy {path.name} into a folder of its own as {CHECKPOINT}, and resume that folder"
                )
            checkpoint = load_training_checkpoint(path)
        except CheckpointError as e:
            problem = str(e)
        except UNREADABLE as e:
            problem = f"{path}: not a checkpoint train.py can read: {_first_line(e)}"
    checkpoint, problem = distributed.broadcast((checkpoint, problem))
    if problem is not None:
        raise Refused(problem)
    return checkpoint


def restore_checked(checkpoint: dict, model, optimizer, scheduler, steps: int):
    """``restore``, with what torch itself refuses while loading (an RNG state that is not one, a value out of a
    tensor's range) raised as a ``CheckpointError``: the run has not started, nothing is lost."""
    try:
        return restore(checkpoint, model, optimizer, scheduler, steps)
    except CheckpointError:
        raise
    except UNREADABLE as e:
        raise CheckpointError(f"does not restore: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


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
        distributed.local_batch_size(cfg.batch_size, ctx.world_size, flag("batch_size"))
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
    except OSError as e:  # permissions, an I/O error: the file named
        raise Refused(f"cannot read the dataset: {_os_error(e)}") from None


def missing_data(e: DatasetNotFoundError, ctx: distributed.Context) -> str:
    """Where the data was looked for and what was expected there; what to do, in this CLI's flags."""
    raw = e.folders[0]
    if e.inside is not None:
        return (
            f"the data folder {raw.parent.parent} is inside the dataset: pass --data-dir {e.inside}, the folder that "
            f"holds {e.dataset}/raw/"
        )
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


def run_folder(args: argparse.Namespace, cfg: Config, resumed: bool) -> Path:
    """The resumed run's folder, or a new one (rank 0 only); a dry run's under <logdir>/dry-run/."""
    if resumed:
        return checkpoint_file(args).parent
    name = args.run_name
    if name and (Path(name).name != name or name == ".."):  # a path ("../x", "/abs", "a/b") or the parent
        raise Refused(f"--run-name must be a folder's name inside --logdir, not a path, but got {name!r}")
    try:
        return new_run_dir(
            Path(args.logdir) / ("dry-run" if args.dry_run else ""), args.run_name or run_name(args, cfg)
        )
    except OSError as e:
        raise Refused(f"cannot make a run folder: {e.strerror or e}") from None


def start_reporting(job: Job, args: argparse.Namespace, ctx: distributed.Context):
    """Rank 0's TensorBoard logger, the config and environment logged, the run announced and its backward audited."""
    from bp_torch.train.tensorboard import TensorBoardLogger

    # resuming at step s: hide what the interrupted session logged after its checkpoint (steps > s)
    purge = job.state.step + 1 if job.resumed else None
    logger = TensorBoardLogger(job.run_dir, probe_digits(job.test_loader), purge_step=purge)
    if not job.resumed:  # a dry run stays out of TensorBoard's hparams table, where real runs are compared
        logger.log_start(
            dataclasses.asdict(job.cfg), environment(job.device, job.run_dir, ctx.world_size), not args.dry_run
        )
    announce(job, ctx)
    report_backward_graph(job.model, job.cfg, job.test_loader, logger)  # "backward graph: N nodes, ..."
    return logger


def train(job: Job, ctx: distributed.Context, logger, should_stop=None) -> int:
    """Fit to the last epoch, checkpointing after each (rank 0); returns the exit code, after a stop included."""
    model = distributed.wrap(job.model)  # DistributedDataParallel under torchrun
    stop = StopOnSignal(escalate=not distributed.under_torchrun())
    watch = watcher(job, ctx, logger, should_stop or stop)
    save = lambda state: None  # noqa: E731
    if ctx.is_main:
        save = partial(
            save_training_checkpoint, job.run_dir / CHECKPOINT, job.model, job.optimizer, job.scheduler, job.cfg
        )
    loaders = job.train_loader, job.test_loader
    try:
        with stop:
            result = fit(model, job.optimizer, job.scheduler, *loaders, job.cfg, job.state, watch=watch, save=save)
    except Interrupted:
        return interrupted(job, ctx, distributed.largest(stop.signum))
    except CheckpointError as e:  # only rank 0 writes: the others are stopped by torchrun when it exits
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if ctx.is_main:
        print(
            f"test accuracy {result.accuracy:.2%} (error {1 - result.accuracy:.2%}) on {result.count:,} images, "
            f"{job.state.epoch} epoch{'s' * (job.state.epoch != 1)} in {format_seconds(job.state.elapsed)}\n"
            f"run: {job.run_dir}\nsee it: tensorboard --logdir {job.run_dir.parent}",
            flush=True,
        )
    return 0


def watcher(job: Job, ctx: distributed.Context, logger, should_stop) -> Watch:
    """What reports the training of ``job``: rank 0's progress bar (on a terminal), lines and logger."""
    progress = ctx.is_main and sys.stderr.isatty()
    echo = print if ctx.is_main else lambda line: None
    if progress:
        from tqdm import tqdm

        echo = tqdm.write
    return Watch(
        job.model,
        job.cfg,
        logger=logger,
        progress=progress,
        echo=echo,
        device=job.device,
        should_stop=lambda state: distributed.any_rank(should_stop(state)),  # all ranks stop at the same step
        distributed=ctx.world_size > 1,
    )


def interrupted(job: Job, ctx: distributed.Context, signum: int) -> int:
    """Say where the run stopped and how to continue it; the exit code of the signal that reached any rank.

    torchrun stops every rank as soon as one exits non-zero: every rank waits for rank 0's checkpoint (in ``fit``)
    and exits with the same code."""
    if ctx.is_main:
        by = f" by {signal.Signals(signum).name}" if signum else ""
        where = f"at epoch {job.state.epoch + 1}, step {job.state.step}"
        print(
            f"\ninterrupted{by} {where}; checkpoint saved. Continue with:\n"
            f"  {'python' if ctx.world_size == 1 else 'torchrun [its options]'} train.py --resume {job.run_dir}",
            flush=True,
        )
    return 128 + signum if signum else EXIT_INTERRUPTED


def announce(job: Job, ctx: distributed.Context) -> None:
    cfg, state, device = job.cfg, job.state, job.device
    what = (
        f"resuming {job.run_dir} at epoch {state.epoch + 1}, step {state.step}" if job.resumed else f"run {job.run_dir}"
    )
    where = str(device)
    if ctx.world_size > 1:
        share = cfg.batch_size // ctx.world_size
        where = f"{ctx.world_size} processes on {device.type}, {share} images of each batch each"
    print(
        f"LeNet ({cfg.impl}, {job.model.count_parameters():,} parameters) on {cfg.dataset}, {where}: {what}\n"
        + textwrap.fill(" ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()), 120),
        flush=True,
    )


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}m{seconds:04.1f}s" if minutes else f"{seconds:.1f}s"


if __name__ == "__main__":
    sys.exit(main())
