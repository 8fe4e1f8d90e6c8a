"""`polypythia run SWEEP.yaml`: train a whole sweep on this machine or a Ray cluster."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from polypythia.errors import RuntimeFault, UsageError
from polypythia.local.display import make_display
from polypythia.local.driver import DriverOptions, LocalDriver, check_resources
from polypythia.local.summary import print_summary
from polypythia.planner import evaluation_tasks
from polypythia.runcore.phase import RunPhase
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
        type=_port,
        default=None,
        help=f"Prometheus endpoint on 127.0.0.1 while it runs (default {DEFAULT_METRICS_PORT}, "
        "or a free port when that one is busy; 0: any free port; -1: off)",
    )
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume runs whose stored run.json differs in what determines the result; "
        "each change (old, new, step) is recorded in the run's history.json",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip evaluation of checkpoints")
    parser.add_argument(
        "--no-ray",
        action="store_true",
        help="train each run in its own process without Ray (one worker per run; quick on a laptop)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")


DEFAULT_METRICS_PORT = 9400
LOCK_FILE = "driver.lock"


def _port(text: str) -> int:
    """A TCP port 0-65535, or -1 for off."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not -1 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a TCP port 0-65535 (0: any free port, -1: off), got {port}"
        )
    return port


def _workdir(text: str) -> Path:
    """The work folder, created if needed; a file or an unwritable place is a usage error."""
    workdir = Path(text).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {text}: is a file, expected a folder (or a new path)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--workdir {text}: cannot create it ({exc.strerror})") from None
    if not os.access(workdir, os.W_OK):
        raise UsageError(f"--workdir {text}: not writable")
    return workdir


@contextlib.contextmanager
def _one_driver(workdir: Path) -> Iterator[None]:
    """An exclusive lock on WORKDIR/driver.lock: a second driver on the same workdir is
    refused naming the first (the kernel drops the lock when its holder dies, so it
    never goes stale). Trainers hold their own lease per run in storage."""
    path = workdir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "{}"
            try:
                who = json.loads(holder)
            except ValueError:
                who = {}
            raise RuntimeFault(
                f"--workdir {workdir}: another polypythia run is driving it (pid "
                f"{who.get('pid', '?')} on {who.get('host', '?')}, since "
                f"{who.get('started', '?')}); wait for it, stop it (Ctrl-C or kill PID), "
                "or use another --workdir"
            ) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.ctime()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, systemd, Kubernetes) stops the sweep like Ctrl-C: children are
    stopped cleanly and the exit code is 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exporter(sweep, port: int | None):
    """The metrics endpoint; a busy default port falls back to a free one and says so."""
    from polypythia.local.metrics import LocalExporter

    wanted = DEFAULT_METRICS_PORT if port is None else port
    try:
        return LocalExporter(sweep, port=wanted)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        if port is not None:
            raise UsageError(
                f"--metrics-port {port}: address already in use; pick another port, "
                "0 for any free one, or -1 for none"
            ) from None
    exporter = LocalExporter(sweep, port=0)
    print(f"metrics: port {wanted} is busy (another sweep?); using {exporter.port} instead")
    return exporter


def _check_inputs(sweep, evaluate: bool, base_uri: str) -> None:
    """What would fail hours in, checked before any training: the storage bucket,
    evaluation task names, the dataset and tokenizer paths (local or s3://)."""
    if base_uri.startswith("s3://"):
        from polypythia.storage import StorageError, open_store
        from polypythia.storage.uri import connection

        try:
            store, _ = open_store(base_uri, **connection(sweep.spec["storage"]))
            found = store.bucket_exists()
        except StorageError as exc:
            raise UsageError(f"--storage {base_uri}: cannot be reached ({exc})") from None
        if not found:
            raise UsageError(f"--storage {base_uri}: bucket {store.bucket!r} does not exist")
    tasks = sorted({t for size in sweep.spec["sizes"] for t in evaluation_tasks(sweep.spec, size)})
    if evaluate and tasks and sweep.spec["evaluation"]["schedule"] != "none":
        from polypythia_eval.offline_tasks import expand_tasks, is_offline

        try:
            names = expand_tasks(tasks)
        except UsageError as exc:
            raise UsageError(f"spec.evaluation.tasks: {exc}".replace("--tasks: ", "")) from None
        others = [t for t in names if not is_offline(t)]
        if others:
            from lm_eval.tasks import TaskManager

            known = set(TaskManager().all_tasks)
            unknown = [t for t in others if t not in known]
            if unknown:
                raise UsageError(
                    f"spec.evaluation.tasks: unknown lm-evaluation-harness task(s) "
                    f"{', '.join(unknown)} (see `lm-eval ls tasks`; pp_* are the project's own)"
                )
    data = sweep.spec["data"]
    wanted = []
    if data.get("path"):
        wanted += [("spec.data.path", data["path"] + suffix) for suffix in (".bin", ".idx")]
    if data.get("tokenizer"):
        wanted.append(("spec.data.tokenizer", data["tokenizer"]))
    for field, where in wanted:
        if where.startswith("s3://"):
            from polypythia.storage import StorageError, open_store
            from polypythia.storage.uri import connection

            try:
                store, key = open_store(where, **connection(sweep.spec["storage"]))
                found = store.exists(key) or bool(store.list(key.rstrip("/") + "/"))
            except StorageError as exc:
                raise UsageError(f"{field}: {where}: cannot be read ({exc})") from None
        else:
            found = Path(where).expanduser().exists()
        if not found:
            raise UsageError(f"{field}: {where}: no such file or object")
    from polypythia import branch

    problems = branch.check_sweep(sweep, base_uri=base_uri)
    if problems:
        raise UsageError("\n".join(problems))


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
    workdir = _workdir(args.workdir)
    with _one_driver(workdir), _sigterm_as_interrupt():
        return _drive(args, sweep, workdir)


def _drive(args: argparse.Namespace, sweep, workdir: Path) -> int:
    base_uri = _base_uri(args, sweep, workdir)
    exporter = None
    if args.metrics_port is None or args.metrics_port >= 0:
        exporter = _exporter(sweep, args.metrics_port)
    progress = make_display(sys.stdout.isatty())
    driver = LocalDriver(
        sweep,
        base_uri,
        DriverOptions(
            workdir=workdir,
            ray_address=None,
            max_concurrent=args.max_concurrent,
            evaluate=not args.no_eval,
            no_ray=args.no_ray,
            allow_changes=args.allow_changes,
        ),
        on_update=progress.update,
        exporter=exporter,
    )
    _check_inputs(sweep, not args.no_eval, base_uri)
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

        report = render_report(
            f"{base_uri.rstrip('/')}/{sweep.name}",
            workdir / "report",
            settings=driver.settings,
        )
    print_summary(driver, report=report, wall_s=time.time() - started)
    return 1 if any(r.phase == RunPhase.FAILED for r in driver.runs) else 0
