"""Read what storage says about a sweep's runs: checkpoints, evaluations, telemetry, spikes.

State kept here (spike detectors, telemetry cursors) is a cache: a restarted operator
rebuilds it from the run's telemetry, so nothing is lost with the process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from polypythia.k8s.reconcile import RunObservation
from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.monitoring.outliers import Point, find_outliers
from polypythia.monitoring.settings import InstabilitySettings, settings_from_spec
from polypythia.monitoring.spikes import RunSpikeDetector
from polypythia.planner import RunPlan
from polypythia.spec import Sweep
from polypythia.storage import RunStore, StorageError
from polypythia.storage.uri import open_store, split_s3_uri


@dataclass
class _RunCache:
    cursor: int = -1
    detector: RunSpikeDetector | None = None
    spikes: int = 0
    checkpoint_loss: dict[int, float] = field(default_factory=dict)
    evaluations_seen: set[int] = field(default_factory=set)


@dataclass
class SweepObserver:
    """Per-sweep storage reader; one per (namespace, sweep) for the operator's lifetime."""

    sweep_key: tuple[str, str]
    exporter: SweepExporter | None = None
    runs: dict[str, _RunCache] = field(default_factory=dict)

    def observe(
        self,
        sweep: Sweep,
        plan: list[RunPlan],
        names: list[str],
        credentials: tuple[str | None, str | None],
        default_endpoint: str | None,
    ) -> dict[str, RunObservation]:
        """Poll the named runs; unreachable storage means no observation this pass."""
        if not names:
            return {}
        storage = sweep.spec["storage"]
        settings = settings_from_spec(sweep.spec.get("instability"))
        by_name = {r.name: r for r in plan}
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
                out[name] = self._observe_run(sweep, run, rs, settings)
            except StorageError:
                continue
        self._flag_outliers(plan, out, settings)
        return out

    def _observe_run(
        self, sweep: Sweep, run: RunPlan, rs: RunStore, settings: InstabilitySettings
    ) -> RunObservation:
        cache = self.runs.setdefault(run.name, _RunCache())
        checkpoints = rs.complete_checkpoints()
        evaluated = rs.evaluated_steps()
        records = rs.read_telemetry_since(cache.cursor)
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
                if self.exporter is not None:
                    self.exporter.observe_spikes(self._labels(sweep, run), events)
                if math.isfinite(loss):
                    cache.checkpoint_loss[rec["step"]] = float(loss)
            cache.cursor = records[-1]["step"]
            wanted = set(checkpoints) | set(run.config["checkpoints"]["steps"])
            cache.checkpoint_loss = {s: v for s, v in cache.checkpoint_loss.items() if s in wanted}
            if self.exporter is not None:
                self.exporter.observe_telemetry(self._labels(sweep, run), records)
        if self.exporter is not None:
            labels = self._labels(sweep, run)
            for step in sorted(set(evaluated) - cache.evaluations_seen):
                try:
                    result = rs.read_eval(step)
                except StorageError:
                    continue
                scores = result.get("scores") or result.get("results") or {}
                if isinstance(scores, dict):
                    self.exporter.observe_eval(
                        labels, step, {t: m for t, m in scores.items() if isinstance(m, dict)}
                    )
                cache.evaluations_seen.add(step)
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

    def _flag_outliers(
        self, plan: list[RunPlan], out: dict[str, RunObservation], settings: InstabilitySettings
    ) -> None:
        """Cross-seed robust z of the loss at checkpoints, per size (PolyPythias' outliers)."""
        points = [
            Point(r.size, r.name, step, loss)
            for r in plan
            if r.name in self.runs
            for step, loss in self.runs[r.name].checkpoint_loss.items()
        ]
        if "loss" not in settings.outliers.signals or not points:
            return
        flagged = {v.run for v in find_outliers(points, "loss", settings.outliers)}
        for name, obs in list(out.items()):
            out[name] = RunObservation(
                obs.checkpoints, obs.evaluated, obs.step, obs.spikes, name in flagged
            )

    def _labels(self, sweep: Sweep, run: RunPlan) -> RunLabels:
        return RunLabels(sweep.namespace, sweep.name, run.size, str(run.seed))
