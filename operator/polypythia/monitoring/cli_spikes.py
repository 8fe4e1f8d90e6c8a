"""`polypythia spikes SOURCE...`: loss spikes in any training log (CSV, TSV, JSONL) or in
runs in storage (a run or sweep folder, local or s3://)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from polypythia.errors import UsageError
from polypythia.monitoring.common_mode import label_common_mode
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent, SpikeSettings
from polypythia.monitoring.stored import is_stored, storage_kwargs, stored_runs
from polypythia.monitoring.tables import format_table, integer, number, read_rows, text
from polypythia.output import FORMATS, camel_keys, emit


def configure(parser: argparse.ArgumentParser) -> None:
    d = SpikeSettings()
    parser.add_argument(
        "files",
        nargs="+",
        metavar="SOURCE",
        help="CSV, TSV or JSONL file (telemetry chunks of one run folder are one run), or a "
        "run or sweep folder / s3:// URI in storage",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default="table",
        help="table, or json/yaml with camelCase keys (default: %(default)s)",
    )
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
    parser.add_argument("--endpoint", default=None, help="S3 endpoint (host:port or URL)")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the endpoint")
    parser.add_argument("--region", default="us-east-1", help="S3 region (default: %(default)s)")
    parser.add_argument(
        "--signals",
        default=",".join(d.signals),
        help="signals to watch, comma-separated: loss, grad_norm (default: %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=d.window,
        help="steps in the rolling baseline (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help="a spike starts this many robust sd above the baseline (default: %(default)s)",
    )
    parser.add_argument(
        "--min-history",
        type=int,
        default=d.min_history,
        help="steps of baseline needed before any spike is called (default: %(default)s)",
    )
    parser.add_argument(
        "--score-window",
        type=int,
        default=d.score_window,
        help="steps in the OLMo 2 spike score (default: %(default)s)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=d.score_threshold,
        help="sd from the rolling mean that counts towards the spike score (default: %(default)s)",
    )
    parser.add_argument(
        "--recovery-steps",
        type=int,
        default=d.recovery_steps,
        help="a spike still above baseline this many steps after onset is unrecovered "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--common-mode-fraction",
        type=float,
        default=d.common_mode_fraction,
        help="share of the runs of one data order spiking together that makes a spike "
        "data-driven (default: %(default)s)",
    )
    parser.add_argument(
        "--common-mode-tolerance",
        type=int,
        default=d.common_mode_tolerance,
        help="steps apart that still count as the same spike across runs (default: %(default)s)",
    )


def _settings(args: argparse.Namespace) -> SpikeSettings:
    signals = tuple(s.strip() for s in args.signals.split(",") if s.strip())
    try:
        return SpikeSettings(
            signals=signals,
            window=args.window,
            threshold=args.threshold,
            min_history=args.min_history,
            score_window=args.score_window,
            score_threshold=args.score_threshold,
            recovery_steps=args.recovery_steps,
            common_mode_fraction=args.common_mode_fraction,
            common_mode_tolerance=args.common_mode_tolerance,
        )
    except ValueError as exc:
        raise UsageError(f"--{str(exc).split(':')[0].replace('_', '-')}: {exc}") from None


def load_runs(args: argparse.Namespace) -> tuple[dict[str, dict[int, tuple]], dict[str, str]]:
    """run -> step -> (loss, grad_norm); and run -> data order. Within a run the row with
    the highest ``attempt`` (else the last one) wins for each step."""
    runs: dict[str, dict[int, tuple]] = defaultdict(dict)
    attempts: dict[tuple[str, int], float] = {}
    orders: dict[str, str] = {}
    for path in args.files:
        if is_stored(path):
            kwargs = storage_kwargs(path, args.endpoint, args.insecure, args.region)
            for stored in stored_runs(path, **kwargs)[0]:
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
    if args.output != "table":
        emit([camel_keys(e.to_dict()) for e in events], args.output)
        return 0
    if not events:
        print("no spikes found")
        return 0
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
    print(format_table(header, rows))
    return 0
