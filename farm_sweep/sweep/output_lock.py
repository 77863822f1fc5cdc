"""One writer per output folder: an OS file lock held for the life of a run.

`hold(output)` creates the folder if needed and takes an exclusive `flock` on `<output>/.farm_sweep.lock`,
before anything else is written there, and writes the holder (host, process id, start time) into the file.
A second run, or a `--resume` while the study still runs, fails at once with OutputBusy naming the holder.
The kernel releases the lock when its process ends, however it ends (a SIGKILL, a crash), so the lock of a
killed run is taken over by the next one without any check of process ids. On leaving, the lock file is
removed, and the folder too when this run created it and wrote nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".farm_sweep.lock"


class OutputBusy(RuntimeError):
    """Another run holds the output folder."""


class OutputUnusable(RuntimeError):
    """The output folder cannot be created or written."""


def refusal(output: Path, error: OutputBusy | OutputUnusable) -> str:
    """The error line of a command refused the folder `output` (given resolved)."""
    return f"error: {output}: --output: {error}"


@contextlib.contextmanager
def hold(output: Path) -> Iterator[None]:
    """Hold the lock of `output` (OutputBusy, OutputUnusable) for the `with` block."""
    try:
        created = _missing_folders(output)
        if not created and not output.is_dir():
            raise OutputUnusable("is not a folder; choose a folder for --output")
        output.mkdir(parents=True, exist_ok=True)
        descriptor = _locked(output / LOCK_FILE)
    except OSError as error:
        raise OutputUnusable(f"cannot write there ({error.strerror or error}); choose a writable folder for "
                             "--output") from None
    try:
        yield
    finally:
        (output / LOCK_FILE).unlink(missing_ok=True)  # still holding it: a run waiting on this file retries
        os.close(descriptor)
        for folder in created:  # deepest first; only empty ones go, so only when this run wrote nothing
            with contextlib.suppress(OSError):
                folder.rmdir()


def _missing_folders(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def _locked(path: Path) -> int:
    """A descriptor of `path` holding its exclusive lock, the holder written in it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = _busy(descriptor)
            os.close(descriptor)
            raise busy from None
        if _same_file(descriptor, path):
            break
        os.close(descriptor)  # the holder removed the file as it ended: lock the file now at this path
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
             .encode())
    return descriptor


def probe(output: Path) -> None:
    """OutputBusy when a run holds the lock of `output` now; changes nothing (a command checks this before its
    imports, which take seconds; `hold` decides)."""
    try:
        descriptor = os.open(output / LOCK_FILE, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    except OSError:  # no lock file: no run, or `hold` reports what is wrong
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(descriptor) from None
    finally:
        os.close(descriptor)  # releases the lock if this took it


def _busy(descriptor: int) -> OutputBusy:
    text = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
    holder = f"the run of {text}" if text else "another run (just starting)"
    return OutputBusy(f"in use by {holder}; wait for that run to end, or choose another --output")


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False
