"""``python -m bp_torch.train``: the same command line as ``python train.py``."""

import sys

from bp_torch.train.cli import main

sys.exit(main())
