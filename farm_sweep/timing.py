"""The project's one benchmark method, used by every `bench/` script and the in-trial speed-quality curve
(BENCHMARKS.md states it beside every table):

- the settings compared are timed interleaved round-robin, A B C A B C ..., never as blocks of repeats, so
  a disturbance of a shared machine hits every setting alike instead of inflating one;
- one warm-up round first, untimed (allocation, caches, lazy initialisation), whose results are kept;
- at least `MIN_ROUNDS` timed rounds per run; a setting is reported by its median and its min-max;
- torch's thread count is fixed for the whole measurement and stated (`Measurement.threads`);
- two independent runs (each its own rounds), and a ratio of two settings is published only when the
  runs' ratios (of their medians) agree within `AGREEMENT` (20%): `Measurement.ratio` is None otherwise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

MIN_ROUNDS = 5
RUNS = 2
AGREEMENT = 0.2


@dataclass(frozen=True)
class Timing:
    """Wall seconds of one setting's timed rounds."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def low(self) -> float:
        return min(self.seconds)

    @property
    def high(self) -> float:
        return max(self.seconds)


@dataclass(frozen=True)
class Measurement:
    """`runs`: per run, each setting's Timing; `results`: what each setting returned in the warm-up round."""

    runs: tuple[dict[str, Timing], ...]
    results: dict[str, Any]
    threads: int

    def timing(self, name: str) -> Timing:
        """The setting's rounds of every run together."""
        return Timing(tuple(second for run in self.runs for second in run[name].seconds))

    def run_ratios(self, numerator: str, denominator: str) -> list[float]:
        """median(numerator) / median(denominator) in each run."""
        return [run[numerator].median / run[denominator].median for run in self.runs]

    def ratio(self, numerator: str, denominator: str) -> float | None:
        """median(numerator) / median(denominator) over every run's rounds, or None (not published) when
        the runs' own ratios differ by more than AGREEMENT."""
        if not runs_agree(self.run_ratios(numerator, denominator)):
            return None
        return self.timing(numerator).median / self.timing(denominator).median


def runs_agree(values: Sequence[float], absolute: float = 0.0) -> bool:
    """Whether the runs' values (ratios, or figures derived from each run) lie within AGREEMENT of the smallest,
    or within `absolute` of one another (for a figure that may be near zero)."""
    low, high = min(values), max(values)
    return high - low <= max(AGREEMENT * abs(low), absolute)


def measure(settings: Mapping[str, Callable[[], Any]], rounds: int = MIN_ROUNDS, runs: int = RUNS,
            threads: int | None = None, synchronize: Callable[[], None] | None = None) -> Measurement:
    """Time every setting (a function of no arguments) by the method above: one warm-up round, then `runs`
    runs of `rounds` interleaved rounds, on `threads` torch threads (default: the current count).
    `synchronize` is called before a clock is read (torch.cuda.synchronize for work on a GPU)."""
    if rounds < MIN_ROUNDS:
        raise ValueError(f"rounds={rounds}: the method times at least {MIN_ROUNDS} rounds per run")
    if runs < RUNS:
        raise ValueError(f"runs={runs}: a ratio needs {RUNS} runs that agree")
    wait = synchronize or (lambda: None)
    with fixed_threads(threads) as count:
        results = {name: run() for name, run in settings.items()}
        wait()
        measured = []
        for _ in range(runs):
            seconds: dict[str, list[float]] = {name: [] for name in settings}
            for _ in range(rounds):
                for name, run in settings.items():
                    began = time.perf_counter()
                    run()
                    wait()
                    seconds[name].append(time.perf_counter() - began)
            measured.append({name: Timing(tuple(values)) for name, values in seconds.items()})
    return Measurement(tuple(measured), results, count)


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """torch's thread count set to `threads` (None: left as it is) inside the block; yields the count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def describe(measurement: Measurement) -> str:
    """The method's one-line statement for a benchmark's output."""
    rounds = len(next(iter(measurement.runs[0].values())).seconds)
    return (f"{measurement.threads} torch thread(s); settings interleaved round-robin, 1 warm-up round, "
            f"{len(measurement.runs)} runs x {rounds} rounds; median [min-max] seconds; a ratio is published "
            f"when the runs agree within {AGREEMENT:.0%}")
