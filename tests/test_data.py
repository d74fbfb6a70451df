"""bp_torch.train.data: the IDX reader on files written here; the loader against DistributedSampler and itself."""

import gzip
import math
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import idx_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

import bp_torch.train.data as data
from bp_torch.train.data import DATASETS, DatasetNotFoundError, DeviceLoader, load_dataset, read_idx, shift_images

FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def write(path: Path, content: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def write_split(folder: Path, n_images: int, n_labels: int, gz: bool = False, train: bool = True):
    images = torch.randint(0, 256, (n_images, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n_labels,), dtype=torch.uint8)
    stem = "train" if train else "t10k"
    write(folder / f"{stem}-images-idx3-ubyte", idx_bytes(images), gz)
    write(folder / f"{stem}-labels-idx1-ubyte", idx_bytes(labels), gz)
    return images, labels


# ---- IDX files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(5, 28, 28), (7,), (2, 3, 4, 5), (0, 28, 28)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    t = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = read_idx(write(tmp_path / "x-idx-ubyte", idx_bytes(t), gz), ndim=len(shape))
    assert out.dtype == torch.uint8 and torch.equal(out, t)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_names_file_and_sizes(tmp_path, gz):
    content = idx_bytes(torch.zeros(10, 28, 28, dtype=torch.uint8))[:1234]
    path = write(tmp_path / "t10k-images-idx3-ubyte", content, gz)
    found = "found 1234 after gunzip" if gz else "found 1234"
    with pytest.raises(ValueError, match=f"{path.name}: expected 7856 bytes for 10x28x28 images, {found}"):
        read_idx(path)


def test_read_idx_too_long_and_cut_header(tmp_path):
    content = idx_bytes(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected 11 bytes for 3 labels, found 12"):
        read_idx(write(tmp_path / "long", content + b"\0"))
    with pytest.raises(ValueError, match="expected a 16-byte header for 3 dimensions, found 10 bytes"):
        read_idx(write(tmp_path / "short", idx_bytes(torch.zeros(1, 2, 2, dtype=torch.uint8))[:10]))


def test_read_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(torch.arange(100, dtype=torch.uint8)))[:-20])
    with pytest.raises(ValueError, match=f"{path.name}: corrupt or truncated gzip"):
        read_idx(path)


@pytest.mark.parametrize(
    "content, ndim, message",
    [
        (
            b"\x01\x02\x08\x01" + struct.pack(">I", 0),
            None,
            "magic number must start with 0x0000, got 0x01020801",
        ),
        (b"\0\0", None, "not an IDX file"),
        (
            idx_bytes(torch.zeros(2, dtype=torch.uint8), code=0x0D),
            None,
            r"dtype code must be 0x08 .* got 0x0d",
        ),
        (idx_bytes(torch.zeros(2, 2, dtype=torch.uint8)), 3, "expected an IDX file of 3 dimension"),
    ],
)
def test_read_idx_bad_header(tmp_path, content, ndim, message):
    path = write(tmp_path / "bad-idx-ubyte", content)
    with pytest.raises(ValueError, match=message) as e:
        read_idx(path, ndim)
    assert str(path) in str(e.value)


# ---- finding and loading a split ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "MNIST", "fashion-mnist", "Fashion_MNIST"])
@pytest.mark.parametrize("train", [True, False])
def test_load_dataset_from_torchvision_layout(tmp_path, name, train):
    folder = DATASETS[name.lower().replace("_", "-")].folder
    images, labels = write_split(tmp_path / folder / "raw", 6, 6, gz=not train, train=train)
    x, y = load_dataset(name, train=train, root=tmp_path)
    assert torch.equal(x, images) and torch.equal(y, labels.long()) and y.dtype == torch.int64


def test_load_dataset_count_mismatch(tmp_path):
    write_split(tmp_path / "MNIST" / "raw", 5, 4)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds 5 images but .* holds 4 labels"):
        load_dataset("mnist", root=tmp_path)


def test_load_dataset_unknown_name(tmp_path):
    with pytest.raises(ValueError, match=r"name must be one of \['fashion-mnist', 'mnist'\], but got name='cifar'"):
        load_dataset("cifar", root=tmp_path)


def test_missing_dataset_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mnist", train=False, root=tmp_path)
    assert isinstance(e.value, FileNotFoundError)
    message = str(e.value)
    for part in [str(tmp_path / "MNIST" / "raw"), "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        assert part in message
    for fix in ["--data-dir", "BP_TORCH_DATA", "download=True"]:
        assert fix in message
    assert "download into" not in message  # none was tried


def test_download_is_the_fallback(tmp_path, monkeypatch):
    calls = []
    # a stand-in for torchvision: no network, and no slow import
    torchvision = SimpleNamespace(datasets=SimpleNamespace())
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)

    def offline(root, train, download):
        calls.append((root, train, download))
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    torchvision.datasets.MNIST = offline
    with pytest.raises(DatasetNotFoundError, match="tried and failed: RuntimeError: Error downloading .* no network"):
        load_dataset("mnist", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]

    def online(root, train, download):  # torchvision leaves the raw files in <root>/MNIST/raw
        calls.append(root)
        write_split(Path(root) / "MNIST" / "raw", 3, 3, gz=True)

    torchvision.datasets.MNIST = online
    assert load_dataset("mnist", root=tmp_path, download=True)[0].shape == (3, 28, 28)
    assert load_dataset("mnist", root=tmp_path, download=True)[0].shape == (3, 28, 28)  # found: no download
    assert len(calls) == 2


@pytest.mark.parametrize("inner", ["MNIST", "MNIST/raw"])
def test_a_root_inside_the_dataset_names_the_root_meant(tmp_path, monkeypatch, inner):
    """A root pointing at MNIST/ or MNIST/raw/ is refused naming the folder above, and nothing is downloaded into it:
    torchvision would nest a second copy, <root>/MNIST/MNIST/raw."""
    write_split(tmp_path / "MNIST" / "raw", 3, 3)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # any download attempt would fail on the import
    with pytest.raises(DatasetNotFoundError, match=f"The root is MNIST's own folder: pass {tmp_path}, the folder") as e:
        load_dataset("mnist", root=tmp_path / inner, download=True)
    assert e.value.inside == tmp_path and e.value.failure is None
    assert sorted(p.name for p in (tmp_path / "MNIST").iterdir()) == ["raw"]


def test_extra_folders_are_searched(tmp_path, monkeypatch):
    write_split(tmp_path / "debian", 4, 4, gz=True, train=False)
    monkeypatch.setitem(DATASETS, "fashion-mnist", DATASETS["fashion-mnist"]._replace(also=(str(tmp_path / "debian"),)))
    assert load_dataset("fashion-mnist", train=False, root=tmp_path / "empty")[0].shape == (4, 28, 28)


def test_resolve_data_root(monkeypatch):
    monkeypatch.setenv("BP_TORCH_DATA", "/from/env")
    assert data.resolve_data_root("given") == Path("given")
    assert data.resolve_data_root() == Path("/from/env")
    monkeypatch.delenv("BP_TORCH_DATA")
    assert data.resolve_data_root() == Path("data")


# ---- DeviceLoader ------------------------------------------------------------------------------------------


def identity_data(n: int):
    """Images whose pixels are never 0 (so a shift shows), labels equal to the sample index."""
    return torch.randint(1, 256, (n, 28, 28), dtype=torch.uint8), torch.arange(n)


def epoch(loader: DeviceLoader, e: int | None = None, start_batch: int = 0) -> list[torch.Tensor]:
    if e is not None:
        loader.set_epoch(e, start_batch)
    return [y.cpu() for _, y in loader]


def test_loader_batches(device):
    images, labels = identity_data(50)
    loader = DeviceLoader(images, labels, 16, shuffle=True, mean=0.1307, std=0.3081, device=device)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    for x, y in batches:
        assert x.shape == (len(y), 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == y.device.type == torch.device(device).type
        expected = (images[y.cpu()].unsqueeze(1).float() / 255 - 0.1307) / 0.3081
        torch.testing.assert_close(x.cpu(), expected)
    x, _ = next(iter(DeviceLoader(images, labels, 50, device=device)))
    assert 0 < x.min() and x.max() <= 1  # default: pixels scaled to [0, 1]


def test_loader_each_sample_once_and_drop_last(device):
    images, labels = identity_data(103)
    loader = DeviceLoader(images, labels, 10, shuffle=True, device=device)
    order = torch.cat(epoch(loader, 0))
    assert sorted(order.tolist()) == list(range(103)) and len(loader) == 11
    loader = DeviceLoader(images, labels, 10, shuffle=True, drop_last=True, device=device)
    batches = epoch(loader, 0)
    assert len(loader) == len(batches) == 10 and all(len(y) == 10 for y in batches)
    assert torch.equal(torch.cat(batches), order[:100])  # drop_last drops the tail of the same order


def test_loader_order_fixed_by_seed_and_epoch(device):
    images, labels = identity_data(64)
    a, b = (DeviceLoader(images, labels, 8, shuffle=True, seed=1, shift=2, device=device) for _ in range(2))
    assert torch.equal(torch.cat(epoch(a, 3)), torch.cat(epoch(b, 3)))
    xa, xb = next(iter(a)), next(iter(b))
    assert torch.equal(xa[0], xb[0])  # the shifts too
    assert not torch.equal(torch.cat(epoch(a, 3)), torch.cat(epoch(a, 4)))
    c = DeviceLoader(images, labels, 8, shuffle=True, seed=2, device=device)
    assert not torch.equal(torch.cat(epoch(a, 3)), torch.cat(epoch(c, 3)))
    assert torch.equal(torch.cat(epoch(DeviceLoader(images, labels, 8, device=device))), labels)  # no shuffle


def test_loader_resumes_mid_epoch(device):
    images, labels = identity_data(70)
    loader = DeviceLoader(images, labels, 8, shuffle=True, shift=3, device=device)
    loader.set_epoch(5)
    full = [(x.cpu(), y.cpu()) for x, y in loader]
    loader.set_epoch(5, start_batch=6)
    assert len(loader) == len(full) - 6
    tail = [(x.cpu(), y.cpu()) for x, y in loader]
    assert len(tail) == 3 and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, full[6:], strict=True)
    )
    with pytest.raises(ValueError, match=r"start_batch must be in \[0, 9\], but got start_batch=10"):
        loader.set_epoch(5, start_batch=10)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 120),
    world_size=st.integers(1, 5),
    batch_size=st.integers(1, 17),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31),
    e=st.integers(0, 50),
)
def test_train_shards_are_distributed_samplers(device, n, world_size, batch_size, shuffle, seed, e):
    images, labels = identity_data(n)
    shards = []
    for rank in range(world_size):
        loader = DeviceLoader(
            images, labels, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, device=device
        )
        batches = epoch(loader, e)
        assert len(loader) == len(batches) == math.ceil(math.ceil(n / world_size) / batch_size)
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(e)
        shards.append(torch.cat(batches).tolist())
        assert shards[-1] == list(sampler)
    everything = sum(shards, [])
    assert set(everything) == set(range(n)) and len(everything) == math.ceil(n / world_size) * world_size
    if n % world_size == 0:
        assert sorted(everything) == list(range(n))  # disjoint


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 120),
    world_size=st.integers(1, 7),
    batch_size=st.integers(1, 17),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_eval_shards_cover_each_sample_once(device, n, world_size, batch_size, shuffle, seed):
    images, labels = identity_data(n)
    shards = []
    for rank in range(world_size):
        loader = DeviceLoader(
            images,
            labels,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            even_shards=False,
            device=device,
        )
        batches = epoch(loader, 0)
        assert len(loader) == len(batches) == math.ceil(loader.num_samples / batch_size)
        shards.append(torch.cat(batches).tolist() if batches else [])
    sizes = [len(s) for s in shards]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    order = sum(shards, [])  # contiguous: the shards in rank order are the epoch's order
    assert sorted(order) == list(range(n))
    if not shuffle:
        assert order == list(range(n))


def reference_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(dy, 0) : H + min(dy, 0), max(dx, 0) : W + min(dx, 0)] = x[
        ..., max(-dy, 0) : H - max(dy, 0), max(-dx, 0) : W - max(dx, 0)
    ]
    return out


def test_shift_images_is_a_translation(device):
    x = torch.randint(1, 256, (49, 5, 6), dtype=torch.uint8)
    shifts = torch.tensor([(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)])
    out = shift_images(x.to(device), shifts.to(device), 3).cpu()
    for b, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[b], reference_shift(x[b], dy, dx)), (dy, dx)
    assert torch.equal(shift_images(x, shifts.clamp(-1, 1), 4), shift_images(x, shifts.clamp(-1, 1), 1))


def test_loader_augmentation_is_an_integer_shift(device):
    images, labels = identity_data(40)
    loader = DeviceLoader(images, labels, 40, shuffle=True, shift=2, device=device)
    x, y = next(iter(loader))
    assert x.shape == (40, 1, 28, 28)
    pixels = (x.cpu() * 255).round().to(torch.uint8)[:, 0]
    seen = set()
    for img, i in zip(pixels, y.tolist(), strict=True):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(img, reference_shift(images[i], dy, dx))
        ]
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) > 5  # the shifts vary over the batch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(images=torch.zeros(4, 28, 28)), "images must be a non-empty uint8 tensor"),
        (dict(images=torch.zeros(0, 28, 28, dtype=torch.uint8), labels=torch.zeros(0)), "non-empty"),
        (dict(labels=torch.zeros(3)), r"labels must have shape \(4,\), but got shape=\(3,\)"),
        (dict(batch_size=0), "batch_size must be a positive integer, but got batch_size=0"),
        (dict(rank=2, world_size=2), r"rank must be in \[0, world_size\), but got rank=2, world_size=2"),
        (dict(world_size=0), "rank must be in"),
        (dict(shift=-1), "shift must be >= 0 and std > 0, but got shift=-1"),
        (dict(std=0.0), "std > 0"),
    ],
)
def test_loader_rejects_bad_arguments(kwargs, message):
    args = dict(images=torch.zeros(4, 28, 28, dtype=torch.uint8), labels=torch.zeros(4), batch_size=2) | kwargs
    with pytest.raises(ValueError, match=message):
        DeviceLoader(args.pop("images"), args.pop("labels"), args.pop("batch_size"), **args)


# ---- the real data sets ------------------------------------------------------------------------------------


def assert_mean_std(images: torch.Tensor, info) -> None:
    counts = torch.bincount(images.flatten(), minlength=256).double()  # exact moments from the pixel histogram
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / (counts.sum() - 1)).sqrt()
    assert (mean.item(), std.item()) == pytest.approx((info.mean, info.std), abs=1e-4)


def test_real_mnist(mnist_root):
    train_x, train_y = load_dataset("mnist", train=True, root=mnist_root)
    test_x, test_y = load_dataset("mnist", train=False, root=mnist_root)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert torch.equal(torch.unique(train_y), torch.arange(10)) and torch.equal(torch.unique(test_y), torch.arange(10))
    assert_mean_std(train_x, DATASETS["mnist"])


DEBIAN_FASHION = Path(DATASETS["fashion-mnist"].also[0])


@pytest.mark.skipif(
    not all((DEBIAN_FASHION / f"{f}.gz").is_file() for f in FILES),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_debian_package(tmp_path):
    train_x, train_y = load_dataset("fashion-mnist", train=True, root=tmp_path)  # empty root: Debian's folder
    test_x, _ = load_dataset("fashion-mnist", train=False, root=tmp_path)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert torch.equal(torch.bincount(train_y), torch.full((10,), 6000))
    assert_mean_std(train_x, DATASETS["fashion-mnist"])


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_header_claiming_more_than_a_dataset_holds_is_refused_before_reading(tmp_path, gz):
    """A crafted header (65536x65536 images, 4 GiB) over a gzip bomb or a sparse file: refused from the header, before
    any of its body is read or decompressed (the whole file used to be read, then unzipped, then checked)."""
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 65536, 65536, 1)
    body = gzip.compress(header + bytes(2**20)) if gz else header + bytes(16)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(body)
    with pytest.raises(ValueError, match=f"{path.name}: its header declares 65536x65536x1 images, 4294967296 bytes"):
        read_idx(path, ndim=3)


def test_a_data_file_that_cannot_be_read_is_named_in_one_line(fake_data, tmp_path, capsys, monkeypatch):
    """A permission or I/O error (OSError) while reading: train.py's one line names the file, exit 2."""
    from helpers import train_args

    from bp_torch.train import cli as train

    def unreadable(path, ndim=None):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data, "read_idx", unreadable)
    code = train.main(train_args(fake_data, tmp_path, "--dry-run", "--no-download"))
    err = capsys.readouterr().err.strip()
    assert code == train.EXIT_ERROR and "\n" not in err and "Permission denied" in err and "ubyte" in err, err
