"""Tests of farm_sweep.data on the real files in the data folder (FARM_DATA_DIR, else ../shared/data)."""

from __future__ import annotations

import gzip
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from farm_sweep import data
from farm_sweep.data import DataError, load_dataset, resolve_data_dir
from farm_sweep.integrity import file_sha256

REPO = Path(__file__).resolve().parents[1]
GOOD = np.zeros((3, 784), np.float32)
MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


@pytest.fixture(scope="session", autouse=True)
def data_dir() -> Iterator[Path]:
    """The real data folder: FARM_DATA_DIR, or <repo>/../shared/data when unset. Never skipped."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get(data.DATA_DIR_ENV):
            mp.setenv(data.DATA_DIR_ENV, str(REPO.parent / "shared" / "data"))
        mp.delenv(data.SKIP_CHECKSUMS_ENV, raising=False)
        folder = resolve_data_dir()
        assert folder.is_dir(), f"data folder {folder} is missing; set {data.DATA_DIR_ENV}"
        yield folder


def _values(t: torch.Tensor) -> set[float]:
    return set(torch.unique(t).tolist())


def _is_binary(t: torch.Tensor) -> bool:
    """Only 0s and 1s, both present (cheaper than torch.unique on 39M values)."""
    return bool(((t == 0) | (t == 1)).all()) and t.min().item() == 0 and t.max().item() == 1


def _copy_to(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _write_npz(folder: Path, **arrays: np.ndarray) -> Path:
    path = folder / "binarized_mnist" / "binarized_mnist.npz"
    path.parent.mkdir(parents=True)
    np.savez_compressed(path, **arrays)
    return path


# ------------------------------------------------------------------ data folder and checksums


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert resolve_data_dir() == tmp_path / "data"


def test_known_checksums_match_sha256sums(data_dir: Path) -> None:
    listed = dict(line.split()[::-1] for line in (data_dir / "SHA256SUMS").read_text().splitlines() if line)
    assert listed == data.KNOWN_SHA256


# ------------------------------------------------------------------ digits


@pytest.mark.parametrize("split,n", [("train", 1257), ("valid", 180), ("test", 360)])
def test_digits_splits(split: str, n: int, tmp_path: Path) -> None:
    ds = load_dataset("digits", split, tmp_path / "no-files-needed")
    assert ds.images.shape == (n, 64) and ds.images.dtype == torch.float32
    assert _values(ds.images) == {0.0, 1.0}
    assert ds.labels is not None and ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert set(ds.labels.tolist()) == set(range(10))
    assert (ds.height, ds.width, ds.channels, ds.binary) == (8, 8, 1, True)


def test_digits_split_fixed_and_a_partition() -> None:
    from sklearn.datasets import load_digits

    splits = [load_dataset("digits", s) for s in data.SPLITS]
    # Pinned: the split must never change between versions.
    assert splits[2].labels[:10].tolist() == [7, 9, 4, 7, 0, 2, 6, 1, 3, 1]
    assert splits[1].labels[:10].tolist() == [1, 9, 9, 7, 1, 8, 5, 0, 8, 7]
    full = load_digits()
    whole = Counter(zip(map(bytes, (full.data >= 8).astype(np.uint8)), full.target.tolist(), strict=True))
    parts = Counter()
    for ds in splits:
        parts.update(zip(map(bytes, ds.images.numpy().astype(np.uint8)), ds.labels.tolist(), strict=True))
    assert parts == whole and sum(parts.values()) == 1797


# ------------------------------------------------------------------ binarized_mnist


@pytest.mark.parametrize("split,n", [("train", 50000), ("valid", 10000), ("test", 10000)])
def test_binarized_mnist_splits(split: str, n: int) -> None:
    ds = load_dataset("binarized_mnist", split)
    assert ds.images.shape == (n, 784) and ds.images.dtype == torch.float32
    assert _is_binary(ds.images)
    assert ds.labels is None
    assert (ds.height, ds.width, ds.channels, ds.binary, ds.name, ds.split) == (
        28, 28, 1, True, "binarized_mnist", split
    )


def test_returned_tensors_are_fresh_copies() -> None:
    first = load_dataset("binarized_mnist", "valid")
    first.images.fill_(7.0)
    assert _values(load_dataset("binarized_mnist", "valid").images) == {0.0, 1.0}


# ------------------------------------------------------------------ mnist


@pytest.mark.parametrize("split,n", [("train", 50000), ("valid", 10000), ("test", 10000)])
def test_mnist_static_splits(split: str, n: int) -> None:
    ds = load_dataset("mnist", split)
    assert ds.images.shape == (n, 784) and ds.images.dtype == torch.float32
    assert _is_binary(ds.images) and ds.binary
    assert ds.labels is not None and ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert set(ds.labels.tolist()) == set(range(10))


def test_mnist_train_and_valid_partition_the_60k() -> None:
    train = load_dataset("mnist", "train", binarize="dynamic")
    valid = load_dataset("mnist", "valid", binarize="dynamic")
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the canonical first training labels
    assert len(train.labels) + len(valid.labels) == 60000


def test_mnist_dynamic_and_threshold() -> None:
    grey = load_dataset("mnist", "test", binarize="dynamic")
    assert grey.images.dtype == torch.float32 and not grey.binary
    assert grey.images.min() == 0.0 and grey.images.max() == 1.0 and len(_values(grey.images)) == 256
    thr = load_dataset("mnist", "test", binarize="threshold")
    assert thr.binary and torch.equal(thr.images, (grey.images >= 128 / 255 - 1e-6).float())
    assert torch.equal(thr.labels, grey.labels)


def test_mnist_static_binarization_reproducible_and_seeded() -> None:
    a = load_dataset("mnist", "test", seed=0).images
    data._static_bits.cache_clear()
    b = load_dataset("mnist", "test", seed=0).images
    c = load_dataset("mnist", "test", seed=1).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    grey = load_dataset("mnist", "test", binarize="dynamic").images
    assert abs(a.mean().item() - grey.mean().item()) < 2e-3  # Bernoulli(pixel/255) keeps the mean
    assert torch.all(a[grey == 0] == 0) and torch.all(a[grey == 1] == 1)


# ------------------------------------------------------------------ cifar10


@pytest.mark.parametrize("split,n", [("train", 9000), ("valid", 1000), ("test", 1000)])
def test_cifar10_splits(split: str, n: int) -> None:
    ds = load_dataset("cifar10", split)
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels is not None and ds.labels.dtype == torch.int64
    assert set(ds.labels.tolist()) == set(range(10))
    assert (ds.height, ds.width, ds.channels, ds.binary) == (32, 32, 3, False)


def test_cifar10_official_folder_and_extra_batches(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").symlink_to(data_dir / "cifar10" / "data_batch_1.bin")
    (folder / "data_batch_2.bin").symlink_to(data_dir / "cifar10" / "data_batch_1.bin")
    (folder / "test_batch.bin").symlink_to(data_dir / "cifar10" / "test_batch_first1000.bin")
    assert load_dataset("cifar10", "train", tmp_path).images.shape == (19000, 3, 32, 32)
    valid = load_dataset("cifar10", "valid", tmp_path)
    reference = load_dataset("cifar10", "valid")  # last 1,000 of batch 1 == last 1,000 of the copy
    assert torch.equal(valid.images, reference.images) and torch.equal(valid.labels, reference.labels)
    assert load_dataset("cifar10", "test", tmp_path).images.shape == (1000, 3, 32, 32)


def test_cifar10_bad_size(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "data_batch_1.bin").symlink_to(data_dir / "cifar10" / "data_batch_1.bin")
    (folder / "test_batch.bin").write_bytes(b"\x00" * (3073 * 2 + 5))  # no known checksum: size check
    with pytest.raises(DataError, match=r"test_batch\.bin.*multiple of the 3073-byte"):
        load_dataset("cifar10", "test", tmp_path)


# ------------------------------------------------------------------ missing files


@pytest.mark.parametrize(
    "name,files",
    [
        ("binarized_mnist", ["binarized_mnist.npz"]),
        ("mnist", MNIST_FILES),
        ("cifar10", ["data_batch_1.bin", "test_batch_first1000.bin", "cifar-10-batches-bin", "cifar10"]),
    ],
)
def test_missing_files_message(name: str, files: list[str], tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, "train", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "passed as data_dir" in message
    assert all(f in message for f in files)
    assert "FARM_DATA_DIR" in message and "http" in message


def test_missing_folder_from_env_names_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"(?s)nowhere.*from FARM_DATA_DIR"):
        load_dataset("mnist", "test")


# ------------------------------------------------------------------ checksums and corrupt files


def test_checksum_mismatch_names_file_and_sums(tmp_path: Path, data_dir: Path) -> None:
    for name in MNIST_FILES[2:]:
        _copy_to(data_dir / "mnist" / name, tmp_path / "mnist" / name)
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    _flip_byte(bad, 100)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", tmp_path)
    message = str(info.value)
    assert str(bad) in message and data.KNOWN_SHA256["mnist/t10k-labels-idx1-ubyte.gz"] in message
    assert "actual" in message and "re-download" in message


def test_truncated_npz_fails_checksum_first_then_format(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = (data_dir / "binarized_mnist" / "binarized_mnist.npz").read_bytes()
    path = _write_npz(tmp_path, test_data=GOOD)
    path.write_bytes(real[: len(real) // 2])
    with pytest.raises(DataError, match="checksum mismatch") as info:  # what the user sees by default
        load_dataset("binarized_mnist", "test", tmp_path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match=r"not a readable \.npz") as info:
        load_dataset("binarized_mnist", "test", tmp_path, verify=False)
    assert str(path) in str(info.value)
    monkeypatch.setenv(data.SKIP_CHECKSUMS_ENV, "1")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_dataset("binarized_mnist", "test", tmp_path)


@pytest.mark.parametrize(
    "test_data,pattern",
    [
        (np.zeros((4, 100), np.float32), r"test_data has shape \(4, 100\)"),
        (np.full((2, 784), 0.5, np.float32), r"only 0 and 1.*0\.5"),
        (None, r"key 'test_data' is missing"),
    ],
)
def test_bad_npz_contents(test_data: np.ndarray | None, pattern: str, tmp_path: Path) -> None:
    arrays = {"train_data": GOOD, "valid_data": GOOD}
    if test_data is not None:
        arrays["test_data"] = test_data
    _write_npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=pattern):
        load_dataset("binarized_mnist", "test", tmp_path, verify=False)
    with pytest.raises(DataError, match="checksum mismatch"):  # with checksums on, the sum fails first
        load_dataset("binarized_mnist", "test", tmp_path)


def test_bad_idx_magic_and_truncated_gzip(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "mnist"
    _copy_to(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    images = folder / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + bytes(16)))
    with pytest.raises(DataError, match="bad IDX magic number 00000903"):
        load_dataset("mnist", "test", tmp_path, verify=False)
    real = (data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    images.write_bytes(real[:1000])
    with pytest.raises(DataError, match=r"not a readable gzip") as info:
        load_dataset("mnist", "test", tmp_path, verify=False)
    assert str(images) in str(info.value)


# ------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"name": "fashion", "split": "train"}, r"unknown dataset 'fashion'; allowed: digits, binarized"),
        ({"name": "mnist", "split": "val"}, r"unknown split 'val'; allowed: train, valid, test"),
        ({"name": "mnist", "split": "test", "binarize": "otsu"}, r"unknown binarize 'otsu'; allowed: static"),
        ({"name": "digits", "split": "test", "binarize": "dynamic"}, r"applies only to 'mnist'"),
        ({"name": "mnist", "split": "test", "seed": -1}, r"seed must be in"),
    ],
)
def test_bad_requests(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_dataset(**kwargs)


# ------------------------------------------------------------------ your own data (DatasetSpec)


LABELS = {"train": "train_labels", "valid": "valid_labels", "test": "test_labels"}


def _own_npz(folder: Path, name: str = "mine.npz", **changes: np.ndarray) -> Path:
    """A small valid npz of binary 10x12 images with labels; `changes` replace or add arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("valid", 10), ("test", 10)):
        arrays[f"{split}_data"] = rng.integers(0, 2, (n, 10, 12), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, n)
    path = folder / name
    np.savez(path, **{**arrays, **changes})
    return path


def _spec(folder: Path, **fields: object) -> data.DatasetSpec:
    return data.DatasetSpec.from_value({"path": "mine.npz", "shape": [10, 12], **fields}, folder)


def test_spec_reads_every_split_with_labels_and_round_trips(tmp_path: Path) -> None:
    path = _own_npz(tmp_path, valid_data=np.ones((10, 120), np.float32))  # flattened rows work too
    spec = _spec(tmp_path, labels=LABELS)
    assert spec.path == str(path) and data.DatasetSpec.from_value(spec.to_dict()) == spec
    with np.load(path) as arrays:
        for split in data.SPLITS:
            ds = load_dataset(spec, split)
            assert ds.images.shape == (len(arrays[f"{split}_data"]), 120) and ds.images.dtype == torch.float32
            assert np.array_equal(ds.images.numpy(), arrays[f"{split}_data"].reshape(len(ds.images), -1))
            assert ds.labels.tolist() == arrays[f"{split}_labels"].tolist()
            assert (ds.height, ds.width, ds.channels, ds.binary, ds.name) == (10, 12, 1, True, "mine.npz")
    assert load_dataset(_spec(tmp_path), "test").labels is None
    assert data.spec_sha256(spec) == file_sha256(path)


def test_spec_path_is_relative_to_its_base_or_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert data.DatasetSpec.from_value({"path": "mine.npz", "shape": [1, 1]}).path == str(tmp_path / "mine.npz")
    assert _spec(tmp_path / "studies").path == str(tmp_path / "studies" / "mine.npz")


def test_spec_colour_images_stay_8_bit(tmp_path: Path) -> None:
    colour = np.random.default_rng(1).integers(0, 256, (4, 3, 10, 12), dtype=np.uint8)
    _own_npz(tmp_path, train_data=colour, valid_data=colour, test_data=colour)
    ds = load_dataset(_spec(tmp_path, channels=3), "valid")
    assert ds.images.dtype == torch.uint8 and np.array_equal(ds.images.numpy(), colour) and not ds.binary


def test_spec_checksum_is_checked_when_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _own_npz(tmp_path)
    assert load_dataset(_spec(tmp_path, sha256=file_sha256(path).upper()), "train").images.shape == (30, 120)
    wrong = _spec(tmp_path, sha256="0" * 64)
    with pytest.raises(DataError, match=r"(?s)checksum mismatch for .*mine\.npz.*0{64}.*set sha256 to the actual"):
        load_dataset(wrong, "train")
    monkeypatch.setenv(data.SKIP_CHECKSUMS_ENV, "1")
    assert load_dataset(wrong, "train").images.shape == (30, 120)


@pytest.mark.parametrize("fields,pattern", [
    ({"shape": [28]}, r"^shape: \[28\] must be the images' \[height, width\]"),
    ({"channels": 2}, r"^channels: 2 is not supported; choose one of 1, 3"),
    ({"format": "png"}, r"^format: 'png' is not supported; choose one of npz"),
    ({"keys": {"train": "a", "valid": "b"}}, r"^keys: .* must map train, valid and test"),
    ({"labels": ["y"]}, r"^labels: \['y'\] must map train, valid and test .*train_labels"),
    ({"sha256": "abc"}, r"^sha256: 'abc' must be 64 hexadecimal digits"),
    ({"chanels": 3}, r"^'chanels': unknown key of a dataset spec; allowed: format, path"),
    ({"path": ""}, r"^path: '' must be the npz file's path"),
    ({"path": "mine\x00.npz"}, r"^path: 'mine\\x00\.npz' is not a usable path \(embedded null byte\)"),
])
def test_spec_fields_are_checked(fields: dict, pattern: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=pattern):
        _spec(tmp_path, **fields)


@pytest.mark.parametrize("changes,fields,pattern", [
    ({"valid_data": np.zeros((10, 10, 14))}, {},
     r"keys\.valid: images of shape \(10, 10, 14\); shape \[10, 12\] with channels 1 needs \(N, 10, 12\) or "
     r"\(N, 120\).*every split images of that one size"),
    ({"test_data": np.full((10, 10, 12), 0.5)}, {}, r"keys\.test: 1200 values other than allowed \(e\.g\. 0\.5\).*"
     r"only 0 and 1 \(MADE models binary pixels\)"),
    ({}, {"keys": {"train": "train_data", "valid": "valid", "test": "test_data"}},
     r"keys\.valid: the file holds no array 'valid' \(it holds: train_data, train_labels.*set keys\.valid"),
    ({"valid_labels": np.zeros(9, np.int64)}, {"labels": LABELS},
     r"labels\.valid: labels of shape \(9,\).*one per image of the split \(10\)"),
    ({}, {"channels": 3}, r"keys\.train: images of shape \(30, 10, 12\); shape \[10, 12\] with channels 3 needs "
     r"\(N, 3, 10, 12\)"),
    ({"train_data": np.full((30, 10, 12), "1")}, {}, r"keys\.train: images of dtype <U1; they must be numbers"),
])
def test_spec_file_contents_are_checked(changes: dict, fields: dict, pattern: str, tmp_path: Path) -> None:
    path = _own_npz(tmp_path, **changes)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(_spec(tmp_path, **fields), "train")  # any split: the whole file is checked at once
    assert str(info.value).startswith(f"{path}: ")


def test_spec_file_missing_or_not_an_npz(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"mine\.npz: no such file \(the dataset spec's path\); correct the path"):
        load_dataset(_spec(tmp_path), "train")
    (tmp_path / "mine.npz").write_text("pixels,label\n0,1\n")
    with pytest.raises(DataError, match=r"mine\.npz is not a readable \.npz archive \(ValueError: not a zip.*savez"):
        load_dataset(_spec(tmp_path), "train")
    np.save(tmp_path / "mine.npy", GOOD)
    (tmp_path / "mine.npy").rename(tmp_path / "mine.npz")
    with pytest.raises(DataError, match=r"not a readable \.npz archive"):
        load_dataset(_spec(tmp_path), "train")
