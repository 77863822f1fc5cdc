"""Real server processes for tests (`mlflow server`, `mlflow models serve`, `optuna-dashboard`, Ray nodes), each
started on 127.0.0.1 and stopped by process id."""

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

# `mlflow server` without MLflow's job runner (a second process for GenAI jobs, which no test uses): it starts
# faster on a busy machine.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with its store in `folder`; returns once it answers /health."""
    folder.mkdir(parents=True, exist_ok=True)
    return start_server(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
         str(folder / "artifacts")], f"http://127.0.0.1:{port}/health", folder / "server.log", MLFLOW_SERVER_ENV)


def start_server(command: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None,
                 timeout: float = 180) -> subprocess.Popen:
    """Start `command` in a process group of its own (stderr to `log`); returns once `ready_url` answers 200.
    The environment is this one plus `env`, with this interpreter's bin folder first on PATH (MLflow starts its
    servers by name: uvicorn, gunicorn)."""
    bin_folder = str(Path(sys.executable).parent)
    environment = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "a"), env=environment,  # noqa: SIM115 (closed with the process)
                               start_new_session=True)
    try:
        wait_ready(ready_url, process, log, timeout)
    except BaseException:
        stop(process)
        raise
    return process


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[:4]} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


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
