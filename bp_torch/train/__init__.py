"""The training application: Note B's LeNet on MNIST, trained with the hand-derived backward and watched in
TensorBoard. Needs the ``train`` extra (``pip install "bp_torch[train]"``: torchvision, tensorboard, tqdm,
matplotlib); the library (``bp_torch`` without this subpackage) needs torch alone and never imports it.

Run it as ``python train.py`` or ``python -m bp_torch.train`` (``bp_torch.train.cli``). Modules, each importing
only those before it: ``distributed`` (torchrun's process group), ``data`` (MNIST on the device), ``config`` (the
recipe), ``checkpoint`` (atomic files, checked before a resume), ``monitor`` (metrics, gradient check, reporting),
``loop`` (``fit``), ``tensorboard``, ``signals`` (Ctrl-C and SIGTERM stop at a step boundary), ``cli``; and
``torchrun`` (``python -m bp_torch.train.torchrun``: torchrun with a one-line Ctrl-C).
"""
