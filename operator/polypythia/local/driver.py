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
from polypythia.local.evaluation import EvaluationChildren, storage_flags
from polypythia.local.processes import RunProcess, write_config
from polypythia.monitoring.cross_seed import CrossSeedResult
from polypythia.monitoring.outliers import OutlierVerdict
from polypythia.monitoring.settings import settings_from_spec
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent
from polypythia.planner import RunPlan
from polypythia.runcore import schedule
from polypythia.runcore.monitor import (
    RecordRefusal,
    RecordRewind,
    RunMonitor,
    SpikeAction,
    SweepSpikes,
    handled,
    next_spike_action,
    outlier_verdicts,
)
from polypythia.runcore.phase import RunPhase
from polypythia.spec import Sweep, applied_manifest
from polypythia.storage import (
    RunStore,
    StorageError,
    StorageNotFound,
    SweepStore,
    config_changes,
    describe_changes,
    describe_shape_changes,
    pins,
    shape_changes,
)
from polypythia.storage.uri import connection

log = logging.getLogger(__name__)

POLL_S = 1.0
RETRY_BASE_S = 5.0  # first retry after 5 s, then 10, 20, ... (capped)
RETRY_MAX_S = 120.0
MAX_PREEMPTIONS = 20  # restarts after a kill by signal that spend no retry
USAGE_EXIT = 2  # the trainer refused its input (config drift, a bad field): retrying cannot help
# SIGKILL / SIGTERM from outside (exit 130: the trainer stopped cleanly on one): preemption-like
KILLED = {-9, -15, 128 + 9, 128 + 15, 130}


@dataclass
class RunState:
    """What the driver knows of one run, all re-derivable from storage; its monitoring
    state is the run core's ``RunMonitor`` (the operator keeps the same one)."""

    plan: RunPlan
    store: RunStore
    monitor: RunMonitor
    phase: RunPhase = RunPhase.PENDING
    checkpoints: list[int] = field(default_factory=list)
    evaluated: set[int] = field(default_factory=set)
    evals: dict[int, dict] = field(default_factory=dict)
    outlier: OutlierVerdict | None = None
    error: str | None = None
    process: RunProcess | None = None
    eval_future: Future | None = None
    rewinds: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    retries: int = 0
    preemptions: int = 0
    not_before: float = 0.0
    # While the current attempt has not trained (spec.pendingTimeoutSeconds): when it
    # started, and the telemetry batches storage held then. A new batch means it trains
    # (a resumed attempt first retrains steps the old telemetry already has).
    started_at: float | None = None
    batches_at_start: frozenset[str] = frozenset()

    @property
    def total_steps(self) -> int:
        return self.plan.config["training"]["steps"]

    @property
    def finished(self) -> bool:
        return self.total_steps in self.checkpoints

    @property
    def step(self) -> int:
        return self.monitor.step or 0

    @property
    def loss(self) -> float | None:
        return self.monitor.loss

    @property
    def tokens_per_s(self) -> float | None:
        return self.monitor.tokens_per_s

    @property
    def spikes(self) -> list[SpikeEvent]:
        return self.monitor.spikes

    @property
    def detector(self) -> RunSpikeDetector:
        return self.monitor.detector

    @property
    def checkpoint_losses(self) -> dict[int, float]:
        return self.monitor.checkpoint_losses


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
        plan = planner.plan_sweep(sweep, base_uri=base_uri)
        self.runs = [
            RunState(
                plan=run,
                store=RunStore.open(run.config["runUri"], **connection(run.config["storage"])),
                monitor=RunMonitor.for_plan(run, self.settings.spikes),
            )
            for run in plan
        ]
        # Spike labels (common-mode or seed-specific) across the sweep, as the operator's.
        self.spikes = SweepSpikes.for_plan(plan, self.settings.spikes)
        self.max_concurrent = options.max_concurrent or sweep.spec["maxConcurrentRuns"]
        # Like the operator's eval Jobs: at most spec.evaluation.concurrency at once.
        self._evaluator = ThreadPoolExecutor(
            max_workers=sweep.spec["evaluation"].get("concurrency", 2),
            thread_name_prefix="evaluate",
        )
        self._evaluations = EvaluationChildren()
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
                run.phase = RunPhase.SUCCEEDED

    def _check_drift(self) -> None:
        """Exit 2 before anything trains when a stored run ran another recipe
        (unless --allow-changes: each trainer then records the changes); a change of the
        model's tensor shapes always, since no checkpoint of the old model loads."""
        problems, reshaped = [], []
        for run in self.runs:
            try:
                stored = run.store.read_run_config()
            except StorageNotFound:
                continue
            changes = config_changes(stored, run.plan.config) if isinstance(stored, dict) else []
            if changes and (run.store.complete_checkpoints() or run.store.telemetry_files()):
                problems.append(describe_changes(run.store.uri, changes))
                shapes = shape_changes(stored, run.plan.config, changes)
                if shapes:
                    reshaped.append(describe_shape_changes(run.store.uri, shapes))
        if reshaped or (problems and not self.options.allow_changes):
            raise UsageError("\n".join(reshaped or problems))

    def run(self) -> None:
        """Until every run has ended; KeyboardInterrupt stops children cleanly."""
        self.record_applied()
        try:
            while True:
                self._reap()
                self._launch()
                for run in self.runs:
                    if run.phase == RunPhase.RUNNING or (
                        run.phase == RunPhase.SUCCEEDED and not run.finished
                    ):
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

    def record_applied(self) -> None:
        """Write the sweep as applied beside its runs (a later `polypythia report` reads
        its outlier settings there, as the operator's sweeps do)."""
        store = SweepStore.open(
            planner.sweep_uri(self.sweep, self.base_uri),
            **connection(self.runs[0].plan.config["storage"]),
        )
        store.write_applied(applied_manifest(self.sweep))

    def stop(self) -> None:
        """Stop every child (SIGTERM then grace); what they checkpointed is kept."""
        alive = [r for r in self.runs if r.process and r.process.poll() is None]
        for run in alive:
            run.process.terminate()
        self._evaluations.stop()
        for run in alive:
            run.process.stop()
            self._sync(run)
            run.phase = RunPhase.SUCCEEDED if run.finished else RunPhase.STOPPED

    # -- scheduling ------------------------------------------------------------

    def _launch(self) -> None:
        """Start waiting runs in plan order within maxConcurrentRuns, as the operator
        does: a dependent run once its reference run succeeded, none once
        spec.maxFailedRuns runs failed."""
        if self.sweep.spec.get("suspend"):
            return
        phases = {r.plan.name: r.phase for r in self.runs}
        if self._budget_spent():
            for run in self.runs:
                if run.phase.waiting:
                    run.error = schedule.budget_message(
                        phases.values(), self.sweep.spec["maxFailedRuns"]
                    )
            return
        active = sum(1 for r in self.runs if r.phase == RunPhase.RUNNING)
        for run in sorted(self.runs, key=lambda r: r.plan.order):
            if active >= self.max_concurrent:
                return
            if not run.phase.waiting or time.time() < run.not_before:
                continue
            gate = schedule.reference_gate(run.plan.requires, phases)
            if gate.verdict == "fail":
                run.phase, run.error = RunPhase.FAILED, gate.message
                continue
            if gate.verdict == "wait":
                continue
            self._start_process(run)
            run.phase = RunPhase.RUNNING
            active += 1
            log.info("started %s", run.plan.name)

    def _budget_spent(self) -> bool:
        return schedule.failure_budget_spent(
            (r.phase for r in self.runs), self.sweep.spec.get("maxFailedRuns")
        )

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
        run.started_at = None
        if self.sweep.spec.get("pendingTimeoutSeconds"):
            try:
                run.batches_at_start = frozenset(f.rel for f in run.store.telemetry_files())
                run.started_at = time.time()
            except StorageError as exc:
                log.warning("storage unavailable for %s: %s", run.plan.name, exc)

    def _reap(self) -> None:
        for run in self.runs:
            if run.phase != RunPhase.RUNNING or run.process is None:
                continue
            code = run.process.poll()
            if code is None:
                self._check_pending(run)
                continue
            self._sync(run)
            if code == 0 and run.finished:
                run.phase = RunPhase.SUCCEEDED
            elif self._retry(run, code):
                run.phase = RunPhase.PREEMPTED if code in KILLED else RunPhase.RETRYING
            else:
                run.phase = RunPhase.FAILED
                run.error = f"exit code {code}: {run.process.error_summary()}"

    def _check_pending(self, run: RunState) -> None:
        """spec.pendingTimeoutSeconds, the operator's rule: an attempt that has not
        written telemetry that long after it started (waiting for Ray resources, stuck
        loading) is stopped and counts as a failed attempt."""
        timeout = self.sweep.spec.get("pendingTimeoutSeconds")
        if run.started_at is None or not schedule.pending_too_long(
            time.time() - run.started_at, timeout
        ):
            return
        try:
            batches = {f.rel for f in run.store.telemetry_files()}
        except StorageError:
            return  # unknown: ask again next pass
        if batches - run.batches_at_start:
            run.started_at = None  # it trains: no more listings
            return
        assert run.process is not None
        run.process.stop()
        message = schedule.pending_message(int(timeout))
        if self._retry(run, USAGE_EXIT + 1, message):
            run.phase = RunPhase.RETRYING
        else:
            run.phase, run.error = RunPhase.FAILED, message

    def _retry(self, run: RunState, code: int, why: str | None = None) -> bool:
        """Whether to start a failed run again (spec.maxRetries, like the operator): after
        a backoff, resuming from its newest sound checkpoint. A kill by signal from
        outside (preemption, the OOM killer) spends no retry; a refused input never retries."""
        if code == USAGE_EXIT:
            return False
        preempted = code in KILLED and run.preemptions < MAX_PREEMPTIONS
        if not preempted and not schedule.may_retry(run.retries, self.sweep.spec["maxRetries"]):
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
            why or run.process.error_summary(),
            delay,
            spent,
        )
        return True

    def _all_done(self) -> bool:
        """Every run ended, or none trains and the failure budget stops the rest."""
        ended = all(r.phase.terminal for r in self.runs) or (
            self._budget_spent() and not any(r.phase == RunPhase.RUNNING for r in self.runs)
        )
        evaluating = any(r.eval_future and not r.eval_future.done() for r in self.runs)
        pending_evals = self.options.evaluate and any(self.to_evaluate(r) for r in self.runs)
        return ended and not evaluating and not pending_evals

    # -- observing -------------------------------------------------------------

    def _sync(self, run: RunState, full: bool = False) -> None:
        """Read new telemetry and checkpoints into the run core; act on new spikes."""
        try:
            records = (
                run.store.read_telemetry()
                if full
                else run.store.read_telemetry_since(run.monitor.step or 0)
            )
            run.checkpoints = run.store.complete_checkpoints()
            run.evaluated = set(run.store.evaluated_steps())
            if full:
                recorded = run.store.read_rewinds()
                run.rewinds, run.refused = recorded["rewinds"], recorded["refused"]
        except StorageError as exc:
            log.warning("storage unavailable for %s: %s", run.plan.name, exc)
            return
        if full:
            run.monitor = RunMonitor.for_plan(run.plan, self.settings.spikes)
        events = run.monitor.ingest(records)
        if self.exporter is not None and records:
            self.exporter.observe_records(run, records, events)
        self._settled(self.spikes.observe(run.plan.name, events, run.monitor.step))
        if full:
            run.monitor.drop_unhandled()  # history: acted on (or not) by an earlier driver
        elif run.monitor.unhandled:
            self._act_on_spikes(run, [e for e in events if e.status == "open"])

    def _settled(self, settled: list[SpikeEvent]) -> None:
        if self.exporter is not None and settled:
            self.exporter.count_spikes(self, settled)

    # -- spike actions ---------------------------------------------------------

    def _act_on_spikes(self, run: RunState, opened: list[SpikeEvent]) -> None:
        """``alert``: a warning line per spike. ``rewind``: the run core's action: stop
        the trainer, record the rewind in storage (the source of truth every later
        attempt obeys), rebuild this run's monitor from the shortened history and start
        the trainer again; or record why not."""
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
        if action != "rewind" or run.process is None or run.process.poll() is not None:
            run.monitor.drop_unhandled()
            return
        try:
            decided = self._decide(run)
            if not isinstance(decided, RecordRewind):
                if decided is not None:
                    self._carry_out(run, decided)
                return
            # Until it stops, the trainer prunes old resume checkpoints: decide again
            # from those still there, or the chosen one may be gone.
            run.process.stop()
            decided = self._decide(run)
            if decided is not None:
                self._carry_out(run, decided)
        except StorageError as exc:
            log.warning("storage unavailable for %s: %s", run.plan.name, exc)
            return
        if run.process.poll() is not None:
            self._start_process(run)

    def _decide(self, run: RunState) -> SpikeAction | None:
        recorded = run.store.read_rewinds()
        # Not a checkpoint a trainer is pruning: record_rewind pins the one chosen.
        candidates = pins.rewind_candidates(run.store, run.store.complete_checkpoints())
        return next_spike_action(run.monitor, recorded, candidates, self.settings)

    def _carry_out(self, run: RunState, action: SpikeAction) -> None:
        """Record the run core's action in storage and follow it in memory."""
        if isinstance(action, RecordRefusal):
            run.refused.append(run.store.record_refusal(action.reason, action.spike))
            handled(run.monitor, action)
            log.warning("rewind refused: %s", action.reason)
            return
        entry = run.store.record_rewind(action.restart_step, action.skip_batches, action.spike)
        run.rewinds.append(entry)
        handled(run.monitor, action)
        log.warning("rewound %s: %s", run.plan.name, action.reason)
        run.checkpoints = run.store.complete_checkpoints()
        run.evaluated = set(run.store.evaluated_steps())
        run.evals = {s: v for s, v in run.evals.items() if s in run.evaluated}
        run.monitor.rewound(action.restart_step, run.store.read_telemetry())

    def _export(self) -> None:
        self._outliers()
        self.finish_spikes()
        if self.exporter is not None:
            self.exporter.observe_sweep(self)

    def _outliers(self) -> None:
        """The run core's cross-seed verdicts (the operator applies the same rule)."""
        for run in self.runs:
            run.store.refresh_evals(run.evals, run.evaluated)
        self.cross_seed = outlier_verdicts(
            [r.plan for r in self.runs],
            {r.plan.name: r.monitor for r in self.runs},
            {r.plan.name: r.evals for r in self.runs},
            self.settings,
        )
        for run in self.runs:
            run.outlier = self.cross_seed.first(run.plan.name)

    def finish_spikes(self) -> None:
        """Runs that ended show no more spikes: settle the spikes waiting on them."""
        for run in self.runs:
            if run.phase.terminal:
                self._settled(self.spikes.finish(run.plan.name))

    # -- evaluation ------------------------------------------------------------

    def to_evaluate(self, run: RunState) -> list[int]:
        if not planner.evaluation_tasks(self.sweep.spec, run.plan.size):
            return []
        planned = run.plan.config["checkpoints"]["steps"]
        wanted = planner.evaluation_steps(self.sweep.spec, run.checkpoints, planned)
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
        self._evaluations.run(
            args,
            workdir / "logs" / f"{run.plan.name}.eval.log",
            {"POLYPYTHIA_CACHE": str(workdir / "cache")},
        )


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
