"""SIGINT (Ctrl-C) and SIGTERM during a study: stop it the way Tune stops on Ctrl-C, and remember the signal.

Tune stops its loop when its stop handler runs: running trials stop, and it saves its experiment state one
last time with those trials still unfinished, so `--resume` continues them. Tune installs that handler for
SIGUSR1 while its loop runs (and for SIGINT, which `catch` leaves to this module). `catch()` handles both
SIGINT and SIGTERM: it notes the first signal (the command exits with 128 + its number) and calls Tune's
handler; a signal that arrives before Tune's loop starts reaches it at its first step (`StopOnSignal`).
A second signal ends the process at once, as the signal would have without this module.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

from ray.tune.callback import Callback
from ray.tune.experiment import Trial

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # module state: Tune keeps StopOnSignal in its pickled state, so not on the callback


def catch() -> None:
    """Handle SIGINT and SIGTERM from now on (in the main thread; after Ray has started, whose core replaces
    the SIGTERM handler with one that aborts)."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune's SIGINT handler would hide the signal from us
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


def received() -> int | None:
    """The first SIGINT or SIGTERM since `catch()`, if any."""
    return _received[0] if _received else None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _received:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received.append(signum)
    _stop_tune()


def _stop_tune() -> None:
    stop = signal.getsignal(signal.SIGUSR1)
    if callable(stop):  # Tune's handler, installed while its loop runs
        stop(signal.SIGUSR1, None)


class StopOnSignal(Callback):
    """Stops Tune's loop at its first step when a signal came before the loop began."""

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if _received:
            _stop_tune()
