"""MNIST and Fashion-MNIST as uint8 tensors on the device, shuffled, batched, normalised and augmented there.

Each split is read once from raw IDX files (torchvision's layout, ``.gz`` or not) into a ``(N, 28, 28)`` uint8
tensor and moved once to the device; every batch is then one gather on the device, with no per-sample Python::

    images, labels = load_dataset("mnist", train=True, root=resolve_data_root(args.data_dir))
    info = DATASETS["mnist"]
    loader = DeviceLoader(images, labels, 64, shuffle=True, seed=0, mean=info.mean, std=info.std, shift=2,
                          device="cuda", rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:  # x (B, 1, 28, 28) float32, y (B,) int64, both on the device
            ...
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F


class DatasetInfo(NamedTuple):
    folder: str  # torchvision's folder under the data root, and its dataset class name
    mean: float  # pixel mean and std of the training split, pixels scaled to [0, 1]
    std: float
    also: tuple[str, ...] = ()  # further folders searched for the raw files


DATASETS = {
    "mnist": DatasetInfo("MNIST", 0.1307, 0.3081),
    # Debian's dataset-fashion-mnist package installs the four gzipped IDX files here
    "fashion-mnist": DatasetInfo("FashionMNIST", 0.2860, 0.3530, ("/usr/share/datasets/fashion-mnist",)),
}
IMAGE_SIZE, NUM_CLASSES = (28, 28), 10  # both datasets: 28x28 grey digits (or garments) of 10 classes
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A split's raw IDX files are in none of the folders searched, and no download was allowed or worked.

    Besides its message (spelled for the Python API), it says what was looked for, so that a command line can word
    its own advice: ``dataset`` (torchvision's folder name), ``split`` (``"train"`` or ``"test"``), ``folders``
    searched (the first is where a download goes), ``files`` expected there, ``failure``: why a download tried
    failed (one line), or None if none was tried; and ``inside``: the root to give instead when the root given is
    the dataset's own folder or its ``raw/`` (then nothing is downloaded: it would nest a second copy), else None.
    """

    def __init__(
        self,
        dataset: str,
        split: str,
        folders: list[Path],
        files: tuple[str, ...],
        failure: str | None,
        inside: Path | None = None,
    ) -> None:
        self.dataset, self.split, self.folders, self.files, self.failure = dataset, split, folders, files, failure
        self.inside = inside
        tried = f" A download into {folders[0]} was tried and failed: {failure}." if failure else ""
        advice = (
            f"the root is {dataset}'s own folder: pass {inside}, the folder that holds {dataset}/raw/"
            if inside
            else f"put the raw IDX files in {folders[0]}, point --data-dir (or BP_TORCH_DATA) at a folder that "
            f"holds {dataset}/raw/, or allow a download (download=True) when online"
        )
        super().__init__(
            f"{dataset} {split} split not found: looked for {' and '.join(f'{n}[.gz]' for n in files)} in "
            f"{', '.join(map(str, folders))}.{tried} {advice[0].upper()}{advice[1:]}."
        )


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$BP_TORCH_DATA`` if set, else ``./data``."""
    return Path(root if root is not None else os.environ.get("BP_TORCH_DATA") or "data").expanduser()


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (gzipped or not) into a uint8 tensor of the shape its header gives.

    Args:
        path: the file; gzip is recognised by its magic bytes, not by the name.
        ndim: if given, the number of dimensions the header must declare (3 for images, 1 for labels).

    Raises ``ValueError`` naming the file and the fault: bad gzip stream, bad magic number, a dtype code other
    than 0x08, the wrong number of dimensions, or a size that disagrees with the header (truncated or padded).

    Example::

        >>> read_idx("MNIST/raw/t10k-images-idx3-ubyte", ndim=3).shape
        torch.Size([10000, 28, 28])
    """
    path = Path(path)
    with open(path, "rb") as file:
        unzipped = file.read(2) == b"\x1f\x8b"
        file.seek(0)
        if not unzipped:
            return _read_idx(file, path, ndim, os.fstat(file.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=file) as stream:
                return _read_idx(stream, path, ndim, None)
        except (EOFError, OSError, zlib.error) as e:  # EOFError: truncated; BadGzipFile, zlib.error: corrupt
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None


# the most an IDX file read here may hold (MNIST's training images: 47 MB): a header's claim beyond it is refused
# before anything is read, so that a crafted file (a gzip bomb, a sparse file) cannot exhaust the memory
MAX_IDX_BYTES = 2**30


def _read_idx(stream, path: Path, ndim: int | None, file_size: int | None) -> torch.Tensor:
    """The IDX values read from ``stream`` (plain, of ``file_size`` bytes, or decompressing: None), the header first,
    then no more than it declares and one byte (which tells a padded file)."""
    unzipped = file_size is None
    magic = stream.read(4)
    # magic number: two zero bytes, dtype code, number of dimensions; then one big-endian uint32 per dimension
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise ValueError(f"{path}: not an IDX file: its magic number must start with 0x0000, got 0x{magic.hex()}")
    code, nd = magic[2], magic[3]
    if code != 0x08:
        raise ValueError(f"{path}: IDX dtype code must be 0x08 (unsigned byte), but got 0x{code:02x}")
    if ndim is not None and nd != ndim:
        raise ValueError(f"{path}: expected an IDX file of {ndim} dimension(s), but its header declares {nd}")
    header = 4 + 4 * nd
    dims = stream.read(4 * nd)
    if len(dims) < 4 * nd:
        found = 4 + len(dims) if unzipped else file_size
        raise ValueError(f"{path}: expected a {header}-byte header for {nd} dimensions, found {found} bytes")
    shape = struct.unpack(f">{nd}I", dims)
    count, what = math.prod(shape), {1: "labels", 3: "images"}.get(nd, "values")
    size = header + count
    if count > MAX_IDX_BYTES:
        raise ValueError(
            f"{path}: its header declares {'x'.join(map(str, shape))} {what}, {count} bytes: more than the "
            f"{MAX_IDX_BYTES} an IDX file read here may hold"
        )
    if file_size is not None and file_size != size:
        raise ValueError(f"{path}: expected {size} bytes for {'x'.join(map(str, shape))} {what}, found {file_size}")
    body = stream.read(count + 1)
    if len(body) != count:
        found = f"{header + len(body)} after gunzip" if len(body) < count else f"more than {size} after gunzip"
        raise ValueError(f"{path}: expected {size} bytes for {'x'.join(map(str, shape))} {what}, found {found}")
    if count == 0:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _find(folders: list[Path], names: tuple[str, ...]) -> list[Path] | None:
    """The first folder holding every one of ``names``, each plain or ``.gz``: their paths."""
    for folder in folders:
        paths = [next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None) for n in names]
        if all(paths):
            return paths
    return None


def load_dataset(
    name: str = "mnist", train: bool = True, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of MNIST or Fashion-MNIST from its raw IDX files, on the CPU.

    Searches ``<root>/<folder>/raw`` (``MNIST`` or ``FashionMNIST``, torchvision's layout), then, for
    Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist``. Only when the files are in none of them and
    ``download`` is set does torchvision download them into ``<root>/<folder>/raw``.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``, a key of ``DATASETS`` (case and ``_`` for ``-`` forgiven).
        train: the 60,000-image training split if True, else the 10,000-image test split.
        root: the data folder; ``None`` resolves it with ``resolve_data_root`` ($BP_TORCH_DATA, else ./data).
        download: let torchvision download missing files (needs internet).

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    Raises:
        DatasetNotFoundError: the files are missing and could not be downloaded; the message says where.
        ValueError: a file is corrupt or truncated, or images and labels disagree.

    Example::

        >>> images, labels = load_dataset("mnist", train=False, root="../shared/data")
        >>> images.shape, labels.shape
        (torch.Size([10000, 28, 28]), torch.Size([10000]))
    """
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, but got name={name!r}")
    info, root, names = DATASETS[key], resolve_data_root(root), _FILES[train]
    folders = [root / info.folder / "raw", *map(Path, info.also)]
    paths, failure = _find(folders, names), None
    # a root named after the dataset, or its raw/: the user meant the folder above it
    here = root.absolute()
    inside = [p.parent for p in (here, here.parent) if p.name == info.folder and here.name in (p.name, "raw")]
    if paths is None and inside:
        raise DatasetNotFoundError(info.folder, "train" if train else "test", folders, names, None, inside[0])
    if paths is None and download:
        failure = _download(info.folder, root, train)
        paths = _find(folders, names)
        if paths is None and failure is None:
            failure = "torchvision finished but left no files there"
    if paths is None:
        raise DatasetNotFoundError(info.folder, "train" if train else "test", folders, names, failure)
    return _read_split(*paths)


def _read_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images and labels, checked against each other and the datasets' image size and classes."""
    paths = images_path, labels_path
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    N, H, W = images.shape
    if (H, W) != IMAGE_SIZE:
        raise ValueError(f"{paths[0]}: images must be {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, but it holds {N} of {H}x{W}")
    if N == 0:
        raise ValueError(f"{paths[0]} holds no images")
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels")
    wrong = (labels >= NUM_CLASSES).nonzero()
    if len(wrong):
        i = int(wrong[0])
        raise ValueError(
            f"{paths[1]}: labels must be in 0..{NUM_CLASSES - 1}, but {len(wrong)} are not "
            f"(label {i} is {int(labels[i])})"
        )
    return images, labels.long()


def _download(folder: str, root: Path, train: bool) -> str | None:
    """Let torchvision fetch the dataset into ``root/folder/raw``; None if it did, else why not, in one line.

    A failed download leaves nothing behind: the folders it made for the files, ``root``'s missing parents
    included, are removed again.
    """
    raw = (root / folder / "raw").absolute()
    made = ([p for p in (raw, *raw.parents) if not p.exists()] or [None])[-1]  # the outermost folder it will make
    try:
        import torchvision  # only for a download: reading the files needs none of it

        getattr(torchvision.datasets, folder)(str(root), train=train, download=True)
        return None
    except Exception as e:  # offline: URLError, RuntimeError("Error downloading ...") ...
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[-1] if lines else ""  # torchvision's last line is the network's own error
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        return f"{type(e).__name__}: {reason[:160]}" if reason else type(e).__name__


def shift_images(images: torch.Tensor, shifts: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by its own whole number of pixels, filling the uncovered border with zeros.

    ``out[b, i, j] = images[b, i - dy_b, j - dx_b]`` (zero outside): one pad and one gather for the batch.

    Args:
        images: ``(B, H, W)``, any dtype.
        shifts: ``(B, 2)`` integer ``(dy, dx)`` per image, each in ``[-max_shift, max_shift]``.
        max_shift: the padding; at least the largest ``|shift|``.
    """
    B, H, W = images.shape
    k, dev = max_shift, images.device
    padded = F.pad(images, (k, k, k, k)).reshape(B, -1)  # (B, (H + 2k) * (W + 2k))
    rows = (k - shifts[:, :1]) + torch.arange(H, device=dev)  # (B, H)
    cols = (k - shifts[:, 1:]) + torch.arange(W, device=dev)  # (B, W)
    flat = rows[:, :, None] * (W + 2 * k) + cols[:, None, :]  # (B, H, W), into the padded rows
    return padded.gather(1, flat.reshape(B, -1)).reshape(B, H, W)


class DeviceLoader:
    """Batches of a uint8 image tensor held on the device: shuffled, sharded, normalised and shifted there.

    An epoch's order is ``torch.randperm(N)`` drawn on the CPU from a generator seeded with ``seed + epoch``
    (the draw ``DistributedSampler`` makes, so every rank draws the same one) and moved to the device once per
    epoch; each batch is then one gather, one optional shift and one normalisation on the device.

    Sharding over ``world_size`` ranks:

    - ``even_shards=True`` (training): exactly ``DistributedSampler(shuffle=shuffle, seed=seed)``: the order
      is padded by repeating its start to a multiple of ``world_size`` and rank ``r`` takes positions
      ``r, r + world_size, ...``; every rank gets ``ceil(N / world_size)`` samples, a few of them twice over.
    - ``even_shards=False`` (evaluation): the order is cut into ``world_size`` contiguous pieces whose sizes
      differ by at most one (``torch.tensor_split``), so summed over ranks every sample counts exactly once.

    Args:
        images: uint8 ``(N, H, W)``; moved to ``device`` once, here.
        labels: ``(N,)`` integer class indices; moved once, as int64.
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: a fresh permutation each epoch, else the order of the data.
        seed: base of the per-epoch seed ``seed + epoch``; use the same on every rank.
        drop_last: drop this rank's last batch if it is smaller than ``batch_size``.
        rank, world_size: this process's shard, as in ``DistributedSampler``.
        even_shards: ``DistributedSampler``'s padded shards (True) or contiguous, non-repeating ones (False).
        mean, std: output ``(x / 255 - mean) / std``; the defaults keep pixels in ``[0, 1]``. ``DATASETS`` has
            the usual values (MNIST 0.1307, 0.3081).
        shift: augment by translating each image by a random integer ``(dy, dx)`` in ``[-shift, shift]``
            (0: off); the shifts are drawn with the order, so they too are fixed by ``(seed, epoch)``.
        device: where the data lives and batches are made; ``None`` keeps ``images.device``.

    ``len(loader)`` is the number of batches the next iteration yields: ``ceil`` (``floor`` if ``drop_last``)
    of the shard size over ``batch_size``, less the batches skipped by ``set_epoch(epoch, start_batch)``.

    Example::

        >>> loader = DeviceLoader(images, labels, 256, shuffle=True, seed=0, shift=2, device="cuda")
        >>> loader.set_epoch(3, start_batch=100)  # resume epoch 3 where a checkpoint left it
        >>> x, y = next(iter(loader))  # batch 100 of epoch 3: x (256, 1, 28, 28) float32, y (256,) int64
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool = True,
        mean: float = 0.0,
        std: float = 1.0,
        shift: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 3 or len(images) == 0:
            raise ValueError(
                f"images must be a non-empty uint8 tensor of shape (N, H, W), but got dtype={images.dtype}, "
                f"shape={tuple(images.shape)}"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), but got shape={tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, but got batch_size={batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), but got rank={rank}, world_size={world_size}")
        if shift < 0 or std <= 0:
            raise ValueError(f"shift must be >= 0 and std > 0, but got shift={shift}, std={std}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size, self.even_shards = rank, world_size, even_shards
        self.mean, self.std, self.shift = mean, std, shift
        self.epoch, self.start_batch = 0, 0

    @property
    def num_samples(self) -> int:
        """This rank's shard size."""
        N, W = len(self.images), self.world_size
        return math.ceil(N / W) if self.even_shards else N // W + (self.rank < N % W)

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch of this rank's shard."""
        n, bs = self.num_samples, self.batch_size
        return n // bs if self.drop_last else math.ceil(n / bs)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Give the next iterations the order (and shifts) of ``epoch``, starting at batch ``start_batch``.

        Call it before each epoch, as with ``DistributedSampler``; a ``start_batch`` > 0 resumes an epoch
        exactly where a checkpoint left it, and lasts until the next ``set_epoch``.
        """
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in [0, {self.num_batches}], but got start_batch={start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's sample indices for the epoch, and their shifts, on the device."""
        N, W, bs = len(self.images), self.world_size, self.batch_size
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(N, generator=g) if self.shuffle else torch.arange(N)
        if self.even_shards:
            total = math.ceil(N / W) * W
            order = order.repeat(math.ceil(total / N))[:total]  # DistributedSampler's padding
            positions = torch.arange(self.rank, total, W)
        else:
            positions = torch.tensor_split(torch.arange(N), W)[self.rank]
        # shifts drawn for the whole epoch on every rank, then sharded with the order: fixed by (seed, epoch)
        k = self.shift
        shifts = torch.randint(-k, k + 1, (len(order), 2), generator=g) if k else None
        positions = positions[self.start_batch * bs : self.num_batches * bs]
        order = order[positions].to(self.device)
        return order, (shifts[positions].to(self.device) if shifts is not None else None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, shifts = self._plan()
        scale, offset = 1.0 / (255.0 * self.std), self.mean / self.std
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.images.index_select(0, idx)  # (B, H, W) uint8
            if shifts is not None:
                x = shift_images(x, shifts[i : i + self.batch_size], self.shift)
            x = x.unsqueeze(1).float().mul_(scale).sub_(offset)  # (B, 1, H, W) float32
            yield x, self.labels.index_select(0, idx)
