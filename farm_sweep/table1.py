"""The paper's Table 1: `python -m farm_sweep.table1`, trained and evaluated here (farm_sweep.evaluation.table1),
or with `--study FILE --output DIR` read from a study's confirmation stage (farm_sweep.sweep.table1_report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from farm_sweep.evaluation import table1


def from_study(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.table1 --study",
                                     description="Table 1 of a study's confirmed configurations.")
    parser.add_argument("--study", type=Path, required=True, help="the study file")
    parser.add_argument("--output", type=Path, required=True, help="the study's output folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="markdown file to write; the test split's figure goes beside it (.png)")
    args = parser.parse_args(argv)
    from farm_sweep.sweep import table1_report, tables  # the sweep's imports, only for this form
    from farm_sweep.sweep.study import StudyError, load_study
    try:
        table = table1_report.read(load_study(args.study), args.output)
        text = table1_report.markdown(table)
    except (StudyError, tables.TableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    drawn = table1_report.figure(table, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {drawn}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    by_study = any(argument == "--study" or argument.startswith("--study=") for argument in argv)
    return from_study(argv) if by_study else table1.main(argv)


if __name__ == "__main__":
    sys.exit(main())
