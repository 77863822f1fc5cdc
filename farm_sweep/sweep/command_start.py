"""What `python -m farm_sweep.run` and `farm-sweep run` do first, before the runner's imports (Ray, torch,
MLflow: seconds): keep an embedded Ray on 127.0.0.1, and refuse at once an `--output` folder another run holds.

The embedded Ray listens on 127.0.0.1 only when LOOPBACK_ENV is set before Ray is imported (Ray reads it
once): Ray then takes 127.0.0.1 as this node's address, and its GCS, raylet, object manager, runtime-env
agent, the driver and every worker bind to it (with any other node address they bind to all interfaces).
docs/reliability.md says what listens where.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from farm_sweep.sweep import output_lock

# Ray's switch for machines where it supports no multi-node clusters (macOS, Windows): the node's address is
# the loopback address. Only read before `import ray`.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def before_imports(argv: Sequence[str]) -> None:
    """Both, for the run command's arguments `argv`."""
    keep_embedded_ray_local(argv)
    refuse_a_busy_output(argv)


def keep_embedded_ray_local(argv: Sequence[str]) -> None:
    """Unless the command joins a cluster (--address), its embedded Ray listens on 127.0.0.1 only."""
    if not any(argument == "--address" or argument.startswith("--address=") for argument in argv):
        os.environ.setdefault(LOOPBACK_ENV, "0")


def refuse_a_busy_output(argv: Sequence[str]) -> None:
    """Exit 2 when another run holds the `--output` folder (the runner takes the lock itself, later). Commands
    that take no lock (--dry-run, --print-schema, --help) go on."""
    if any(argument.startswith(("--dry-run", "--print-schema", "-h", "--help")) for argument in argv):
        return
    outputs = [argv[i + 1] for i, argument in enumerate(argv[:-1]) if argument == "--output"]
    outputs += [argument.split("=", 1)[1] for argument in argv if argument.startswith("--output=")]
    for output in map(Path, outputs):
        try:
            output_lock.probe(output)
        except output_lock.OutputBusy as error:
            print(output_lock.refusal(output.resolve(), error), file=sys.stderr)
            sys.exit(2)
