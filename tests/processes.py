"""Real server processes for tests (`mlflow server`, `mlflow models serve`, `optuna-dashboard`, Ray nodes, a
PostgreSQL server), each started on 127.0.0.1 and stopped by process id; and watching a study's driver: its
output, the epochs its trials reported."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from ray import cloudpickle

import farm_sweep.sweep.trial as trial_module
from farm_sweep.sweep.trial import TrialContext, run_trial

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the tests

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


def stop_tree(process: subprocess.Popen, timeout: float = 30) -> None:
    """stop(), then SIGKILL every descendant still alive (Ray's workers start sessions of their own)."""
    family = descendants(process.pid)
    stop(process, timeout)
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


def read_until(process: subprocess.Popen, marker: str, after: str = "", timeout: float = 300) -> list[str]:
    """The process's output lines up to the first holding `marker` that follows a line holding `after`."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if marker in line and any(after in seen for seen in lines[:-1] or [""]):
            return lines
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no {marker!r} after {after!r} from the driver:\n" + "".join(lines[-40:]))


def when_epoch_reported(output: Path, name: str, epoch: int, action: Callable[[], None]) -> None:
    """Run `action` once any trial of the study in `output` has reported `epoch` (polling Tune's results)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for result in (output / "ray" / name).glob("trial_*/result.json"):
            lines = result.read_text().splitlines()
            if any(json.loads(line).get("epoch", 0) >= epoch for line in lines if line.strip()):
                action()
                return
        time.sleep(0.2)


def run_trial_with(after_epoch: Callable[[dict[str, Any]], None], config: dict[str, Any],
                   context: TrialContext) -> None:
    """run_trial, calling `after_epoch(metrics)` once each epoch is reported (before the next one starts)."""
    real_train = trial_module.train

    def train(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for metrics in real_train(*args, **kwargs):
            yield metrics  # run_trial reports it, with its checkpoint, before asking for the next epoch
            after_epoch(metrics)

    with mock.patch.object(trial_module, "train", train):
        run_trial(config, context)


GATE: list[Any] = []  # [epoch, file]: set by a test before its study starts; pickled into the trainable


def gated(config: dict[str, Any], context: TrialContext) -> None:
    """run_trial, except that a trial reporting epoch GATE[0] waits (2 minutes at most) until the file GATE[1]
    exists: a test opens the gate once its outage has begun, so the epochs after it meet the outage."""
    epoch, gate = GATE

    def wait(metrics: dict[str, Any]) -> None:
        deadline = time.monotonic() + 120
        while metrics["epoch"] == epoch and not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    run_trial_with(wait, config, context)


def local_ray() -> str:
    """The address of this process's local Ray (2 CPUs, no dashboard), started unless it runs already."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return ray.get_runtime_context().gcs_address


def finished_trials(experiment: Path, process: subprocess.Popen, timeout: float = 600) -> list[str]:
    """The trials that Tune's saved state in `experiment` holds as finished, once there is one (what `--resume`
    reads: so it must not run them again)."""
    from ray import tune

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(Exception):  # no state yet, or a state file being written
            finished = [trial.trial_id for trial in tune.ExperimentAnalysis(str(experiment)).trials
                        if trial.status == "TERMINATED"]
            if finished:
                return finished
        time.sleep(0.5)
    raise AssertionError(f"no finished trial in {experiment}:\n{process.communicate()[0][-3000:]}")


def postgres_binaries() -> Path | None:
    """The folder of PostgreSQL's initdb and postgres: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((folder for folder in candidates if (folder / "postgres").is_file()), None)


class PostgresServer:
    """A throwaway PostgreSQL cluster: `initdb` in a temporary folder, `postgres` listening on 127.0.0.1 and a
    free port (no other address, its socket file in that folder), password authentication for every
    connection. PostgreSQL refuses to run as root, so under root it runs as the `postgres` user (or `nobody`),
    in a folder outside pytest's root-only temporary tree."""

    def __init__(self, binaries: Path, superuser: str, password: str) -> None:
        self.binaries, self.superuser, self.password = binaries, superuser, password
        self.folder = Path(tempfile.mkdtemp(prefix="farm-postgres-"))
        self.account = _unprivileged_account()
        if self.account is not None:
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        secret = self.folder / "password"
        secret.write_text(password)
        if self.account is not None:
            os.chown(secret, self.account.pw_uid, self.account.pw_gid)
        self._run([self.binaries / "initdb", "-D", self.folder / "data", "-U", superuser, f"--pwfile={secret}",
                   "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"])
        secret.unlink()

    def url(self, database: str, user: str | None = None, password: str | None = None) -> str:
        return (f"postgresql://{user or self.superuser}:{password or self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def start(self) -> None:
        """Start the server (unless it runs); returns once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        log = self.folder / "server.log"
        self.process = subprocess.Popen(
            [self.binaries / "postgres", "-D", self.folder / "data", "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
             "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=open(log, "a"), cwd=self.folder,  # noqa: SIM115 (closed with it)
            start_new_session=True, **self._as_account())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"postgres exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                if self._accepts():
                    return
            time.sleep(0.2)
        raise AssertionError(f"postgres did not accept connections in 60 s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open connections are cut) of the server process, by its id."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        _signal_group(self.process, signal.SIGKILL)  # its own children, should any outlive it
        self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run SQL statements as the superuser, each in its own transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, dbname=database, user=self.superuser,
                             password=self.password, autocommit=True, connect_timeout=5) as connection:
            for statement in statements:
                connection.execute(statement)

    def _accepts(self) -> bool:
        try:
            self.execute("SELECT 1")
        except Exception:  # psycopg.OperationalError while the server starts up
            return False
        return True

    def _run(self, command: list) -> None:
        done = subprocess.run(command, cwd=self.folder, capture_output=True, text=True, **self._as_account())
        if done.returncode != 0:
            raise AssertionError(f"{command[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def _as_account(self) -> dict:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}


def _unprivileged_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when the tests run as root: `postgres` where it exists, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise AssertionError("running as root, but neither a postgres nor a nobody account exists to run PostgreSQL")


FIXED: dict[str, Any] = {"dataset": "digits", "hidden_sizes": [32], "batch_size": 50}


def study_file(folder: Path, name: str, lrs: list[float], epochs: int, **settings: Any) -> Path:
    """A tiny digits study of one trial per learning rate, enqueued in order, one at a time, never pruned."""
    document = {"name": name, "fixed": {**FIXED, "epochs": epochs}, "pruner": "none", "trials": len(lrs),
                "max_concurrent_trials": 1, "resources": {"cpus": 1},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": lrs}}},
                "enqueue": [{"lr": lr} for lr in lrs], **settings}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
