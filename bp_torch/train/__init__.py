"""The training application: Note B's LeNet on MNIST, trained with the hand-derived backward and watched in
TensorBoard. Needs the ``train`` extra (``pip install "bp_torch[train]"``: torchvision, tensorboard, tqdm,
matplotlib); the library (``bp_torch`` without this subpackage) needs torch alone and never imports it.

Run it as ``python train.py`` or ``python -m bp_torch.train`` (``bp_torch.train.cli``). Modules, each importing
only those before it (tests/test_dependencies.py): ``data`` (IDX files, MNIST on the device; torch alone),
``distributed`` (torchrun's process group), ``config`` (the recipe: each setting once; the loaders, model and
optimizer it builds), ``checkpoint`` (atomic files), ``signals`` (Ctrl-C and SIGTERM stop at a step boundary),
``monitor`` (metrics, gradient check, reporting), ``loop`` (``fit``, ``TrainState``), ``resume`` (what a checkpoint
holds, checked before a resume), ``tensorboard``, ``cli``; and ``torchrun`` (``python -m bp_torch.train.torchrun``:
torchrun with a one-line Ctrl-C).
"""
