"""FARM+MADE: the autoregressive property of every mask, batched == looped, exact likelihoods."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from farm_sweep.losses import image_log_probs, mixture_nll
from farm_sweep.made.likelihood import ordering_log_probs
from farm_sweep.made.network import WEIGHT_SHARING, FarmMADE, parameter_count
from farm_sweep.made.staircase import logits_at
from farm_sweep.orderings import FAMILIES, make_orderings

SCHEMES = [(sharing, direct) for sharing in WEIGHT_SHARING for direct in (False, True)]


def make_model(family="raster", k=8, height=4, width=4, hidden=(48, 48), sharing="shared", num_masks=1,
               direct=False):
    torch.manual_seed(0)
    orders = make_orderings(family, k, height, width, seed=1)
    model = FarmMADE(orders, hidden, sharing, num_masks=num_masks, seed=2, direct_connections=direct)
    with torch.no_grad():  # codes and direct weights start at zero: make them matter
        for parameter in [*model.codes, *([model.direct] if direct else [])]:
            parameter.normal_(0, 0.3)
    return model


def looped_reference(model: FarmMADE, x: torch.Tensor, i: int) -> torch.Tensor:
    """Ordering i alone, as a plain masked MLP (+ codes, + direct connections): the definition the batched
    forward must match."""
    h = x
    masks = model.masks(torch.tensor([i]))
    for layer, (weight, bias, mask) in enumerate(zip(model.weights, model.biases, masks)):
        s = 0 if weight.shape[0] == 1 else i
        mask = mask[0] if mask.dim() == 3 else mask
        h = F.linear(h, weight[s] * mask, bias[s, 0])
        if layer < len(masks) - 1:
            h = torch.relu(h + (model.codes[layer][i, 0] if model.codes else 0))
    if model.direct_connections:
        rank = model.ranks[i]
        h = h + F.linear(x, model.direct[0 if model.direct.shape[0] == 1 else i] * (rank[:, None] > rank[None, :]))
    return h


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sharing,direct", SCHEMES)
def test_autoregressive_property_by_gradients(family, sharing, direct):
    model = make_model(family, k=8, sharing=sharing, num_masks=2, direct=direct)
    x = torch.rand(16)
    for mask in range(model.num_masks):
        model.set_mask(mask)
        jacobian = torch.autograd.functional.jacobian(lambda v: model(v[None])[:, 0, :], x)  # (k, D, D)
        for i in range(model.k):
            rank = model.ranks[i]
            allowed = rank[None, :] < rank[:, None]  # [d, j]: pixel j comes before pixel d
            depends = jacobian[i] != 0
            assert not (depends & ~allowed).any(), f"ordering {i} leaks a later pixel"
            assert depends.sum() > 0.5 * allowed.sum(), "masks cut almost every allowed connection"


def test_first_pixel_of_each_ordering_sees_nothing():
    model = make_model("random", k=4)
    outputs = model(torch.rand(5, 16))
    for i in range(model.k):
        first = model.orders[i, 0]
        torch.testing.assert_close(outputs[i, :, first], outputs[i, :1, first].expand(5))


@pytest.mark.parametrize("sharing,direct", SCHEMES)
@pytest.mark.parametrize("hidden", [(32,), (32, 24, 16)])
def test_batched_forward_equals_per_ordering_loop(sharing, direct, hidden):
    if sharing == "shared_hidden" and len(hidden) == 1:
        pytest.skip("shared_hidden needs two hidden layers (refused with one: see the next test)")
    model = make_model("raster", k=8, hidden=hidden, sharing=sharing, direct=direct)
    x = torch.bernoulli(torch.full((7, 16), 0.5))
    batched = model(x)
    for i in range(model.k):
        torch.testing.assert_close(batched[i], looped_reference(model, x, i), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[i], model(x, orderings=torch.tensor([i]))[0], atol=1e-5, rtol=1e-5)
        net = model.ordering_network(i)  # the plain MLP inference sorts along the staircase
        plain = x
        for layer, (weight, bias) in enumerate(zip(net.weights, net.biases)):
            plain = plain @ weight.T + bias
            plain = plain.relu() if layer < len(net.weights) - 1 else plain
        torch.testing.assert_close(batched[i], plain + (x @ net.direct.T if direct else 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sharing,direct", SCHEMES)
@pytest.mark.parametrize("hidden", [(32,), (40, 24, 16)])
def test_staircase_logits_equal_the_forward_at_any_pixels(sharing, direct, hidden):
    """The inference network (units sorted by degree, row blocks along the masks' staircase, only the units
    the asked pixels reach) gives the forward's logits, for every scheme, mask set and subset of pixels."""
    if sharing == "shared_hidden" and len(hidden) == 1:
        pytest.skip("shared_hidden needs two hidden layers")
    model = make_model("random", k=4, hidden=hidden, sharing=sharing, direct=direct, num_masks=2).double().eval()
    x = torch.bernoulli(torch.full((7, 16), 0.5)).double()
    pixels = torch.tensor([5, 0, 15, 9, 3])
    needed = torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) < 0.6
    for mask in (0, 1):
        model.set_mask(mask)
        with torch.no_grad():
            full = model(x)[..., pixels]
        torch.testing.assert_close(logits_at(model, x, torch.arange(4), pixels), full)
        some = logits_at(model, x, torch.tensor([2, 0, 3, 1]), pixels, needed)
        torch.testing.assert_close(some, torch.where(needed[:, None, :], full[[2, 0, 3, 1]], 0.0))


def test_staircase_follows_a_change_of_weights():
    model = make_model("raster", k=2, hidden=(24, 24)).eval()
    x = torch.bernoulli(torch.full((3, 16), 0.5))
    pixels = torch.arange(16)
    before = logits_at(model, x, torch.arange(2), pixels)
    with torch.no_grad():
        model.weights[1].mul_(2)  # in place, as an optimizer step
        torch.testing.assert_close(logits_at(model, x, torch.arange(2), pixels), model(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, model(x).detach())


def test_shared_hidden_with_one_hidden_layer_is_refused():
    with pytest.raises(ValueError, match="two or more hidden_sizes"):
        make_model(hidden=(32,), sharing="shared_hidden")


# D = 16 pixels, hidden (48, 48), k = 8: the parameters beyond `shared`'s one set
FIRST, MIDDLE, LAST = 16 * 48 + 48, 48 * 48 + 48, 48 * 16 + 16


@pytest.mark.parametrize("sharing,extra", [("shared", 0), ("separate", 7 * (FIRST + MIDDLE + LAST)),
                                           ("shared_hidden", 7 * (FIRST + LAST)), ("ordering_embedding", 8 * 96)])
def test_parameter_counts_follow_the_sharing_scheme(sharing, extra):
    shared = sum(p.numel() for p in make_model(sharing="shared").parameters())
    assert sum(p.numel() for p in make_model(sharing=sharing).parameters()) == shared + extra


@pytest.mark.parametrize("sharing,direct", SCHEMES)
def test_parameter_count_from_sizes_matches_the_built_model(sharing, direct):
    model = make_model(sharing=sharing, direct=direct)
    assert parameter_count(16, (48, 48), 8, sharing, direct) == sum(p.numel() for p in model.parameters())


def test_separate_weights_are_independent_models():
    model = make_model("raster", k=2, sharing="separate")
    x = torch.rand(3, 16)
    before = model(x).detach()
    with torch.no_grad():
        model.weights[0][1].add_(1.0)
    after = model(x).detach()
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def all_binary_images(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


@pytest.mark.parametrize("family,k", [("raster", 8), ("hilbert", 4), ("random", 3)])
@pytest.mark.parametrize("sharing,num_masks", [("shared", 1), ("separate", 1), ("shared", 3)])
def test_exact_likelihoods_sum_to_one_on_3x3(family, k, sharing, num_masks):
    model = make_model(family, k=k, height=3, width=3, hidden=(24, 24), sharing=sharing, num_masks=num_masks)
    with torch.no_grad():
        for weight in model.weights:
            weight.mul_(3)  # sharper conditionals: a loose mask would now show
    images = all_binary_images(9)
    log_probs = ordering_log_probs(model, images)  # (k, 512)
    torch.testing.assert_close(log_probs.double().exp().sum(1), torch.ones(k, dtype=torch.float64))
    mixture = (-mixture_nll(log_probs)).double().exp().sum()
    assert mixture.item() == pytest.approx(1.0, abs=1e-5)


def test_orderings_disagree_when_untrained_but_each_normalizes():
    model = make_model("raster", k=2, height=3, width=3, hidden=(24,))
    images = all_binary_images(9)
    log_probs = image_log_probs(model(images), images)
    assert not torch.allclose(log_probs[0], log_probs[1])


def test_dropout_only_while_training_and_never_a_leak():
    model = FarmMADE(make_orderings("random", 4, 4, 4, seed=1), (48,), dropout=0.5, seed=2)
    x = torch.rand(16)
    model.train()
    torch.manual_seed(3)
    jacobian = torch.autograd.functional.jacobian(lambda v: model(v[None])[:, 0, :], x)
    for i in range(model.k):
        rank = model.ranks[i]
        assert not ((jacobian[i] != 0) & ~(rank[None, :] < rank[:, None])).any()
    assert not torch.equal(model(x[None]), model(x[None]))  # different units dropped each time
    model.eval()
    assert torch.equal(model(x[None]), model(x[None]))
