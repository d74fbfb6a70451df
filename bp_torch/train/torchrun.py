"""``python -m bp_torch.train.torchrun [torchrun's options] train.py ...``: torchrun, with a one-line Ctrl-C.

torchrun answers Ctrl-C (SIGINT) or SIGTERM by forwarding the signal to every worker — each stops at the next step
boundary, rank 0 saves a checkpoint and says how to resume — and then raises the signal as an exception of its own:
some 25 lines of traceback and exit code 1. This runs torchrun's own ``main`` unchanged (the same options, the same
launcher) and ends that last part in one line and the signal's exit code, 130 for SIGINT and 143 for SIGTERM, as
``train.py`` itself exits. (A Ctrl-C in the second or two while Python imports torch, before any worker has
started, is still Python's own KeyboardInterrupt: ``python -m`` imports the package before this module runs.)
"""

from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main as torchrun

__all__ = ["main"]

# torchrun's warnings that it got a signal and is passing it on: the workers' own lines say what it led to
_FORWARDING = ("Received %s death signal", "Sending process %s closing signal")


def _not_forwarding(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_FORWARDING)


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv`` (default: the command line); returns the exit code."""
    for name in ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).addFilter(_not_forwarding)
    try:
        torchrun(argv)
    except SignalException as e:
        print(f"torchrun: stopped by {e.sigval.name}; its workers were passed the signal first", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
