"""The IDX converter (docs/data.md's worked example) on a slice of the real MNIST files: the npz it writes holds
the bits load_dataset("mnist", binarize="static") draws, and the spec it prints loads that file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from farm_sweep import convert_idx
from farm_sweep.data import DatasetSpec, load_dataset, resolve_data_dir
from farm_sweep.integrity import file_sha256

LIMIT, VALID = 1200, 200


def arguments(out: Path, *extra: str, labels: bool = True) -> list[str]:
    mnist = resolve_data_dir() / "mnist"
    files = ["--train-images", str(mnist / "train-images-idx3-ubyte.gz"),
             "--test-images", str(mnist / "t10k-images-idx3-ubyte.gz")]
    if labels:
        files += ["--train-labels", str(mnist / "train-labels-idx1-ubyte.gz"),
                  "--test-labels", str(mnist / "t10k-labels-idx1-ubyte.gz")]
    return [*files, "--out", str(out), "--limit", str(LIMIT), "--valid-size", str(VALID), *extra]


def test_a_slice_of_mnist_becomes_the_statically_binarized_npz_and_its_spec(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data" / "mnist_slice.npz"
    assert convert_idx.main(arguments(out)) == 0
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")  # seed 0, static
    expected = {"train": (train.images[:LIMIT - VALID], train.labels[:LIMIT - VALID]),
                "valid": (train.images[LIMIT - VALID:LIMIT], train.labels[LIMIT - VALID:LIMIT]),
                "test": (test.images[:LIMIT], test.labels[:LIMIT])}
    with np.load(out, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == sorted(f"{split}_{kind}" for split in expected for kind in ("data", "labels"))
        for split, (images, labels) in expected.items():
            assert arrays[f"{split}_data"].dtype == np.uint8 and arrays[f"{split}_data"].shape[1:] == (28, 28)
            assert np.array_equal(arrays[f"{split}_data"].reshape(len(images), -1), images.numpy())
            assert np.array_equal(arrays[f"{split}_labels"], labels.numpy())

    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: train 1000, valid 200, test 1200 binary 28x28 images (seed 0), "
                              "with labels\n")
    spec = yaml.safe_load(printed.split("\n", 2)[2])["dataset"]
    assert spec["sha256"] == file_sha256(out) and spec["shape"] == [28, 28]
    valid = load_dataset(DatasetSpec.from_value(spec), "valid")
    assert valid.binary and valid.images.equal(expected["valid"][0]) and valid.labels.equal(expected["valid"][1])


def test_another_seed_draws_other_bits_and_labels_are_optional(tmp_path: Path) -> None:
    assert convert_idx.main(arguments(tmp_path / "seed7.npz", "--seed", "7", labels=False)) == 0
    with np.load(tmp_path / "seed7.npz") as arrays:
        assert sorted(arrays.files) == ["test_data", "train_data", "valid_data"]
        other = arrays["test_data"].reshape(LIMIT, -1)
    assert np.array_equal(other, load_dataset("mnist", "test", seed=7).images[:LIMIT].numpy())
    assert not np.array_equal(other, load_dataset("mnist", "test", seed=0).images[:LIMIT].numpy())


@pytest.mark.parametrize("change,message", [
    (lambda args: args[:-4] + ["--limit", "100", "--valid-size", "100"],
     "100 images, not more than --valid-size 100; give a smaller --valid-size"),
    (lambda args: args[:6] + args[8:], "give both label files, or neither"),
    (lambda args: [args[0], args[5], *args[2:]], "train-labels-idx1-ubyte.gz: IDX dims (60000,); images must be"),
])
def test_bad_input_exits_2_and_writes_nothing(change, message: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert convert_idx.main(change(arguments(tmp_path / "out.npz"))) == 2
    assert message in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_an_existing_file_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.npz"
    out.write_bytes(b"earlier work")
    assert convert_idx.main(arguments(out)) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"earlier work"
