"""Load the project's image datasets: digits, binarized_mnist, mnist and cifar10, and your own images in
an npz file described by a `DatasetSpec`.

See docs/data.md for the splits, the binarization modes, the data folder, the checksums and the spec.
Order of checks for every file: present -> sha256 (files with a known checksum, or the spec's) -> format.
Parsed arrays are cached in-process, keyed by the file's resolved path, mtime and size;
every call returns fresh tensors, so callers may modify them in place.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farm_sweep.integrity import file_sha256

DATASETS = ("digits", "binarized_mnist", "mnist", "cifar10")
SPLITS = ("train", "valid", "test")
BINARIZE_MODES = ("static", "dynamic", "threshold")
DATA_DIR_ENV = "FARM_DATA_DIR"
SKIP_CHECKSUMS_ENV = "FARM_SKIP_CHECKSUMS"

# sha256 of the standard files, keyed by path relative to the data folder (copied from SHA256SUMS).
# Files of the full CIFAR-10 release not listed here (data_batch_2..5.bin, test_batch.bin) are
# checked by size and format only.
KNOWN_SHA256: dict[str, str] = {
    "mnist/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "mnist/train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "binarized_mnist/binarized_mnist.npz": "27859dad7af92771d06273c929a7dfb136cedfc280f13dfc677b9933b1133138",
    "cifar10/batches.meta.txt": "2ce042b1e0b48db4bb214408e6414ba18b2731c24af244f2d6c112fddf31af00",
    "cifar10/data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "cifar10/test_batch_first1000.bin": "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5",
}

DIGITS_SPLIT_SIZES = (1257, 180, 360)  # train, valid, test of the 1,797 digits
DIGITS_SPLIT_SEED = 0
MNIST_VALID_SIZE = 10_000  # the last 10,000 of the 60,000 MNIST training images
CIFAR_VALID_SIZE = 1_000  # the last 1,000 images of the CIFAR-10 training batches

_NPZ_KEYS = {"train": "train_data", "valid": "valid_data", "test": "test_data"}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_FOLDERS = ("cifar10", "cifar-10-batches-bin")
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch.bin", "test_batch_first1000.bin")
_CIFAR_RECORD = 1 + 3 * 32 * 32

_EXPECTED = {
    "binarized_mnist": "binarized_mnist/binarized_mnist.npz",
    "mnist": "mnist/" + ", mnist/".join(_MNIST_FILES["train"] + _MNIST_FILES["test"]),
    "cifar10": "cifar10/ (or the official cifar-10-batches-bin/) holding data_batch_1.bin (required), "
    "data_batch_2..5.bin (used when present), and test_batch.bin or test_batch_first1000.bin",
}
_HOW_TO_GET = {
    "binarized_mnist": "download the MADE authors' binarized_mnist.npz "
    "(https://github.com/mgermain/MADE/releases/download/ICML2015/binarized_mnist.npz) "
    "into <data folder>/binarized_mnist/",
    "mnist": "download the four standard MNIST IDX files, kept gzipped (for example from "
    "https://ossci-datasets.s3.amazonaws.com/mnist/ or http://yann.lecun.com/exdb/mnist/) "
    "into <data folder>/mnist/",
    "cifar10": "download the CIFAR-10 binary version "
    "(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) and unpack it in <data folder> "
    "(it creates cifar-10-batches-bin/)",
}


class DataError(Exception):
    """A dataset is missing, corrupt or requested wrongly; the message says what and how to fix it."""


def _not_standard(path: str | Path, problem: str, dataset: str) -> DataError:
    """A file that is present but holds the wrong thing: what is wrong, and where to get the right one."""
    return DataError(f"{path}: {problem}; it is not the standard file. Replace it: {_HOW_TO_GET[dataset]}.")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """One split of one dataset. Images are flattened row-major (N, H*W) except cifar10 (N, 3, 32, 32)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    height: int
    width: int
    channels: int
    binary: bool
    name: str
    split: str


SPEC_FIELDS = ("format", "path", "shape", "channels", "keys", "labels", "sha256")
SPEC_FORMATS = ("npz",)
SPEC_CHANNELS = (1, 3)  # binary images, 0 and 1 (MADE); 8-bit colour images, 0..255 (PixelCNN++)


@dataclass(frozen=True)
class DatasetSpec:
    """Your own images: an npz file holding one array per split, and optionally their labels (docs/data.md).

    Build it with `from_value` from the mapping a study file or `--config` gives; `path` is then absolute.
    `keys` and `labels` name the arrays of the train, valid and test splits, in that order."""

    path: str
    shape: tuple[int, int]  # height, width
    channels: int = 1
    keys: tuple[str, ...] = tuple(_NPZ_KEYS.values())
    labels: tuple[str, ...] | None = None
    sha256: str | None = None
    format: str = "npz"

    @classmethod
    def from_value(cls, value: Any, base: str | os.PathLike[str] | None = None) -> DatasetSpec:
        """The spec a mapping describes; a relative path starts at `base` (default: the working directory).
        A wrong key or value raises DataError naming it (`FIELD: reason; fix`)."""
        if not isinstance(value, dict):
            raise DataError(f"{value!r:.60} is neither a dataset name nor a mapping; give one of "
                            f"{', '.join(DATASETS)}, or a spec {{format: npz, path: ..., shape: [H, W]}} "
                            "(docs/data.md)")
        for key in value:
            if key not in SPEC_FIELDS:
                raise DataError(f"{key!r:.40}: unknown key of a dataset spec; allowed: {', '.join(SPEC_FIELDS)}")
        for key in ("path", "shape"):
            if key not in value:
                raise DataError(f"{key}: required key of a dataset spec is missing; add it (docs/data.md)")
        labels = value.get("labels")
        return cls(path=_spec_path(value["path"], base), shape=_spec_shape(value["shape"]),
                   channels=_spec_choice("channels", value.get("channels", 1), SPEC_CHANNELS),
                   keys=_split_names("keys", value.get("keys", _NPZ_KEYS)),
                   labels=None if labels is None else _split_names("labels", labels),
                   sha256=_spec_sha256(value.get("sha256")),
                   format=_spec_choice("format", value.get("format", "npz"), SPEC_FORMATS))

    def to_dict(self) -> dict[str, Any]:
        """The mapping `from_value` reads back (plain YAML and JSON values)."""
        return {"format": self.format, "path": self.path, "shape": list(self.shape), "channels": self.channels,
                "keys": dict(zip(SPLITS, self.keys)),
                "labels": None if self.labels is None else dict(zip(SPLITS, self.labels)), "sha256": self.sha256}


def _spec_path(value: Any, base: str | os.PathLike[str] | None) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(f"path: {value!r:.40} must be the npz file's path (relative to the study file, or to the "
                        "working directory for farm_sweep.train)")
    try:
        return str((Path(base or Path.cwd()) / Path(value).expanduser()).resolve())
    except (ValueError, RuntimeError, OSError) as error:  # a NUL byte, an unknown ~user, a name too long
        raise DataError(f"path: {value!r:.40} is not a usable path ({error}); give the npz file's path") from None


def _spec_shape(value: Any) -> tuple[int, int]:
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)):
        raise DataError(f"shape: {value!r:.40} must be the images' [height, width], two positive integers, "
                        "e.g. [28, 28]")
    return int(value[0]), int(value[1])


def _spec_choice(field: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if type(value) is not type(allowed[0]) or value not in allowed:
        raise DataError(f"{field}: {value!r:.40} is not supported; choose one of "
                        f"{', '.join(map(str, allowed))}")
    return value


def _split_names(field: str, value: Any) -> tuple[str, ...]:
    """The array names of the three splits from {train: NAME, valid: NAME, test: NAME}."""
    if (not isinstance(value, dict) or set(value) != set(SPLITS)
            or not all(isinstance(name, str) and name for name in value.values())):
        suffix = "data" if field == "keys" else field
        raise DataError(f"{field}: {value!r:.60} must map train, valid and test to array names in the file, "
                        f"e.g. {{train: train_{suffix}, valid: valid_{suffix}, test: test_{suffix}}}")
    return tuple(value[split] for split in SPLITS)


def _spec_sha256(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise DataError(f"sha256: {value!r:.40} must be 64 hexadecimal digits (`sha256sum FILE` prints them; in "
                        "quotes if YAML would read a number), or leave it out")
    return value.lower()


def dataset_label(dataset: str | DatasetSpec) -> str:
    """How messages name a dataset: its name, or its spec's file."""
    return dataset if isinstance(dataset, str) else dataset.path


def spec_sha256(spec: DatasetSpec) -> str:
    """The sha256 of the spec's file as it is now (hashed once per version of the file and process)."""
    return _sha256(*_stamp(_spec_file(spec)))


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: explicit argument > env var FARM_DATA_DIR > ./data in the working directory."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or Path.cwd() / "data"
    return Path(data_dir).expanduser().resolve()


def load_dataset(
    name: str | DatasetSpec,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    binarize: str = "static",
    seed: int = 0,
    verify: bool | None = None,
) -> ImageDataset:
    """Load one split ("train", "valid" or "test") of a dataset in DATASETS, or of a DatasetSpec's file.

    binarize ("static", "dynamic", "threshold") and seed apply to mnist only; data_dir not to a spec.
    verify=None checks known sha256 sums (and a spec's) unless FARM_SKIP_CHECKSUMS=1; verify=False checks
    format only.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("binarize", binarize, BINARIZE_MODES)
    if isinstance(name, DatasetSpec):
        if binarize != "static":
            raise DataError(f"binarize={binarize!r} applies only to 'mnist'; a dataset spec's images are used as "
                            "they are (binary, or 8-bit colour)")
        return _load_spec(name, split, _verify_enabled(verify))
    _check_choice("dataset", name, DATASETS)
    if name != "mnist" and binarize != "static":
        raise DataError(
            f"binarize={binarize!r} applies only to 'mnist'; {name!r} has a fixed representation "
            "(digits: value >= 8, binarized_mnist: already binary, cifar10: 8-bit colour)"
        )
    if not 0 <= seed < 2**32:
        raise DataError(f"seed must be in [0, 2**32), got {seed}")
    if name == "digits":
        return _load_digits(split)
    source = _Source(resolve_data_dir(data_dir), _origin(data_dir), _verify_enabled(verify))
    if name == "binarized_mnist":
        return _load_binarized_mnist(source, split)
    if name == "mnist":
        return _load_mnist(source, split, binarize, seed)
    return _load_cifar10(source, split)


def _check_choice(what: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise DataError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def _origin(data_dir: str | os.PathLike[str] | None) -> str:
    if data_dir is not None:
        return "passed as data_dir"
    if os.environ.get(DATA_DIR_ENV):
        return f"from {DATA_DIR_ENV}"
    return f"default ./data in the working directory; {DATA_DIR_ENV} is not set"


def _verify_enabled(verify: bool | None) -> bool:
    if verify is not None:
        return verify
    return os.environ.get(SKIP_CHECKSUMS_ENV, "").strip().lower() not in ("1", "true", "yes")


@dataclass(frozen=True)
class _Source:
    """Where the files are looked for, how that folder was chosen, and whether checksums are checked."""

    root: Path
    origin: str
    verify: bool

    def require(self, dataset: str, folder: Path, names: Sequence[str], key_folder: str) -> list[Path]:
        """Paths of `names` in `folder`, each present and (when known) matching its checksum."""
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise self.missing(dataset, f"{', '.join(missing)} in {folder}")
        paths = [folder / n for n in names]
        for path in paths:
            self.check_sha256(dataset, path, f"{key_folder}/{path.name}")
        return paths

    def missing(self, dataset: str, what: str) -> DataError:
        return DataError(
            f"{dataset}: cannot find {what}.\n"
            f"Data folder searched: {self.root} ({self.origin}).\n"
            f"Expected there: {_EXPECTED[dataset]}.\n"
            f"To get them: {self.how_to_get(dataset)}; or set {DATA_DIR_ENV}=/path/to/data "
            "(or pass data_dir=...) to point at a folder that already holds them."
        )

    def how_to_get(self, dataset: str) -> str:
        return _HOW_TO_GET[dataset].replace("<data folder>", str(self.root))

    def check_sha256(self, dataset: str, path: Path, key: str) -> None:
        expected = KNOWN_SHA256.get(key)
        if not self.verify or expected is None:
            return
        actual = _sha256(*_stamp(path))
        if actual != expected:
            raise DataError(
                f"checksum mismatch for {path}:\n  expected sha256 {expected}\n  actual   sha256 {actual}\n"
                "The file is corrupt, truncated or a different version. To fix: re-copy it from a good "
                "copy (`sha256sum -c SHA256SUMS` in the shared data folder checks one) or re-download it: "
                f"{self.how_to_get(dataset)}. If it is deliberately another copy of the same data, "
                f"set {SKIP_CHECKSUMS_ENV}=1 to check its format only."
            )


def _stamp(path: Path) -> tuple[str, int, int]:
    """Cache key of a file's current contents: resolved path, mtime (ns), size."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """file_sha256, remembered per (path, mtime, size) so repeated loads do not hash again."""
    return file_sha256(path)


# ---------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits binarized at value >= 8, their labels, and the fixed split order."""
    table = np.loadtxt(_digits_file(), delimiter=",")  # 1797 rows: 64 pixel values 0..16, then the label
    bits = (table[:, :-1] >= 8).astype(np.float32)
    # RandomState's stream is frozen by NumPy (NEP 19), so this split never changes.
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(bits))
    return bits, table[:, -1].astype(np.int64), order


def _digits_file() -> Path:
    """The file scikit-learn's load_digits reads, found without importing scikit-learn (seconds per process,
    paid by every trial worker)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'digits' comes with scikit-learn, which is not installed; "
                                "pip install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def _load_digits(split: str) -> ImageDataset:
    bits, labels, order = _digits_arrays()
    n_train, n_valid, _ = DIGITS_SPLIT_SIZES
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, None)}
    rows = order[slice(*bounds[split])]
    return ImageDataset(
        images=torch.from_numpy(bits[rows]),
        labels=torch.from_numpy(labels[rows]),
        height=8, width=8, channels=1, binary=True, name="digits", split=split,
    )


# ---------------------------------------------------------------- binarized_mnist


def _load_binarized_mnist(source: _Source, split: str) -> ImageDataset:
    folder = source.root / "binarized_mnist"
    (path,) = source.require("binarized_mnist", folder, ["binarized_mnist.npz"], "binarized_mnist")
    bits = _npz_bits(*_stamp(path), _NPZ_KEYS[split])
    return ImageDataset(
        images=torch.from_numpy(bits.astype(np.float32)),
        labels=None, height=28, width=28, channels=1, binary=True, name="binarized_mnist", split=split,
    )


@lru_cache(maxsize=8)
def _npz_bits(path: str, mtime_ns: int, size: int, key: str) -> np.ndarray:
    """One validated (N, 784) {0,1} array of the npz, stored compactly as read-only uint8."""
    arrays, found = _read_npz(path, [key], f"Replace it: {_HOW_TO_GET['binarized_mnist']}.")
    if key not in arrays:
        raise _not_standard(path, f"key {key!r} is missing (found: {', '.join(found) or 'none'}; "
                            f"expected {', '.join(_NPZ_KEYS.values())})", "binarized_mnist")
    array = arrays[key]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != 784:
        raise _not_standard(path, f"{key} has shape {array.shape}, expected (N, 784) with N > 0 (28x28 images)",
                            "binarized_mnist")
    bad = ~((array == 0) | (array == 1))
    if bad.any():
        examples = ", ".join(str(v) for v in np.unique(array[bad])[:5])
        raise _not_standard(path, f"{key} must hold only 0 and 1 (MADE models binary pixels), found "
                            f"{int(bad.sum())} other values (e.g. {examples})", "binarized_mnist")
    bits = array.astype(np.uint8)
    bits.flags.writeable = False
    return bits


def _read_npz(path: str, keys: Iterable[str], fix: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays `keys` that the npz holds, and the names of all it holds; never unpickles. An unreadable
    file raises DataError ending with `fix`."""
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip archive, as every .npz is")
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in keys if key in npz.files}, list(npz.files)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"{path} is not a readable .npz archive ({type(error).__name__}: {str(error)[:200]}); it is probably "
            f"truncated or corrupt, or not an npz. {fix}"
        ) from error


# ---------------------------------------------------------------- mnist


def _load_mnist(source: _Source, split: str, binarize: str, seed: int) -> ImageDataset:
    part = "test" if split == "test" else "train"
    image_path, label_path = source.require("mnist", source.root / "mnist", _MNIST_FILES[part], "mnist")
    grey, labels = _mnist_pair(image_path, label_path)
    n = len(grey)
    if part == "train" and n <= MNIST_VALID_SIZE:
        raise DataError(f"{image_path}: {n} images; the train/valid split needs more than {MNIST_VALID_SIZE}")
    rows = {"train": slice(0, n - MNIST_VALID_SIZE), "valid": slice(n - MNIST_VALID_SIZE, n)}.get(
        split, slice(0, n)
    )
    if binarize == "static":
        stream = 0 if part == "train" else 1  # independent noise for the train and test files
        images = _static_bits(_stamp(image_path), seed, stream)[rows].astype(np.float32)
    elif binarize == "threshold":
        images = (grey[rows] >= 128).astype(np.float32)
    else:
        images = grey[rows].astype(np.float32) / 255.0
    return ImageDataset(
        images=torch.from_numpy(images.reshape(len(images), -1)),
        labels=torch.from_numpy(labels[rows].astype(np.int64)),
        height=28, width=28, channels=1, binary=binarize != "dynamic", name="mnist", split=split,
    )


def _mnist_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, 28, 28) uint8 images and (N,) uint8 labels of one IDX image/label pair."""
    images = _idx_array(*_stamp(image_path))
    labels = _idx_array(*_stamp(label_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise _not_standard(image_path, f"IDX dims {images.shape}, expected (N, 28, 28) images (magic 0x803)",
                            "mnist")
    if labels.ndim != 1:
        raise _not_standard(label_path, f"IDX dims {labels.shape}, expected (N,) labels (magic 0x801)", "mnist")
    if len(labels) != len(images):
        raise DataError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{label_path}: labels must be 0..9, found {int(labels.max())}")
    return images, labels


@lru_cache(maxsize=8)
def _idx_array(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """The read-only uint8 array of a gzipped IDX file, after checking its magic number and dims."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path} is not a readable gzip file ({type(error).__name__}: {error}); it is probably "
            f"truncated or corrupt. Replace it: {_HOW_TO_GET['mnist']}."
        ) from error
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise _not_standard(path, f"bad IDX magic number {raw[:4].hex()}; expected 00000801 or 00000803", "mnist")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=raw[3], offset=4))
    expected = int(np.prod(dims))
    if len(raw) != header + expected:
        raise DataError(f"{path}: IDX dims {dims} need {expected} bytes of data, found {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The read-only uint8 array of a gzipped IDX file (any dims), after checking its magic number and size."""
    return _idx_array(*_stamp(Path(path)))


def binarize_idx(path: str | os.PathLike[str], seed: int, stream: int) -> np.ndarray:
    """Static binarization of a whole IDX image file, as load_dataset("mnist", binarize="static") draws it
    (`stream` 0 for the training file, 1 for the test file): read-only bool, the file's dims."""
    return _static_bits(_stamp(Path(path)), seed, stream)


@lru_cache(maxsize=4)
def _static_bits(stamp: tuple[str, int, int], seed: int, stream: int) -> np.ndarray:
    """Bernoulli(pixel / 255) drawn once for a whole IDX file: P(u < pixel) = pixel/255 for u ~ U{0..254}."""
    grey = _idx_array(*stamp)
    noise = np.random.RandomState([seed, stream]).randint(0, 255, size=grey.shape, dtype=np.uint8)
    bits = noise < grey
    bits.flags.writeable = False
    return bits


# ---------------------------------------------------------------- cifar10


def _load_cifar10(source: _Source, split: str) -> ImageDataset:
    folder = _cifar_folder(source)
    if split == "test":
        name = next((n for n in _CIFAR_TEST_FILES if (folder / n).is_file()), None)
        if name is None:
            raise source.missing("cifar10", f"{' or '.join(_CIFAR_TEST_FILES)} in {folder}")
        parts = [_cifar_file(*_stamp(p)) for p in source.require("cifar10", folder, [name], "cifar10")]
        start, stop = 0, len(parts[0][0])
    else:
        names = [n for n in _CIFAR_TRAIN_FILES if (folder / n).is_file()]
        parts = [_cifar_file(*_stamp(p)) for p in source.require("cifar10", folder, names, "cifar10")]
        total = sum(len(labels) for _, labels in parts)
        if total <= CIFAR_VALID_SIZE:
            raise DataError(f"{folder}: {total} training images; the train/valid split needs more than "
                            f"{CIFAR_VALID_SIZE}")
        start, stop = (0, total - CIFAR_VALID_SIZE) if split == "train" else (total - CIFAR_VALID_SIZE, total)
    images = _concat_range([images for images, _ in parts], start, stop)
    labels = _concat_range([labels for _, labels in parts], start, stop)
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        height=32, width=32, channels=3, binary=False, name="cifar10", split=split,
    )


def _cifar_folder(source: _Source) -> Path:
    """The first of cifar10/ and cifar-10-batches-bin/ that holds data_batch_1.bin."""
    for name in _CIFAR_FOLDERS:
        if (source.root / name / _CIFAR_TRAIN_FILES[0]).is_file():
            return source.root / name
    folders = " or ".join(str(source.root / name) for name in _CIFAR_FOLDERS)
    raise source.missing("cifar10", f"{_CIFAR_TRAIN_FILES[0]} in {folders}")


@lru_cache(maxsize=8)
def _cifar_file(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (N, 3, 32, 32) uint8 images and (N,) uint8 labels of one CIFAR-10 binary batch."""
    if size == 0 or size % _CIFAR_RECORD:
        raise DataError(
            f"{path}: {size} bytes is not a positive multiple of the {_CIFAR_RECORD}-byte CIFAR-10 record "
            f"(1 label byte + 3072 pixel bytes); the file is truncated or not from the binary version. "
            f"Replace it: {_HOW_TO_GET['cifar10']}."
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    records.flags.writeable = False
    labels = records[:, 0]
    if labels.max() > 9:
        raise _not_standard(path, f"label byte {int(labels.max())} is out of 0..9; not a CIFAR-10 binary batch",
                            "cifar10")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _concat_range(parts: Sequence[np.ndarray], start: int, stop: int) -> np.ndarray:
    """A fresh copy of rows [start, stop) of the concatenation of `parts`, without building it whole."""
    pieces, offset = [], 0
    for part in parts:
        lo, hi = max(start - offset, 0), min(stop - offset, len(part))
        if lo < hi:
            pieces.append(part[lo:hi])
        offset += len(part)
    return np.concatenate(pieces)


# ---------------------------------------------------------------- your own data (DatasetSpec)


def _spec_file(spec: DatasetSpec) -> Path:
    path = Path(spec.path)
    try:
        present = path.is_file()
    except OSError:  # e.g. a name too long for the file system
        present = False
    if not present:
        raise DataError(f"{path}: no such file (the dataset spec's path); correct the path (relative to the study "
                        "file, or to the working directory for farm_sweep.train), or create the file (docs/data.md)")
    return path


def _load_spec(spec: DatasetSpec, split: str, verify: bool) -> ImageDataset:
    path = _spec_file(spec)
    if verify and spec.sha256 is not None:
        actual = _sha256(*_stamp(path))
        if actual != spec.sha256:
            raise DataError(
                f"checksum mismatch for {path}:\n  expected sha256 {spec.sha256} (the dataset spec's sha256)\n"
                f"  actual   sha256 {actual}\nThe file changed since its sum was written down, or the sum is "
                "another file's. To fix: restore the file; if it changed on purpose, set sha256 to the actual sum.")
    images, labels = _spec_arrays(*_stamp(path), spec)[SPLITS.index(split)]
    return ImageDataset(
        images=torch.from_numpy(images.astype(np.float32) if spec.channels == 1 else images.copy()),
        labels=None if labels is None else torch.from_numpy(labels.copy()),
        height=spec.shape[0], width=spec.shape[1], channels=spec.channels, binary=spec.channels == 1,
        name=path.name, split=split,
    )


@lru_cache(maxsize=4)
def _spec_arrays(path: str, mtime_ns: int, size: int,
                 spec: DatasetSpec) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(images, labels or None) of every split, in SPLITS order, validated and read-only: images (N, H*W)
    uint8 in {0,1} for one channel, (N, 3, H, W) uint8 for colour; labels int64."""
    fields = {f"keys.{split}": key for split, key in zip(SPLITS, spec.keys)}
    fields |= {f"labels.{split}": key for split, key in zip(SPLITS, spec.labels or ())}
    arrays, found = _read_npz(path, fields.values(), "Save the arrays with numpy.savez or numpy.savez_compressed "
                              "(docs/data.md).")
    for field, key in fields.items():
        if key not in arrays:
            raise DataError(f"{path}: {field}: the file holds no array {key!r:.40} (it holds: "
                            f"{', '.join(found)[:200] or 'none'}); set {field} to one of those names")
    splits = []
    for split in SPLITS:
        images = _spec_images(path, f"keys.{split}", arrays[fields[f'keys.{split}']], spec)
        label_field = f"labels.{split}"
        labels = _spec_labels(path, label_field, arrays[fields[label_field]], len(images)) if spec.labels else None
        splits.append((images, labels))
    return splits


def _spec_images(path: str, field: str, array: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    height, width = spec.shape
    accepted = [(height, width), (height * width,)] if spec.channels == 1 else [(3, height, width)]
    if array.ndim < 2 or len(array) == 0 or array.shape[1:] not in accepted:
        needed = " or ".join(str(("N", *dims)).replace("'", "") for dims in accepted)
        raise DataError(f"{path}: {field}: images of shape {array.shape}; shape {list(spec.shape)} with channels "
                        f"{spec.channels} needs {needed}, N > 0, and every split images of that one size. Correct "
                        "the spec's shape or channels, or the array")
    if array.dtype.kind not in "buif":
        raise DataError(f"{path}: {field}: images of dtype {array.dtype}; they must be numbers (e.g. uint8)")
    if spec.channels == 1:
        bad = ~((array == 0) | (array == 1))
        rule = ("must hold only 0 and 1 (MADE models binary pixels): binarize the images first "
                "(python -m farm_sweep.convert_idx shows how), or give 8-bit colour images with channels: 3")
    else:
        bad = ~((array >= 0) & (array <= 255) & (array == np.round(array)))
        rule = "must hold 8-bit levels, whole numbers 0..255 (PixelCNN++ models 256 levels per channel)"
    if bad.any():
        examples = ", ".join(str(v) for v in np.unique(array[bad])[:3])
        raise DataError(f"{path}: {field}: {int(bad.sum())} values other than allowed (e.g. {examples}); the "
                        f"images {rule}")
    images = array.reshape(len(array), -1) if spec.channels == 1 else array
    images = images.astype(np.uint8)
    images.flags.writeable = False
    return images


def _spec_labels(path: str, field: str, array: np.ndarray, count: int) -> np.ndarray:
    if array.shape != (count,) or array.dtype.kind not in "iu" or (count and array.min() < 0):
        raise DataError(f"{path}: {field}: labels of shape {array.shape} and dtype {array.dtype}; labels must be "
                        f"whole numbers >= 0, one per image of the split ({count}). Correct the array, or leave "
                        "labels out of the spec")
    labels = array.astype(np.int64)
    labels.flags.writeable = False
    return labels
