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
    filled before it; for single/best_evidence only the leader), weights ∝ rank+1, masks averaged.
    Pixels not yet known hold random garbage, which no usable ordering may read."""
    ranks = model.ranks
    firsts = torch.stack([ranks[i, hole].min() for i in range(model.k)])
    observed_before = torch.stack([(~hole & (ranks[i] < firsts[i])).sum() for i in range(model.k)])
    leader = 0 if fill == "single" else int(observed_before.argmax())
    known, nll = ~hole.clone(), torch.zeros_like(images)
    for pixel in sorted(hole.nonzero().flatten().tolist(), key=lambda d: int(ranks[leader, d])):
        garbage = torch.randint(0, 2, images.shape).to(images.dtype)
        x = torch.where(known, images, garbage)
        usable = [i for i in range(model.k) if known[ranks[i] < ranks[i, pixel]].all()]
        if fill != "evidence_weighted":
            usable = [leader]
        evidence = torch.tensor([float(ranks[i, pixel] + 1) for i in usable], dtype=images.dtype)
        p_one = torch.zeros_like(images[:, 0])
        for mask in range(model.num_masks):
            model.set_mask(mask)
            with torch.no_grad():
                probs = torch.sigmoid(model(x)[usable, :, pixel])  # (usable, B)
            p_one += (evidence[:, None] * probs).sum(0) / evidence.sum() / model.num_masks
        model.set_mask(0)
        truth = images[:, pixel]
        nll[:, pixel] = -torch.log(torch.where(truth == 1, p_one, 1 - p_one))
        known[pixel] = True
    return nll


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


def test_inpaint_keeps_the_evidence_and_its_first_pixel_matches_nll_exact():
    model = random_model(k=4, height=4, width=4)
    images = torch.randint(0, 2, (20, 16), generator=torch.Generator().manual_seed(1)).float()
    hole = make_occlusions("average", 1, 4, 4, seed=2)[0]
    filled, chain = inpaint(model, images, hole, "evidence_weighted", torch.Generator().manual_seed(5))
    again, _ = inpaint(model, images, hole, "evidence_weighted", torch.Generator().manual_seed(5))
    assert torch.equal(filled, again)
    assert torch.equal(filled[:, ~hole], images[:, ~hole])
    assert set(filled.unique().tolist()) <= {0.0, 1.0}
    assert chain[:, ~hole].eq(0).all() and chain[:, hole].gt(0).all()
    first = fill_plan(model.ranks, hole, "evidence_weighted").pixels[0]
    torch.testing.assert_close(chain[:, first], nll_exact(model, images, hole, "evidence_weighted")[:, first])


def test_evaluate_inpainting_reports_every_metric_and_is_seeded():
    model = random_model(k=2, height=4, width=4)
    images = torch.randint(0, 2, (30, 16), generator=torch.Generator().manual_seed(1)).float()
    metrics = evaluate_inpainting(model, images, 4, 4, "average", "evidence_weighted", 5, 4, seed=3)
    assert metrics == evaluate_inpainting(model, images, 4, 4, "average", "evidence_weighted", 5, 4, seed=3)
    assert 0 <= metrics["l2"] <= 1 and 0 < metrics["occluded_fraction"] < 1
    for name in ("nll_chain", "nll_exact"):
        assert metrics[f"{name}_bits"] == pytest.approx(metrics[name] / math.log(2))
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
