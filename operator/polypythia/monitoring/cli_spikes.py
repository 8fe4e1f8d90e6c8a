"""`polypythia spikes SOURCE...`: loss spikes in any training log (CSV, TSV, JSONL) or in
runs in storage (a run or sweep folder, local or s3://)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from polypythia.commands import common
from polypythia.errors import UsageError
from polypythia.monitoring.common_mode import label_common_mode
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent, SpikeSettings
from polypythia.monitoring.stored import applied_settings, is_stored, stored_runs
from polypythia.monitoring.tables import integer, number, read_rows, text
from polypythia.output import camel_keys

# Detector settings, one flag per SpikeSettings field: (field, type, help).
SETTINGS_FLAGS = (
    ("window", int, "steps in the rolling baseline (default: %(default)s)"),
    (
        "threshold",
        float,
        "a spike starts this many robust sd above the baseline (default: %(default)s)",
    ),
    (
        "min_history",
        int,
        "steps of baseline needed before any spike is called (default: %(default)s)",
    ),
    ("score_window", int, "steps in the OLMo 2 spike score (default: %(default)s)"),
    (
        "score_threshold",
        float,
        "sd from the rolling mean that counts towards the spike score (default: %(default)s)",
    ),
    (
        "recovery_steps",
        int,
        "a spike still above baseline this many steps after onset is unrecovered "
        "(default: %(default)s)",
    ),
    (
        "common_mode_fraction",
        float,
        "share of the runs of one data order spiking together that makes a spike "
        "data-driven (default: %(default)s)",
    ),
    (
        "common_mode_tolerance",
        int,
        "steps apart that still count as the same spike across runs (default: %(default)s)",
    ),
)


def configure(parser: argparse.ArgumentParser) -> None:
    d = SpikeSettings()
    parser.add_argument(
        "files",
        nargs="+",
        metavar="SOURCE",
        help="CSV, TSV or JSONL file (telemetry chunks of one run folder are one run), or a "
        "run or sweep folder / s3:// URI in storage",
    )
    common.add_output_flag(parser)
    parser.add_argument(
        "--run-column",
        default="run",
        help="column naming the run (default: %(default)s; "
        "without it each file is one run named after the file)",
    )
    parser.add_argument(
        "--step-column", default="step", help="column of the training step (default: %(default)s)"
    )
    parser.add_argument(
        "--loss-column", default="loss", help="column of the loss (default: %(default)s)"
    )
    parser.add_argument(
        "--grad-norm-column",
        default="grad_norm",
        help="column of the gradient norm, used when present (default: %(default)s)",
    )
    parser.add_argument(
        "--data-order-column",
        default=None,
        help="column giving each run's data order: a common-mode spike's cause is then "
        "data (one shared order) or schedule-or-system (different orders); runs read from "
        "storage take it from run.json",
    )
    common.add_storage_flags(parser)
    parser.add_argument(
        "--signals",
        default=None,
        help="signals to watch, comma-separated: loss, grad_norm (default: "
        f"{','.join(d.signals)}, or {common.STORED_DEFAULT})",
    )
    common.add_settings_flags(parser, d, SETTINGS_FLAGS)


def _settings(args: argparse.Namespace) -> SpikeSettings:
    """The flags given, over the first stored sweep's own settings (else the defaults)."""
    base = None
    for path in args.files:
        applied = is_stored(path) and applied_settings(path, **common.storage_options(args, path))
        if applied:
            base = applied.spikes
            break
    extra = {}
    if args.signals is not None:
        extra["signals"] = tuple(s.strip() for s in args.signals.split(",") if s.strip())
    return common.settings_from_args(SpikeSettings, args, SETTINGS_FLAGS, base, **extra)


def load_runs(args: argparse.Namespace) -> tuple[dict[str, dict[int, tuple]], dict[str, str]]:
    """run -> step -> (loss, grad_norm); and run -> data order. Within a run the row with
    the highest ``attempt`` (else the last one) wins for each step."""
    runs: dict[str, dict[int, tuple]] = defaultdict(dict)
    attempts: dict[tuple[str, int], float] = {}
    orders: dict[str, str] = {}
    for path in args.files:
        if is_stored(path):
            for stored in stored_runs(path, **common.storage_options(args, path))[0]:
                if not stored.telemetry:
                    continue
                runs[stored.name] = {
                    r["step"]: (r["loss"], r.get("grad_norm")) for r in stored.telemetry
                }
                if stored.data_seed is not None:
                    orders[stored.name] = str(stored.data_seed)
            continue
        for row in read_rows(path):
            run = text(row, args.run_column) if args.run_column in row else _run_of_file(path)
            step = integer(row, args.step_column)
            loss = number(row, args.loss_column)
            grad = number(row, args.grad_norm_column, optional=True)
            if grad is not None and grad < 0:
                raise UsageError(f"{row.where}: column {args.grad_norm_column!r}: must be >= 0")
            attempt = number(row, "attempt", optional=True) or 0.0
            if attempts.get((run, step), -1.0) <= attempt:
                attempts[(run, step)] = attempt
                runs[run][step] = (loss, grad)
            if args.data_order_column:
                orders[run] = text(row, args.data_order_column)
    if not runs:
        raise UsageError(f"{', '.join(args.files)}: no records")
    return runs, orders


def _run_of_file(path: str) -> str:
    """A telemetry chunk (``RUN/telemetry/<first>-<last>.jsonl``) belongs to its run folder;
    any other file is one run named after the file."""
    p = Path(path)
    return p.parent.parent.name if p.parent.name == "telemetry" and p.parent.parent.name else p.stem


def detect(args: argparse.Namespace) -> list[SpikeEvent]:
    settings = _settings(args)
    runs, orders = load_runs(args)
    final: list[SpikeEvent] = []
    for run, by_step in sorted(runs.items()):
        steps = sorted(by_step)
        loss = [by_step[s][0] for s in steps]
        grads = [by_step[s][1] for s in steps]
        has_grad = all(g is not None for g in grads)
        detector, events = RunSpikeDetector.rebuild(
            run, steps, loss, grads if has_grad else None, settings
        )
        final += [e for e in events if e.status != "open"] + detector.open_spikes()
    known = {run: orders.get(run) for run in runs}
    last = {run: max(by_step) for run, by_step in runs.items()}
    final = label_common_mode(
        final, known, settings.common_mode_fraction, settings.common_mode_tolerance, last
    )
    return sorted(final, key=lambda e: (e.run, e.onset_step, e.signal))


def main(args: argparse.Namespace) -> int:
    events = detect(args)
    header = [
        "RUN", "SIGNAL", "ONSET", "PEAK_STEP", "PEAK", "MAGNITUDE", "RECOVERY", "KIND", "CAUSE"
    ]  # fmt: skip
    rows = [
        [
            e.run,
            e.signal,
            str(e.onset_step),
            str(e.peak_step),
            f"{e.peak_value:.4g}",
            f"{e.magnitude:.1f}",
            str(e.recovery_step)
            if e.recovery_step is not None
            else ("not recovered" if e.status == "unrecovered" else "open"),
            e.kind,
            e.cause,
        ]
        for e in events
    ]
    data = [camel_keys(e.to_dict()) for e in events]
    return common.show(args.output, data, header, rows, empty="no spikes found")
