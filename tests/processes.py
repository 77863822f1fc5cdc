"""Real server processes for tests: an `mlflow server` and Ray nodes, each stopped by process id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with its store in `folder`; returns once it answers /health."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
         str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=open(log, "a"), start_new_session=True)  # noqa: SIM115 (closed with the process)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log)
    except BaseException:
        stop(process)
        raise
    return process


def wait_healthy(uri: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server did not become healthy in {timeout}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group the test started, then SIGKILL whatever is left."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    _signal_group(process, signal.SIGKILL)
    process.wait()


def stop_tree(process: subprocess.Popen) -> None:
    """stop(), then SIGKILL every descendant still alive (Ray's workers start sessions of their own)."""
    family = descendants(process.pid)
    stop(process)
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the process group at once: a crash, with no chance to clean up."""
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
