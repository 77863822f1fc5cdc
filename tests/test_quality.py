"""Sample quality: the MNIST classifier scores real digits near 10, its cache is checked and reused, and
cifar10 is scored by the CIFAR classifier (a tiny cached one here)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from farm_sweep import quality
from farm_sweep.data import DataError, load_dataset
from farm_sweep.evaluation import cifar_classifier
from farm_sweep.evaluation.cifar_classifier import CifarClassifier
from farm_sweep.evaluation.scorers import quality_scorer
from farm_sweep.pixelcnn.logistic_mixture import to_unit


@pytest.fixture(scope="session")
def mnist_test():
    try:
        return load_dataset("binarized_mnist", "test").images
    except DataError as error:
        pytest.skip(f"binarized MNIST is not available: {error}")


@pytest.fixture(scope="session")
def scorer(mnist_test, tmp_path_factory):
    """The MNIST scorer, its classifier trained once per test session in a temporary cache."""
    return quality_scorer("binarized_mnist", cache_dir=tmp_path_factory.mktemp("cache"))


def test_real_digits_score_near_ten_and_far_above_noise_and_blanks(scorer, mnist_test):
    noise = (torch.rand(mnist_test.shape, generator=torch.Generator().manual_seed(0)) < 0.15).float()
    real = scorer.classifier_score(mnist_test)
    assert 8 < real <= 10
    assert scorer.classifier_score(noise) < real / 2
    assert scorer.classifier_score(torch.zeros_like(mnist_test)) == pytest.approx(1)


def test_frechet_distance_of_real_digits_is_far_below_noise(scorer, mnist_test):
    noise = (torch.rand(mnist_test.shape, generator=torch.Generator().manual_seed(0)) < 0.15).float()
    half = scorer.frechet_distance(mnist_test[1::2])
    assert 0 <= half < 0.01 * scorer.frechet_distance(noise)
    assert scorer.frechet_distance(mnist_test) == pytest.approx(0, abs=1e-5)  # eigenvalue round-off, traces ~300


@pytest.fixture
def quick_digits(monkeypatch):
    """Train the digits classifier for 3 epochs (the cache tests test the cache, not the classifier)."""
    monkeypatch.setitem(quality.TRAINING, "digits", {**quality.TRAINING["digits"], "epochs": 3})
    calls = []
    train = quality.train_classifier
    monkeypatch.setattr(quality, "train_classifier", lambda *args: calls.append(1) or train(*args))
    return calls


def test_the_cache_is_reused_and_a_corrupted_cache_is_retrained(tmp_path, quick_digits):
    first = quality_scorer("digits", cache_dir=tmp_path)
    weights = tmp_path / "classifier_digits.safetensors"
    summary = json.loads((tmp_path / "classifier_digits.json").read_text())
    assert summary["settings"] == quality.TRAINING["digits"] and summary["test_accuracy"] > 0.5
    second = quality_scorer("digits", cache_dir=tmp_path)
    assert len(quick_digits) == 1
    images = load_dataset("digits", "test").images
    assert second.classifier_score(images) == first.classifier_score(images)

    data = bytearray(weights.read_bytes())
    data[-10:] = bytes(10)  # corrupt some weights; the file still parses
    weights.write_bytes(bytes(data))
    quality_scorer("digits", cache_dir=tmp_path)
    assert len(quick_digits) == 2
    assert quality.cache_problem(weights, tmp_path / "classifier_digits.json", quality.TRAINING["digits"]) is None


def test_changed_training_settings_retrain(tmp_path, quick_digits, monkeypatch):
    quality_scorer("digits", cache_dir=tmp_path)
    monkeypatch.setitem(quality.TRAINING, "digits", {**quality.TRAINING["digits"], "epochs": 2})
    quality_scorer("digits", cache_dir=tmp_path)
    assert len(quick_digits) == 2


def test_the_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(quality.CACHE_DIR_ENV, str(tmp_path))
    assert quality.resolve_cache_dir() == tmp_path
    assert quality.resolve_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_datasets_without_a_classifier_are_refused():
    with pytest.raises(ValueError, match="no classifier for dataset 'imagenet'.*binarized_mnist, cifar10"):
        quality_scorer("imagenet")


TINY_CIFAR = {**cifar_classifier.SETTINGS, "filters": [4], "features": 8}


def cache_tiny_cifar_classifier(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CifarClassifier:
    """Make the CIFAR classifier a tiny untrained CNN and cache it in `cache_dir` (the real one trains 7+ min)."""
    monkeypatch.setattr(cifar_classifier, "SETTINGS", TINY_CIFAR)
    return quality.cached_classifier(quality.CIFAR, TINY_CIFAR, lambda: CifarClassifier([4], 8),
                                     lambda classifier: 0.0, cache_dir)


def test_cifar10_is_scored_by_the_cached_cifar_classifier(tmp_path, monkeypatch, one_thread):
    cached = cache_tiny_cifar_classifier(tmp_path, monkeypatch)
    monkeypatch.setattr(cifar_classifier, "train_classifier", lambda *args: pytest.fail("trained, not loaded"))
    scorer = quality_scorer("cifar10", cache_dir=tmp_path)
    assert isinstance(scorer.classifier, CifarClassifier) and (scorer.height, scorer.width) == (32, 32)
    assert all(torch.equal(a, b) for a, b in zip(scorer.classifier.state_dict().values(),
                                                 cached.state_dict().values()))
    test = load_dataset("cifar10", "test")
    assert scorer.frechet_distance(to_unit(test.images)) == pytest.approx(0, abs=1e-6)
    images = to_unit(test.images[:100])
    with torch.no_grad():
        probabilities = torch.softmax(cached(images), 1).double().numpy()
    assert scorer.classifier_score(images) == pytest.approx(score_as_mutual_information(probabilities), rel=1e-9)


class Passthrough(nn.Module):
    """A "classifier" whose logits and features are its input, so scores of chosen logits and features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def score_as_mutual_information(probabilities: np.ndarray) -> float:
    """exp(I(x; y)) = exp(H(y) - E_x H(y|x)): the classifier score by another formula than the scorer's."""
    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(p)).sum(-1)
    return math.exp(entropy(probabilities.mean(0)) - entropy(probabilities).mean())


def test_classifier_score_of_known_predictions():
    scorer = quality.QualityScorer.over(Passthrough(), torch.randn(10, 3), 1, 3)
    two_confident = torch.tensor([[0.9, 0.1], [0.1, 0.9]]).log()  # p(y) = (1/2, 1/2); exp(KL) = 2 * 0.9^0.9 0.1^0.1
    assert scorer.classifier_score(two_confident) == pytest.approx(2 * 0.9 ** 0.9 * 0.1 ** 0.1, rel=1e-6)
    assert scorer.classifier_score(torch.eye(5) * 60) == pytest.approx(5, rel=1e-6)  # certain and balanced
    assert scorer.classifier_score(torch.zeros(7, 4)) == pytest.approx(1)  # undecided
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    expected = score_as_mutual_information(torch.softmax(logits, 1).numpy())
    assert scorer.classifier_score(logits) == pytest.approx(expected, rel=1e-6) and 1.5 < expected < 9


def test_frechet_distance_of_known_gaussians():
    """Features whose mean and covariance are exact: the columns of a 4x4 Hadamard matrix (bar the first)
    have mean 0 and covariance (4/3) I, so scaled by s and shifted by m the distance is |m - m'|^2 +
    (4/3) sum (s - s')^2. Random features against tr sqrt(S S_ref) from the eigenvalues of the product."""
    hadamard = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)[:, 1:]
    s_ref, m_ref, s, m = (torch.tensor(v, dtype=torch.float64) for v in
                          ([1.0, 2.0, 0.5], [0.0, 1.0, -1.0], [3.0, 1.0, 0.5], [2.0, 1.0, 0.0]))
    scorer = quality.QualityScorer.over(Passthrough(), hadamard * s_ref + m_ref, 1, 3)
    expected = ((m - m_ref) ** 2).sum() + 4 / 3 * ((s - s_ref) ** 2).sum()  # 5 + (4/3) 5
    assert scorer.frechet_distance(hadamard * s + m) == pytest.approx(expected.item(), rel=1e-9)

    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 4, generator=generator, dtype=torch.float64) @ torch.randn(4, 4, generator=generator,
                                                                                           dtype=torch.float64)
    samples = torch.randn(200, 4, generator=generator, dtype=torch.float64) * 2 + 1
    scorer = quality.QualityScorer.over(Passthrough(), reference, 1, 4)
    features = [x.float().double().numpy() for x in (reference, samples)]  # the scorer's features are float32
    (mean_ref, cov_ref), (mean, cov) = ((x.mean(0), np.cov(x, rowvar=False)) for x in features)
    cross = np.sqrt(np.linalg.eigvals(cov @ cov_ref).real.clip(0)).sum()
    expected = ((mean - mean_ref) ** 2).sum() + np.trace(cov) + np.trace(cov_ref) - 2 * cross
    assert scorer.frechet_distance(samples) == pytest.approx(expected, rel=1e-9)
