"""One mask-ensemble definition: a model with M hidden-mask sets is the uniform mixture of M FARM models.
Its image likelihood (likelihood.ordering_log_probs), its samples and its hole distribution (inpainting) are
checked against that one mixture by brute force over every binary 3x3 image."""

import itertools
import math

import pytest
import torch

from farm_sweep.made.inpaint import inpaint, nll_exact
from farm_sweep.made.likelihood import ordering_log_probs
from farm_sweep.made.network import FarmMADE
from farm_sweep.made.sampling import sample
from farm_sweep.orderings import make_orderings

ALL_3X3 = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)))  # all 512 binary 3x3 images


def three_mask_model() -> FarmMADE:
    """Raster and reversed raster, three mask sets, large random weights: the mask sets disagree."""
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("raster", 2, 3, 3), [24, 24], num_masks=3, seed=1).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1.5)
    return model.eval()


def mask_log_probs(model: FarmMADE, ordering: int) -> torch.Tensor:
    """log p_i,m(x) of every 3x3 image under every mask set alone, (M, 512)."""
    per_mask = []
    for mask in range(model.num_masks):
        with model.using_mask(mask), torch.no_grad():
            logits = model(ALL_3X3.double())[ordering]
        per_mask.append(-torch.nn.functional.binary_cross_entropy_with_logits(
            logits, ALL_3X3.double(), reduction="none").sum(1))
    return torch.stack(per_mask)


def index_of(images: torch.Tensor) -> torch.Tensor:
    """The row of ALL_3X3 holding each image (images as bits, most significant first)."""
    return (images.long() * 2 ** torch.arange(8, -1, -1)).sum(1)


def total_variation(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    return 0.5 * (counts.double() / counts.sum() - probabilities).abs().sum().item()


@pytest.fixture(scope="module")
def model() -> FarmMADE:
    return three_mask_model()


def test_the_likelihood_is_the_mixture_over_mask_sets_and_the_mask_sets_disagree(model):
    per_mask = mask_log_probs(model, 0)
    mixture = ordering_log_probs(model, ALL_3X3.double())[0]
    torch.testing.assert_close(mixture, torch.logsumexp(per_mask, 0) - math.log(3))
    assert per_mask.exp().sum(1).sub(1).abs().max() < 1e-9  # each mask set is a distribution
    # Far apart, so that a definition using one mask set, or mixing them per pixel, would fail below.
    assert all(0.5 * (per_mask[m].exp() - mixture.exp()).abs().sum() > 0.15 for m in range(3))


@pytest.mark.parametrize("sampler", ["sequential", "fixed_point"])
def test_samples_follow_the_likelihoods_mixture(model, sampler):
    """Each image draws its mask set, then is sampled under it: 60,000 samples' histogram over the 512
    images is within sampling error of exp(likelihood) (total variation 0.009 with this seed), and far from
    any single mask set (0.6 or more)."""
    generator = torch.Generator().manual_seed(0)
    samples, _ = sample(model, sampler, 60_000, generator=generator)
    counts = torch.bincount(index_of(samples), minlength=512)
    per_mask = mask_log_probs(model, 0).exp()
    assert total_variation(counts, ordering_log_probs(model, ALL_3X3.double())[0].exp()) < 0.03
    assert all(total_variation(counts, per_mask[m]) > 0.3 for m in range(3))


def conditional_of_the_joint(joint: torch.Tensor, hole: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    """p(hole | evidence) for each of the 2^|hole| completions of `evidence`, in ALL_3X3 order, from the
    joint log-probabilities of all 512 images by summation."""
    completions = (ALL_3X3[:, ~hole] == evidence[~hole]).all(1)
    return torch.softmax(joint[completions], 0)


@pytest.mark.parametrize("fill,ordering", [("single", 0), ("best_evidence", 1)])
def test_inpainting_is_the_conditional_of_the_likelihoods_mixture(model, fill, ordering):
    """A hole made of the last 4 pixels of the fill's ordering: nll_exact over the hole is -log of the
    conditional of that ordering's likelihood (the mask mixture) given the evidence, for every image; and
    inpaint's fills of one evidence follow that conditional (60,000 fills, histogram over the 16
    completions)."""
    hole = torch.zeros(9, dtype=torch.bool)
    hole[model.orders[ordering, -4:]] = True
    joint = ordering_log_probs(model, ALL_3X3.double())[ordering]
    expected = torch.stack([-conditional_of_the_joint(joint, hole, image)[_rank_among(image, hole)].log()
                            for image in ALL_3X3])
    torch.testing.assert_close(nll_exact(model, ALL_3X3.double(), hole, fill).sum(1), expected, rtol=1e-9, atol=1e-9)

    evidence = ALL_3X3[300]
    fills, _ = inpaint(model, evidence.double().repeat(60_000, 1), hole, fill, torch.Generator().manual_seed(1))
    completions = (ALL_3X3[:, ~hole] == evidence[~hole]).all(1).nonzero().squeeze(1)
    counts = (index_of(fills)[:, None] == completions[None]).sum(0)
    assert counts.sum() == 60_000  # the evidence is kept
    conditional = conditional_of_the_joint(joint, hole, evidence)
    assert total_variation(counts, conditional) < 0.01  # 0.001 and 0.003 with these seeds
    for mask in range(3):  # and not the conditional of one mask set (0.4 or more apart)
        one_mask = conditional_of_the_joint(mask_log_probs(model, ordering)[mask], hole, evidence)
        assert total_variation(counts, one_mask) > 0.2


def _rank_among(image: torch.Tensor, hole: torch.Tensor) -> int:
    """The position of `image` among the completions of its own evidence, in ALL_3X3 order."""
    completions = (ALL_3X3[:, ~hole] == image[~hole]).all(1).nonzero().squeeze(1)
    return int((completions == index_of(image[None])[0]).nonzero())
