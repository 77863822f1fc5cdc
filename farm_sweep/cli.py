"""The `farm-sweep` console script: `farm-sweep run|results|export|evaluate|train|table1|convert_idx ARGS...`,
each subcommand the same as `python -m farm_sweep.<subcommand> ARGS...`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from farm_sweep.sweep.command_start import before_imports

COMMANDS = {
    "run": ("farm_sweep.sweep.runner", "run a study file on Ray Tune with Optuna and MLflow"),
    "results": ("farm_sweep.sweep.results_command", "print or convert a study's tables (trials, epochs, evaluation)"),
    "export": ("farm_sweep.export.command", "export a study's best trials"),
    "evaluate": ("farm_sweep.export.evaluate", "evaluate an exported model"),
    "train": ("farm_sweep.training.loop", "train one configuration without Ray"),
    "table1": ("farm_sweep.table1", "the paper's Table 1 (trained here, or with --study from a study's seeds)"),
    "convert_idx": ("farm_sweep.convert_idx", "convert MNIST-format IDX files to a binary dataset npz"),
}


def usage() -> str:
    lines = ["usage: farm-sweep COMMAND [ARGS...]   (farm-sweep COMMAND --help for its options)", "", "commands:"]
    width = max(map(len, COMMANDS)) + 2
    return "\n".join(lines + [f"  {name:<{width}}{about}" for name, (_, about) in COMMANDS.items()])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"farm-sweep: unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    sys.argv[0] = f"farm-sweep {command}"
    if command == "run":
        before_imports(rest)
    return importlib.import_module(COMMANDS[command][0]).main(rest)
