"""Bad input (issues 6 and 10): each kind exits with status 2 and a message naming the file, the field or value
and the fix, with no traceback, and writes nothing: no output folder, no MLflow store, earlier results left
byte-identical. Data problems use a folder of links to the shared data with one file broken (a copy).
docs/reliability.md (## Bad input) lists the table."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from farm_sweep.export import command, evaluate
from farm_sweep.export import folder as export_folder
from farm_sweep.sweep import runner as run
from farm_sweep.sweep import tracking, tune_state
from farm_sweep.training import checkpoint, loop
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import build_model
from farm_sweep.untrusted import PATH_CHARS, QUOTE_CHARS, quote

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FARM_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
SPACE = {"parameters": {"lr": {"distribution": "log_float", "low": 1.0e-3, "high": 1.0e-2},
                        "divergence": {"distribution": "categorical", "choices": ["none", "jsd"]}}}
FIXED = {"dataset": "digits", "hidden_sizes": [16], "epochs": 1}
STUDY = {"name": "bad", "search_space": "space.yaml", "fixed": FIXED, "trials": 2}
TWO_OBJECTIVES = [{"metric": "nll_image", "direction": "minimize"},
                  {"metric": "sampling/fixed_point/64/network_evaluations", "direction": "minimize"}]
MAINS = {"run": run.main, "export": command.main, "evaluate": evaluate.main, "train": loop.main}


@dataclass(frozen=True)
class Sources:
    """Good inputs to break: a finished study's output folder (trials.csv, one checkpoint) and its export."""

    study: Path
    export: Path


Build = Callable[[Sources, Path], list[str]]  # makes the bad input in a folder; returns the command's arguments
Change = Callable[[Path], None]  # alters a copied folder in place


@dataclass(frozen=True)
class Case:
    name: str
    command: str  # run, export or evaluate
    build: Build
    expect: tuple[str, ...]  # in stderr: the file, the field or value, the fix ("{tmp}": the case's folder)
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # never in stderr
    marks: tuple[pytest.MarkDecorator, ...] = ()


# ------------------------------------------------------------------ study files (python -m farm_sweep.run)


def study_text(text: str | bytes, space: dict | None = None) -> Build:
    """The study file as given ("{tmp}" becomes the case's folder), beside space.yaml."""
    def build(sources: Sources, folder: Path) -> list[str]:
        (folder / "space.yaml").write_text(yaml.safe_dump(space or SPACE, sort_keys=False))
        raw = text if isinstance(text, bytes) else text.replace("{tmp}", str(folder)).encode()
        (folder / "study.yaml").write_bytes(raw)
        return [str(folder / "study.yaml"), "--output", str(folder / "out")]
    return build


def study(space: dict | None = None, **changes: object) -> Build:
    return study_text(yaml.safe_dump({**STUDY, **changes}, sort_keys=False), space)


def fixed(**changes: object) -> Build:
    return study(fixed={**FIXED, **changes})


def parameter(name: str, entry: object) -> Build:
    return study(space={"parameters": {**SPACE["parameters"], name: entry}})


def study_at(path: str, make: Callable[[Path], None] = lambda path: None) -> Build:
    """A study file at `path` ("{tmp}" becomes the case's folder), made by `make` (a FIFO, ...)."""
    def build(sources: Sources, folder: Path) -> list[str]:
        target = Path(path.replace("{tmp}", str(folder)))
        make(target)
        return [str(target), "--output", str(folder / "out")]
    return build


def output_at(path: str) -> Build:
    """A good study with --output `path` ("{tmp}" becomes the case's folder); a file there if it ends in .txt."""
    def build(sources: Sources, folder: Path) -> list[str]:
        arguments = study()(sources, folder)
        output = Path(path.replace("{tmp}", str(folder)))
        if output.suffix == ".txt":
            output.write_text("not a folder")
        return [*arguments[:2], str(output)]
    return build


def alias_bomb(levels: int = 9) -> str:
    """A YAML "billion laughs": nine levels of nine aliases each expand to 9**9 strings from 1 KB of text."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


PASSWD_LINE = "root:x:0:0:"  # the first line of /etc/passwd; never to be printed


class Payload:
    """Unpickling this creates {tmp}/payload_ran: the snapshot check of the case's folder would see it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.folder / "payload_ran",))


def crafted_tune_state(recorded: bool, crafted: str = "bad") -> Build:
    """An output folder ready for --resume, where the tuner.pkl of experiment `crafted` (the search's, or its
    confirmation's: bad.confirmation) is a pickle that runs code; the checksums of the search's original
    tuner.pkl recorded (recorded) or not at all."""
    def build(sources: Sources, folder: Path) -> list[str]:
        arguments = study()(sources, folder)
        output = folder / "out"
        experiment = output / run.RAY_FOLDER / "bad"
        experiment.mkdir(parents=True)
        (output / tracking.STATE_FILE).write_text(json.dumps({"uri": "sqlite:///x", "experiment_id": "1",
                                                              "parent_run_id": "r"}))
        (experiment / "tuner.pkl").write_bytes(pickle.dumps({"written by": "Tune"}))
        if recorded:
            tune_state.record(experiment, output)
        (output / run.RAY_FOLDER / crafted).mkdir(exist_ok=True)
        (output / run.RAY_FOLDER / crafted / "tuner.pkl").write_bytes(pickle.dumps(Payload(folder)))
        return [*arguments, "--resume"]
    return build


def with_earlier_results(sources: Sources, folder: Path) -> list[str]:
    out = folder / "out"
    out.mkdir()
    (out / "trials.csv").write_text("trial_id,status,nll_image\ntrial_1,completed,40.1\n")
    (out / "mlflow.db").write_bytes(b"an earlier study's MLflow store")
    return study()(sources, folder)


# ------------------------------------------------------------------ data files


Writer = Callable[[Path, Path], None]  # (broken copy to write, the good file)


def data_study(dataset: str, broken: str, write: Writer) -> Build:
    """A study on `dataset` whose data folder links every shared file except `broken`, which `write` makes."""
    def build(sources: Sources, folder: Path) -> list[str]:
        root = folder / "data"
        for source in sorted(p for p in SHARED_DATA.rglob("*") if p.is_file()):
            target = root / source.relative_to(SHARED_DATA)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.relative_to(root).as_posix() == broken:
                write(target, source)
            else:
                target.symlink_to(source)
        return fixed(dataset=dataset, data_dir=str(root))(sources, folder)
    return build


def flipped_byte(target: Path, source: Path) -> None:
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def truncated(target: Path, source: Path) -> None:
    target.write_bytes(source.read_bytes()[:-100])


def npz_of(array: np.ndarray) -> Writer:
    def write(target: Path, source: Path) -> None:
        np.savez(target, train_data=array, valid_data=array, test_data=array)
    return write


NPZ = "binarized_mnist/binarized_mnist.npz"
SKIP_CHECKSUMS = {"FARM_SKIP_CHECKSUMS": "1"}  # so the format checks behind the checksum are reached


# ------------------------------------------------------------------ your own data (a dataset spec)


OWN_SPEC = {"format": "npz", "path": "images.npz", "shape": [10, 12]}
OWN_ARRAYS = {f"{split}_{kind}": np.zeros((4, 10, 12), np.uint8) if kind == "data" else np.zeros(4, np.int64)
              for split in ("train", "valid", "test") for kind in ("data", "labels")}
OWN_LABELS = {split: f"{split}_labels" for split in ("train", "valid", "test")}


def own_data(arrays: dict[str, np.ndarray] | None = None, content: bytes | None = None, **spec: object) -> Build:
    """A study on images.npz beside the study file (4 binary 10x12 images per split, labels), `arrays` replacing
    some of the file's (or `content` replacing the whole file), `spec` changing the dataset spec."""
    def build(sources: Sources, folder: Path) -> list[str]:
        path = folder / "images.npz"
        if content is None:
            np.savez(path, **{**OWN_ARRAYS, **(arrays or {})})
        else:
            path.write_bytes(content)
        return fixed(dataset={**OWN_SPEC, **spec})(sources, folder)
    return build


# ------------------------------------------------------------------ a finished study (python -m farm_sweep.export)


def finished_study(change: Change = lambda study: None, *options: str) -> Build:
    def build(sources: Sources, folder: Path) -> list[str]:
        shutil.copytree(sources.study, folder / "study")
        change(folder / "study")
        return ["--output", str(folder / "study"), "--out", str(folder / "out"), *options]
    return build


def edited_state(**changes: object) -> Change:
    """state.json of trial_a's checkpoint with config values changed (its manifest left as it was)."""
    def change(study: Path) -> None:
        path = study / "trial_a" / "epoch_0001" / "state.json"
        state = json.loads(path.read_text())
        state["config"] |= changes
        path.write_text(json.dumps(state))
    return change


def exported_to(out: str) -> Build:
    def build(sources: Sources, folder: Path) -> list[str]:
        arguments = finished_study()(sources, folder)
        return [*arguments[:2], "--out", out]
    return build


def train_with(config: str) -> Build:
    return lambda sources, folder: ["--config", config, "--checkpoint-dir", str(folder / "out")]


def with_earlier_export(sources: Sources, folder: Path) -> list[str]:
    arguments = finished_study()(sources, folder)
    command.export_study(folder / "study", 1, folder / "out")
    return arguments


def table(text: str) -> Change:
    return lambda study: (study / "trials.csv").write_text(text)


def confirmation_table(text: str) -> Change:
    return lambda study: (study / "confirmation.csv").write_text(text)


def remove(name: str) -> Change:
    def change(folder: Path) -> None:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return change


def damaged(name: str, write: Writer = flipped_byte) -> Change:
    def change(folder: Path) -> None:
        good = folder / name
        copy = good.with_suffix(".good")
        good.rename(copy)
        write(good, copy)
        copy.unlink()
    return change


# ------------------------------------------------------------------ an export folder (python -m farm_sweep.evaluate)


def altered_export(change: Change) -> Build:
    """The export with `change` made after export: manifest.json no longer matches."""
    def build(sources: Sources, folder: Path) -> list[str]:
        shutil.copytree(sources.export, folder / "model")
        change(folder / "model")
        return [str(folder / "model")]
    return build


def resealed_export(change: Change) -> Build:
    """The export with `change` made and manifest.json rewritten to match, so the checks behind it are reached."""
    def change_and_reseal(model: Path) -> None:
        change(model)
        export_folder.write_manifest(model)
    return altered_export(change_and_reseal)


def edited(name: str, **changes: object) -> Change:
    """Values of a JSON or YAML file replaced ("{tmp}" becomes the case's folder)."""
    def change(folder: Path) -> None:
        path = folder / name
        values = {**yaml.safe_load(path.read_text()), **changes}  # JSON is YAML
        text = json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values, sort_keys=False)
        path.write_text(text.replace("{tmp}", str(folder.parent)))
    return change


def retensor(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Change:
    def change(folder: Path) -> None:
        tensors = load_file(folder / export_folder.TENSORS)
        tensors[name] = make(tensors[name])
        save_file(tensors, folder / export_folder.TENSORS)
    return change


CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
STUDY_FILE, SPACE_FILE = "{tmp}/study.yaml", "{tmp}/space.yaml"
CASES = [
    # study and search-space files
    Case("malformed YAML", "run", study_text("name: bad\nfixed: {dataset: digits\ntrials: 2\n"),
         (STUDY_FILE, "not valid YAML (line", "correct the file there")),
    Case("not UTF-8 text", "run", study_text(b"name: caf\xe9\n"), (STUDY_FILE, "not UTF-8", "save it as")),
    Case("empty file", "run", study_text(""), (STUDY_FILE, "the file is empty", "docs/studies.md")),
    Case("top level is a list", "run", study_text("- name: bad\n"), (STUDY_FILE, "expected a mapping", "got list")),
    Case("duplicate key", "run", study_text("name: bad\nsearch_space: space.yaml\ntrials: 2\ntrials: 5\n"),
         (STUDY_FILE, "line 4, column 1: found duplicate key 'trials'", "correct the file there")),
    Case("unknown key", "run", study(trails=3), (STUDY_FILE, "trails: unknown key", "did you mean 'trials'?")),
    Case("required key missing", "run", study_text("name: bad\ntrials: 2\n"),
         (STUDY_FILE, "search_space: required key is missing", "add it")),
    Case("wrong type", "run", study(seed=1.5), (STUDY_FILE, "seed: 1.5", "must be an integer")),
    Case("wrong type of a training field", "run", fixed(hidden_sizes=64),
         (STUDY_FILE, "fixed.hidden_sizes", "64 has type int, expected tuple")),
    Case("k larger than the ordering family allows", "run", fixed(ordering_family="snake", num_orderings=9),
         (STUDY_FILE, "fixed.num_orderings", "use at most 8 or the 'random' family")),
    Case("negative λ", "run", fixed(divergence_weight=-1.0),
         (STUDY_FILE, "fixed.divergence_weight", "must be >= 0")),
    Case("NaN λ", "run", study_text("name: bad\nsearch_space: space.yaml\ntrials: 2\n"
                                    "fixed: {dataset: digits, divergence_weight: .nan}\n"),
         (STUDY_FILE, "fixed.divergence_weight", "must be a finite number")),
    Case("early stopping without patience", "run", fixed(early_stopping={"min_delta": 0.1}),
         (STUDY_FILE, "fixed.early_stopping", "patience required")),
    Case("early stopping patience 0", "run", fixed(early_stopping={"patience": 0}),
         (STUDY_FILE, "fixed.early_stopping.patience", "must be an integer >= 1")),
    Case("unknown learning-rate schedule", "run", fixed(lr_schedule="linear"),
         (STUDY_FILE, "fixed.lr_schedule", "choose one of constant, cosine")),
    Case("shared_hidden with one hidden layer", "run", fixed(weight_sharing="shared_hidden"),
         (STUDY_FILE, "fixed.weight_sharing", "give two or more hidden sizes")),
    Case("infinite bound", "run", parameter("lr", {"distribution": "log_float", "low": 1.0e-3, "high": "inf"}),
         (SPACE_FILE, "parameters.lr.high", "must be a finite number")),
    Case("unknown pruner", "run", study(pruner="patience"), (STUDY_FILE, "pruner.type", "choose one of median")),
    Case("pruner type not a name", "run", study(pruner={"type": ["median"]}),
         (STUDY_FILE, "pruner.type", "choose one of median")),
    Case("unknown sampler", "run", study(sampler="bayes"), (STUDY_FILE, "sampler.type", "choose one of tpe")),
    Case("NSGA-II population of one", "run", study(sampler={"type": "nsga2", "population_size": 1}),
         (STUDY_FILE, "sampler.population_size", "must be an integer >= 2")),
    Case("pruner with two objectives", "run", study(pruner="median", objectives=TWO_OBJECTIVES),
         (STUDY_FILE, "pruner: median cannot prune a study of 2 objectives", "set pruner: none")),
    Case("objective listed twice", "run", study(objectives=[TWO_OBJECTIVES[0], TWO_OBJECTIVES[0]]),
         (STUDY_FILE, "objectives: 'nll_image' is listed twice", "give each metric once")),
    Case("objective direction unknown", "run", study(objectives=[{"metric": "nll_image", "direction": "down"}]),
         (STUDY_FILE, "objectives[0].direction", "'down'", "choose one of minimize, maximize")),
    Case("no objectives", "run", study(objectives=[]), (STUDY_FILE, "objectives: [] must have at least 1")),
    Case("objective no trial reports", "run",
         study(objectives=[TWO_OBJECTIVES[0], {"metric": "nll_imag", "direction": "minimize"}]),
         (STUDY_FILE, "objectives[1].metric", "'nll_imag' is not a metric every trial reports", "use one of")),
    Case("one objective other than nll_image", "run",
         study(objectives=[{"metric": "seconds", "direction": "minimize"}]),
         (STUDY_FILE, "objectives: a study of one objective minimizes validation nll_image", "list two or more")),
    Case("objective of an evaluation the study does not run", "run", study(objectives=TWO_OBJECTIVES),
         (STUDY_FILE, "objectives[1].metric", "which this study does not run", "add evaluation.sampling")),
    Case("two objectives with a confirmation", "run", study(objectives=TWO_OBJECTIVES, confirm={"top": 1, "seeds": 2},
                                                            evaluation={"inpaint": None, "sampling": {}}),
         (STUDY_FILE, "confirm: the confirmation stage ranks", "remove confirm")),
    Case("seed beyond the sampler's range", "run", study(seed=2**40),
         (STUDY_FILE, f"seed: {2**40} must be in 0..4294967295",)),
    Case("unknown dataset", "run", fixed(dataset="imagenet"),
         (STUDY_FILE, "fixed.dataset", "'imagenet'", "choose one of digits")),
    Case("search-space file missing", "run", study(search_space="nowhere.yaml"),
         (STUDY_FILE, "search_space", "{tmp}/nowhere.yaml' does not exist", "relative to the study file")),
    Case("search-space file a folder", "run", study(search_space="."),
         (STUDY_FILE, "search_space", "not a regular file (a folder)", "give the path of a search-space file")),
    Case("grid too large", "run", study(sampler="grid", space={"parameters": {
        "num_masks": {"distribution": "int", "low": 1, "high": 10**9}}}),
         (STUDY_FILE, "sampler.type", "1000000000 configurations", "narrow the int ranges")),
    Case("enqueued value not a choice", "run", study(enqueue=[{"divergence": "kl"}]),
         (STUDY_FILE, "enqueue[0].divergence", "'kl' is outside its distribution", "categorical ['none', 'jsd']")),
    Case("name that is not a folder name", "run", study(name="../elsewhere"),
         (STUDY_FILE, "name", "'../elsewhere'", "must be letters, digits")),
    Case("name of 300 characters", "run", study(name="n" * 300),
         (STUDY_FILE, "name", "at most 100 characters"), absent=("n" * 100,)),
    Case("YAML alias bomb", "run", study_text(alias_bomb() + "name: bad\nsearch_space: space.yaml\ntrials: 2\n"
                                              "description: *l8\n"),
         (STUDY_FILE, "aliases expand to more than", "refer to each anchor a few times only")),
    Case("nesting 20,000 levels deep", "run", study_text(f"name: bad\nsearch_space: {nested(20_000)}\n"),
         (STUDY_FILE, "nested deeper than 50 levels", "correct the file there")),
    Case("integer of 5,000 digits", "run", study_text("name: bad\nsearch_space: space.yaml\nseed: " + "9" * 5000),
         (STUDY_FILE, "an integer of more than 100 digits", "correct the file there"), absent=("9" * 200,)),
    Case("study file over the size limit", "run", study_text("name: bad\n" + "# padding\n" * 200_000),
         (STUDY_FILE, "more than 1,000,000 bytes", "names the right file")),
    Case("study file is /dev/zero", "run", study_at("/dev/zero"),
         ("/dev/zero", "not a regular file (a character device)", "give the path of a file")),
    Case("study file is a FIFO", "run", study_at("{tmp}/study.fifo", os.mkfifo),
         ("{tmp}/study.fifo", "not a regular file (a FIFO)", "give the path of a file")),
    Case("search space is /dev/zero", "run", study(search_space="/dev/zero"),
         ("/dev/zero", "not a regular file (a character device)")),
    Case("search space is /etc/passwd", "run", study(search_space="/etc/passwd"),
         ("/etc/passwd", "expected a mapping (key: value entries), got str", "docs/studies.md"),
         absent=(PASSWD_LINE,)),
    Case("hidden layer of 10^9 units", "run", fixed(hidden_sizes=[10**9]),
         (STUDY_FILE, "fixed.hidden_sizes", "needs about", "GiB of memory", "make hidden_sizes smaller")),
    Case("10^9 random orderings", "run", fixed(ordering_family="random", num_orderings=10**9),
         (STUDY_FILE, "fixed.num_orderings", "needs about", "make num_orderings smaller")),
    Case("10^9 mask sets", "run", fixed(num_masks=10**9),
         (STUDY_FILE, "fixed.num_masks", "needs about", "make num_masks smaller")),
    Case("evaluation batch of 10^10 samples", "run", study(evaluation={"inpaint": None,
                                                                      "sampling": {"num_samples": 10**10}}),
         (STUDY_FILE, "evaluation", "the evaluation batch", "make evaluation.inpaint.images_per_occlusion or "
                                                            "evaluation.sampling.num_samples smaller")),
    Case("negative GPUs", "run", study(resources={"gpus": -1}), (STUDY_FILE, "resources.gpus", "must be >= 0.0")),
    Case("cuda requested, no GPU", "run", fixed(device="cuda"),
         (STUDY_FILE, "fixed.device", "no CUDA GPU", "use device: auto"), marks=(CUDA,)),
    Case("output folder holds an earlier study", "run", with_earlier_results,
         ("{tmp}/out", "--output", "already holds a study", "choose another --output")),
    Case("output is a file", "run", output_at("{tmp}/out.txt"), ("{tmp}/out.txt", "--output", "is not a folder")),
    Case("output is /dev/null", "run", output_at("/dev/null"), ("/dev/null", "--output", "is not a folder")),
    Case("output under /proc", "run", output_at("/proc/farm-sweep-out"),
         ("/proc/farm-sweep-out", "--output", "cannot write there", "choose a writable folder")),
    Case("output under /sys", "run", output_at("/sys/farm-sweep-out"),
         ("/sys/farm-sweep-out", "--output", "cannot write there", "choose a writable folder")),
    Case("Tune state not written by the study's run", "run", crafted_tune_state(recorded=True),
         ("{tmp}/out", "--resume", "tuner.pkl was not written by this study's run", "with a new --output")),
    Case("Tune state with no checksums recorded", "run", crafted_tune_state(recorded=False),
         ("{tmp}/out", "--resume", "tune_state.json is missing", "with a new --output")),
    Case("confirmation's Tune state not written by the study's run", "run",
         crafted_tune_state(recorded=True, crafted="bad.confirmation"),
         ("{tmp}/out", "--resume", "bad.confirmation/tuner.pkl was not written by this study's run",
          "with a new --output")),
    # the confirmation stage
    Case("confirm not a mapping", "run", study(confirm=3), (STUDY_FILE, "confirm", "expected a mapping", "got int")),
    Case("confirm without seeds", "run", study(confirm={"top": 1}),
         (STUDY_FILE, "confirm.seeds: required key is missing", "add it")),
    Case("confirm with an unknown key", "run", study(confirm={"top": 1, "seed": 3}),
         (STUDY_FILE, "confirm.seed: unknown key", "did you mean 'seeds'?")),
    Case("confirm top not an integer", "run", study(confirm={"top": "best", "seeds": 3}),
         (STUDY_FILE, "confirm.top: 'best' must be an integer")),
    Case("confirm more configurations than trials", "run", study(confirm={"top": 5, "seeds": 3}),
         (STUDY_FILE, "confirm.top: 5 must be in 1..2", "confirm at most as many configurations as the study has "
                                                        "trials (2)")),
    Case("confirm with one seed", "run", study(confirm={"top": 1, "seeds": 1}),
         (STUDY_FILE, "confirm.seeds: 1 must be in 2..100", "a standard deviation over seeds needs two or more")),
    # data
    Case("data folder missing", "run", fixed(dataset="binarized_mnist", data_dir="{tmp}/nowhere"),
         (STUDY_FILE, "fixed.dataset", "{tmp}/nowhere", "To get them")),
    Case("data file with a wrong checksum", "run", data_study("binarized_mnist", NPZ, flipped_byte),
         (STUDY_FILE, "checksum mismatch for {tmp}/data/" + NPZ, "re-download")),
    Case("truncated npz", "run", data_study("binarized_mnist", NPZ, truncated),
         ("{tmp}/data/" + NPZ, "not a readable .npz", "Replace it"), SKIP_CHECKSUMS),
    Case("images of the wrong shape", "run", data_study("binarized_mnist", NPZ, npz_of(np.zeros((5, 100)))),
         ("{tmp}/data/" + NPZ, "shape (5, 100), expected (N, 784)", "Replace it"), SKIP_CHECKSUMS),
    Case("non-binary values given to MADE", "run", data_study("binarized_mnist", NPZ, npz_of(np.full((5, 784), .5))),
         ("{tmp}/data/" + NPZ, "must hold only 0 and 1", "Replace it"), SKIP_CHECKSUMS),
    Case("truncated CIFAR-10 batch", "run", data_study("cifar10", "cifar10/data_batch_1.bin", truncated),
         ("{tmp}/data/cifar10/data_batch_1.bin", "not a positive multiple", "Replace it"), SKIP_CHECKSUMS),
    Case("colour images given to MADE", "run", fixed(dataset="cifar10"),
         (STUDY_FILE, "fixed.dataset", "3 channels", "choose digits, binarized_mnist or mnist")),
    # a finished study's output folder
    Case("no trials table", "export", finished_study(remove("trials.csv")),
         ("{tmp}/study/trials.csv", "no trials table", "pass the --output folder of a finished study")),
    Case("trials table lacks a column", "export", finished_study(table("trial_id,status,nll_image\nt,completed,1\n")),
         ("{tmp}/study/trials.csv", "checkpoint missing", "restore the table")),
    Case("checkpoint missing", "export", finished_study(remove("trial_a")),
         ("{tmp}/study/trial_a/epoch_0001", "trial trial_a's checkpoint", "restore it from the trial's MLflow run")),
    Case("checkpoint altered", "export", finished_study(damaged("trial_a/epoch_0001/model.safetensors")),
         ("{tmp}/study/trial_a/epoch_0001", "sha256 does not match", "restore it from the trial's MLflow run")),
    Case("checkpoint's state.json edited", "export", finished_study(edited_state(hidden_sizes=[10_000_000])),
         ("{tmp}/study/trial_a/epoch_0001/state.json", "sha256 does not match", "restore it from the trial's")),
    Case("trial id that leaves --out", "export", finished_study(table(
        "trial_id,status,nll_image,checkpoint\n../../escaped,completed,40.5,trial_a/epoch_0001\n")),
         ("{tmp}/study/trials.csv", "trial_id '../../escaped' is not a plain name", "restore the table")),
    Case("checkpoint outside the study folder", "export", finished_study(table(
        "trial_id,status,nll_image,checkpoint\ntrial_a,completed,40.5,../study/../../etc\n")),
         ("{tmp}/study/trials.csv", "is outside the study folder", "restore the table")),
    Case("export into /dev/null", "export", exported_to("/dev/null"),
         ("/dev/null/01_trial_a", "cannot write the export", "choose a writable --out")),
    Case("--confirmed without a confirmation table", "export", finished_study(lambda study: None, "--confirmed"),
         ("{tmp}/study/confirmation.csv", "no confirmation table", "export without --confirmed")),
    Case("confirmation table lacks a column", "export", finished_study(confirmation_table(
        "kind,search_rank,config_id,seed,trial_id,status,nll_image,checkpoint\n"
        "seed,1,trial_a,1,trial_a,completed,40.5,trial_a/epoch_0001\n"), "--confirmed"),
         ("{tmp}/study/confirmation.csv", "confirmed_rank missing", "artifact study/confirmation.csv")),
    Case("confirmed trial id that leaves --out", "export", finished_study(confirmation_table(
        "kind,search_rank,confirmed_rank,config_id,seed,trial_id,status,nll_image,checkpoint\n"
        "seed,1,1,trial_a,1,../escaped,completed,40.5,trial_a/epoch_0001\n"), "--confirmed"),
         ("{tmp}/study/confirmation.csv", "trial_id '../escaped' is not a plain name",
          "artifact study/confirmation.csv")),
    Case("--top 0", "export", finished_study(lambda study: None, "--top", "0"),
         ("--top", "'0' must be a whole number >= 1")),
    Case("export folder holds an earlier export", "export", with_earlier_export,
         ("{tmp}/out/01_trial_a", "already exists", "choose another --out")),
    Case("--register without tracking state", "export", finished_study(lambda study: None, "--register"),
         ("{tmp}/study/tracking.json", "--register", "export without --register")),
    # an export folder
    Case("export without weights", "evaluate", altered_export(remove(export_folder.TENSORS)),
         ("{tmp}/model", "model.safetensors missing", "re-export")),
    Case("export without a manifest", "evaluate", altered_export(remove(export_folder.MANIFEST)),
         ("{tmp}/model", "manifest.json missing", "re-export the model (python -m farm_sweep.export)")),
    Case("export with weights altered to other finite values", "evaluate",
         altered_export(retensor("layer0.weight", lambda t: t + 0.25)),
         ("{tmp}/model/model.safetensors", "sha256 does not match manifest.json", "altered",
          "re-export the model (python -m farm_sweep.export)")),
    Case("export with truncated weights", "evaluate", resealed_export(damaged(export_folder.TENSORS, truncated)),
         ("{tmp}/model/model.safetensors", "SafetensorError", "re-export")),
    Case("export with a weight of the wrong shape", "evaluate",
         resealed_export(retensor("layer0.weight", lambda t: torch.zeros(3, 3))),
         ("{tmp}/model/model.safetensors", "layer0.weight is torch.float32 [3, 3]", "re-export")),
    Case("export with NaN weights", "evaluate", resealed_export(retensor("layer1.bias", lambda t: t * math.nan)),
         ("{tmp}/model/model.safetensors", "layer1.bias holds NaN", "re-export")),
    Case("export with an altered mask", "evaluate", resealed_export(retensor("layer0.mask", lambda t: 1 - t)),
         ("{tmp}/model/model.safetensors", "layer0.mask differs", "re-export")),
    Case("export with altered architecture", "evaluate", resealed_export(edited(export_folder.ARCHITECTURE, dim=32)),
         ("{tmp}/model/architecture.json", "dim differ", "re-export")),
    Case("export architecture not JSON", "evaluate",
         resealed_export(lambda model: (model / export_folder.ARCHITECTURE).write_text("{not json")),
         ("{tmp}/model/architecture.json", "not valid JSON", "re-export")),
    Case("export of another format", "evaluate",
         resealed_export(edited(export_folder.ARCHITECTURE, format="farm-made/0")),
         ("{tmp}/model/architecture.json", "'farm-made/0', expected 'farm-made/2'", "re-export")),
    Case("export config with a bad value", "evaluate", resealed_export(edited(export_folder.CONFIG, num_orderings=0)),
         ("{tmp}/model/config.yaml", "num_orderings: 0 must be positive", "re-export")),
    Case("export's test data missing", "evaluate",
         resealed_export(edited(export_folder.CONFIG, dataset="binarized_mnist", data_dir="{tmp}/nowhere")),
         ("{tmp}/model/config.yaml", "'binarized_mnist'", "{tmp}/nowhere", "To get them")),
    Case("export's dataset does not match the model", "evaluate",
         resealed_export(edited(export_folder.CONFIG, dataset="mnist")),
         ("{tmp}/model/config.yaml", "784 pixels, the model 64", "restore it, or re-export")),
    Case("export config an alias bomb", "evaluate", resealed_export(
        lambda model: (model / export_folder.CONFIG).write_text(alias_bomb() + "hidden_sizes: *l8\n")),
         ("{tmp}/model/config.yaml", "aliases expand to more than", "re-export")),
    Case("export config asking 10^9 hidden units", "evaluate",
         resealed_export(edited(export_folder.CONFIG, hidden_sizes=[10**9])),
         ("{tmp}/model/architecture.json", "needs about", "make hidden_sizes smaller", "re-export")),
    # one configuration without Ray (python -m farm_sweep.train)
    Case("NaN λ for train", "train", train_with('{"divergence_weight": NaN}'),
         ("--config", "divergence_weight: nan must be a finite number")),
    Case("infinite lr for train", "train", train_with('{"lr": Infinity}'),
         ("--config", "lr: inf must be a finite number")),
    Case("train --config not an object", "train", train_with("[1, 2]"),
         ("--config", "a JSON object", "not list")),
    # your own data (a dataset spec in the study file)
    Case("own data: unknown key in the spec", "run", own_data(chanels=3),
         (STUDY_FILE, "fixed.dataset", "'chanels': unknown key of a dataset spec", "allowed: format, path")),
    Case("own data: file missing", "run", own_data(path="nowhere.npz"),
         (STUDY_FILE, "fixed.dataset", "{tmp}/nowhere.npz: no such file", "correct the path")),
    Case("own data: not an npz", "run", own_data(content=b"pixel,label\n0,1\n"),
         (STUDY_FILE, "fixed.dataset", "{tmp}/images.npz is not a readable .npz archive", "numpy.savez")),
    Case("own data: checksum mismatch", "run", own_data(sha256="0" * 64),
         (STUDY_FILE, "fixed.dataset", "checksum mismatch for {tmp}/images.npz", "0" * 64,
          "set sha256 to the actual sum")),
    Case("own data: array missing", "run", own_data(keys={"train": "train_data", "valid": "valid_images",
                                                          "test": "test_data"}),
         (STUDY_FILE, "fixed.dataset", "{tmp}/images.npz: keys.valid: the file holds no array 'valid_images'",
          "set keys.valid to one of those names")),
    Case("own data: images of another shape than the spec's", "run", own_data(shape=[28, 28]),
         (STUDY_FILE, "{tmp}/images.npz: keys.train: images of shape (4, 10, 12)", "(N, 28, 28) or (N, 784)",
          "Correct the spec's shape")),
    Case("own data: splits of different image sizes", "run", own_data({"valid_data": np.zeros((4, 10, 14))}),
         (STUDY_FILE, "{tmp}/images.npz: keys.valid: images of shape (4, 10, 14)",
          "every split images of that one size")),
    Case("own data: non-binary values given to MADE", "run", own_data({"test_data": np.full((4, 10, 12), 0.5)}),
         (STUDY_FILE, "{tmp}/images.npz: keys.test", "only 0 and 1 (MADE models binary pixels)",
          "binarize the images first")),
    Case("own data: labels not one per image", "run", own_data({"train_labels": np.zeros(3, np.int64)},
                                                                labels=OWN_LABELS),
         (STUDY_FILE, "{tmp}/images.npz: labels.train: labels of shape (3,)", "one per image of the split (4)")),
    Case("own data: binary images given to PixelCNN++", "run", study(fixed={**FIXED, "model": "pixelcnn",
                                                                            "ordering_family": "paper",
                                                                            "dataset": OWN_SPEC}),
         (STUDY_FILE, "fixed.dataset", "is not a colour dataset", "a spec with channels: 3")),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    folder = tmp_path_factory.mktemp("sources")
    config = TrainConfig(dataset="digits", hidden_sizes=(16,), epochs=1)
    model = build_model(config, 8, 8)
    study = folder / "study"
    checkpoint.save(study / "trial_a", model, torch.optim.Adam(model.parameters()),
                    {"epoch": 1, "config": config.to_dict()})
    (study / "trials.csv").write_text("trial_id,optuna_trial,status,epochs,nll_image,mlflow_run_id,checkpoint\n"
                                      "trial_a,0,completed,1,40.5,,trial_a/epoch_0001\n")
    (exported,) = command.export_study(study, 1, folder / "exports")
    return Sources(study, exported)


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder`: its content's sha256, a link's target, or "folder" (links are not followed)."""
    def state(path: Path) -> str:
        if path.is_symlink():
            return f"-> {os.readlink(path)}"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return {str(path.relative_to(folder)): state(path) for path in sorted(folder.rglob("*"))}


def exit_status(command: str, arguments: list[str]) -> int:
    try:
        return MAINS[command](arguments)
    except SystemExit as exit:  # argparse rejects a bad option value this way
        return exit.code


@pytest.mark.parametrize("case", [pytest.param(case, marks=case.marks, id=case.name) for case in CASES])
def test_bad_input_exits_2_names_file_field_fix_and_writes_nothing(
        case: Case, sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # a default results/ folder or MLflow store would appear here
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    arguments = case.build(sources, tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert exit_status(case.command, arguments) == 2
    message = capsys.readouterr().err
    for expected in case.expect:
        assert expected.replace("{tmp}", str(tmp_path)) in message, message
    for unexpected in case.absent:
        assert unexpected not in message, message
    assert len(message) < 2000 and "Traceback" not in message, message
    assert snapshot(tmp_path) == before


def test_a_quoted_path_is_whole_and_a_huge_value_is_cut() -> None:
    path = "/tmp/" + "d" * 150 + "/study.yaml"  # a test's or a cluster's folders can be this deep
    assert quote(path, PATH_CHARS) == repr(path)
    assert quote(path).startswith("'/tmp/ddd") and len(quote(path)) == QUOTE_CHARS
    assert len(quote("x" * 10_000_000, PATH_CHARS)) == PATH_CHARS


def test_the_table_covers_the_issue() -> None:
    assert len(CASES) >= 80 and len({case.name for case in CASES}) == len(CASES)


def test_commands_exit_2_without_a_traceback(sources: Sources, tmp_path: Path) -> None:
    """The real entry points, one bad input per command, run side by side."""
    chosen = [case for case in CASES if case.name in ("malformed YAML", "study file is a FIFO", "checkpoint altered",
                                                      "export with truncated weights", "NaN λ for train")]
    processes = []
    for index, case in enumerate(chosen):
        folder = tmp_path / str(index)
        folder.mkdir()
        command = [sys.executable, "-m", f"farm_sweep.{case.command}", *case.build(sources, folder)]
        processes.append((case, folder, subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE,
                                                         stderr=subprocess.PIPE, text=True)))
    for case, folder, process in processes:
        _, message = process.communicate(timeout=300)
        assert process.returncode == 2 and "Traceback" not in message, message
        assert case.expect[0].replace("{tmp}", str(folder)) in message
        assert not (folder / "out").exists() and not (folder / "mlruns").exists()


def test_fractional_gpus_fall_back_to_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The quickstart asks 0.25 GPU per trial and still runs on a machine without one (docs/studies.md)."""
    output = tmp_path / "out"
    assert run.main([str(ROOT / "studies" / "quickstart.yaml"), "--output", str(output), "--dry-run"]) == 0
    assert "0.25 GPU (GPU only when the cluster has one)" in capsys.readouterr().out and not output.exists()


def test_an_alias_bomb_is_refused_without_being_expanded(tmp_path: Path) -> None:
    """1 KB of YAML that expands to 9**9 strings: refused by the real command in the memory its imports take."""
    arguments = study_text(alias_bomb() + "name: bad\nsearch_space: space.yaml\ndescription: *l8\n")(None, tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "farm_sweep.run", *arguments], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    message = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 2 and "aliases expand to more than" in message and len(message) < 1000, message
    assert usage.ru_maxrss < 1_500_000  # KiB: Python with torch, Ray and MLflow imported takes about 500 MB


def test_yaml_merge_keys_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`<<: *base` merges a mapping (yaml.safe_load accepts it); keys given beside it override the base."""
    text = ("name: merged\nsearch_space: space.yaml\ntrials: 2\n"
            "fixed: {<<: &base {dataset: digits, hidden_sizes: [16], epochs: 1}, epochs: 2}\n"
            "enqueue: [{<<: &point {lr: 0.002}, divergence: none}, {<<: *point, divergence: jsd}]\n")
    arguments = study_text(text)(None, tmp_path)
    assert run.main([*arguments, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert '"hidden_sizes": [16], "epochs": 2' in printed and '{"lr": 0.002, "divergence": "jsd"}' in printed


def in_own_tmpfs(mount_point: Path, options: str, command: list[str]) -> subprocess.CompletedProcess:
    """`command` in a mount namespace of its own in which `mount_point` is a fresh tmpfs mounted with `options`
    (a read-only or a nearly full file system, gone with the namespace); skips where that is not allowed."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("no mount namespaces here (unshare -rm)")
    mount_point.mkdir(exist_ok=True)
    script = 'mount -t tmpfs -o "$0" tmpfs "$1" && shift && exec "$@"'  # $0: options, $1: where
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, options, str(mount_point), *command],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_read_only_output_or_export_folder_exits_2(sources: Sources, tmp_path: Path) -> None:
    arguments = study()(sources, tmp_path)
    ran = in_own_tmpfs(tmp_path / "ro", "ro", [sys.executable, "-m", "farm_sweep.run", *arguments[:2],
                                               str(tmp_path / "ro" / "out")])
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr
    assert f"{tmp_path}/ro/out: --output: cannot write there (Read-only file system)" in ran.stderr
    exported = in_own_tmpfs(tmp_path / "ro", "ro", [sys.executable, "-m", "farm_sweep.export", "--output",
                                                    str(sources.study), "--out", str(tmp_path / "ro" / "exports")])
    assert exported.returncode == 2 and "Traceback" not in exported.stderr, exported.stderr
    assert "cannot write the export (Read-only file system)" in exported.stderr


def test_a_disk_full_while_exporting_leaves_no_manifest(sources: Sources, tmp_path: Path) -> None:
    """28 KiB hold the export's five files (seven pages) but not manifest.json: the export exits 2 and leaves
    no manifest, not even an empty one, so evaluate refuses the folder."""
    out = tmp_path / "small" / "exports"
    then_list = f'"$@"; status=$?; echo "files:"; ls -A {shlex.quote(str(out / "01_trial_a"))}; exit $status'
    exported = in_own_tmpfs(tmp_path / "small", "size=28k", [
        "sh", "-c", then_list, "sh", sys.executable, "-m", "farm_sweep.export", "--output", str(sources.study),
        "--out", str(out)])
    assert exported.returncode == 2 and "Traceback" not in exported.stderr, exported.stderr
    assert f"{out}/01_trial_a: cannot write the export (No space left on device)" in exported.stderr
    written = exported.stdout.split("files:")[1].split()
    assert sorted(written) == sorted(set(export_folder.FILES)), written  # everything but the manifest
