"""Sample quality (DESIGN 4): classifier score and Frechet distance under a project-trained digit classifier.

The paper scored samples with "Inception trained on MNIST"; Inception weights cannot be downloaded
here, so the project trains its own small classifier, an MLP D -> 256 -> 128 -> 10 whose 128 ReLU
features (the penultimate layer) feed the Frechet distance: on MNIST binarized like the samples
(load_dataset("mnist", "train", binarize="static")) for the 28x28 datasets, on digits' train split
for the 8x8 digits. It is cached in FARM_CACHE_DIR (default ~/.cache/farm_sweep) as
classifier_<data>.safetensors plus a JSON holding its training settings, test accuracy and the
weights' sha256; a cache whose checksum or settings do not match is retrained.

classifier_score = exp(E_x KL(p(y|x) || p(y))), p(y) = E_x p(y|x): 1 for blank or meaningless
images, 10 for confident and class-balanced ones. frechet_distance = |mu - mu_ref|^2 +
tr(S + S_ref - 2 (S^1/2 S_ref S^1/2)^1/2) between feature Gaussians of the images and the test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from farm_sweep.data import load_dataset

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "FARM_CACHE_DIR"
CLASSIFIER_DATA = {"digits": "digits", "mnist": "mnist", "binarized_mnist": "mnist"}
TRAINING = {  # per classifier dataset; stored beside the weights, a change retrains
    "mnist": {"dim": 784, "hidden": [256, 128], "epochs": 4, "batch_size": 128, "lr": 2e-3, "seed": 0,
              "binarize": "static"},
    "digits": {"dim": 64, "hidden": [256, 128], "epochs": 60, "batch_size": 64, "lr": 2e-3, "seed": 0,
               "binarize": "static"},
}


class DigitClassifier(nn.Module):
    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        sizes = [dim, *hidden]
        self.features = nn.Sequential(*(m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())))
        self.head = nn.Linear(sizes[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Explicit argument > env var FARM_CACHE_DIR > ~/.cache/farm_sweep."""
    return Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "farm_sweep").expanduser()


def load_classifier(data: str, data_dir: str | os.PathLike[str] | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> DigitClassifier:
    """The cached classifier for `data` ("mnist" or "digits"), trained and cached when missing or bad."""
    folder = resolve_cache_dir(cache_dir)
    weights, record = folder / f"classifier_{data}.safetensors", folder / f"classifier_{data}.json"
    settings = TRAINING[data]
    classifier = DigitClassifier(settings["dim"], settings["hidden"])
    reason = _cache_problem(weights, record, settings)
    if reason is None:
        classifier.load_state_dict(load_file(weights))
        return classifier.eval()
    log.warning("training the %s digit classifier (%s)", data, reason)
    began = time.perf_counter()
    train_set = load_dataset(data, "train", data_dir, binarize=settings["binarize"])
    _train(classifier, train_set.images, train_set.labels, settings)
    test_set = load_dataset(data, "test", data_dir, binarize=settings["binarize"])
    accuracy = (_logits(classifier, test_set.images).argmax(1) == test_set.labels).float().mean().item()
    folder.mkdir(parents=True, exist_ok=True)
    _replace(weights, lambda path: save_file(classifier.state_dict(), path))
    summary = {"settings": settings, "sha256": _sha256(weights), "test_accuracy": accuracy,
               "train_seconds": time.perf_counter() - began}
    _replace(record, lambda path: path.write_text(json.dumps(summary, indent=2)))
    return classifier.eval()


def _cache_problem(weights: Path, record: Path, settings: dict) -> str | None:
    """Why the cached classifier cannot be used, or None when it can."""
    if not weights.is_file() or not record.is_file():
        return f"no cached classifier at {weights}"
    try:
        summary = json.loads(record.read_text())
    except json.JSONDecodeError:
        return f"{record} is unreadable"
    if summary.get("settings") != settings:
        return f"{record} holds other training settings"
    if summary.get("sha256") != _sha256(weights):
        return f"{weights} does not match its sha256 (corrupt or altered)"
    return None


def _train(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, settings: dict) -> None:
    """Adam on cross-entropy, on one CPU thread: for a model this small, more threads only add
    synchronisation (10x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_epochs(classifier, images, labels, settings)
    finally:
        torch.set_num_threads(threads)


def _train_epochs(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor, settings: dict) -> None:
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


@torch.no_grad()
def _logits(classifier: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    return classifier(images.detach().float().cpu())


def _replace(path: Path, write) -> None:
    """Write via a temporary file renamed into place, so readers never see half a file."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(staging)
    os.replace(staging, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class QualityScorer:
    classifier: DigitClassifier
    reference_mean: np.ndarray
    reference_cov: np.ndarray
    height: int
    width: int

    @classmethod
    def for_dataset(cls, name: str, data_dir: str | os.PathLike[str] | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> QualityScorer:
        """The scorer for samples of dataset `name`, its Frechet reference being that dataset's test split."""
        if name not in CLASSIFIER_DATA:
            raise ValueError(f"no digit classifier for dataset {name!r}; sample quality is defined for "
                             f"{', '.join(CLASSIFIER_DATA)}")
        classifier = load_classifier(CLASSIFIER_DATA[name], data_dir, cache_dir)
        test = load_dataset(name, "test", data_dir)
        mean, cov = _gaussian(_features(classifier, test.images))
        return cls(classifier, mean, cov, test.height, test.width)

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
def _features(classifier: DigitClassifier, images: torch.Tensor) -> np.ndarray:
    return classifier.features(images.detach().float().cpu()).double().numpy()


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
