import pytest
import torch

from farm_sweep.orderings import (
    BASE_CURVES,
    FAMILIES,
    SYMMETRIES,
    evidence_weights,
    make_orderings,
    max_orderings,
    ranks,
    symmetric_ordering,
)

SIZES = [(1, 1), (1, 6), (3, 3), (4, 7), (7, 4), (8, 8), (28, 28)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("height,width", SIZES)
def test_every_ordering_is_a_permutation(family, height, width):
    if family in BASE_CURVES:
        orders = torch.stack([symmetric_ordering(family, v, height, width) for v in range(len(SYMMETRIES))])
    else:
        orders = make_orderings(family, 8, height, width, seed=3)
    assert orders.shape == (8, height * width)
    for order in orders:
        assert torch.equal(order.sort().values, torch.arange(height * width))


@pytest.mark.parametrize("family", list(BASE_CURVES))
@pytest.mark.parametrize("height,width", [(3, 3), (8, 8), (28, 28), (32, 32)])
def test_the_eight_symmetry_variants_are_distinct(family, height, width):
    orders = make_orderings(family, 8, height, width)
    assert len({tuple(o.tolist()) for o in orders}) == 8


def test_raster_variants_are_distinct_on_rectangles():
    assert len({tuple(o.tolist()) for o in make_orderings("raster", 8, 4, 7)}) == 8


def test_symmetric_curve_refuses_coinciding_variants():
    with pytest.raises(ValueError, match="fewer than 8 distinct variants"):
        make_orderings("hilbert", 8, 4, 7)


def test_paper_raster_subsets():
    orders = make_orderings("raster", 4, 3, 3)
    assert orders[0].tolist() == list(range(9))
    assert orders[1].tolist() == list(range(8, -1, -1))  # k=2: raster and reversed raster
    assert orders[2].tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]  # k=4 adds the transposed pair
    assert orders[3].tolist() == [8, 5, 2, 7, 4, 1, 6, 3, 0]


@pytest.mark.parametrize("family", ["snake", "hilbert"])
def test_space_filling_curves_move_to_neighbours(family):
    order = make_orderings(family, 1, 8, 8)[0]
    rows, cols = order // 8, order % 8
    steps = rows.diff().abs() + cols.diff().abs()
    assert steps.max().item() == 1


def test_s_curve_meanders_inside_two_row_bands():
    order = make_orderings("s_curve", 1, 8, 8)[0]
    rows, cols = order // 8, order % 8
    assert torch.equal(rows.view(4, 16).min(1).values, torch.tensor([0, 2, 4, 6]))
    steps = (rows.diff().abs() + cols.diff().abs()).view(-1)
    assert steps.max().item() <= 2 and (steps == 1).sum() >= 60


def test_random_families_are_seeded():
    for family in ("random", "partially_random"):
        assert torch.equal(make_orderings(family, 3, 5, 5, seed=1), make_orderings(family, 3, 5, 5, seed=1))
        assert not torch.equal(make_orderings(family, 3, 5, 5, seed=1), make_orderings(family, 3, 5, 5, seed=2))


def test_partially_random_stays_close_to_raster():
    order = make_orderings("partially_random", 1, 6, 6, seed=0)[0]
    assert (order - torch.arange(36)).abs().max() < 4


def test_ranks_invert_orders():
    orders = make_orderings("random", 5, 4, 6, seed=0)
    rank = ranks(orders)
    for order, r in zip(orders, rank):
        assert torch.equal(order[r], torch.arange(24))


def test_evidence_weights_sum_to_one_and_follow_rank():
    rank = ranks(make_orderings("raster", 8, 5, 5))
    weights = evidence_weights(rank)
    torch.testing.assert_close(weights.sum(0), torch.ones(25))
    # pixel 0 is first in raster (rank 0) and last in reversed raster (rank 24): 1 : 25
    assert weights[1, 0] / weights[0, 0] == pytest.approx(25.0)


def test_limits_are_enforced():
    assert max_orderings("raster") == 8 and max_orderings("random") is None
    with pytest.raises(ValueError, match="offers 1..8"):
        make_orderings("diagonal", 9, 4, 4)
    with pytest.raises(ValueError, match="unknown ordering family"):
        make_orderings("spiral", 1, 4, 4)
