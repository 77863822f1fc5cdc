"""The `farm-sweep` console script dispatches to the same commands as `python -m farm_sweep.<command>`."""

import os
import subprocess
import sys
from pathlib import Path

from farm_sweep import cli
from farm_sweep.sweep import cluster

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_is_a_python_dash_m_module_with_the_same_main():
    for name, (module, _) in cli.COMMANDS.items():
        entry = __import__(f"farm_sweep.{name}", fromlist=["main"]) if name != "export" else None
        package = __import__(module, fromlist=["main"])
        if entry is not None:
            assert entry.main is package.main


def test_run_subcommand_validates_a_study_like_python_dash_m(capsys, monkeypatch):
    monkeypatch.setenv(cluster.LOOPBACK_ENV, "1")
    monkeypatch.delenv(cluster.LOOPBACK_ENV)  # restored (unset) after the test: Ray's `ray start` reads it
    assert cli.main(["run", str(ROOT / "studies" / "quickstart.yaml"), "--dry-run"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert os.environ[cluster.LOOPBACK_ENV] == "0"  # the embedded Ray of `farm-sweep run` stays on 127.0.0.1


def test_run_with_an_address_leaves_rays_node_address_alone(monkeypatch):
    monkeypatch.setenv(cluster.LOOPBACK_ENV, "1")
    monkeypatch.delenv(cluster.LOOPBACK_ENV)
    cluster.keep_embedded_ray_local(["study.yaml", "--address", "auto"])
    assert cluster.LOOPBACK_ENV not in os.environ


def test_unknown_command_exits_2_naming_the_choices(capsys):
    assert cli.main(["sweep"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'sweep'" in error and "run, results, export, evaluate, train, table1" in error


def test_python_dash_m_export_runs_the_export_command():
    result = subprocess.run([sys.executable, "-m", "farm_sweep.export", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "--top" in result.stdout
