"""The benchmark method: interleaved rounds after a warm-up, fixed threads, medians, and ratios published
only when two runs agree within 20%."""

import pytest
import torch

from farm_sweep.timing import Measurement, Timing, measure


def test_settings_run_round_robin_after_one_warm_up_round_on_fixed_threads():
    calls, threads = [], []

    def setting(name):
        def run():
            calls.append(name)
            threads.append(torch.get_num_threads())
            return name.lower()
        return run

    before = torch.get_num_threads()
    measurement = measure({"A": setting("A"), "B": setting("B"), "C": setting("C")}, rounds=5, runs=2, threads=1)
    assert "".join(calls) == "ABC" * (1 + 2 * 5)  # warm-up, then 2 runs x 5 rounds, never AAA...BBB...
    assert set(threads) == {1} and measurement.threads == 1 and torch.get_num_threads() == before
    assert measurement.results == {"A": "a", "B": "b", "C": "c"}  # the warm-up round's results
    assert len(measurement.runs) == 2 and all(len(run["B"].seconds) == 5 for run in measurement.runs)
    assert len(measurement.timing("B").seconds) == 10
    with pytest.raises(ValueError, match="at least 5 rounds"):
        measure({"A": setting("A")}, rounds=4)
    with pytest.raises(ValueError, match="2 runs"):
        measure({"A": setting("A")}, runs=1)


def run(a: list[float], b: list[float]) -> dict[str, Timing]:
    return {"slow": Timing(tuple(a)), "fast": Timing(tuple(b))}


def test_a_ratio_is_published_only_when_the_runs_agree_within_20_percent():
    timing = Timing((3.0, 1.0, 2.0, 9.0, 2.5))
    assert (timing.median, timing.low, timing.high) == (2.5, 1.0, 9.0)
    agreeing = Measurement((run([10, 11, 12, 10, 50], [1, 1, 1, 1, 1]),  # run ratios 11 and 12: within 20%
                            run([12, 12, 12, 13, 12], [1, 1, 1, 1, 9])), {}, 1)
    assert agreeing.run_ratios("slow", "fast") == [11, 12]
    assert agreeing.ratio("slow", "fast") == 12  # the median of all ten rounds over the median of all ten
    assert agreeing.ratio("fast", "fast") == 1
    disagreeing = Measurement((run([10] * 5, [1] * 5), run([10] * 5, [0.8] * 5)), {}, 1)  # 10 vs 12.5: 25%
    assert disagreeing.ratio("slow", "fast") is None
    borderline = Measurement((run([10] * 5, [1] * 5), run([12] * 5, [1] * 5)), {}, 1)  # exactly 20%
    assert borderline.ratio("slow", "fast") == 11
