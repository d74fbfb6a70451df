"""Train Note B's LeNet on MNIST with the hand-derived backward: ``python train.py --help``.

The command line lives in ``bp_torch/train/cli.py`` (also ``python -m bp_torch.train``); it needs the training
extra: ``pip install -e ".[train]"``.
"""

import sys

from bp_torch.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
