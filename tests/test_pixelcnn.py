"""PixelCNN++, its logistic mixture likelihood and FARM over image transforms, on tiny images."""

import math

import pytest
import torch

from farm_sweep.orderings import ranks, symmetric_ordering
from farm_sweep.pixelcnn.farm import (
    PAPER_TRANSFORMS,
    TRANSFORM_NAMES,
    FarmPixelCNN,
    inverse_transform,
    ordering_log_probs,
    same_conditionings,
    transform,
    transform_indices,
    transform_ranks,
)
from farm_sweep.pixelcnn.logistic_mixture import (
    channel_log_probs,
    log_prob,
    num_params,
    quantize,
    sample,
    to_levels,
    to_unit,
)
from farm_sweep.pixelcnn.losses import (
    bits_per_dim,
    divergence,
    ensemble_nll,
    farm_loss,
    generalized_jsd,
    mixture_nll,
    ordering_nll,
)
from farm_sweep.pixelcnn.network import PixelCNNConfig, build_pixelcnn
from farm_sweep.training.config import ConfigError, TrainConfig

CAUSAL = ("raster", "antidiagonal")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(causal="raster", channels=3, stages=3, resnets=2, filters=8, mixtures=2):
    return PixelCNNConfig(channels=channels, filters=filters, resnets_per_stage=resnets, stages=stages,
                          mixtures=mixtures, causal=causal)


def random_params(batch, channels, mixtures, height, width, extreme=False, generator=None):
    params = torch.randn(batch, num_params(channels, mixtures), height, width, generator=generator)
    if not extreme:
        return params
    m = mixtures
    blocks = params[:, m:].unflatten(1, (channels, -1, m))
    pick = torch.randint(0, 5, blocks[:, :, 1].shape, generator=generator)
    blocks[:, :, 0] = torch.tensor([-5.0, -1.0, 0.3, 1.0, 5.0])[pick]  # means, some far outside [-1, 1]
    blocks[:, :, 1] = torch.tensor([-20.0, -7.0, 0.0, 3.0, 15.0])[pick.roll(1, 0)]  # log scales
    if channels == 3:
        blocks[:, :, 2] *= 20  # coefficients saturate at +-1
    params[:, :m] *= 30  # near one-hot mixture weights
    return params


def grid_values(shape, generator=None):
    return torch.randint(0, 256, shape, generator=generator) / 127.5 - 1.0


def dependency(fn, x):
    """dep[d, q]: does the output at pixel d depend on input pixel q (any channel)? One batch copy per
    output pixel, gradients of a random projection of that pixel's outputs; fn: (B, C, H, W) -> (B, P, H, W)."""
    pixels = x.shape[-2] * x.shape[-1]
    xs = x.expand(pixels, -1, -1, -1).clone().requires_grad_()
    out = fn(xs).flatten(2)
    picked = out[torch.arange(pixels), :, torch.arange(pixels)]  # (pixels, P)
    (grad,) = torch.autograd.grad((picked * torch.randn_like(picked)).sum(), xs)
    return grad.abs().sum(1).flatten(1) != 0


def before(rank):
    """allowed[d, q] = rank(q) < rank(d), from a (H, W) rank grid."""
    flat = rank.flatten()
    return flat[None, :] < flat[:, None]


def antidiagonal_rank(height, width):
    return transform_ranks(0, height, width, "antidiagonal")


# ---------------------------------------------------------------- the discretized logistic mixture


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_every_channel_categorical_sums_to_one(channels, extreme, dtype, tol):
    g = torch.Generator().manual_seed(0)
    params = random_params(4, channels, 3, 3, 3, extreme, g).to(dtype)
    x = grid_values((4, channels, 3, 3), g).to(dtype)
    log_p = channel_log_probs(x, params)
    assert log_p.shape == (4, channels, 3, 3, 256)
    assert torch.isfinite(log_p).all()
    assert torch.allclose(log_p.exp().sum(-1), torch.ones((), dtype=dtype), atol=tol)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("extreme", [False, True])
def test_pixel_log_prob_is_the_chain_rule_over_channels(channels, extreme):
    g = torch.Generator().manual_seed(1)
    params = random_params(3, channels, 4, 2, 5, extreme, g).double()
    x = grid_values((3, channels, 2, 5), g).double()
    x[0, :, 0, 0], x[1, :, 0, 0] = -1.0, 1.0  # the edge bins
    levels = torch.round((x + 1) * 127.5).long()
    per_channel = channel_log_probs(x, params).gather(-1, levels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(per_channel.sum(1), log_prob(x, params), atol=1e-10)


def test_log_prob_matches_the_textbook_formula():
    """Against p(x) = sum_m pi_m prod_c [cdf(upper) - cdf(lower)], written from the layout in the docs."""
    g = torch.Generator().manual_seed(2)
    m = 3
    params = random_params(2, 3, m, 2, 2, generator=g).double()
    x = grid_values((2, 3, 2, 2), g).double()
    x[0, :, 0, 0], x[1, :, 1, 1] = -1.0, 1.0
    expected = torch.zeros(2, 2, 2, dtype=torch.float64)
    for b in range(2):
        for r in range(2):
            for c in range(2):
                p, v = params[b, :, r, c], x[b, :, r, c]
                weights = torch.softmax(p[:m], 0)
                total = 0.0
                for k in range(m):
                    block = [p[m + ch * 3 * m:m + (ch + 1) * 3 * m] for ch in range(3)]
                    mean = [block[ch][k] for ch in range(3)]
                    scale = [block[ch][m + k].clamp(min=-7).exp() for ch in range(3)]
                    alpha, beta, gamma = (torch.tanh(block[ch][2 * m + k]) for ch in range(3))
                    mean[1] = mean[1] + alpha * v[0]
                    mean[2] = mean[2] + beta * v[0] + gamma * v[1]
                    mass = 1.0
                    for ch in range(3):
                        upper = 1.0 if v[ch] > 0.999 else torch.sigmoid((v[ch] + 1 / 255 - mean[ch]) / scale[ch])
                        lower = 0.0 if v[ch] < -0.999 else torch.sigmoid((v[ch] - 1 / 255 - mean[ch]) / scale[ch])
                        mass = mass * (upper - lower)
                    total = total + weights[k] * mass
                expected[b, r, c] = torch.log(total)
    assert torch.allclose(log_prob(x, params), expected, atol=1e-9)


def test_sampler_is_deterministic_given_noise_and_draws_from_the_model():
    g = torch.Generator().manual_seed(3)
    n, m = 20_000, 2
    one = random_params(1, 3, m, 1, 1, generator=g)
    blocks = one[:, m:].unflatten(1, (3, -1, m))
    blocks[:, :, 0] = torch.rand(1, 3, m, 1, 1, generator=g) - 0.5
    blocks[:, :, 1] = math.log(0.004)  # a few levels wide: the joint has ~100 likely values
    params = one.expand(n, -1, -1, -1)
    noise = torch.rand(n, 4, 1, 1, generator=g)
    x = sample(params, 3, noise)
    assert torch.equal(x, sample(params, 3, noise))
    assert not torch.equal(x, sample(params, 3, torch.rand(n, 4, 1, 1, generator=g)))
    assert torch.equal(x, quantize(x))
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_levels(to_unit(levels)), levels)
    values, counts = torch.unique(x.flatten(1), dim=0, return_counts=True)
    model = log_prob(values.view(-1, 3, 1, 1), one.expand(len(values), -1, -1, -1)).exp().flatten()
    total_variation = 0.5 * ((counts / n - model).abs().sum() + (1 - model.sum()))
    assert total_variation < 0.05


# ---------------------------------------------------------------- causality of the networks


@pytest.mark.parametrize("causal", CAUSAL)
def test_network_sees_exactly_the_earlier_pixels(causal):
    """No channel of pixel d, nor anything after it, reaches d's parameters; everything earlier does
    (no blind spot). raster: earlier in raster order; antidiagonal: r' + c' < r + c."""
    torch.manual_seed(0)
    net = build_pixelcnn(tiny(causal)).eval()
    depends = dependency(net, torch.rand(1, 3, 8, 8) * 2 - 1)
    rank = torch.arange(64).view(8, 8) if causal == "raster" else antidiagonal_rank(8, 8)
    assert torch.equal(depends, before(rank))


@pytest.mark.parametrize("causal", CAUSAL)
def test_every_transform_is_causal_on_the_original_grid(causal):
    torch.manual_seed(1)
    xs = (torch.rand(1, 3, 8, 8) * 2 - 1).expand(64, -1, -1, -1).clone().requires_grad_()
    for group in ((0, 1, 6, 7), (2, 3, 4, 5)):  # the rotations, the reflections: each distinct for both variants
        model = FarmPixelCNN(tiny(causal), transforms=group).eval()
        params = model.params(xs).flatten(3)  # (4, 64, P, 64)
        for i, t in enumerate(model.transforms):
            picked = params[i, torch.arange(64), :, torch.arange(64)]
            (grad,) = torch.autograd.grad((picked * torch.randn_like(picked)).sum(), xs, retain_graph=True)
            depends = grad.abs().sum(1).flatten(1) != 0
            assert torch.equal(depends, before(transform_ranks(t, 8, 8, causal))), TRANSFORM_NAMES[t]


@pytest.mark.parametrize("causal", CAUSAL)
def test_one_pass_likelihood_equals_the_chain_rule_from_separate_passes(causal):
    """log p(x_d | x_<d) read off one pass on x equals the conditional from a pass on an image whose
    pixels from d on are replaced by noise: the one-pass likelihood is the chain rule."""
    torch.manual_seed(2)
    net = build_pixelcnn(tiny(causal, channels=1, stages=2)).double().eval()
    g = torch.Generator().manual_seed(2)
    x = grid_values((3, 1, 4, 4), g).double()
    rank = (torch.arange(16).view(4, 4) if causal == "raster" else antidiagonal_rank(4, 4)).flatten()
    with torch.no_grad():
        one_pass = log_prob(x, net(x)).flatten(1)
        chain = torch.empty_like(one_pass)
        for d in range(16):
            later = (rank >= rank[d]).view(1, 1, 4, 4)
            scrambled = torch.where(later, grid_values(x.shape, g).double(), x)
            chain[:, d] = log_prob(x, net(scrambled)).flatten(1)[:, d]
    assert torch.allclose(chain, one_pass, atol=1e-10)


@pytest.mark.parametrize("causal", CAUSAL)
def test_joint_sums_to_one_over_every_two_pixel_image(causal):
    """Brute force over all 256^2 grayscale 1x2 images, for the paper's two orderings (rot90_cw runs on
    2x1 images) and for their mixture."""
    torch.manual_seed(3)
    model = FarmPixelCNN(tiny(causal, channels=1, stages=1, resnets=1, filters=4), (0, 7)).double().eval()
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    first, second = torch.meshgrid(levels, levels, indexing="ij")
    x = torch.stack([first.flatten(), second.flatten()], -1).view(-1, 1, 1, 2)
    with torch.no_grad():
        log_px = model(x)
    assert log_px.shape == (2, 65536, 1, 2)
    total = torch.logsumexp(log_px.sum((-2, -1)), dim=1)  # log sum_x p_i(x) per ordering
    assert torch.allclose(total, torch.zeros(2, dtype=torch.float64), atol=1e-9)
    mixture = torch.logsumexp(log_px.sum((-2, -1)), dim=0) - math.log(2)  # log (1/k) sum_i p_i(x)
    assert abs(torch.logsumexp(mixture, 0).item()) < 1e-9


# ---------------------------------------------------------------- transforms and ranks


def test_transforms_are_the_made_raster_orderings():
    for t in range(8):
        expected = ranks(symmetric_ordering("raster", t, 3, 5)[None])[0].view(3, 5)
        assert torch.equal(transform_ranks(t, 3, 5), expected), TRANSFORM_NAMES[t]
        x = torch.arange(15).view(1, 3, 5)
        assert torch.equal(inverse_transform(transform(x, t), t), x)


def test_paper_sets_and_rotations():
    assert transform_indices(1) == (0,)
    assert [TRANSFORM_NAMES[t] for t in transform_indices(2)] == ["identity", "rot90_cw"]
    assert [TRANSFORM_NAMES[t] for t in transform_indices(4)] == ["identity", "rot90_cw", "rot180", "rot90_ccw"]
    assert sorted(transform_indices(8)) == list(range(8)) and transform_indices(8) == PAPER_TRANSFORMS
    assert transform_indices(4, "symmetries") == (0, 1, 2, 3)
    x = torch.arange(12).view(3, 4)
    assert torch.equal(transform(x, 7), torch.rot90(x, -1))
    assert torch.equal(transform(x, 6), torch.rot90(x, 1))
    # rot90_cw's context is the columns to the left: it starts bottom-left and climbs each column.
    rank = transform_ranks(7, 3, 4)
    assert rank[2, 0] == 0 and rank[1, 0] == 1 and rank[0, 0] == 2 and rank[2, 1] == 3


def test_antidiagonal_ranks_count_earlier_diagonals():
    assert antidiagonal_rank(2, 3).tolist() == [[0, 1, 3], [1, 3, 5]]
    assert transform_ranks(1, 2, 2, "antidiagonal").tolist() == [[3, 1], [1, 0]]


def test_evidence_weights_by_hand():
    model = FarmPixelCNN(tiny(stages=1), transforms=(0, 1))
    w = model.evidence_weights(1, 3)
    assert torch.allclose(w, torch.tensor([[[1 / 4, 2 / 4, 3 / 4]], [[3 / 4, 2 / 4, 1 / 4]]]))


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("weight_sharing", ["shared", "separate"])
def test_batched_forward_equals_the_loop_over_transforms(causal, weight_sharing):
    torch.manual_seed(4)
    model = FarmPixelCNN(tiny(causal, resnets=1), transforms=(0, 7, 1, 6), weight_sharing=weight_sharing).eval()
    x = grid_values((2, 3, 8, 8))
    with torch.no_grad():
        params, log_px = model.params(x), model(x)
        nets = model.nets if weight_sharing == "separate" else [model.nets[0]] * model.k
        loop = torch.stack([inverse_transform(net(transform(x, t)), t) for net, t in zip(nets, model.transforms)])
        loop_log_px = torch.stack([log_prob(x, p) for p in loop])
    assert params.shape == (4, 2, 20, 8, 8) and log_px.shape == (4, 2, 8, 8)
    assert torch.allclose(params, loop, atol=1e-5)
    assert torch.allclose(log_px, loop_log_px, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model.params(x, orderings=[3, 1]), loop[[3, 1]], atol=1e-5)


def test_config_and_input_checks():
    with pytest.raises(ValueError, match="causal"):
        PixelCNNConfig(causal="zigzag")
    with pytest.raises(ValueError, match="divisible"):
        build_pixelcnn(tiny(stages=3))(torch.zeros(1, 3, 6, 6))
    with pytest.raises(ValueError, match="distinct"):
        FarmPixelCNN(tiny(), transforms=(0, 0))


# ---------------------------------------------------------------- losses


def test_nll_terms_by_hand():
    log_px = torch.tensor([[[[-1.0, -2.0]]], [[[-3.0, -0.5]]]])  # (k=2, B=1, H=1, W=2)
    assert math.isclose(ordering_nll(log_px).item(), (3.0 + 3.5) / 2, rel_tol=1e-6)
    expected = -math.log(0.5 * (math.exp(-3.0) + math.exp(-3.5)))
    assert math.isclose(mixture_nll(log_px).item(), expected, rel_tol=1e-6)
    weights = torch.tensor([[[0.25, 0.5]], [[0.75, 0.5]]])
    expected = (-math.log(0.25 * math.exp(-1) + 0.75 * math.exp(-3))
                - math.log(0.5 * math.exp(-2) + 0.5 * math.exp(-0.5)))
    assert math.isclose(ensemble_nll(log_px, weights).item(), expected, rel_tol=1e-6)
    assert math.isclose(bits_per_dim(3072 * math.log(2) * 3.5, 3072), 3.5)


def test_generalized_jsd_by_hand():
    p1, p2 = [0.5, 0.5], [0.9, 0.1]
    log_p = torch.tensor([p1, p2]).log()

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    mix = [0.7, 0.3]
    assert math.isclose(generalized_jsd(log_p).item(), 0.5 * kl(p1, mix) + 0.5 * kl(p2, mix), rel_tol=1e-5)
    w = torch.tensor([0.25, 0.75])
    mix = [0.25 * a + 0.75 * b for a, b in zip(p1, p2)]
    assert math.isclose(generalized_jsd(log_p, w).item(), 0.25 * kl(p1, mix) + 0.75 * kl(p2, mix), rel_tol=1e-5)
    same = torch.tensor([p2, p2, p2]).log()
    assert abs(generalized_jsd(same).item()) < 1e-7


@pytest.mark.parametrize("channels", [1, 3])
def test_divergence_is_zero_for_equal_orderings_and_positive_otherwise(channels):
    g = torch.Generator().manual_seed(5)
    x = grid_values((2, channels, 2, 3), g)
    weights = torch.softmax(torch.randn(3, 2, 3, generator=g), 0)
    one = random_params(2, channels, 2, 2, 3, generator=g)
    equal = one.expand(3, -1, -1, -1, -1)
    different = torch.stack([random_params(2, channels, 2, 2, 3, generator=g) for _ in range(3)])
    for w in (None, weights):
        assert abs(divergence(equal, x, w).item()) < 1e-5
        assert divergence(different, x, w).item() > 0.01
    total, parts = farm_loss(different, x, weights, "ensemble", "kl", divergence_weight=10.0)
    assert torch.allclose(total, parts["main_loss"] + 10.0 * parts["divergence"])
    assert torch.allclose(parts["divergence"], divergence(different, x, weights))
    mc, _ = farm_loss(different, x, weights, "mc")
    assert torch.allclose(mc, ordering_nll(ordering_log_probs(different, x)))


@pytest.mark.parametrize("causal", ["raster", "antidiagonal"])
def test_transforms_that_repeat_a_conditioning_are_refused_per_network_variant(causal):
    config = PixelCNNConfig(channels=3, filters=4, resnets_per_stage=1, stages=1, mixtures=1, causal=causal)
    ranks = {index: transform_ranks(index, 6, 6, causal) for index in range(8)}
    repeated = [(a, b) for a in range(8) for b in range(a + 1, 8) if torch.equal(ranks[a], ranks[b])]
    assert same_conditionings(range(8), causal) == repeated
    if causal == "raster":
        assert repeated == [] and FarmPixelCNN(config, range(8)).k == 8
        return
    names = {(TRANSFORM_NAMES[a], TRANSFORM_NAMES[b]) for a, b in repeated}
    assert names == {("identity", "transpose"), ("rot180", "antitranspose"), ("flip_lr", "rot90_ccw"),
                     ("flip_ud", "rot90_cw")}
    with pytest.raises(ValueError, match="repeat orderings"):
        FarmPixelCNN(config, PAPER_TRANSFORMS)
    assert FarmPixelCNN(config, PAPER_TRANSFORMS[:4]).k == 4  # the four rotations are distinct
    with pytest.raises(ConfigError, match="num_orderings: 8 paper transforms with causal 'antidiagonal'"):
        TrainConfig(model="pixelcnn", dataset="cifar10", ordering_family="paper", num_orderings=8, causal=causal)
