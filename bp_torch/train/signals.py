"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM (``kill``, ``timeout``, a scheduler's preemption).

The first signal asks training to stop at the next step boundary, where it saves a checkpoint; the run then exits
with 128 + the signal's number — 130 for SIGINT, 143 for SIGTERM — the code a shell reports for a process the signal
ended. A second signal stops at once (SIGINT as ``KeyboardInterrupt``, SIGTERM by its default action); the last
checkpoint saved is intact either way, its writes being atomic.
"""

from __future__ import annotations

import signal

__all__ = ["StopOnSignal", "Interrupted"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped at a step boundary on request (Ctrl-C, SIGTERM); the state is consistent and checkpointed."""


class StopOnSignal:
    """Within ``with``, record the first SIGINT or SIGTERM; calling the object (``stop(state)``) says whether one came.

    Args:
        escalate: let a second signal stop the process at once. Off under torchrun: its launcher forwards the
            signal it gets to every worker, so one Ctrl-C in a terminal reaches each worker twice, and it kills
            the workers itself if they have not exited after its grace period.
    """

    def __init__(self, escalate: bool = True) -> None:
        self.signum, self.escalate = 0, escalate

    def __call__(self, state=None) -> bool:
        return bool(self.signum)

    def __enter__(self) -> StopOnSignal:
        def handler(signum, frame):
            self.signum = self.signum or signum
            if self.escalate:  # the next one: KeyboardInterrupt for SIGINT, the default (death) for SIGTERM
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

        self.previous = {s: signal.signal(s, handler) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self.previous.items():
            # under torchrun, once stopping, the launcher's forwarded copy of the signal must not cut short the
            # checkpoint's collectives or the exit: ignored to the end (the launcher kills after its grace period)
            signal.signal(s, signal.SIG_IGN if self.signum and not self.escalate else previous)
