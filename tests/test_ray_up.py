"""`ray up` for real: ray_cluster_local.yaml brought up by the cluster launcher over SSH on loopback addresses (the
head 127.0.0.2, one worker 127.0.0.1), with its shipped setup and start commands (cluster/setup_node.sh,
cluster/start_stores.sh); a study run on it the way docs/cluster.md says (`ray exec ... python -m farm_sweep.run
... --address auto` with the MLflow server and the PostgreSQL database the head started), one trial on each
node; then cluster/stop_stores.sh and `ray down`. One cluster, one study: every check is on that run.

The test provides what a cluster's machines have: a user to log in as (a throwaway one, its home in a temporary
folder), an sshd per node (the test's own, with its own configuration, host key and authorized key, listening on
port 22 of the node's address only; the worker's in process-ID and host-name namespaces of its own, so that the
`ray stop` of the worker's start commands sees the worker's processes alone and its trials report a host name of
their own, as on a machine of its own; the head's `ray stop`, which `ray down` runs, stops the worker's Ray too,
as the worker's would stop by itself once the head is gone), and the project's dependencies already installed in
that user's ~/venv (as a machine image would hold them: the packages of this test's interpreter, reached through a
.pth file; the setup command still installs the project itself). Only the key and the addresses of the shipped
file change, and its settings go into cluster.env as docs/cluster.md says. The worker is at 127.0.0.1 because a
worker's Ray takes as its address the one it reaches the head from, on loopback 127.0.0.1, and the head's
autoscaler knows a worker by its address (under another, it would restart the worker again and again, waiting
for its heartbeat). Both nodes share the user's home, so the worker's setup finds the project installed by the
head's (setup_node.sh skips an install whose pyproject.toml has not changed).
Ray's temporary folder (RAY_TMPDIR) is a folder of the test's, for the cluster's nodes (cluster.env) and the
`ray` commands alike (the local provider keeps its node states there, on the machine of `ray up` and on the
head), so nothing in this machine's /tmp/ray is touched. Every process the test started, and every process of
the throwaway user, is stopped by process id; the user and its folder are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import ray._private.utils
import yaml
from mlflow import MlflowClient

from farm_sweep.sweep import tracking
from tests.processes import free_port, postgres_binaries, stop

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
SSHD = Path("/usr/sbin/sshd")
ADDRESSES = ("127.0.0.2", "127.0.0.1")  # the head's, the worker's (the module's docstring says why this way)
WORKER_HOST = "farm-worker"  # the worker's host name, in its own namespace
NODE_CPUS = ray._private.utils.get_num_cpus()  # what `ray start` gives each node here: both count this machine's
LOCAL_PROVIDER_ENV = {"RAY_UP_enable_autoscaler_v2": "0"}  # docs/cluster.md: what `ray up` of the local file needs
SYSTEM_PYTHON = Path("/usr/bin/python3")  # what `python3` is in the SSH sessions (PATH /usr/local/bin:/usr/bin:...)


@dataclass
class Cluster:
    config: Path
    user: str
    shared: Path
    mlflow_uri: str
    ray_folder: Path
    pgpass: Path  # the user's ~/.pgpass, where start_stores.sh keeps its database's password


def missing_requirements() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root: it creates a throwaway user for the cluster's SSH logins and runs an sshd"
    for tool in (SSHD, *map(shutil.which, ("ssh", "rsync", "useradd", "unshare"))):
        if tool is None or not Path(tool).exists():
            return (f"{tool or 'ssh, rsync, useradd or unshare'} is missing; `make test` installs openssh-server and "
                    "rsync as root with apt-get")
    if postgres_binaries() is None:
        return "PostgreSQL is not installed (the head's stores); `make test` installs it as root with apt-get"
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        return f"{SYSTEM_PYTHON} is Python {version or 'missing'}, not {sys.version_info[:2]}: its venv cannot " \
               "use this interpreter's packages"
    for address in ADDRESSES:
        with socket.socket() as probe:
            if probe.connect_ex((address, 22)) == 0:
                return f"port 22 of {address} is taken (the cluster launcher reaches nodes on SSH's port only)"
    return None


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="farm-rayup-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    root.chmod(0o755)
    user = f"farmray{secrets.token_hex(3)}"
    sshds: list[subprocess.Popen] = []
    try:
        account = _create_user(user, root / "home")
        _make_keys(root)
        for node, address in enumerate(ADDRESSES):
            sshds.append(_start_sshd(root, user, address, host=WORKER_HOST if node > 0 else None))
        _provision_venv(account, root)
        cluster = _write_cluster_files(root, account)
        yield cluster
        _tear_down(cluster)
    finally:
        _stop_ssh_clients_of(root / "key")
        leftovers = _kill_processes_of(user)
        for sshd in sshds:
            stop(sshd)
        subprocess.run(["userdel", "--remove", user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    assert leftovers == [], f"processes of the cluster still running after ray down: {leftovers}"


def test_ray_up_runs_a_study_on_the_shipped_local_cluster_file(cluster: Cluster,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    launched = _ray(cluster, "up", "-y", "--no-config-cache", str(cluster.config), timeout=1200)
    assert launched.returncode == 0, launched.stdout[-6000:]
    _wait_for_the_worker(cluster)  # the head's autoscaler sets it up after `ray up` returns

    study = cluster.shared / "quick.yaml"
    study.write_text(yaml.safe_dump({
        "name": "quick", "trials": 2, "pruner": "none", "max_concurrent_trials": 2,
        "resources": {"cpus": NODE_CPUS},  # a whole node per trial: the two run on the two nodes at once
        "fixed": {"dataset": "digits", "hidden_sizes": [32], "epochs": 1, "batch_size": 50},
        "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [2e-2, 1e-2]}}},
        "enqueue": [{"lr": 2e-2}, {"lr": 1e-2}]}))
    shutil.chown(study, cluster.user, cluster.user)
    ran = _ray(cluster, "exec", str(cluster.config),
               "cd ~/farm-sweep && python -m farm_sweep.run $FARM_SHARED/quick.yaml --address auto "
               '--output $FARM_SHARED/results/quick --tracking-uri "$FARM_TRACKING_URI" '
               '--optuna-storage "$FARM_OPTUNA_STORAGE"', timeout=600)
    assert ran.returncode == 0, ran.stdout[-6000:]
    assert f"mlflow: {cluster.mlflow_uri}" in ran.stdout and "optuna: postgresql://farm@127.0.0.1:" in ran.stdout

    client = MlflowClient(cluster.mlflow_uri)  # the head's MLflow server, its runs in the head's PostgreSQL
    runs = client.search_runs([client.get_experiment_by_name("quick").experiment_id])
    (parent,) = [run for run in runs if tracking.TRIAL_TAG not in run.data.tags]
    children = [run for run in runs if tracking.TRIAL_TAG in run.data.tags]
    assert parent.info.status == "FINISHED" and len(children) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags[tracking.STATUS_TAG] == "completed"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "nll_image")] == [1]
    assert {"checkpoint/model.safetensors"} <= {
        a.path for a in client.list_artifacts(children[0].info.run_id, "checkpoint")}  # on the shared folder

    results = cluster.shared / "results" / "quick" / "ray" / "quick"
    hosts = {json.loads(path.read_text().splitlines()[-1])["hostname"] for path in results.glob("*/result.json")}
    assert hosts == {socket.gethostname(), WORKER_HOST}  # a trial on the head, one on the worker

    monkeypatch.setenv("PGPASSFILE", str(cluster.pgpass))  # the Optuna study, in the head's PostgreSQL
    trials = optuna.load_study(study_name="quick", storage=_stores(cluster)["FARM_OPTUNA_STORAGE"]).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE"]


def _stores(cluster: Cluster) -> dict[str, str]:
    """The URLs start_stores.sh wrote to ~/farm-stores.env (`export NAME=VALUE` lines)."""
    lines = (cluster.pgpass.parent / "farm-stores.env").read_text().splitlines()
    return dict(line.removeprefix("export ").split("=", 1) for line in lines if line.strip())


def _wait_for_the_worker(cluster: Cluster, timeout: float = 600) -> None:
    """Until the user runs two raylets (the head's and the worker's); else fail with the autoscaler's log."""
    uid = pwd.getpwnam(cluster.user).pw_uid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum("/raylet/raylet " in command for _, command in _processes_of(uid)) >= 2:
            return
        time.sleep(1)
    logs = sorted(cluster.ray_folder.glob("ray/session_*/logs/monitor.*"))
    raise AssertionError("the worker did not join:\n" + "".join(log.read_text()[-3000:] for log in logs))


def _ray(cluster: Cluster, *arguments: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(cluster.ray_folder), **LOCAL_PROVIDER_ENV}
    return subprocess.run([RAY, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def _create_user(user: str, home: Path) -> pwd.struct_passwd:
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group",
                    user], check=True, capture_output=True)
    subprocess.run(["usermod", "--password", "*", user], check=True)  # not locked: sshd without PAM refuses those
    return pwd.getpwnam(user)


def _make_keys(root: Path) -> None:
    for name in ("host_key", "key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "key.pub").read_text())


def _start_sshd(root: Path, user: str, address: str, host: str | None) -> subprocess.Popen:
    """An sshd of the test's own on port 22 of `address`, for the throwaway user's key alone; given a `host` (the
    worker's), in process-ID and host-name namespaces of its own: its sessions' processes live there and see only
    each other (the worker's `ray stop` stops the worker alone), on a machine named `host`."""
    config = root / f"sshd_config_{address}"
    config.write_text("\n".join([
        "Port 22", f"ListenAddress {address}", f"HostKey {root / 'host_key'}", f"PidFile {config}.pid",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"AllowUsers {user}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin no", "X11Forwarding no",
        "MaxSessions 50", "MaxStartups 50", ""]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    log = root / f"sshd_{address}.log"
    sshd = [str(SSHD), "-D", "-f", str(config), "-E", str(log)]
    if host is not None:
        sshd = ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child",
                "sh", "-c", f'hostname {host} && exec "$@"', "sshd", *sshd]
    process = subprocess.Popen(sshd, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex((address, 22)) == 0:
                return process
        time.sleep(0.2)
    stop(process)
    raise AssertionError(f"sshd on {address} did not start:\n{log.read_text()[-3000:] if log.exists() else ''}")


def _provision_venv(account: pwd.struct_passwd, root: Path) -> None:
    """~/venv with this interpreter's packages (the .pth file), and the ray and mlflow commands."""
    venv = Path(account.pw_dir) / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, user=account.pw_uid,
                   group=account.pw_gid, extra_groups=[], cwd=root)
    purelib = Path(sysconfig.get_paths()["purelib"])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / version / "site-packages" / "machine-image-packages.pth").write_text(f"{purelib}\n")
    for command in ("ray", "mlflow"):
        script = Path(sys.executable).with_name(command).read_text().split("\n", 1)[1]
        (venv / "bin" / command).write_text(f"#!{venv / 'bin' / 'python'}\n{script}")
        (venv / "bin" / command).chmod(0o755)


def _write_cluster_files(root: Path, account: pwd.struct_passwd) -> Cluster:
    """The shipped ray_cluster_local.yaml with this machine's addresses, user and key; cluster.env with ports of
    their own (nothing else on this machine is disturbed)."""
    shared, ray_folder = root / "shared", root / "ray"
    name = f"farm-test-{account.pw_name}"
    states = ray_folder / "ray" / f"cluster-{name}"  # the local provider's node states and their lock, which
    for folder in (shared, ray_folder, states.parent):  # `ray up` (root) and the head's autoscaler share here
        folder.mkdir()
    states.with_suffix(".lock").touch()
    states.with_suffix(".state").write_text("{}")
    for path in (shared, ray_folder, states.parent, states.with_suffix(".lock"), states.with_suffix(".state")):
        shutil.chown(path, account.pw_uid, account.pw_gid)
    mlflow_port = free_port()
    (root / "cluster.env").write_text("\n".join([
        f"FARM_SHARED={shared}", "FARM_MLFLOW_HOST=127.0.0.1", f"FARM_MLFLOW_PORT={mlflow_port}",
        f"FARM_POSTGRES_PORT={free_port()}", f"FARM_RAY_PORT={free_port()}", f"RAY_TMPDIR={ray_folder}",
        "MLFLOW_WORKERS=1", ""]))  # one MLflow server process is plenty for two trials
    config = yaml.safe_load((ROOT / "ray_cluster_local.yaml").read_text())
    config.update(cluster_name=name, min_workers=1, max_workers=1,
                  provider={"type": "local", "head_ip": ADDRESSES[0], "worker_ips": list(ADDRESSES[1:])},
                  auth={"ssh_user": account.pw_name, "ssh_private_key": str(root / "key")},
                  file_mounts={"~/farm-sweep": str(ROOT), "~/farm-sweep/cluster.env": str(root / "cluster.env")})
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Cluster(path, account.pw_name, shared, f"http://127.0.0.1:{mlflow_port}", ray_folder,
                   Path(account.pw_dir) / ".pgpass")


def _tear_down(cluster: Cluster) -> None:
    """What docs/cluster.md says: stop the stores, then `ray down`."""
    stopped = _ray(cluster, "exec", str(cluster.config), "~/farm-sweep/cluster/stop_stores.sh", timeout=300)
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    down = _ray(cluster, "down", "-y", str(cluster.config), timeout=600)
    assert down.returncode == 0, down.stdout[-3000:]


def _kill_processes_of(user: str) -> list[str]:
    """SIGKILL, by process id, every process of `user`; returns those of the cluster (not SSH's connections,
    which the launcher keeps open a while for reuse) still running half a minute after ray down."""
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(user).pw_uid
        deadline = time.monotonic() + 30
        while _cluster_processes(_processes_of(uid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        running = _processes_of(uid)
        for pid, _ in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return _cluster_processes(running)
    return []


def _cluster_processes(processes: list[tuple[int, str]]) -> list[str]:
    return [f"{pid} {command}" for pid, command in processes if not command.startswith(("ssh:", "sshd:"))]


def _processes_of(uid: int) -> list[tuple[int, str]]:
    """(process id, command line) of every live process of `uid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").strip()))
    return [(pid, command) for pid, command in found if command]  # zombies have none


def _stop_ssh_clients_of(key: Path) -> None:
    """The cluster launcher's SSH connections (it keeps them open a while for reuse), by process id."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and str(key).encode() in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGTERM)
