"""Samplers: fixed_point and cached_sequential reproduce sequential samples bit for bit; multi_order's schedule."""

import pytest
import torch

from farm_sweep.made.cached_sequential import cached_sequential_pass
from farm_sweep.made.network import FarmMADE
from farm_sweep.made.sampling import curve_settings, sample, speed_quality_curve
from farm_sweep.orderings import make_orderings
from farm_sweep.speed_quality import CURVE_FIELDS, speed_quality_rows, write_speed_quality


def random_model(k: int, height: int, width: int, scale: float) -> FarmMADE:
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("raster", k, height, width), [64, 64], seed=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, scale)
    return model.eval()


@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_fixed_point_reproduces_sequential_bit_for_bit_in_fewer_evaluations(scale):
    model = random_model(k=2, height=8, width=8, scale=scale)
    noise = torch.rand(50, 64, generator=torch.Generator().manual_seed(0))
    sequential, sequential_evaluations = sample(model, "sequential", 50, noise=noise)
    fixed, fixed_evaluations = sample(model, "fixed_point", 50, noise=noise)
    assert sequential_evaluations == 64
    assert torch.equal(fixed, sequential)
    assert fixed_evaluations < 64
    assert 0.05 < sequential.mean() < 0.95  # not a degenerate all-zero or all-one model


VARIANTS = [("shared", False, 1, [64, 64]), ("ordering_embedding", True, 1, [48, 32]),
            ("separate", False, 3, [48, 32]), ("shared_hidden", True, 2, [40, 30, 20])]


def variant_case(sharing: str, direct: bool, num_masks: int, hidden: list[int],
                 dtype: torch.dtype) -> tuple[FarmMADE, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random network variant on 6x6 images (3 random orderings), its noise and mask sets for 40 images,
    and their sequential samples."""
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("random", 3, 6, 6, seed=4), hidden, sharing, num_masks=num_masks, seed=1,
                     direct_connections=direct).to(dtype).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.8)
    generator = torch.Generator().manual_seed(5)
    noise, masks = torch.rand(40, 36, generator=generator), torch.randint(num_masks, (40,), generator=generator)
    sequential, _ = sample(model, "sequential", 40, noise=noise, masks=masks)
    assert len(set(map(tuple, sequential.tolist()))) > 20  # not a degenerate model
    return model, noise, masks, sequential


@pytest.mark.parametrize("sharing,direct,num_masks,hidden", VARIANTS)
def test_fixed_point_is_exact_for_every_network_variant(sharing, direct, num_masks, hidden):
    """Codes, per-ordering weights, direct connections and several mask sets (a mask set drawn per image):
    the fast phase's plain network and incremental sums, then the check, give the sequential samples."""
    model, noise, masks, sequential = variant_case(sharing, direct, num_masks, hidden, torch.float32)
    fixed, evaluations = sample(model, "fixed_point", 40, noise=noise, masks=masks)
    assert torch.equal(fixed, sequential) and evaluations < 36


@pytest.mark.parametrize("sharing,direct,num_masks,hidden", VARIANTS)
def test_cached_pass_alone_is_the_sequential_sample(sharing, direct, num_masks, hidden):
    """The cached pass must be right by itself, not rescued by the check: in float64 (no rounding ties) its
    samples are sequential's, so the check's single forward changes nothing and the count is 1 + 1."""
    model, noise, masks, sequential = variant_case(sharing, direct, num_masks, hidden, torch.float64)
    cached, evaluations = sample(model, "cached_sequential", 40, noise=noise, masks=masks)
    assert torch.equal(cached, sequential) and evaluations == 2
    for mask in range(num_masks):
        rows = masks == mask
        with model.using_mask(mask), torch.no_grad():
            alone = cached_sequential_pass(model, torch.logit(noise[rows].double()))
        assert torch.equal(alone, sequential[rows])


def test_truncated_fixed_point_has_the_first_iterations_pixels_exact():
    model = random_model(k=1, height=8, width=8, scale=1.0)
    noise = torch.rand(50, 64, generator=torch.Generator().manual_seed(1))
    sequential, _ = sample(model, "sequential", 50, noise=noise)
    _, converged = sample(model, "fixed_point", 50, noise=noise)
    for iterations in range(1, converged):
        approximate, evaluations = sample(model, "fixed_point", 50, iterations, noise=noise)
        assert evaluations == iterations
        prefix = model.orders[0, :iterations]
        assert torch.equal(approximate[:, prefix], sequential[:, prefix])


def test_samplers_are_seeded_and_binary():
    model = random_model(k=4, height=4, width=4, scale=1.0)
    for sampler in ("sequential", "multi_order", "fixed_point", "cached_sequential"):
        first, _ = sample(model, sampler, 10, generator=torch.Generator().manual_seed(3))
        again, _ = sample(model, sampler, 10, generator=torch.Generator().manual_seed(3))
        assert torch.equal(first, again) and set(first.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="out of range"):
        sample(model, "multi_order", 10, knob=5)


def naive_multi_order(model: FarmMADE, noise: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """The definition, one ordering and one image at a time: in every step each of the first `count`
    orderings picks the first pixel in its order that was not filled before the step (when two pick the
    same pixel, the lower-indexed ordering draws it) and draws it, 1[u < p], from its own conditional given
    the image as it was before the step. Returns the samples and the number of steps."""
    x = torch.zeros_like(noise)
    filled: set[int] = set()
    steps = 0
    while len(filled) < model.dim:
        before, claims = x.clone(), {}
        for ordering in range(count):
            claims.setdefault(next(p for p in model.orders[ordering].tolist() if p not in filled), ordering)
        for pixel, ordering in claims.items():
            for image in range(len(x)):
                with torch.no_grad():
                    logit = model(before[image:image + 1], torch.tensor([ordering]))[0, 0, pixel]
                x[image, pixel] = float(noise[image, pixel] < torch.sigmoid(logit))
        filled |= claims.keys()
        steps += 1
    return x, steps


@pytest.mark.parametrize("count", [1, 2, 4])
def test_multi_order_equals_the_naive_loop_with_random_noise(count):
    """Random orderings (they collide on pixels), random noise, a model whose pixels depend on each other:
    the batched sampler draws exactly the naive loop's samples, and counts `count` evaluations a step."""
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("random", 4, 4, 4, seed=2), [32, 32], seed=1).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1.0)
    noise = torch.rand(6, 16, generator=torch.Generator().manual_seed(count), dtype=torch.float64)
    samples, evaluations = sample(model, "multi_order", 6, count, noise=noise)
    expected, steps = naive_multi_order(model, noise, count)
    assert torch.equal(samples, expected)
    assert evaluations == count * steps and (count == 1) == (steps == 16)
    assert 0.1 < expected.mean() < 0.9 and len(set(map(tuple, expected.tolist()))) > 2  # the noise matters
    if count == 1:
        assert torch.equal(sample(model, "sequential", 6, noise=noise)[0], expected)


class MeanScorer:
    def classifier_score(self, images: torch.Tensor) -> float:
        return 1 + float(images.mean())

    def frechet_distance(self, images: torch.Tensor) -> float:
        return float(images.std())


def test_speed_quality_curve_rows_and_files(tmp_path):
    model = random_model(k=4, height=4, width=4, scale=1.0)
    rows = speed_quality_curve(model, 4, 4, MeanScorer(), num_samples=20, seed=0)
    assert [(row["sampler"], row["knob"]) for row in rows] == curve_settings(4, 16)
    assert [row["knob"] for row in rows if row["sampler"] == "multi_order"] == [2, 4]
    assert rows[0]["sampler"] == "sequential" and rows[0]["speedup"] == 1 and rows[0]["network_evaluations"] == 16
    assert all(list(row) == list(CURVE_FIELDS) and row["network_evaluations"] >= 1 for row in rows)
    assert all(0 < row["wall_seconds_min"] <= row["wall_seconds"] <= row["wall_seconds_max"] for row in rows)
    assert [row["network_evaluations"] for row in rows if row["sampler"] == "multi_order"] == [16, 24]  # j a step
    exact = [row for row in rows if row["sampler"] == "fixed_point" and row["knob"] == 16][0]
    cached = rows[-1]
    assert exact["classifier_score"] == cached["classifier_score"] == rows[0]["classifier_score"]  # the same samples
    assert cached["sampler"] == "cached_sequential" and cached["evaluation_speedup"] == 16 / 2
    table, plot = write_speed_quality(rows, tmp_path)
    assert table.read_text().splitlines()[0] == ",".join(CURVE_FIELDS)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_quality_is_scored_on_every_sample_and_time_measured_on_the_timed_batch():
    """Each setting draws the scored batch once, then the timed batch in the timing method's 11 rounds."""
    batches: dict[str, list[int]] = {"a": [], "b": []}

    def draw(sampler: str, knob: int, batch: int) -> tuple[torch.Tensor, int]:
        batches[sampler].append(batch)
        return torch.full((batch, 4), float(batch)), knob

    rows = speed_quality_rows([("a", 8), ("b", 2)], draw, MeanScorer(), num_samples=50, timed_samples=5)
    assert batches == {"a": [50] + [5] * 11, "b": [50] + [5] * 11}
    assert [row["classifier_score"] for row in rows] == [51.0, 51.0]  # the scored batch's images, all 50.0
    assert [row["evaluation_speedup"] for row in rows] == [1.0, 4.0] and rows[1]["timed_samples"] == 5


@pytest.mark.parametrize("sampler", ["sequential", "multi_order", "fixed_point", "cached_sequential"])
def test_samplers_run_in_eval_mode_and_restore_the_callers_mode(sampler):
    """With dropout in training mode the network is random; every sampler must use eval mode, so a model
    left in training mode samples what it samples in eval mode (and the exact fixed point converges), and
    hand the model back in the mode it came in."""
    model = FarmMADE(make_orderings("raster", 2, 6, 6), (64,), dropout=0.5, seed=3).eval()
    noise = torch.rand(20, 36, generator=torch.Generator().manual_seed(1))
    expected, expected_evaluations = sample(model, sampler, 20, noise=noise)
    model.train()
    samples, evaluations = sample(model, sampler, 20, noise=noise)
    assert torch.equal(samples, expected) and evaluations == expected_evaluations
    assert model.training
