"""Train Note B's LeNet on MNIST with the hand-derived backward: ``python train.py --help``.

The command line lives in ``bp_torch/train/cli.py`` (also ``python -m bp_torch.train``); it needs the training
extra: ``pip install -e ".[train]"``. Exit codes: 0 done (or the run was already complete); 1 a checkpoint could
not be written (the previous one is kept); 2 bad arguments, missing or corrupt data or checkpoint; 130 stopped by
Ctrl-C (SIGINT) and 143 by SIGTERM, each after saving a checkpoint at the next step boundary.
"""

import os
import signal
import sys

# Ctrl-C while torch is still being imported is remembered, not raised: a KeyboardInterrupt raised inside a
# library's import can be swallowed by its error handling, and the run would then start as if nothing had happened
_interrupted = []
signal.signal(signal.SIGINT, lambda signum, frame: _interrupted.append(signum))
try:
    from bp_torch.train.cli import main
finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if _interrupted:  # nothing has started, nothing is written
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # torchrun passes on its own copy of the Ctrl-C: one line, no more
    if os.environ.get("RANK", "0") == "0":
        print("train.py: interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
