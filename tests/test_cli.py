"""The `farm-sweep` console script dispatches to the same commands as `python -m farm_sweep.<command>`."""

import subprocess
import sys
from pathlib import Path

from farm_sweep import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_is_a_python_dash_m_module_with_the_same_main():
    for name, (module, _) in cli.COMMANDS.items():
        entry = __import__(f"farm_sweep.{name}", fromlist=["main"]) if name != "export" else None
        package = __import__(module, fromlist=["main"])
        if entry is not None:
            assert entry.main is package.main


def test_run_subcommand_validates_a_study_like_python_dash_m(capsys):
    assert cli.main(["run", str(ROOT / "studies" / "quickstart.yaml"), "--dry-run"]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_unknown_command_exits_2_naming_the_choices(capsys):
    assert cli.main(["sweep"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'sweep'" in error and "run, export, evaluate, train, table1" in error


def test_python_dash_m_export_runs_the_export_command():
    result = subprocess.run([sys.executable, "-m", "farm_sweep.export", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "--top" in result.stdout
