"""`polypythia run SWEEP.yaml`: train a whole sweep on this machine or a Ray cluster."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from polypythia.errors import UsageError
from polypythia.local.driver import FAILED, DriverOptions, LocalDriver, check_resources
from polypythia.local.progress import make_progress
from polypythia.local.summary import print_summary
from polypythia.spec import load_sweep_file


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="PolyPythiaSweep YAML file")
    parser.add_argument(
        "--workdir",
        default=os.environ.get("POLYPYTHIA_WORKDIR", "polypythia-work"),
        help="where logs, configs, the data cache and the report go (default: %(default)s)",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="object store for checkpoints and telemetry: a directory or s3://bucket/prefix "
        "(default: WORKDIR/store, or spec.storage when it names a bucket and --ray-address is set)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="an existing Ray cluster (ray://host:10001 or host:6379); default: a local one",
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=None, help="override spec.maxConcurrentRuns"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9400,
        help="Prometheus endpoint on 127.0.0.1 while it runs (0: any free port; -1: off; "
        "default: %(default)s)",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip evaluation of checkpoints")
    parser.add_argument(
        "--no-ray",
        action="store_true",
        help="train each run in its own process without Ray (one worker per run; quick on a laptop)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")


def _base_uri(args: argparse.Namespace, sweep, workdir: Path) -> str:
    if args.storage:
        return args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    storage = sweep.spec["storage"]
    if args.ray_address and storage.get("bucket"):
        prefix = storage.get("prefix", "").strip("/")
        return f"s3://{storage['bucket']}" + (f"/{prefix}" if prefix else "")
    return str((workdir / "store").resolve())


@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Point this process's stdout and stderr (the file descriptors) at ``log_path``.

    Ray's daemons and workers inherit the descriptors of the process that starts them,
    and print their own shutdown noise (a SIGTERM trace per finished run) there; the
    terminal should show the sweep's progress only.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _start_ray(
    args: argparse.Namespace, runs, max_concurrent: int, log_path: Path
) -> tuple[str, callable]:
    """Join the given cluster, or start a local one sized so no run can deadlock."""
    import ray

    if args.ray_address:
        with _output_to(log_path):
            ray.init(address=args.ray_address, log_to_driver=False)
        address = args.ray_address
    else:
        need = max(
            r.plan.config["training"]["workers"] * r.plan.config["training"]["cpusPerWorker"]
            for r in runs
        )
        cpus = max(os.cpu_count() or 1, need * max_concurrent + max_concurrent)
        # One machine is never preempted: Ray Train's PreemptionWatcher (an actor
        # process per run) would only compete with training for the same cores.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        with _output_to(log_path):
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        address = ray.get_runtime_context().gcs_address
    resources = ray.cluster_resources()
    check_resources(runs, resources.get("CPU", 0), resources.get("GPU", 0))
    return address, ray.shutdown


def _check_no_ray(args: argparse.Namespace, runs) -> None:
    """``--no-ray`` trains in the run's own process: one worker, no cluster to join."""
    if args.ray_address:
        raise UsageError("--no-ray: cannot be combined with --ray-address")
    for run in runs:
        workers = run.plan.config["training"]["workers"]
        if workers != 1:
            raise UsageError(
                f"--no-ray: run {run.plan.name} has {workers} workers (spec.resources); "
                "without Ray each run takes exactly 1"
            )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sweep = load_sweep_file(args.sweep)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent: must be >= 1, got {args.max_concurrent}")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base_uri = _base_uri(args, sweep, workdir)
    exporter = None
    if args.metrics_port >= 0:
        from polypythia.local.metrics import LocalExporter

        exporter = LocalExporter(sweep, port=args.metrics_port)
    progress = make_progress(sys.stdout.isatty())
    driver = LocalDriver(
        sweep,
        base_uri,
        DriverOptions(
            workdir=workdir,
            ray_address=None,
            max_concurrent=args.max_concurrent,
            evaluate=not args.no_eval,
            no_ray=args.no_ray,
        ),
        on_update=progress.update,
        exporter=exporter,
    )
    driver.prepare()
    done_before = sum(1 for r in driver.runs if r.finished)
    print(
        f"sweep {sweep.name}: {len(driver.runs)} runs ({done_before} already finished), "
        f"at most {driver.max_concurrent} at once; storage {base_uri}"
    )
    if exporter is not None:
        print(f"metrics: http://127.0.0.1:{exporter.port}/metrics")
    shutdown = None
    started = time.time()
    try:
        if args.no_ray:
            _check_no_ray(args, driver.runs)
        elif any(not r.finished for r in driver.runs):
            driver.ray_address, shutdown = _start_ray(
                args, driver.runs, driver.max_concurrent, workdir / "logs" / "ray.log"
            )
        progress.start()
        driver.run()
    except KeyboardInterrupt:
        progress.stop()
        print(
            "\nstopped: every run keeps its last complete checkpoint; "
            "run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    finally:
        progress.stop()
        if shutdown:
            shutdown()
        if exporter is not None:
            exporter.close()
    report = None
    if not args.no_report:
        from polypythia_eval.report import render_report

        report = render_report(f"{base_uri.rstrip('/')}/{sweep.name}", workdir / "report")
    print_summary(driver, report=report, wall_s=time.time() - started)
    return 1 if any(r.phase == FAILED for r in driver.runs) else 0
