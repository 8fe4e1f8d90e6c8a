"""Read what storage says about a sweep's runs, and carry out the run core's storage
actions (rewind records) that reconcile returned; record the sweep as applied.

Reading never writes: ``observe`` feeds the run core (``polypythia.runcore``) and
returns observations, with the spike action the run core proposes; reconcile decides
whether to take it, and the handler hands taken ones to ``carry_out``. State kept here
(the run core's monitors, telemetry cursors) is a cache: a restarted operator rebuilds
it from the run's telemetry, so nothing is lost with the process.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

from polypythia.k8s.children import RunObservation
from polypythia.monitoring.eval_scores import task_scores
from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.monitoring.settings import InstabilitySettings, settings_from_spec
from polypythia.planner import RunPlan, sweep_uri
from polypythia.runcore.monitor import (
    RecordRewind,
    RunMonitor,
    SpikeAction,
    SweepSpikes,
    data_orders,
    handled,
    next_spike_action,
    outlier_verdicts,
)
from polypythia.spec import Sweep, applied_manifest
from polypythia.storage import RunStore, StorageError, SweepStore, pins
from polypythia.storage.uri import connection, open_store, split_s3_uri

log = logging.getLogger(__name__)


@dataclass
class _Cached:
    """One run as last read: its monitor, its evaluation files and rewind record."""

    monitor: RunMonitor
    store: RunStore
    # Evaluation files by step, as written (they never change once written; one whose
    # checkpoint a rewind abandoned is deleted from storage, and then from here).
    evals: dict[int, dict] = field(default_factory=dict)
    # The run's rewinds.json: read once, then kept up to date by ``carry_out`` (the
    # operator is its only writer; trainers only read it).
    recorded: dict[str, list[dict]] | None = None
    # Its pins were released once it ended (``finish``).
    pins_released: bool = False


@dataclass
class SweepObserver:
    """Per-sweep storage reader; one per (namespace, sweep) for the operator's lifetime."""

    sweep_key: tuple[str, str]
    exporter: SweepExporter | None = None
    runs: dict[str, _Cached] = field(default_factory=dict)
    spikes: SweepSpikes | None = None
    _labels: dict[str, RunLabels] = field(default_factory=dict)
    # The generation whose sweep.json this process wrote (a 1-tuple: None is a generation).
    _applied: tuple[int | None] | None = None

    def observe(
        self,
        sweep: Sweep,
        plan: list[RunPlan],
        names: list[str],
        credentials: tuple[str | None, str | None],
        default_endpoint: str | None,
        rewindable: frozenset[str] = frozenset(),
    ) -> dict[str, RunObservation]:
        """Poll the named runs; unreachable storage means no observation this pass.

        With ``spec.instability.action: rewind``, a run in ``rewindable`` (its RayJob is
        running) carries the run core's proposal for its first unhandled spike."""
        if not names:
            return {}
        settings = settings_from_spec(sweep.spec.get("instability"))
        by_name = {r.name: r for r in plan}
        self._labels = {r.name: RunLabels.of(sweep.namespace, r.key) for r in plan}
        if self.spikes is None:
            self.spikes = SweepSpikes.for_plan(plan, settings.spikes)
        self.spikes.tracker.data_order = data_orders(plan)
        store, _ = open_store(
            by_name[names[0]].config["runUri"],
            **connection(sweep.spec["storage"], default_endpoint),
            access_key=credentials[0],
            secret_key=credentials[1],
        )
        out: dict[str, RunObservation] = {}
        for name in names:
            run = by_name[name]
            _, prefix = split_s3_uri(run.config["runUri"])
            rs = RunStore(store, prefix, run.config["runUri"])
            try:
                out[name] = self._observe_run(run, rs, settings, name in rewindable)
            except StorageError:
                # Forget what was half read: the next pass reads the run afresh.
                self._forget(name)
                continue
        if self.spikes is not None:
            # A later run of this pass may have settled an earlier one's spikes.
            for name, obs in out.items():
                out[name] = replace(obs, settled=tuple(self.spikes.settled.get(name, ())))
        self._flag_outliers(plan, out, settings)
        return out

    def record_applied(
        self, sweep: Sweep, credentials: tuple[str | None, str | None], default_endpoint: str | None
    ) -> None:
        """Write the sweep as applied beside its runs (``sweep.json``), once per generation
        in this process, so a report made later from storage judges outliers with the
        settings these verdicts use; a failed write raises and is tried again next pass."""
        if self._applied == (sweep.generation,):
            return
        store = SweepStore.open(
            sweep_uri(sweep),
            **connection(sweep.spec["storage"], default_endpoint),
            access_key=credentials[0],
            secret_key=credentials[1],
        )
        store.write_applied(applied_manifest(sweep))
        self._applied = (sweep.generation,)

    def finish(self, names: list[str]) -> None:
        """These runs ended (succeeded, or failed for good): they show no more spikes,
        so spikes of the runs sharing their data order can settle as common-mode or not;
        nothing restarts from their pinned checkpoints any more (released once each)."""
        if self.spikes is not None:
            for name in names:
                self._count(self.spikes.finish(name))
        for name in names:
            cached = self.runs.get(name)
            if cached is None or cached.pins_released:
                continue
            try:
                released = pins.release_all(cached.store)
            except StorageError as exc:
                log.warning("pins of ended run %s not released, retried: %s", name, exc)
                continue
            cached.pins_released = True
            if released:
                log.info("run %s ended: restart checkpoints %s no longer pinned", name, released)

    def carry_out(self, action: SpikeAction) -> dict:
        """Record ``action`` in its run's storage (a rewind pins its restart checkpoint
        first, and drops the abandoned checkpoints) and bring the run's monitor to the new
        history; returns the entry. StorageError (also CheckpointUnavailable: the chosen
        checkpoint went before it was pinned): nothing is known to be recorded; the run is
        read afresh next pass and its spike decided again."""
        cached = self.runs.get(action.run)
        if cached is None:  # forgotten since it was observed (storage failed meanwhile)
            raise StorageError(f"run {action.run} is read afresh before its spike is acted on")
        recorded = cached.recorded or cached.store.read_rewinds()
        try:
            if isinstance(action, RecordRewind):
                entry = cached.store.record_rewind(
                    action.restart_step, action.skip_batches, action.spike
                )
                recorded["rewinds"].append(entry)
                cached.monitor.rewound(action.restart_step, cached.store.read_telemetry())
                log.warning("rewinding %s: %s", action.run, action.reason)
            else:
                entry = cached.store.record_refusal(action.reason, action.spike)
                recorded["refused"].append(entry)
                log.warning("rewind refused: %s", action.reason)
        except StorageError:
            self._forget(action.run)
            raise
        cached.recorded = recorded
        handled(cached.monitor, action)
        return entry

    def _forget(self, name: str) -> None:
        """Drop the run's cache (its counts in status never go down: reconcile keeps the
        highest it saw)."""
        self.runs.pop(name, None)

    def _observe_run(
        self, run: RunPlan, rs: RunStore, settings: InstabilitySettings, rewindable: bool
    ) -> RunObservation:
        cached = self.runs.get(run.name)
        if cached is None:
            cached = self.runs[run.name] = _Cached(RunMonitor.for_plan(run, settings.spikes), rs)
        cached.store = rs
        monitor = cached.monitor
        if cached.recorded is None:
            cached.recorded = rs.read_rewinds()
        checkpoints = rs.complete_checkpoints()
        evaluated = rs.evaluated_steps()
        records = rs.read_telemetry_since(monitor.step if monitor.step is not None else -1)
        events = monitor.ingest(records)
        labels = self._labels[run.name]
        if self.exporter is not None and records:
            self.exporter.observe_telemetry(labels, records)
            self.exporter.observe_spikes(labels, events, count=False)
        if self.spikes is not None:
            self._count(self.spikes.observe(run.name, events, monitor.step))
        proposal = None
        if rewindable and monitor.unhandled and settings.action == "rewind":
            # Not one a trainer is pruning now: the choice is pinned when carried out.
            candidates = pins.rewind_candidates(rs, checkpoints)
            proposal = next_spike_action(monitor, cached.recorded, candidates, settings)
        else:
            monitor.drop_unhandled()
        fresh = rs.refresh_evals(cached.evals, evaluated)
        if self.exporter is not None:
            for step in fresh:
                self.exporter.observe_eval(labels, step, task_scores(cached.evals[step]))
            self.exporter.set_progress(
                labels,
                checkpoints=len(checkpoints),
                last_checkpoint_step=max(checkpoints) if checkpoints else None,
                evaluations=len(evaluated),
            )
        return RunObservation(
            checkpoints=tuple(checkpoints),
            evaluated=tuple(evaluated),
            step=monitor.step,
            spikes=len(monitor.spikes),
            rewinds=tuple(cached.recorded["rewinds"]),
            refused=tuple(cached.recorded["refused"]),
            proposal=proposal,
        )

    def _count(self, settled: list) -> None:
        """Spikes whose kind is now certain enter ``polypythia_spikes_total``."""
        if self.exporter is None:
            return
        for event in settled:
            labels = self._labels.get(event.run)
            if labels is not None:
                self.exporter.observe_spikes(labels, [event])

    def _flag_outliers(
        self, plan: list[RunPlan], out: dict[str, RunObservation], settings: InstabilitySettings
    ) -> None:
        """The run core's cross-seed verdicts (the local driver applies the same rule),
        over every run this observer has read, polled this pass or not."""
        monitors = {name: c.monitor for name, c in self.runs.items()}
        evals = {name: c.evals for name, c in self.runs.items()}
        result = outlier_verdicts(plan, monitors, evals, settings)
        for name, obs in list(out.items()):
            verdict = result.first(name)
            out[name] = replace(
                obs,
                outlier=verdict is not None,
                outlier_signal=verdict.signal if verdict else None,
                outlier_step=verdict.first_step if verdict else None,
                outlier_score=(
                    round(verdict.score, 2) if verdict and math.isfinite(verdict.score) else None
                ),
            )
        if self.exporter is not None:
            for r in plan:
                if r.name in self.runs:
                    for signal, (z, flagged) in result.by_family(r.name).items():
                        self.exporter.set_outlier(self._labels[r.name], signal, z, flagged)
