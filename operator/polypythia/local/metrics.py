"""The local driver's Prometheus endpoint: the catalogue's metrics for each run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from polypythia.monitoring.eval_scores import task_scores
from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.monitoring.spikes import SpikeEvent
from polypythia.spec import Sweep

if TYPE_CHECKING:
    from polypythia.local.driver import LocalDriver, RunState


class LocalExporter:
    """Serves /metrics on 127.0.0.1 while a local sweep runs."""

    def __init__(self, sweep: Sweep, port: int = 0) -> None:
        self.sweep = sweep
        self.metrics = SweepExporter()
        self.server = self.metrics.serve(port=port, addr="127.0.0.1")
        self.port = self.server.port
        self._exported: dict[str, set[int]] = {}

    def labels(self, run: RunState) -> RunLabels:
        return RunLabels.of(self.sweep.namespace, run.plan.key)

    def observe_records(self, run: RunState, records: list[dict], events: list[SpikeEvent]) -> None:
        labels = self.labels(run)
        self.metrics.observe_telemetry(labels, records)
        # In progress at once (alerts do not wait); counted once the kind is settled.
        self.metrics.observe_spikes(labels, events, count=False)
        for signal in self.sweep_signals():
            self.metrics.set_spike_score(labels, signal, run.monitor.detector.score(signal))

    def count_spikes(self, driver: LocalDriver, settled: list[SpikeEvent]) -> None:
        """Spikes whose kind the run core settled enter ``polypythia_spikes_total``."""
        runs = {r.plan.name: r for r in driver.runs}
        for event in settled:
            self.metrics.observe_spikes(self.labels(runs[event.run]), [event])

    def sweep_signals(self) -> list[str]:
        names = {"loss": "loss", "gradNorm": "grad_norm"}
        return [names[s] for s in self.sweep.spec["instability"]["signals"]]

    def observe_sweep(self, driver: LocalDriver) -> None:
        for run in driver.runs:
            labels = self.labels(run)
            self.metrics.set_phase(labels, run.phase)
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
