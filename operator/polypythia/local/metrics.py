"""The local driver's Prometheus endpoint: the catalogue's metrics for each run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from polypythia import planner
from polypythia.monitoring.eval_scores import task_scores
from polypythia.monitoring.exporter import CommonModeSpikes, RunLabels, SweepExporter
from polypythia.monitoring.settings import settings_from_spec
from polypythia.monitoring.spikes import SpikeEvent
from polypythia.spec import Sweep

if TYPE_CHECKING:
    from polypythia.local.driver import LocalDriver, RunState


class LocalExporter:
    """Serves /metrics on 127.0.0.1 while a local sweep runs."""

    def __init__(self, sweep: Sweep, port: int = 0) -> None:
        self.sweep = sweep
        self.metrics = SweepExporter()
        # Spikes are counted as common-mode (with a cause) or seed-specific across the sweep.
        self.spikes = CommonModeSpikes(
            self.metrics, settings_from_spec(sweep.spec.get("instability")).spikes
        )
        self.spikes.plan({r.name: r.data_seed for r in planner.plan_sweep(sweep)})
        self.server = self.metrics.serve(port=port, addr="127.0.0.1")
        self.port = self.server.port
        self._exported: dict[str, set[int]] = {}

    def labels(self, run: RunState) -> RunLabels:
        return RunLabels.of(self.sweep.namespace, run.plan.key)

    def observe_records(self, run: RunState, records: list[dict], events: list[SpikeEvent]) -> None:
        labels = self.labels(run)
        self.metrics.observe_telemetry(labels, records)
        last = run.detector.last_step if run.detector is not None else None
        self.spikes.observe(run.plan.name, labels, events, last)
        if run.detector is not None:
            for signal in self.sweep_signals():
                self.metrics.set_spike_score(labels, signal, run.detector.score(signal))

    def sweep_signals(self) -> list[str]:
        names = {"loss": "loss", "gradNorm": "grad_norm"}
        return [names[s] for s in self.sweep.spec["instability"]["signals"]]

    def observe_sweep(self, driver: LocalDriver) -> None:
        for run in driver.runs:
            labels = self.labels(run)
            self.metrics.set_phase(labels, run.phase)
            if run.phase in ("Succeeded", "Failed"):
                self.spikes.finish(run.plan.name)
            self.metrics.set_progress(
                labels,
                checkpoints=len(run.checkpoints),
                last_checkpoint_step=run.checkpoints[-1] if run.checkpoints else None,
                evaluations=len(run.evaluated),
                evaluations_pending=len(driver.to_evaluate(run)),
                rewinds=len(run.rewinds),
            )
            if run.evaluated and run.evaluated != self._exported.get(run.plan.name):
                self._export_evals(labels, run)
            for signal, (z, flagged) in driver.cross_seed.by_family(run.plan.name).items():
                self.metrics.set_outlier(labels, signal, z, flagged)

    def _export_evals(self, labels: RunLabels, run: RunState) -> None:
        step = max(run.evaluated)
        result = run.evals.get(step) or run.store.read_eval(step)
        self.metrics.observe_eval(labels, step, task_scores(result))
        self._exported[run.plan.name] = set(run.evaluated)

    def close(self) -> None:
        self.server.close()
