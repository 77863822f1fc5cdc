"""The `farm-sweep` console script dispatches to the same commands as `python -m farm_sweep.<command>`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm_sweep import cli
from farm_sweep.sweep import command_start, output_lock

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_is_a_python_dash_m_module_with_the_same_main():
    for name, (module, _) in cli.COMMANDS.items():
        entry = __import__(f"farm_sweep.{name}", fromlist=["main"]) if name != "export" else None
        package = __import__(module, fromlist=["main"])
        if entry is not None:
            assert entry.main is package.main


def test_run_subcommand_validates_a_study_like_python_dash_m(capsys, monkeypatch):
    monkeypatch.setenv(command_start.LOOPBACK_ENV, "1")
    monkeypatch.delenv(command_start.LOOPBACK_ENV)  # restored (unset) after the test: Ray's `ray start` reads it
    assert cli.main(["run", str(ROOT / "studies" / "quickstart.yaml"), "--dry-run"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert os.environ[command_start.LOOPBACK_ENV] == "0"  # the embedded Ray of `farm-sweep run` stays on 127.0.0.1


def test_run_with_an_address_leaves_rays_node_address_alone(monkeypatch):
    monkeypatch.setenv(command_start.LOOPBACK_ENV, "1")
    monkeypatch.delenv(command_start.LOOPBACK_ENV)
    command_start.keep_embedded_ray_local(["study.yaml", "--address", "auto"])
    assert command_start.LOOPBACK_ENV not in os.environ


def test_unknown_command_exits_2_naming_the_choices(capsys):
    assert cli.main(["sweep"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'sweep'" in error and "run, results, export, evaluate, train, table1" in error


def test_python_dash_m_export_runs_the_export_command():
    result = subprocess.run([sys.executable, "-m", "farm_sweep.export", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "--top" in result.stdout


def test_a_held_output_is_refused_before_the_runner_is_imported(tmp_path, capsys):
    output = tmp_path / "out"
    with output_lock.hold(output):
        with pytest.raises(SystemExit) as refused:
            command_start.refuse_a_busy_output(["study.yaml", "--output", str(output)])
        assert refused.value.code == 2
        assert f"error: {output}: --output: in use by the run of host " in capsys.readouterr().err
        command_start.refuse_a_busy_output(["study.yaml", "--output", str(output), "--dry-run"])  # takes no lock
    command_start.refuse_a_busy_output(["study.yaml", f"--output={output}"])  # free again
    assert not output.exists()  # the check wrote nothing
