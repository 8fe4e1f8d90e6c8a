"""`polypythia outliers FILE`: cross-seed outlier runs in a long table of per-checkpoint values."""

from __future__ import annotations

import argparse

from polypythia.errors import UsageError
from polypythia.monitoring.outliers import OutlierSettings, Point, find_outliers
from polypythia.monitoring.tables import columns, format_table, integer, number, read_rows, text
from polypythia.output import FORMATS, camel_keys, emit

_HIGH_IS_BAD = ("loss", "perplexity", "ppl", "bpb")


def configure(parser: argparse.ArgumentParser) -> None:
    d = OutlierSettings()
    parser.add_argument("file", metavar="FILE", help="CSV, TSV or JSONL: step, seed or run, value")
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default="table",
        help="table, or json/yaml with camelCase keys (default: %(default)s)",
    )
    parser.add_argument(
        "--value-column",
        default=None,
        help="column to compare (default: the first of value, score, loss)",
    )
    parser.add_argument(
        "--run-column", default=None, help="column naming the run (default: run, else seed)"
    )
    parser.add_argument(
        "--group-column",
        default=None,
        help="runs are compared within a group (default: size if present)",
    )
    parser.add_argument(
        "--step-column", default="step", help="column of the checkpoint step (default: %(default)s)"
    )
    parser.add_argument(
        "--direction",
        choices=["low", "high", "both"],
        default=None,
        help="which side is bad (default: high for loss-like columns, else low)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help="robust z beyond which a run's checkpoint is off its group (default: %(default)s)",
    )
    parser.add_argument(
        "--consecutive",
        type=int,
        default=d.consecutive,
        help="off checkpoints in a row that make a run an outlier (default: %(default)s)",
    )
    parser.add_argument(
        "--min-runs",
        type=int,
        default=d.min_runs,
        help="fewest runs in a group for a comparison (default: %(default)s)",
    )


def _pick(given: str | None, present: set[str], candidates: tuple[str, ...], what: str) -> str:
    if given:
        if given not in present:
            raise UsageError(f"{what} {given!r}: no such column; columns are {sorted(present)}")
        return given
    for c in candidates:
        if c in present:
            return c
    raise UsageError(
        f"no {what}: expected one of {list(candidates)}; columns are {sorted(present)}"
    )


def main(args: argparse.Namespace) -> int:
    try:
        settings = OutlierSettings(
            threshold=args.threshold, consecutive=args.consecutive, min_runs=args.min_runs
        )
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    rows = read_rows(args.file)
    if not rows:
        raise UsageError(f"{args.file}: no records")
    present = columns(rows)
    value_col = _pick(args.value_column, present, ("value", "score", "loss"), "--value-column")
    run_col = _pick(args.run_column, present, ("run", "seed"), "--run-column")
    group_col = args.group_column or ("size" if "size" in present else None)
    if group_col and group_col not in present:
        raise UsageError(f"--group-column {group_col!r}: no such column")
    points = [
        Point(
            text(r, group_col) if group_col else "all",
            text(r, run_col),
            integer(r, args.step_column),
            number(r, value_col),
        )
        for r in rows
    ]
    direction = args.direction or (
        "high" if any(k in value_col.lower() for k in _HIGH_IS_BAD) else "low"
    )
    verdicts = find_outliers(points, value_col, settings, direction)
    if args.output != "table":
        emit([camel_keys(v.to_dict()) for v in verdicts], args.output)
        return 0
    if not verdicts:
        print("no outlier runs")
        return 0
    header = ["GROUP", "RUN", "SIGNAL", "FIRST_STEP", "SCORE", "CHECKPOINTS"]
    print(
        format_table(
            header,
            [
                [v.group, v.run, v.signal, str(v.first_step), f"{v.score:.1f}", str(v.checkpoints)]
                for v in verdicts
            ],
        )
    )
    return 0
