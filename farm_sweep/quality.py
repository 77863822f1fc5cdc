"""Sample quality (DESIGN 4): classifier score and Frechet distance under a project-trained digit classifier.

The paper scored samples with "Inception trained on MNIST"; Inception weights cannot be downloaded
here, so the project trains its own small classifier, an MLP D -> 256 -> 128 -> 10 whose 128 ReLU
features (the penultimate layer) feed the Frechet distance: on MNIST binarized like the samples
(load_dataset("mnist", "train", binarize="static")) for the 28x28 datasets, on digits' train split
for the 8x8 digits. It is cached in FARM_CACHE_DIR (default ~/.cache/farm_sweep) as
classifier_<data>.safetensors plus a JSON holding its training settings, test accuracy and the
weights' sha256; a cache whose checksum or settings do not match is retrained. CIFAR-10 samples are
scored by farm_sweep.evaluation.cifar_classifier's CNN, and samples of your own labelled data by the same MLP
trained on its labels (farm_sweep.evaluation.spec_classifier), through the same cache (`cached_classifier`),
training loop (`train_classifier`) and scorer (`QualityScorer.over`).

classifier_score = exp(E_x KL(p(y|x) || p(y))), p(y) = E_x p(y|x): 1 for blank or meaningless
images, 10 for confident and class-balanced ones. frechet_distance = |mu - mu_ref|^2 +
tr(S + S_ref - 2 (S^1/2 S_ref S^1/2)^1/2) between feature Gaussians of the images and the test split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from farm_sweep.data import load_dataset
from farm_sweep.integrity import file_sha256

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "FARM_CACHE_DIR"
CLASSIFIER_DATA = {"digits": "digits", "mnist": "mnist", "binarized_mnist": "mnist"}  # dataset -> MLP's data
CIFAR = "cifar10"  # scored by farm_sweep.evaluation.cifar_classifier
TRAINING = {  # per classifier dataset; stored beside the weights, a change retrains
    "mnist": {"dim": 784, "hidden": [256, 128], "epochs": 4, "batch_size": 128, "lr": 2e-3, "seed": 0,
              "binarize": "static"},
    "digits": {"dim": 64, "hidden": [256, 128], "epochs": 60, "batch_size": 64, "lr": 2e-3, "seed": 0,
               "binarize": "static"},
}


class DigitClassifier(nn.Module):
    """The MLP dim -> hidden... -> classes; `flatten` first flattens images of any shape to vectors."""

    def __init__(self, dim: int, hidden: list[int], classes: int = 10, flatten: bool = False) -> None:
        super().__init__()
        sizes = [dim, *hidden]
        layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.features = nn.Sequential(*([nn.Flatten()] if flatten else []), *layers)
        self.head = nn.Linear(sizes[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Explicit argument > env var FARM_CACHE_DIR > ~/.cache/farm_sweep."""
    return Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "farm_sweep").expanduser()


def load_classifier(data: str, data_dir: str | os.PathLike[str] | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> DigitClassifier:
    """The cached classifier for `data` ("mnist" or "digits"), trained and cached when missing or bad."""
    settings = TRAINING[data]

    def train(classifier: DigitClassifier) -> float:
        train_set = load_dataset(data, "train", data_dir, binarize=settings["binarize"])
        with one_thread():
            train_classifier(classifier, train_set.images, train_set.labels, settings)
        test_set = load_dataset(data, "test", data_dir, binarize=settings["binarize"])
        return accuracy(classifier, test_set.images, test_set.labels)

    return cached_classifier(data, settings, lambda: DigitClassifier(settings["dim"], settings["hidden"]), train,
                             cache_dir)


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread inside the block: for a model as small as the MLP, more threads only add
    synchronisation (10x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


Classifier = TypeVar("Classifier", bound=nn.Module)


def cached_classifier(name: str, settings: dict[str, Any], build: Callable[[], Classifier],
                      train: Callable[[Classifier], float],  # trains in place, returns the test accuracy
                      cache_dir: str | os.PathLike[str] | None = None) -> Classifier:
    """`build()` with the cached weights `name` if made with `settings`, else seeded, trained by `train`, cached."""
    with torch.random.fork_rng(devices=[]):  # the initial weights, too, follow from the settings
        torch.manual_seed(settings["seed"])
        classifier = build()
    folder = resolve_cache_dir(cache_dir)
    weights, record = folder / f"classifier_{name}.safetensors", folder / f"classifier_{name}.json"
    reason = cache_problem(weights, record, settings)
    if reason is None:
        classifier.load_state_dict(load_file(weights))
        return classifier.eval()
    log.warning("training the %s classifier (%s)", name, reason)
    began = time.perf_counter()
    test_accuracy = train(classifier)
    folder.mkdir(parents=True, exist_ok=True)
    _replace(weights, lambda path: save_file(classifier.state_dict(), path))
    summary = {"settings": settings, "sha256": file_sha256(weights), "test_accuracy": test_accuracy,
               "train_seconds": time.perf_counter() - began}
    _replace(record, lambda path: path.write_text(json.dumps(summary, indent=2)))
    return classifier.eval()


def cache_problem(weights: Path, record: Path, settings: dict[str, Any]) -> str | None:
    """Why the cached classifier (`weights` and its JSON `record`) cannot be used for `settings`, or None."""
    if not weights.is_file() or not record.is_file():
        return f"no cached classifier at {weights}"
    try:
        summary = json.loads(record.read_text())
    except json.JSONDecodeError:
        return f"{record} is unreadable"
    if summary.get("settings") != settings:
        return f"{record} holds other training settings"
    if summary.get("sha256") != file_sha256(weights):
        return f"{weights} does not match its sha256 (corrupt or altered)"
    return None


def train_classifier(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     settings: dict[str, Any]) -> None:
    """Adam on cross-entropy with settings' seed, lr, batch_size and epochs, on torch's current threads."""
    generator = torch.Generator().manual_seed(settings["seed"])
    torch.manual_seed(settings["seed"])
    optimizer = torch.optim.Adam(classifier.parameters(), lr=settings["lr"])
    classifier.train()
    for _ in range(settings["epochs"]):
        for batch in torch.randperm(len(images), generator=generator).split(settings["batch_size"]):
            loss = F.cross_entropy(classifier(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    classifier.eval()


def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of `images` whose most likely class under `classifier` is their label."""
    return (_logits(classifier, images).argmax(1) == labels).float().mean().item()


@torch.no_grad()
def _logits(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return classifier(images.detach().float().cpu())


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temporary file renamed into place, so readers never see half a file."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(staging)
    os.replace(staging, path)



@dataclass(frozen=True)
class QualityScorer:
    """Scores images shaped and scaled like the classifier's input; `height` x `width` is their image size."""

    classifier: nn.Module
    reference_mean: np.ndarray
    reference_cov: np.ndarray
    height: int
    width: int

    @classmethod
    def for_dataset(cls, name: str, data_dir: str | os.PathLike[str] | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> QualityScorer:
        """The scorer for samples of a digit dataset `name`, its Frechet reference being that dataset's test
        split (CIFAR-10 has its own CNN: farm_sweep.evaluation.scorers.quality_scorer picks either)."""
        if name not in CLASSIFIER_DATA:
            raise ValueError(f"no classifier for dataset {name!r}; sample quality is defined for "
                             f"{', '.join([*CLASSIFIER_DATA, CIFAR])}")
        classifier = load_classifier(CLASSIFIER_DATA[name], data_dir, cache_dir)
        test = load_dataset(name, "test", data_dir)
        return cls.over(classifier, test.images, test.height, test.width)

    @classmethod
    def over(cls, classifier: nn.Module, reference: torch.Tensor, height: int, width: int) -> QualityScorer:
        """The scorer under `classifier` (which has a `features` module), its Frechet reference `reference`."""
        mean, cov = _gaussian(_features(classifier, reference))
        return cls(classifier, mean, cov, height, width)

    def classifier_score(self, images: torch.Tensor) -> float:
        log_p = F.log_softmax(_logits(self.classifier, images).double(), dim=1)
        log_marginal = torch.logsumexp(log_p, 0) - math.log(len(log_p))
        kl = (log_p.exp() * (log_p - log_marginal)).sum(1)
        return math.exp(kl.mean().item())

    def frechet_distance(self, images: torch.Tensor) -> float:
        mean, cov = _gaussian(_features(self.classifier, images))
        root = _sqrt_psd(cov)
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ self.reference_cov @ root), 0, None)).sum()
        distance = ((mean - self.reference_mean) ** 2).sum() + np.trace(cov) + np.trace(self.reference_cov)
        return float(distance - 2 * cross)


@torch.no_grad()
def _features(classifier: nn.Module, images: torch.Tensor) -> np.ndarray:
    return classifier.features(images.detach().float().cpu()).double().numpy()


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
