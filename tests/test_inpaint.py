"""Inpainting: occlusions, fill plans, and nll_exact against the model's own joint summed over every image."""

import itertools
import math

import pytest
import torch

from farm_sweep.losses import image_log_probs
from farm_sweep.made.inpaint import evaluate_inpainting, inpaint, inpainting_figure, nll_exact
from farm_sweep.made.network import FarmMADE
from farm_sweep.occlusions import CASES, FILLS, fill_plan, make_occlusions, side_range
from farm_sweep.orderings import make_orderings

ALL_3X3 = torch.tensor(list(itertools.product([0.0, 1.0], repeat=9)))  # all 512 binary 3x3 images


def random_model(k: int, height: int = 3, width: int = 3, num_masks: int = 1) -> FarmMADE:
    """A MADE with large random weights, so its conditionals are far from 1/2 and differ per ordering."""
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("raster", k, height, width), [24, 24], num_masks=num_masks, seed=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1)
    return model.eval()


def brute_force_nll(joint: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """-log p(x_hole | x_rest) for each of the 512 images, from their joint log-probabilities by summation."""
    agree = (ALL_3X3[:, ~hole][:, None] == ALL_3X3[:, ~hole][None]).all(-1)  # [a, b]: same evidence
    evidence = torch.logsumexp(joint.masked_fill(~agree, -math.inf), 1)
    return evidence - joint


@pytest.mark.parametrize("fill", ["single", "best_evidence"])
def test_nll_exact_is_the_conditional_of_the_joint_when_the_hole_follows_the_evidence(fill):
    model = random_model(k=4)
    with torch.no_grad():
        joints = image_log_probs(model(ALL_3X3), ALL_3X3).double()  # (k, 512): log p_i(x) of every image
    for ordering in [0] if fill == "single" else range(model.k):
        for size in range(1, 10):
            hole = torch.zeros(9, dtype=torch.bool)
            hole[model.orders[ordering, -size:]] = True  # the last `size` pixels of this ordering
            leader = int(fill_plan(model.ranks, hole, fill).weights.any(1).nonzero())
            assert set(model.orders[leader, -size:].tolist()) == set(hole.nonzero().flatten().tolist())
            ours = nll_exact(model, ALL_3X3, hole, fill).double().sum(1)
            torch.testing.assert_close(ours, brute_force_nll(joints[leader], hole), rtol=1e-4, atol=1e-4)


def chain_of_conditionals(model: FarmMADE, images: torch.Tensor, hole: torch.Tensor, fill: str) -> torch.Tensor:
    """The definition, one pixel at a time: the leader = the ordering with most observed pixels before
    its first hole pixel; each pixel predicted by the usable orderings (every predecessor observed or
    filled before it; for single/best_evidence only the leader), weights ∝ rank+1. Several mask sets: the
    mixture of the mask sets' predictions under the posterior over mask sets, by Bayes' rule from a uniform
    prior: first the leader's likelihood of the observed pixels before its first hole pixel, then each true
    hole pixel's probability. Pixels not yet known hold random garbage, which no usable ordering may read."""
    ranks = model.ranks
    firsts = torch.stack([ranks[i, hole].min() for i in range(model.k)])
    observed_before = torch.stack([(~hole & (ranks[i] < firsts[i])).sum() for i in range(model.k)])
    leader = 0 if fill == "single" else int(observed_before.argmax())
    known, nll = ~hole.clone(), torch.zeros_like(images)
    log_posterior = torch.zeros(model.num_masks, len(images), dtype=images.dtype)
    for mask in range(model.num_masks):
        model.set_mask(mask)
        with torch.no_grad():
            p_one = torch.sigmoid(model(with_garbage(images, known))[leader])
        for pixel in (ranks[leader] < firsts[leader]).nonzero().flatten().tolist():
            log_posterior[mask] += torch.log(torch.where(images[:, pixel] == 1, p_one[:, pixel], 1 - p_one[:, pixel]))
    for pixel in sorted(hole.nonzero().flatten().tolist(), key=lambda d: int(ranks[leader, d])):
        x = with_garbage(images, known)
        usable = [i for i in range(model.k) if known[ranks[i] < ranks[i, pixel]].all()]
        if fill != "evidence_weighted":
            usable = [leader]
        evidence = torch.tensor([float(ranks[i, pixel] + 1) for i in usable], dtype=images.dtype)
        truth_probs = torch.zeros_like(log_posterior)  # per mask set: q_m(true x_d | what is known)
        for mask in range(model.num_masks):
            model.set_mask(mask)
            with torch.no_grad():
                probs = torch.sigmoid(model(x)[usable, :, pixel])  # (usable, B)
            p_one = (evidence[:, None] * probs).sum(0) / evidence.sum()
            truth_probs[mask] = torch.where(images[:, pixel] == 1, p_one, 1 - p_one)
        posterior = torch.softmax(log_posterior, 0)
        nll[:, pixel] = -torch.log((posterior * truth_probs).sum(0))
        log_posterior += truth_probs.log()
        known[pixel] = True
    model.set_mask(0)
    return nll


def with_garbage(images: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    return torch.where(known, images, torch.randint(0, 2, images.shape).to(images.dtype))


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("num_masks", [1, 2])
def test_nll_exact_equals_the_chain_of_the_models_conditionals(fill, num_masks):
    model = random_model(k=8, height=4, width=4, num_masks=num_masks).double()  # 1 - p stays exact
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 2, (6, 16), generator=generator).double()
    holes = [*make_occlusions("average", 4, 4, 4, seed=3), torch.rand(16, generator=generator) < 0.4]
    for hole in holes:
        expected = chain_of_conditionals(model, images, hole, fill)
        torch.testing.assert_close(nll_exact(model, images, hole, fill), expected, rtol=1e-6, atol=1e-8)


def test_evidence_weighted_uses_only_orderings_whose_predecessors_are_known():
    model = random_model(k=2)  # raster and reversed raster
    middle_row = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    plan = fill_plan(model.ranks, middle_row, "evidence_weighted")
    assert plan.pixels.tolist() == [3, 4, 5]  # tie on evidence (3 pixels each): ordering 0 leads
    # Reversed raster needs 5 and 4 before 3, 5 before 4; for 5 it needs 6, 7, 8 only (rank 3 vs 5).
    torch.testing.assert_close(plan.weights, torch.tensor([[1.0, 1.0, 0.6], [0.0, 0.0, 0.4]], dtype=torch.float64))
    centre = fill_plan(model.ranks, torch.arange(9) == 4, "evidence_weighted")
    torch.testing.assert_close(centre.weights, torch.tensor([[0.5], [0.5]], dtype=torch.float64))


def test_best_evidence_picks_the_ordering_that_sees_most_before_the_hole():
    model = random_model(k=2)
    top_left = make_occlusions("best", 1, 3, 3, seed=0)[0]
    plan = fill_plan(model.ranks, top_left, "best_evidence")
    assert plan.weights[1].eq(1).all()  # reversed raster reaches the top-left corner last
    assert plan.pixels.tolist() == sorted(plan.pixels.tolist(), reverse=True)


@pytest.mark.parametrize("height,width", [(28, 28), (5, 7), (3, 3)])
def test_occlusions_are_seeded_rectangles_anchored_by_case(height, width):
    low_h, high_h = side_range(height)
    low_w, high_w = side_range(width)
    for case in CASES:
        masks = make_occlusions(case, 50, height, width, seed=7)
        assert torch.equal(masks, make_occlusions(case, 50, height, width, seed=7))
        for mask in masks.view(-1, height, width):
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
            assert mask.sum() == (bottom - top + 1) * (right - left + 1)  # a full rectangle
            assert low_h <= bottom - top + 1 <= high_h and low_w <= right - left + 1 <= high_w
            if case == "best":
                assert top == 0 and left == 0
            if case == "worst":
                assert bottom == height - 1 and right == width - 1
    assert not torch.equal(make_occlusions("average", 50, 28, 28, 7), make_occlusions("average", 50, 28, 28, 8))


def log_marginal(joint: torch.Tensor, image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """log of the joint's probability of `image`'s values at `pixels` (bool (9,)): summed over all 512 images."""
    return torch.logsumexp(joint.masked_fill(~(ALL_3X3[:, pixels] == image[pixels]).all(1), -math.inf), 0)


def fill_prediction(joint: torch.Tensor, ranks: torch.Tensor, weights: torch.Tensor, image: torch.Tensor,
                    pixel: int) -> torch.Tensor:
    """The fill's probability of image[pixel] given image's other known pixels, from one mask set's joints
    (k, 512) alone: ordering i's conditional is p_i(its pixels up to d) / p_i(its pixels before d), both
    marginals of its joint by summation; the orderings mixed with the plan's `weights` (k,) for this pixel."""
    terms = [weights[i] * (log_marginal(joint[i], image, ranks[i] <= ranks[i, pixel])
                           - log_marginal(joint[i], image, ranks[i] < ranks[i, pixel])).exp()
             for i in weights.nonzero().flatten().tolist()]
    return torch.stack(terms).sum()


def brute_force_chain(joints: torch.Tensor, ranks: torch.Tensor, filled: torch.Tensor, truth: torch.Tensor,
                      hole: torch.Tensor, fill: str) -> torch.Tensor:
    """-log p(true x_d | evidence, the FILLED earlier hole pixels) of one image's hole pixels in fill order,
    from the joints (M, k, 512) of every mask set and ordering: the mask sets' fill predictions mixed
    under the posterior over mask sets, p_leader,m(the leader's evidence prefix) times each mask set's
    prediction of the earlier filled pixels."""
    plan = fill_plan(ranks, hole, fill)
    prefix = ranks[plan.leader] < ranks[plan.leader, plan.pixels[0]]
    log_posterior = torch.stack([log_marginal(joint[plan.leader], truth, prefix) for joint in joints])
    nll = []
    for t, pixel in enumerate(plan.pixels.tolist()):
        teacher = filled.clone()
        teacher[pixel] = truth[pixel]
        predictions = torch.stack([fill_prediction(joint, ranks, plan.weights[:, t], teacher, pixel)
                                   for joint in joints])
        nll.append(-torch.log((torch.softmax(log_posterior, 0) * predictions).sum()))
        log_posterior = log_posterior + torch.stack([
            fill_prediction(joint, ranks, plan.weights[:, t], filled, pixel).log() for joint in joints])
    return torch.stack(nll)


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("num_masks", [1, 3])
def test_chain_nll_over_multi_pixel_holes_equals_brute_force(fill, num_masks):
    """inpaint's nll_chain of every pixel of 3-6 pixel holes, each conditioned on the pixels it sampled
    before, against sums of the model's joints over all 512 binary 3x3 images; and the evidence is kept."""
    model = random_model(k=2, num_masks=num_masks).double()
    joints = []
    for mask in range(num_masks):
        with model.using_mask(mask), torch.no_grad():
            joints.append(image_log_probs(model(ALL_3X3.double()), ALL_3X3.double()))  # (k, 512)
    joints = torch.stack(joints)
    generator = torch.Generator().manual_seed(2)
    images = ALL_3X3[torch.randint(0, 512, (8,), generator=generator)].double()
    for hole in [torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.bool), make_occlusions("best", 1, 3, 3, 1)[0],
                 torch.tensor([1, 1, 1, 0, 0, 0, 1, 1, 1], dtype=torch.bool)]:
        filled, chain = inpaint(model, images, hole, fill, generator)
        assert torch.equal(filled[:, ~hole], images[:, ~hole]) and chain[:, ~hole].eq(0).all()
        order = fill_plan(model.ranks, hole, fill).pixels
        for image, truth, nll in zip(filled, images, chain):
            expected = brute_force_chain(joints, model.ranks, image, truth, hole, fill)
            torch.testing.assert_close(nll[order], expected, rtol=1e-9, atol=1e-9)


def sequential_fill(model: FarmMADE, images: torch.Tensor, hole: torch.Tensor, fill: str,
                    noise: torch.Tensor) -> torch.Tensor:
    """The definition, one mask set: for each hole pixel in fill order, one full forward of the current fill,
    the plan's weighted mixture of the orderings' probabilities, x_d = 1[u_d < p_d]."""
    plan = fill_plan(model.ranks, hole, fill)
    x = images * ~hole
    for t, pixel in enumerate(plan.pixels.tolist()):
        with torch.no_grad():
            probabilities = torch.sigmoid(model(x)[:, :, pixel])  # (k, B)
        mixed = (plan.weights[:, t, None].to(x.dtype) * probabilities).sum(0)
        x[:, pixel] = (noise[:, t] < mixed).to(x.dtype)
    return x


@pytest.mark.parametrize("fill", FILLS)
def test_the_fixed_point_fill_is_the_sequential_fill_noise_for_noise(fill):
    """inpaint's Jacobi sweeps against a pixel-by-pixel loop with the same uniforms, on 7x7 images with
    whole-row and rectangular holes (an ordering whose conditionals change with every filled pixel)."""
    model = random_model(k=3, height=7, width=7).double()
    generator = torch.Generator().manual_seed(5)
    images = (torch.rand(40, 49, generator=generator) < 0.5).double()
    for hole in [make_occlusions("average", 1, 7, 7, 3)[0], torch.arange(49) >= 14]:
        seed = torch.Generator().manual_seed(9)
        filled, _ = inpaint(model, images, hole, fill, seed)
        noise = torch.rand(len(images), int(hole.sum()), generator=torch.Generator().manual_seed(9))
        expected = sequential_fill(model, images, hole, fill, noise)
        assert torch.equal(filled, expected)
        assert 0 < (filled[:, hole] != images[:, hole]).float().mean() < 1  # the fill is not the truth


@pytest.mark.parametrize("protocol", ["ours", "paper"])
def test_evaluate_inpainting_values_of_a_model_that_always_says_one(protocol):
    """Zero weights and output bias 30: every pixel is 1 with probability sigmoid(30), so every fill is 1,
    l2 is the share of zeros among the hidden true pixels, and both nlls are 30 nats per hidden zero (a
    hidden one costs 1e-13): known values, pooled over pixels (`ours`) or per occlusion, then averaged
    (`paper`)."""
    model = random_model(k=2, height=4, width=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.biases[-1].fill_(30.0)
    images = torch.randint(0, 2, (20, 16), generator=torch.Generator().manual_seed(1)).float()
    occlusions = make_occlusions("average", 5, 4, 4, 3, protocol)
    zeros = [(1 - batch[:, hole]).mean().item() for hole, batch in zip(occlusions, images.split(4))]
    counts = occlusions.sum(1).tolist()
    share = sum(z * c for z, c in zip(zeros, counts)) / sum(counts) if protocol == "ours" else sum(zeros) / 5
    metrics = evaluate_inpainting(model, images, 4, 4, "average", "evidence_weighted", 5, 4, seed=3, protocol=protocol)
    assert metrics == evaluate_inpainting(model, images, 4, 4, "average", "evidence_weighted", 5, 4, 3, protocol)
    nats, bits = 30 * share, 30 * share / math.log(2)
    expected = {"l2": share, "nll_chain": nats, "nll_exact": nats, "nll_chain_bits": bits, "nll_exact_bits": bits,
                "occluded_fraction": occlusions.float().mean().item()}
    assert metrics == pytest.approx(expected, rel=1e-6)
    assert 0.2 < share < 0.8
    with pytest.raises(ValueError, match="needs 40 images"):
        evaluate_inpainting(model, images, 4, 4, "best", "single", 10, 4)


def rectangle(mask: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a rectangular hole, checking that it is one."""
    rows, columns = mask.view(height, width).any(1).nonzero(), mask.view(height, width).any(0).nonzero()
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(columns.min()), int(columns.max())
    assert mask.sum() == (bottom - top + 1) * (right - left + 1)
    return top, bottom, left, right


@pytest.mark.parametrize("height,width", [(28, 28), (6, 10)])
def test_paper_protocol_extents_follow_its_definition(height, width):
    """best: anchored top-left, any extent; worst: anchored bottom-right; average: two uniform corners, so
    every pixel row can start or end a hole, and single pixels and the whole image both occur."""
    spans = {case: [rectangle(m, height, width) for m in make_occlusions(case, 4000, height, width, 0, "paper")]
             for case in CASES}
    assert {(top, left) for top, _, left, _ in spans["best"]} == {(0, 0)}
    assert {b for _, b, _, _ in spans["best"]} == set(range(height))
    assert {r for _, _, _, r in spans["best"]} == set(range(width))
    assert {(b, r) for _, b, _, r in spans["worst"]} == {(height - 1, width - 1)}
    assert {t for t, _, _, _ in spans["worst"]} == set(range(height))
    assert {t for t, _, _, _ in spans["average"]} == set(range(height))
    assert {b for _, b, _, _ in spans["average"]} == set(range(height))
    sizes = {(b - t + 1) * (r - left + 1) for t, b, left, r in spans["best"]}
    assert 1 in sizes and height * width in sizes
    assert torch.equal(make_occlusions("average", 5, height, width, 7, "paper"),
                       make_occlusions("average", 5, height, width, 7, "paper"))


def test_paper_protocol_averages_per_occlusion_and_ours_pools_pixels():
    model = random_model(k=2, height=4, width=4)
    images = torch.randint(0, 2, (12, 16), generator=torch.Generator().manual_seed(1)).float()
    fill, seed = "best_evidence", 3
    occlusions = make_occlusions("average", 3, 4, 4, seed, "paper")
    assert len({int(o.sum()) for o in occlusions}) > 1  # unequal holes: the two averages differ
    per_occlusion, sums = [], torch.zeros(2, dtype=torch.float64)
    for occlusion, batch in zip(occlusions, images.split(4)):
        exact = nll_exact(model, batch, occlusion, fill)[:, occlusion].double()
        per_occlusion.append(exact.mean())
        sums += torch.stack([exact.sum(), torch.tensor(exact.numel(), dtype=torch.float64)])
    paper = evaluate_inpainting(model, images, 4, 4, "average", fill, 3, 4, seed=seed, protocol="paper")
    assert paper["nll_exact"] == pytest.approx(float(torch.stack(per_occlusion).mean()))
    pooled = float(sums[0] / sums[1])
    assert paper["nll_exact"] != pytest.approx(pooled)
    with pytest.raises(ValueError, match="unknown protocol 'theirs'"):
        make_occlusions("best", 1, 4, 4, 0, "theirs")


def test_inpainting_figure_writes_a_png(tmp_path):
    model = random_model(k=2, height=4, width=4)
    images = torch.randint(0, 2, (9, 16), generator=torch.Generator().manual_seed(1)).float()
    path = inpainting_figure(model, images, 4, 4, tmp_path / "figure.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
