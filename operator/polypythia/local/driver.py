"""The local driver: one sweep on one machine (or one Ray cluster), no Kubernetes.

It runs the same plan as the operator: runs in plan order up to maxConcurrentRuns,
each a `polypythia train` child process on a shared Ray cluster; it polls the
storage tree for telemetry and checkpoints (the single source of truth, so a
second `run` resumes where the first stopped), watches for spikes, evaluates
selected checkpoints in-process and renders the report at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from polypythia import planner
from polypythia.errors import UsageError
from polypythia.local.evaluation import evaluate_in_child, storage_flags
from polypythia.local.processes import RunProcess, write_config
from polypythia.monitoring.actions import decide_rewind
from polypythia.monitoring.cross_seed import (
    CrossSeedResult,
    RunHistory,
    cross_seed_outliers,
    seed_group,
)
from polypythia.monitoring.outliers import OutlierVerdict
from polypythia.monitoring.settings import settings_from_spec
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent
from polypythia.planner import RunPlan
from polypythia.spec import Sweep
from polypythia.storage import (
    RunStore,
    StorageError,
    StorageNotFound,
    config_changes,
    describe_changes,
)

log = logging.getLogger(__name__)

POLL_S = 1.0
RETRY_BASE_S = 5.0  # first retry after 5 s, then 10, 20, ... (capped)
RETRY_MAX_S = 120.0
MAX_PREEMPTIONS = 20  # restarts after a kill by signal that spend no retry
USAGE_EXIT = 2  # the trainer refused its input (config drift, a bad field): retrying cannot help
# SIGKILL / SIGTERM from outside (exit 130: the trainer stopped cleanly on one): preemption-like
KILLED = {-9, -15, 128 + 9, 128 + 15, 130}
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Stopped",
)


@dataclass
class RunState:
    """What the driver knows of one run, all re-derivable from storage."""

    plan: RunPlan
    store: RunStore
    phase: str = PENDING
    step: int = 0
    loss: float | None = None
    tokens_per_s: float | None = None
    checkpoints: list[int] = field(default_factory=list)
    evaluated: set[int] = field(default_factory=set)
    spikes: list[SpikeEvent] = field(default_factory=list)
    checkpoint_losses: dict[int, float] = field(default_factory=dict)
    evals: dict[int, dict] = field(default_factory=dict)
    outlier: OutlierVerdict | None = None
    error: str | None = None
    process: RunProcess | None = None
    detector: RunSpikeDetector | None = None
    eval_future: Future | None = None
    rewinds: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    retries: int = 0
    preemptions: int = 0
    not_before: float = 0.0

    @property
    def total_steps(self) -> int:
        return self.plan.config["training"]["steps"]

    @property
    def finished(self) -> bool:
        return self.total_steps in self.checkpoints


@dataclass
class DriverOptions:
    workdir: Path
    ray_address: str | None = None
    max_concurrent: int | None = None
    evaluate: bool = True
    no_ray: bool = False
    allow_changes: bool = False
    retry_base_s: float = RETRY_BASE_S


class LocalDriver:
    """Schedules, watches and evaluates the runs of one sweep."""

    def __init__(
        self,
        sweep: Sweep,
        base_uri: str,
        options: DriverOptions,
        *,
        on_update: Callable[[LocalDriver], None] | None = None,
        exporter=None,
    ) -> None:
        self.sweep = sweep
        self.base_uri = base_uri
        self.options = options
        self.on_update = on_update
        self.exporter = exporter
        self.settings = settings_from_spec(sweep.spec.get("instability"))
        self.runs = [
            RunState(plan=run, store=RunStore.open(run.config["runUri"], **_store_kwargs(run)))
            for run in planner.plan_sweep(sweep, base_uri=base_uri)
        ]
        self.max_concurrent = options.max_concurrent or sweep.spec["maxConcurrentRuns"]
        # Like the operator's eval Jobs: at most spec.evaluation.concurrency at once.
        self._evaluator = ThreadPoolExecutor(
            max_workers=sweep.spec["evaluation"].get("concurrency", 2),
            thread_name_prefix="evaluate",
        )
        self.ray_address: str | None = options.ray_address
        self.cross_seed = CrossSeedResult({}, {})
        self.started = time.time()

    # -- lifecycle -------------------------------------------------------------

    def prepare(self) -> None:
        """Pick up what storage already holds (a resumed sweep), refuse config drift, and
        trust a finished run only once its final checkpoint matches its manifest."""
        self._check_drift()
        for run in self.runs:
            self._sync(run, full=True)
            # Local stores: checksums in place; S3: sizes (its trainer checks sums on fetch).
            local = run.store.store.local_dir(run.store.key()) is not None
            if run.finished and not run.store.checked(run.total_steps, checksums=local):
                log.warning(
                    "%s: final checkpoint step%d was damaged (quarantined); training resumes "
                    "from the newest sound checkpoint",
                    run.plan.name,
                    run.total_steps,
                )
                run.checkpoints = run.store.complete_checkpoints()
            if run.finished:
                run.phase = SUCCEEDED

    def _check_drift(self) -> None:
        """Exit 2 before anything trains when a stored run ran another recipe
        (unless --allow-changes: each trainer then records the changes)."""
        problems = []
        for run in self.runs:
            try:
                stored = run.store.read_run_config()
            except StorageNotFound:
                continue
            changes = config_changes(stored, run.plan.config) if isinstance(stored, dict) else []
            if changes and (run.store.complete_checkpoints() or run.store.telemetry_files()):
                problems.append(describe_changes(run.store.uri, changes))
        if problems and not self.options.allow_changes:
            raise UsageError("\n".join(problems))

    def run(self) -> None:
        """Until every run has ended; KeyboardInterrupt stops children cleanly."""
        try:
            while True:
                self._reap()
                self._launch()
                for run in self.runs:
                    if run.phase == RUNNING or (run.phase == SUCCEEDED and not run.finished):
                        self._sync(run)
                    self._maybe_evaluate(run)
                self._export()
                if self.on_update:
                    self.on_update(self)
                if self._all_done():
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self._evaluator.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        """Stop every child (SIGTERM then grace); what they checkpointed is kept."""
        alive = [r for r in self.runs if r.process and r.process.poll() is None]
        for run in alive:
            run.process.terminate()
        for run in alive:
            run.process.stop()
            self._sync(run)
            run.phase = SUCCEEDED if run.finished else STOPPED

    # -- scheduling ------------------------------------------------------------

    def _launch(self) -> None:
        if self.sweep.spec.get("suspend"):
            return
        active = sum(1 for r in self.runs if r.phase == RUNNING)
        for run in sorted(self.runs, key=lambda r: r.plan.order):
            if active >= self.max_concurrent:
                return
            if run.phase != PENDING or not self._reference_ready(run):
                continue
            if time.time() < run.not_before:
                continue
            self._start_process(run)
            run.phase = RUNNING
            active += 1
            log.info("started %s", run.plan.name)

    def _start_process(self, run: RunState) -> None:
        """Start (or, after a rewind, restart) the run's trainer; it resumes from storage."""
        config_path = write_config(
            self.options.workdir / "configs" / f"{run.plan.name}.json", run.plan.config
        )
        env = {"POLYPYTHIA_CACHE": str(self.options.workdir / "cache")}
        if self.options.no_ray:
            # Ray gives each worker OMP_NUM_THREADS = its CPUs; without Ray every torch
            # process would take all cores and concurrent runs would oversubscribe them.
            env["OMP_NUM_THREADS"] = str(run.plan.config["training"]["cpusPerWorker"])
        run.process = RunProcess(
            name=run.plan.name,
            config_path=config_path,
            log_path=self.options.workdir / "logs" / f"{run.plan.name}.log",
            ray_address=self.ray_address,
            env=env,
            no_ray=self.options.no_ray,
            allow_changes=self.options.allow_changes,
        )
        run.process.start()

    def _reference_ready(self, run: RunState) -> bool:
        """A run initialised from another run's weights waits for that checkpoint."""
        if run.plan.requires is None:
            return True
        reference = run.plan.config["init"]["reference"]
        required = next(r for r in self.runs if r.plan.name == run.plan.requires)
        if reference["step"] in required.checkpoints:
            return True
        if required.phase in (FAILED, STOPPED) or (
            required.phase == SUCCEEDED and required.finished
        ):
            run.phase = FAILED
            run.error = (
                f"reference run {required.plan.name} ended ({required.phase}) without "
                f"checkpoint step{reference['step']}"
            )
        return False

    def _reap(self) -> None:
        for run in self.runs:
            if run.phase != RUNNING or run.process is None:
                continue
            code = run.process.poll()
            if code is None:
                continue
            self._sync(run)
            if code == 0 and run.finished:
                run.phase = SUCCEEDED
            elif self._retry(run, code):
                run.phase = PENDING
            else:
                run.phase = FAILED
                run.error = f"exit code {code}: {run.process.error_summary()}"

    def _retry(self, run: RunState, code: int) -> bool:
        """Whether to start a failed run again (spec.maxRetries, like the operator): after
        a backoff, resuming from its newest sound checkpoint. A kill by signal from
        outside (preemption, the OOM killer) spends no retry; a refused input never retries."""
        if code == USAGE_EXIT:
            return False
        preempted = code in KILLED and run.preemptions < MAX_PREEMPTIONS
        if not preempted and run.retries >= self.sweep.spec["maxRetries"]:
            return False
        if preempted:
            run.preemptions += 1
            spent = "no retry spent"
        else:
            run.retries += 1
            spent = f"retry {run.retries}/{self.sweep.spec['maxRetries']}"
        tries = run.retries + run.preemptions
        delay = min(self.options.retry_base_s * 2 ** (tries - 1), RETRY_MAX_S)
        run.not_before = time.time() + delay
        log.warning(
            "%s: trainer exited with %s (%s); restarting in %.0f s from its last sound "
            "checkpoint (%s)",
            run.plan.name,
            code,
            run.process.error_summary(),
            delay,
            spent,
        )
        return True

    def _all_done(self) -> bool:
        ended = all(r.phase in (SUCCEEDED, FAILED, STOPPED) for r in self.runs)
        evaluating = any(r.eval_future and not r.eval_future.done() for r in self.runs)
        pending_evals = self.options.evaluate and any(self.to_evaluate(r) for r in self.runs)
        return ended and not evaluating and not pending_evals

    # -- observing -------------------------------------------------------------

    def _sync(self, run: RunState, full: bool = False) -> None:
        """Read new telemetry and checkpoints; feed the spike detector."""
        try:
            records = (
                run.store.read_telemetry() if full else run.store.read_telemetry_since(run.step)
            )
            run.checkpoints = run.store.complete_checkpoints()
            run.evaluated = set(run.store.evaluated_steps())
            if full:
                recorded = run.store.read_rewinds()
                run.rewinds, run.refused = recorded["rewinds"], recorded["refused"]
        except StorageError as exc:
            log.warning("storage unavailable for %s: %s", run.plan.name, exc)
            return
        if run.detector is None or full:
            run.detector = RunSpikeDetector(run.plan.name, self.settings.spikes)
            run.spikes = []
        records = [r for r in records if full or r["step"] > run.step]
        events: list[SpikeEvent] = []
        planned = set(run.plan.config["checkpoints"]["steps"])
        for record in records:
            events += run.detector.feed(record["step"], record["loss"], record.get("grad_norm"))
            if record["step"] in planned:
                run.checkpoint_losses[record["step"]] = record["loss"]
            run.step = record["step"]
            run.loss = record["loss"]
            run.tokens_per_s = record.get("tokens_per_s")
        run.spikes += [e for e in events if e.status == "open"]
        if self.exporter is not None and records:
            self.exporter.observe_records(run, records, events)
        opened = [e for e in events if e.status == "open"]
        if opened and not full:
            self._act_on_spikes(run, opened, {r["step"]: r.get("attempt", 0) for r in records})

    # -- spike actions ---------------------------------------------------------

    def _act_on_spikes(
        self, run: RunState, opened: list[SpikeEvent], attempts: dict[int, int]
    ) -> None:
        """``alert``: a warning line per spike. ``rewind``: stop the trainer, record the
        rewind in storage (the source of truth every later attempt obeys), rebuild this
        run's monitoring state from the shortened history and start the trainer again."""
        action = self.settings.action
        if action == "alert":
            for spike in opened:
                log.warning(
                    "spike in %s: %s at step %d (%.1f sd)",
                    run.plan.name,
                    spike.signal,
                    spike.onset_step,
                    spike.magnitude,
                )
            return
        if action != "rewind" or run.process is None or run.process.poll() is not None:
            return
        spike = opened[0]  # one rewind per pass: the other spikes lie in the abandoned timeline
        record = _spike_record(spike, attempts.get(spike.onset_step, 0))
        try:
            if run.store.handled(record):
                return
            decision = decide_rewind(
                spike, run.store.complete_checkpoints(), self.settings.rewind, len(run.rewinds)
            )
            if decision.action == "refuse":
                self._refuse(run, decision.reason, record)
                return
            # Until it stops, the trainer prunes old resume checkpoints: decide again
            # from those still there, or the chosen one may be gone.
            run.process.stop()
            decision = decide_rewind(
                spike, run.store.complete_checkpoints(), self.settings.rewind, len(run.rewinds)
            )
            if decision.action == "refuse":
                self._refuse(run, decision.reason, record)
                self._start_process(run)
                return
            entry = run.store.record_rewind(decision.restart_step, decision.skip_batches, record)
        except StorageError as exc:
            log.warning("storage unavailable for %s: %s", run.plan.name, exc)
            return
        run.rewinds.append(entry)
        log.warning("rewound %s: %s", run.plan.name, decision.reason)
        self._rebuild(run, decision.restart_step)
        self._start_process(run)

    def _refuse(self, run: RunState, reason: str, record: dict) -> None:
        run.refused.append(run.store.record_refusal(reason, record))
        log.warning("rewind refused: %s", reason)

    def _rebuild(self, run: RunState, restart_step: int) -> None:
        """Monitoring state as if the run had just reached ``restart_step`` (from storage);
        spikes already counted stay counted, so nothing is fed to the exporter again."""
        records = run.store.read_telemetry()
        run.checkpoints = run.store.complete_checkpoints()
        run.evaluated = set(run.store.evaluated_steps())
        run.evals = {s: v for s, v in run.evals.items() if s in run.evaluated}
        run.checkpoint_losses = {
            s: v for s, v in run.checkpoint_losses.items() if s <= restart_step
        }
        run.detector = RunSpikeDetector(run.plan.name, self.settings.spikes)
        run.step, run.loss = 0, None
        for record in records:
            run.detector.feed(record["step"], record["loss"], record.get("grad_norm"))
            run.step, run.loss = record["step"], record["loss"]

    def _export(self) -> None:
        self._outliers()
        if self.exporter is not None:
            self.exporter.observe_sweep(self)

    def _outliers(self) -> None:
        """Cross-seed robust z-scores of the loss and of each task's evaluation score at
        checkpoints, per size and init (the operator applies the same rule)."""
        for run in self.runs:
            run.store.refresh_evals(run.evals, run.evaluated)
        self.cross_seed = cross_seed_outliers(
            [
                RunHistory(
                    seed_group(r.plan.size, r.plan.init), r.plan.name, r.checkpoint_losses, r.evals
                )
                for r in self.runs
            ],
            self.settings.outliers,
        )
        for run in self.runs:
            run.outlier = self.cross_seed.first(run.plan.name)

    # -- evaluation ------------------------------------------------------------

    def to_evaluate(self, run: RunState) -> list[int]:
        if not planner.evaluation_tasks(self.sweep.spec, run.plan.size):
            return []
        wanted = planner.evaluation_steps(self.sweep.spec, run.checkpoints)
        return [step for step in wanted if step not in run.evaluated]

    def _maybe_evaluate(self, run: RunState) -> None:
        if not self.options.evaluate:
            return
        if run.eval_future and not run.eval_future.done():
            self._evaluation_progress(run)
            return
        if run.eval_future and run.eval_future.done():
            exc = run.eval_future.exception()
            run.eval_future = None
            if exc is not None:
                run.error = f"evaluation failed: {exc}"
                log.error("evaluation of %s failed: %s", run.plan.name, exc)
                self.options.evaluate = False
                return
            run.evaluated = set(run.store.evaluated_steps())
        steps = self.to_evaluate(run)
        if steps:
            run.eval_future = self._evaluator.submit(self._evaluate, run, steps)

    def _evaluation_progress(self, run: RunState) -> None:
        """Checkpoints evaluated so far by the batch in flight (the display shows each)."""
        try:
            run.evaluated = set(run.store.evaluated_steps())
        except StorageError as exc:
            log.warning("storage unavailable for %s: %s", run.plan.name, exc)

    def _evaluate(self, run: RunState, steps: list[int]) -> None:
        """`polypythia evaluate` on ``steps`` in a child process (see local.evaluation)."""
        workdir = self.options.workdir
        args = planner.evaluate_args(self.sweep.spec, run.store.uri, steps, run.plan.size)
        args += ["--workdir", str(workdir / "eval-work" / run.plan.name)]
        args += storage_flags(run.plan.config["storage"])
        evaluate_in_child(
            args,
            workdir / "logs" / f"{run.plan.name}.eval.log",
            {"POLYPYTHIA_CACHE": str(workdir / "cache")},
        )


def _spike_record(spike: SpikeEvent, attempt: int) -> dict:
    """The spike as the rewind record stores it; ``attempt`` tells a spike of the
    rewound timeline from one at the same step before the rewind."""
    magnitude = spike.magnitude if spike.magnitude != float("inf") else None
    return {
        "signal": spike.signal,
        "onsetStep": spike.onset_step,
        "magnitude": magnitude,
        "attempt": attempt,
    }


def _store_kwargs(run: RunPlan) -> dict:
    storage = run.config["storage"]
    kwargs = {"secure": storage["secure"], "region": storage["region"]}
    if storage.get("endpoint"):
        kwargs["endpoint"] = storage["endpoint"]
    return kwargs


def check_resources(runs: list[RunState], cpus: float, gpus: float) -> None:
    """Fail before starting anything when a run can never be scheduled here."""
    for run in runs:
        training = run.plan.config["training"]
        need_gpus = training["workers"] * training["gpusPerWorker"]
        if need_gpus > gpus:
            raise UsageError(
                f"spec.resources: size {run.plan.size} asks for {need_gpus} GPU(s) but this Ray "
                f"cluster has {gpus:g}; set spec.resources.perSize.{run.plan.size}.gpusPerWorker: 0"
            )


def default_workdir() -> Path:
    return Path(os.environ.get("POLYPYTHIA_WORKDIR", "polypythia-work"))
