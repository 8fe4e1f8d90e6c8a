"""Read what storage says about a sweep's runs: checkpoints, evaluations, telemetry, spikes.

State kept here (spike detectors, telemetry cursors) is a cache: a restarted operator
rebuilds it from the run's telemetry, so nothing is lost with the process.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

from polypythia.k8s.reconcile import RunObservation
from polypythia.monitoring.actions import decide_rewind
from polypythia.monitoring.cross_seed import RunHistory, cross_seed_outliers, seed_group
from polypythia.monitoring.eval_scores import task_scores
from polypythia.monitoring.exporter import CommonModeSpikes, RunLabels, SweepExporter
from polypythia.monitoring.settings import InstabilitySettings, settings_from_spec
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent
from polypythia.planner import RunPlan
from polypythia.spec import Sweep
from polypythia.storage import RunStore, StorageError
from polypythia.storage.uri import open_store, split_s3_uri

log = logging.getLogger(__name__)


@dataclass
class _RunCache:
    cursor: int = -1
    detector: RunSpikeDetector | None = None
    spikes: int = 0
    checkpoint_loss: dict[int, float] = field(default_factory=dict)
    # Evaluation files by step, as written (they never change once written; one whose
    # checkpoint a rewind abandoned is deleted from storage, and then from here).
    evals: dict[int, dict] = field(default_factory=dict)
    # The run's rewinds.json: read once, then kept up to date by this operator, the only
    # writer (trainers only read it).
    recorded: dict[str, list[dict]] | None = None


@dataclass
class SweepObserver:
    """Per-sweep storage reader; one per (namespace, sweep) for the operator's lifetime."""

    sweep_key: tuple[str, str]
    exporter: SweepExporter | None = None
    runs: dict[str, _RunCache] = field(default_factory=dict)
    common_mode: CommonModeSpikes | None = None

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

        With ``spec.instability.action: rewind``, a new spike of a run in ``rewindable``
        (its RayJob is running) is decided here and recorded in storage; reconcile then
        replaces the RayJob (see ``reconcile``)."""
        if not names:
            return {}
        storage = sweep.spec["storage"]
        settings = settings_from_spec(sweep.spec.get("instability"))
        by_name = {r.name: r for r in plan}
        if self.exporter is not None:
            self.common_mode = self.common_mode or CommonModeSpikes(self.exporter, settings.spikes)
            self.common_mode.plan({r.name: r.data_seed for r in plan})
        store, _ = open_store(
            by_name[names[0]].config["runUri"],
            endpoint=storage.get("endpoint") or default_endpoint,
            secure=storage.get("secure", True),
            region=storage.get("region", "us-east-1"),
            access_key=credentials[0],
            secret_key=credentials[1],
        )
        out: dict[str, RunObservation] = {}
        for name in names:
            run = by_name[name]
            _, prefix = split_s3_uri(run.config["runUri"])
            rs = RunStore(store, prefix, run.config["runUri"])
            try:
                out[name] = self._observe_run(sweep, run, rs, settings, name in rewindable)
            except StorageError:
                continue
        self._flag_outliers(sweep, plan, out, settings)
        for name, obs in out.items():
            recorded = self.runs[name].recorded or {}
            out[name] = replace(
                obs,
                rewinds=tuple(recorded.get("rewinds", ())),
                refused=tuple(recorded.get("refused", ())),
            )
        return out

    def finish(self, names: list[str]) -> None:
        """These runs ended (succeeded, or failed for good): they show no more spikes,
        so spikes of the runs sharing their data order can settle as common-mode or not."""
        if self.common_mode is not None:
            for name in names:
                self.common_mode.finish(name)

    def _observe_run(
        self,
        sweep: Sweep,
        run: RunPlan,
        rs: RunStore,
        settings: InstabilitySettings,
        rewindable: bool = False,
    ) -> RunObservation:
        cache = self.runs.setdefault(run.name, _RunCache())
        if cache.recorded is None:
            cache.recorded = rs.read_rewinds()
        checkpoints = rs.complete_checkpoints()
        evaluated = rs.evaluated_steps()
        records = rs.read_telemetry_since(cache.cursor)
        opened: list[tuple[SpikeEvent, int]] = []
        found: list[SpikeEvent] = []
        if records:
            if cache.detector is None:
                cache.detector = RunSpikeDetector(run.name, settings.spikes)
            for rec in records:
                loss = rec.get("loss")
                if not isinstance(loss, (int, float)) or rec["step"] <= (
                    cache.detector.last_step or 0
                ):
                    continue
                grad = rec.get("grad_norm")
                events = cache.detector.feed(
                    rec["step"], float(loss), grad if isinstance(grad, (int, float)) else None
                )
                cache.spikes += sum(1 for e in events if e.status == "open")
                opened += [(e, rec.get("attempt", 0)) for e in events if e.status == "open"]
                found += events
                if math.isfinite(loss):
                    cache.checkpoint_loss[rec["step"]] = float(loss)
            cache.cursor = records[-1]["step"]
            wanted = set(checkpoints) | set(run.config["checkpoints"]["steps"])
            cache.checkpoint_loss = {s: v for s, v in cache.checkpoint_loss.items() if s in wanted}
            if self.exporter is not None:
                self.exporter.observe_telemetry(self._labels(sweep, run), records)
            if self.common_mode is not None:
                labels = self._labels(sweep, run)
                self.common_mode.observe(run.name, labels, found, cache.detector.last_step)
        if opened and rewindable and settings.action == "rewind":
            try:
                restart = self._rewind(run, rs, cache, settings, opened, checkpoints)
            except StorageError:
                # Half done (recorded, not yet trimmed): forget the cached record and
                # history, so the next pass reads both again from storage.
                self.runs[run.name] = _RunCache(spikes=cache.spikes)
                raise
            if restart is not None:
                checkpoints = rs.complete_checkpoints()
                evaluated = rs.evaluated_steps()
        fresh = rs.refresh_evals(cache.evals, evaluated)
        if self.exporter is not None:
            labels = self._labels(sweep, run)
            for step in fresh:
                self.exporter.observe_eval(labels, step, task_scores(cache.evals[step]))
            self.exporter.set_progress(
                labels,
                checkpoints=len(checkpoints),
                last_checkpoint_step=max(checkpoints) if checkpoints else None,
                evaluations=len(evaluated),
            )
        return RunObservation(
            checkpoints=tuple(checkpoints),
            evaluated=tuple(evaluated),
            step=cache.cursor if cache.cursor >= 0 else None,
            spikes=cache.spikes,
        )

    def _rewind(
        self,
        run: RunPlan,
        rs: RunStore,
        cache: _RunCache,
        settings: InstabilitySettings,
        opened: list[tuple[SpikeEvent, int]],
        checkpoints: list[int],
    ) -> int | None:
        """Decide the first new spike (once: the record in storage tells a restarted
        operator it was handled); on a rewind, reset this run's cache to the restart
        step. Returns the restart step, or None when nothing was rewound."""
        recorded = cache.recorded
        if recorded is None:
            return None
        done = {RunStore.spike_key(e["spike"]) for e in recorded["rewinds"] + recorded["refused"]}
        for spike, attempt in opened:
            record = {
                "signal": spike.signal,
                "onsetStep": spike.onset_step,
                "magnitude": spike.magnitude if math.isfinite(spike.magnitude) else None,
                "attempt": attempt,
            }
            if RunStore.spike_key(record) in done:
                continue
            decision = decide_rewind(spike, checkpoints, settings.rewind, len(recorded["rewinds"]))
            if decision.action == "refuse":
                recorded["refused"].append(rs.record_refusal(decision.reason, record))
                log.warning("rewind refused: %s", decision.reason)
                return None
            entry = rs.record_rewind(decision.restart_step, decision.skip_batches, record)
            recorded["rewinds"].append(entry)
            log.warning("rewinding %s: %s", run.name, decision.reason)
            restart = decision.restart_step
            cache.detector = RunSpikeDetector(run.name, settings.spikes)
            cache.checkpoint_loss = {s: v for s, v in cache.checkpoint_loss.items() if s <= restart}
            cache.cursor = -1
            for rec in rs.read_telemetry():
                loss = rec.get("loss")
                if isinstance(loss, (int, float)):
                    grad = rec.get("grad_norm")
                    cache.detector.feed(
                        rec["step"], float(loss), grad if isinstance(grad, (int, float)) else None
                    )
                cache.cursor = rec["step"]
            return restart
        return None

    def _flag_outliers(
        self,
        sweep: Sweep,
        plan: list[RunPlan],
        out: dict[str, RunObservation],
        settings: InstabilitySettings,
    ) -> None:
        """Cross-seed robust z of the loss and of each evaluation task's headline score at
        checkpoints, per size and init (PolyPythias' outliers; the local driver applies the
        same rule), over every run this observer has read, polled this pass or not."""
        read = [r for r in plan if r.name in self.runs]
        result = cross_seed_outliers(
            [
                RunHistory(
                    seed_group(r.size, r.init, r.parent),
                    r.name,
                    self.runs[r.name].checkpoint_loss,
                    self.runs[r.name].evals,
                )
                for r in read
            ],
            settings.outliers,
        )
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
            for r in read:
                for signal, (z, flagged) in result.by_family(r.name).items():
                    self.exporter.set_outlier(self._labels(sweep, r), signal, z, flagged)

    def _labels(self, sweep: Sweep, run: RunPlan) -> RunLabels:
        return RunLabels.of(sweep.namespace, run.key)
