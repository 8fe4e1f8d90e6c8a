"""Run one training run: on Ray Train (`run_training`) or in this process (`run_local`).

Storage is the source of truth: `run.json` is written at start, each start resumes from
the last complete checkpoint, and Ray's own checkpoint storage is not used (its
`storage_path` is a throw-away folder). A stop (Ctrl-C, SIGTERM, or the caller's
``stop_event``) reaches rank 0 through a small control actor; all ranks stop after the
same step, flush telemetry and return.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import torch

from polypythia.errors import UsageError
from polypythia_trainer.config import RunConfig
from polypythia_trainer.loop import open_run_store, run_worker

POLL_S = 0.5  # how often rank 0 asks whether to stop, and pushes progress


def claim_run(cfg: RunConfig, config: dict, *, allow_changes: bool = False):
    """Take the run's lease, refuse config drift, then write run.json; return the lease.

    Drift: a run that already trained (checkpoints or telemetry in storage) resumes only
    with the same result-determining config, or with ``allow_changes``, which records
    each change (old, new, the step it applies from) in ``history.json`` first, so
    run.json never claims a config that did not run. A change of the model's tensor
    shapes is refused either way: no checkpoint of the old model loads into the new one.
    """
    from polypythia.storage import (
        RunLease,
        StorageNotFound,
        config_changes,
        describe_changes,
        describe_shape_changes,
        shape_changes,
    )

    run = open_run_store(cfg)
    lease = RunLease(run, owner=f"polypythia train {cfg.run}")
    lease.acquire()
    try:
        try:
            stored = run.read_run_config()
        except StorageNotFound:
            stored = None
        if cfg.branch is not None:
            config["branch"] = resolve_branch(
                cfg, config, stored if isinstance(stored, dict) else None
            )
        changes = config_changes(stored, config) if isinstance(stored, dict) else []
        trained = run.complete_checkpoints() or run.telemetry_files()
        if changes and trained:
            reshaped = shape_changes(stored, config, changes)
            if reshaped:
                raise UsageError(describe_shape_changes(run.uri, reshaped))
            if not allow_changes:
                raise UsageError(describe_changes(run.uri, changes))
            # The step the trainer will resume from, found as it finds it: the newest
            # sound checkpoint within the new length (a damaged one is quarantined now).
            local = run.store.local_dir(run.key()) is not None
            step = run.sound_checkpoint(cfg.training.steps, checksums=local) or 0
            now = time.time()
            run.record_changes([{**c, "step": step, "at": now} for c in changes])
            print(f"config changes accepted from step {step}: {len(changes)} field(s)", flush=True)
        run.write_run_config(config)
    except BaseException:
        lease.release()
        raise
    lease.start_heartbeat()
    return lease


def resolve_branch(cfg: RunConfig, config: dict, stored: dict | None) -> dict:
    """The branch block run.json records: the parent read (read only) and judged
    against this run (``config``, the run.json being written), its checksum, restored
    or fresh optimiser."""
    from polypythia import branch

    assert cfg.branch is not None
    parent = branch.open_parent(cfg.branch.parent, cfg.branch.step, cfg.storage.connection())
    return branch.resolve(config, parent, stored)


@contextlib.contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``event`` (a second SIGINT interrupts at once); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame) -> None:
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_local(
    config: dict,
    *,
    stop_event: threading.Event | None = None,
    on_progress: Callable[[dict], None] | None = None,
    allow_changes: bool = False,
) -> dict:
    """Train a one-worker run in this process (no Ray start-up); same storage and resume."""
    cfg = RunConfig.from_dict(config)  # every field checked before any process starts
    if cfg.training.workers != 1:
        raise UsageError(
            f"training.workers: running without Ray takes exactly 1 worker, got "
            f"{cfg.training.workers}; drop --no-ray to use Ray Train"
        )
    device = torch.device("cpu")
    if cfg.training.gpus_per_worker > 0:
        if not torch.cuda.is_available():
            raise UsageError("training.gpusPerWorker: > 0 but this machine has no CUDA device")
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    event = stop_event or threading.Event()
    with stop_on_signals(event):
        lease = claim_run(cfg, config, allow_changes=allow_changes)
        try:
            return run_worker(
                config,
                device=device,
                should_stop=event.is_set,
                on_record=on_progress,
                lease_token=lease.token,
            )
        finally:
            lease.release()
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def _control_class():
    import ray

    @ray.remote(num_cpus=0)
    class RunControl:
        """Driver <-> rank 0: stop requests one way, progress and the summary the other."""

        def __init__(self) -> None:
            self.stop = False
            self.latest: dict | None = None
            self.first: dict | None = None
            self.summary: dict | None = None

        def request_stop(self) -> None:
            self.stop = True

        def should_stop(self) -> bool:
            return self.stop

        def report(self, record: dict) -> None:
            self.first = self.first or record
            self.latest = record

        def finish(self, summary: dict) -> None:
            self.summary = summary

        def state(self) -> dict:
            return {
                "stop": self.stop,
                "latest": self.latest,
                "first": self.first,
                "summary": self.summary,
            }

    return RunControl


class _Throttled:
    """Rank 0's view of the control actor, asking at most every POLL_S seconds."""

    def __init__(self, control) -> None:
        self.control = control
        self.stop = False
        self._asked = self._told = 0.0

    def should_stop(self) -> bool:
        import ray

        now = time.monotonic()
        if not self.stop and now - self._asked >= POLL_S:
            self._asked = now
            self.stop = bool(ray.get(self.control.should_stop.remote()))
        return self.stop

    def report(self, record: dict) -> None:
        now = time.monotonic()
        if now - self._told >= POLL_S:
            self._told = now
            self.control.report.remote(record)


def _ray_worker(loop_config: dict) -> None:
    """train_loop_per_worker: Ray Train has set up the process group already."""
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    control = loop_config["control"]
    device = torch.device("cpu")
    if loop_config["use_gpu"]:
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    throttled = _Throttled(control)
    summary = run_worker(
        loop_config["config"],
        rank=rank,
        world_size=world,
        device=device,
        should_stop=throttled.should_stop if rank == 0 else (lambda: False),
        on_record=throttled.report if rank == 0 else None,
        lease_token=loop_config["lease_token"],
    )
    if rank == 0:
        ray.get(control.finish.remote(summary))


def run_training(
    config: dict,
    *,
    ray_address: str | None = None,
    stop_event: threading.Event | None = None,
    on_progress: Callable[[dict], None] | None = None,
    allow_changes: bool = False,
) -> dict:
    """Train one run on Ray Train; return its summary.

    ``ray_address``: None starts a local Ray (unless this process already joined one),
    ``"auto"`` or ``"ray://..."``/``"HOST:PORT"`` joins a cluster. ``stop_event`` (set it
    from any thread) or, in the main thread, SIGINT/SIGTERM stops the run cleanly after
    the current step; its telemetry is flushed and the next start resumes from the last
    complete checkpoint. ``on_progress`` receives the latest step record about every
    half second (rank 0's, from the driver's thread). Summary keys: run, status
    (completed | stopped | failed), step, steps, loss, attempt, resumed_from, error
    (failed only), startup_s (seconds from call to the first step record, when seen).
    """
    import ray
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t0 = time.time()
    cfg = RunConfig.from_dict(config)  # every field checked before any process starts
    lease = claim_run(cfg, config, allow_changes=allow_changes)
    training = cfg.training
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=True)
        started_ray = True
    use_gpu = training.gpus_per_worker > 0
    resources = {"CPU": float(training.cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = float(training.gpus_per_worker)
    control = _control_class().remote()
    event = stop_event or threading.Event()
    outcome: dict = {}

    def fit() -> None:
        try:
            with tempfile.TemporaryDirectory(prefix="polypythia-ray-") as scratch:
                TorchTrainer(
                    _ray_worker,
                    train_loop_config={
                        "config": config,
                        "control": control,
                        "use_gpu": use_gpu,
                        "lease_token": lease.token,
                    },
                    torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                    scaling_config=ScalingConfig(
                        num_workers=training.workers,
                        use_gpu=use_gpu,
                        resources_per_worker=resources,
                    ),
                    run_config=RayRunConfig(
                        name=cfg.run,
                        storage_path=scratch,
                        failure_config=FailureConfig(max_failures=0),
                    ),
                ).fit()
        except Exception as exc:  # reported in the summary: one failing run must not stop others
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    state: dict = {}
    try:
        with stop_on_signals(event):
            thread = threading.Thread(target=fit, name=f"fit-{cfg.run}", daemon=True)
            thread.start()
            asked_stop = False
            while thread.is_alive():
                thread.join(POLL_S)
                if event.is_set() and not asked_stop:
                    control.request_stop.remote()
                    asked_stop = True
                state = ray.get(control.state.remote())
                if state["latest"] is not None and on_progress is not None:
                    on_progress(state["latest"])
        state = ray.get(control.state.remote())
        summary = state["summary"]
    finally:
        ray.kill(control)
        if started_ray:
            ray.shutdown()
        lease.release()
    if summary is None or "error" in outcome:
        summary = {
            "run": cfg.run,
            "status": "failed",
            "step": None,
            "steps": training.steps,
            "loss": None,
            "error": outcome.get("error", "the workers ended without a summary"),
        }
    first = state.get("first")
    summary["startup_s"] = first["time"] - first["step_time_s"] - t0 if first else None
    return summary
