"""Reporting a run: running metrics, the hand-derived-vs-native gradient check, the backward graph's audit at the
start, and everything the loop reports (TensorBoard scalars and images, the progress bar, the epoch line, stop
requests) in one object the loop calls per step."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from bp_torch.audit import Audit, audit_backward
from bp_torch.feedback import alignment, exact
from bp_torch.models import LeNet
from bp_torch.train.config import Config, Loss
from bp_torch.train.distributed import all_reduce_sum, rank
from bp_torch.train.signals import Interrupted

__all__ = ["Running", "grad_check", "Watch", "report_backward_graph"]


class Running:
    """Sums of the loss, the correct predictions and the samples of the batches added since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count

    @staticmethod
    def of(loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One batch's sums, to ``add`` to several ``Running``s."""
        correct = (logits.argmax(1) == target).sum().double()
        n = torch.ones_like(correct) * len(target)
        return torch.stack([loss.detach().double() * len(target), correct, n])

    def add(self, sums: torch.Tensor) -> None:
        self.sums += sums

    def totals(self, distributed: bool = False) -> list[float]:
        """The sums over every rank if ``distributed`` (a collective), as floats; no reset."""
        sums = self.sums.clone()
        if distributed:
            all_reduce_sum(sums)
        return sums.tolist()

    def mean(self, distributed: bool = False) -> tuple[float, float, int]:
        """``(mean loss, accuracy, samples)`` over every rank if ``distributed`` (a collective), then reset."""
        loss_sum, correct, count = self.totals(distributed)
        self.sums.zero_()
        return loss_sum / max(count, 1), correct / max(count, 1), int(count)


def grad_check(
    model: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, reference_loss_fn: Loss
) -> dict[str, float]:
    """Gradients of the loss on one batch from the hand-derived ``model`` and from native autograd in ``reference``.

    ``reference`` (``LeNet(impl="native")``) is given ``model``'s weights first. Returns, per parameter tensor,
    ``max|g_manual − g_native| / max|g_native|``: the largest difference relative to the gradient's scale, about
    1e-7 in float32 when the derivation holds. Neither model's ``.grad`` is touched.
    """
    reference.load_state_dict(dict(model.named_parameters()))  # not a backward rule's feedback buffers
    names, params = zip(*model.named_parameters())
    with exact():  # under a backward rule, the hand-derived exact gradient: the rule is measured by alignment()
        grads = torch.autograd.grad(loss_fn(model(x), y), params)
    reference_grads = torch.autograd.grad(reference_loss_fn(reference(x), y), list(reference.parameters()))
    tiny = torch.finfo(x.dtype).tiny
    return {
        name: ((g - r).abs().max() / r.abs().max().clamp_min(tiny)).item()
        for name, g, r in zip(names, grads, reference_grads)
    }


def report_backward_graph(model: nn.Module, cfg: Config, loader, logger=None, echo=print) -> Audit:
    """Audit the training step on a few images of ``loader``'s first batch; print one line (``backward graph: N
    nodes, all hand-derived ...`` or the native nodes) and log it with its table to TensorBoard."""
    x, y = next(iter(loader))
    report, kernels = audit_backward(model, Loss.of(cfg), x[:8], y[:8])
    ran = f"{len(kernels)} aten *_backward kernels ran" if kernels else "no aten *_backward kernel ran"
    line = f"{report}; {ran}"
    echo(line)
    if logger is not None:
        logger.log_backward_graph(line, report.table())
    return report


class Watch:
    """What the training loop reports and obeys, step by step; on ranks other than 0 it only counts and obeys.

    Args:
        model: the plain module being trained (not its DistributedDataParallel wrapper).
        cfg: the run's config (intervals, loss, impl, epochs).
        logger: a ``bp_torch.train.tensorboard.TensorBoardLogger`` (or anything with its methods), or None.
        should_stop: polled after every step and before each epoch; True raises ``Interrupted``.
        progress: show a tqdm bar per epoch.
        echo: receives one summary line per epoch.
        distributed: the training metrics are summed over the ranks (every rank must then call alike).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        *,
        logger=None,
        should_stop: Callable[..., bool] = lambda state: False,
        progress: bool = False,
        echo: Callable[[str], None] = print,
        distributed: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.model, self.cfg, self.logger, self.should_stop = model, cfg, logger, should_stop
        self.progress, self.echo, self.distributed = progress, echo, distributed
        device = device or next(model.parameters()).device
        self.interval, self.epoch = Running(device), Running(device)  # since the last log; the epoch so far
        self.in_epoch, self.carried = False, 0
        self.reference = None
        self.loss_fn = Loss.of(cfg)
        if logger is not None and cfg.grad_check_interval and cfg.impl == "manual":
            with torch.random.fork_rng(devices=[]):  # its weights are model's at each check: no draw from the run's
                self.reference = LeNet("native").to(next(model.parameters()).device)
            self.reference_loss_fn = Loss.of(cfg, "native")
        self.bar = None

    def check_stop(self, state) -> None:
        """Raise ``Interrupted`` if a stop is asked, with the epoch's sums so far in ``state`` for its checkpoint."""
        if self.should_stop(state):
            if self.in_epoch:
                state.train_sums = self.epoch.totals(self.distributed)
            raise Interrupted

    def start_epoch(self, state, steps: int) -> None:
        self.interval.sums.zero_()
        self.epoch.sums.zero_()
        # resumed mid-epoch: the sums of the batches before the checkpoint, counted once (on rank 0) over the ranks
        if state.batch and rank() == 0:
            self.epoch.sums.copy_(torch.tensor(state.train_sums, dtype=torch.float64))
        self.carried, self.in_epoch = state.train_sums[2] if state.batch else 0, True
        self.tick = time.perf_counter()
        if self.progress:
            from tqdm import tqdm

            desc = f"epoch {state.epoch + 1:>{len(str(self.cfg.epochs))}}/{self.cfg.epochs}"
            self.bar = tqdm(total=steps, initial=state.batch, desc=desc, unit="batch", leave=False)

    def before_step(self, state, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.reference is not None and state.step % self.cfg.grad_check_interval == 0:
            # on rank 0 alone, through the plain module: autograd.grad, no DDP hook, no collective
            differences = grad_check(self.model, self.reference, x, y, self.loss_fn, self.reference_loss_fn)
            self.logger.log_grad_check(state.step, differences)
            if self.cfg.rule != "backprop":
                self.logger.log_alignment(state.step, alignment(self.model, x, y, self.loss_fn))

    def after_step(self, state, loss: torch.Tensor, logits, y, lr: float) -> None:
        sums = Running.of(loss, logits, y)
        self.interval.add(sums)
        self.epoch.add(sums)
        if self.bar is not None:
            self.bar.update()
        if self.cfg.log_interval and state.step % self.cfg.log_interval == 0:
            mean_loss, accuracy, count = self.interval.mean(self.distributed)
            now = time.perf_counter()
            if self.logger is not None:
                self.logger.log_train(state.step, mean_loss, accuracy, lr, count / (now - self.tick))
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{accuracy:.2%}")
            self.tick = now
        self.check_stop(state)

    def end_epoch(self, state, result, train_time: float) -> None:
        """Report the epoch: its training metrics over all its batches, a resumed session's included."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        loss, accuracy, count = self.epoch.mean(self.distributed)
        self.in_epoch, state.train_sums = False, [0.0, 0.0, 0.0]
        if self.logger is not None:
            self.logger.log_epoch(state.step, state.epoch, result, train_time, self.model)
            self.logger.log_error_maps(state.step, self.model, self.loss_fn)
        self.echo(
            f"epoch {state.epoch:>{len(str(self.cfg.epochs))}}/{self.cfg.epochs}  "
            f"train loss {loss:.4f} acc {accuracy:.2%}  "
            f"test loss {result.loss:.4f} acc {result.accuracy:.2%}  "
            f"{train_time:.1f}s {(count - self.carried) / train_time:,.0f} img/s"
        )
