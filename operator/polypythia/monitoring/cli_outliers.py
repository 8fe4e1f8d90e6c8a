"""`polypythia outliers SOURCE`: cross-seed outlier runs in a long table of per-checkpoint
values, or in a sweep in storage (every signal the driver and operator test: the held-out
loss and each task's score, false alarms controlled over all of them)."""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict

from polypythia.commands import common
from polypythia.errors import UsageError
from polypythia.monitoring.cross_seed import cross_seed_outliers
from polypythia.monitoring.outliers import OutlierSettings, OutlierVerdict, Point, find_outliers
from polypythia.monitoring.stored import applied_settings, is_stored, stored_runs
from polypythia.monitoring.tables import columns, integer, number, read_rows, text
from polypythia.output import camel_keys
from polypythia.runcore.monitor import stored_history

_HIGH_IS_BAD = ("loss", "perplexity", "ppl", "bpb")
# More distinct steps than this per run is a per-step log, not checkpoint values.
MAX_STEPS_PER_RUN = 300
# Test settings, one flag per OutlierSettings field: (field, type, help).
SETTINGS_FLAGS = (
    (
        "false_alarm_rate",
        float,
        "chance of any flag when seeds differ only by chance (default: %(default)s)",
    ),
    (
        "consecutive",
        int,
        "off checkpoints in a row that make a run an outlier (default: %(default)s)",
    ),
    ("min_runs", int, "fewest runs in a group for a comparison (default: %(default)s)"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    d = OutlierSettings()
    parser.add_argument(
        "file",
        metavar="SOURCE",
        help="CSV, TSV or JSONL (step, seed or run, value), or a sweep or run folder / s3:// "
        "URI in storage (a run is tested against the other seeds of its sweep)",
    )
    common.add_output_flag(parser)
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
        "--every",
        type=int,
        default=None,
        metavar="N",
        help="average each run's values over blocks of N steps (for per-step logs)",
    )
    common.add_settings_flags(parser, d, SETTINGS_FLAGS)
    common.add_storage_flags(parser)


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
    if args.every is not None and args.every < 1:
        raise UsageError(f"--every: must be >= 1, got {args.every}")
    if is_stored(args.file):
        applied = applied_settings(args.file, **common.storage_options(args, args.file))
        base = applied.outliers if applied else None
        settings = common.settings_from_args(OutlierSettings, args, SETTINGS_FLAGS, base)
        return _show(_stored_verdicts(args, settings), args.output)
    settings = common.settings_from_args(OutlierSettings, args, SETTINGS_FLAGS)
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
    points = _checkpoint_resolution(points, args.file, args.every)
    direction = args.direction or (
        "high" if any(k in value_col.lower() for k in _HIGH_IS_BAD) else "low"
    )
    return _show(find_outliers(points, value_col, settings, direction), args.output)


def _stored_verdicts(args: argparse.Namespace, settings: OutlierSettings) -> list[OutlierVerdict]:
    """The driver's and operator's rule on runs in storage (the run core's, as the report
    applies it): a sweep's runs compared per size, init and branch parent; a run folder's
    run compared with the other runs of its sweep."""
    for flag in ("value_column", "run_column", "group_column", "direction", "every"):
        if getattr(args, flag) is not None:
            raise UsageError(
                f"--{flag.replace('_', '-')}: applies to a file of values, not to runs in "
                f"storage ({args.file})"
            )
    kwargs = common.storage_options(args, args.file)
    runs, kind = stored_runs(args.file, evals=True, **kwargs)
    only = None
    if kind == "run":
        only = runs[0].name
        runs, _ = stored_runs(args.file.rstrip("/").rsplit("/", 1)[0], evals=True, **kwargs)
    histories = [stored_history(r.name, r.config, r.telemetry, r.evals) for r in runs]
    result = cross_seed_outliers(histories, settings)
    verdicts = [v for found in result.verdicts.values() for v in found]
    if not result.latest_z or (only is not None and only not in result.latest_z):
        sizes = Counter(h.group for h in histories if only is None or h.run == only)
        counts = ", ".join(f"{n} run(s) of {g}" for g, n in sorted(sizes.items()))
        raise UsageError(
            f"{args.file}: not tested: {counts} with checkpoint values; the cross-seed test "
            f"needs at least {settings.min_runs} seeds of a size at the same checkpoints"
        )
    return sorted(
        (v for v in verdicts if only is None or v.run == only),
        key=lambda v: (v.group, v.run, v.first_step, v.signal),
    )


def _show(verdicts: list[OutlierVerdict], output: str) -> int:
    header = ["GROUP", "RUN", "SIGNAL", "TEST", "FIRST_STEP", "SCORE", "THRESHOLD", "CHECKPOINTS"]
    rows = [
        [
            v.group,
            v.run,
            v.signal,
            v.test,
            str(v.first_step),
            f"{v.score:.1f}",
            f"{v.threshold:.1f}" if math.isfinite(v.threshold) else "-",
            str(v.checkpoints),
        ]
        for v in verdicts
    ]
    data = [camel_keys(v.to_dict()) for v in verdicts]
    return common.show(output, data, header, rows, empty="no outlier runs")


def _checkpoint_resolution(points: list[Point], path: str, every: int | None) -> list[Point]:
    """Block means over ``every`` steps (a NaN in a block stays NaN, so it is flagged);
    without ``every``, refuse a per-step log rather than test its noise."""
    if every is None:
        per_run: dict[tuple[str, str], set[int]] = defaultdict(set)
        for p in points:
            per_run[(p.group, p.run)].add(p.step)
        most = max(len(s) for s in per_run.values())
        if most > MAX_STEPS_PER_RUN:
            span = max(p.step for p in points) - min(p.step for p in points)
            suggest = max(1, span // 100)
            raise UsageError(
                f"{path}: {most} distinct steps in one run; the cross-seed test expects "
                f"checkpoint-resolution values (Pythia has 154 per run), at most "
                f"{MAX_STEPS_PER_RUN}: pass --every N to average blocks of N steps "
                f"(e.g. --every {suggest})"
            )
        return points
    blocks: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for p in points:
        blocks[(p.group, p.run, -(-p.step // every) * every)].append(p.value)
    return [
        Point(g, r, step, math.fsum(vs) / len(vs)) for (g, r, step), vs in sorted(blocks.items())
    ]
