"""Prometheus exporter for sweeps: per-run metrics from the catalogue.

The local driver and the operator own one ``SweepExporter`` each and push what
they learn into it (telemetry records, spike events, outlier verdicts, eval
results, phases, counts). Values are kept per run and rendered at scrape time by
a custom collector, so ``remove_sweep`` drops every series of a sweep at once and
the operator can set counts from storage (level-based) after a restart.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from polypythia.monitoring import catalog
from polypythia.monitoring.spikes import SpikeEvent
from polypythia.runkey import RunKey

SMOOTHING = 0.05


class RunLabels(NamedTuple):
    """The bounded identity of a run in every per-run series (``catalog.RUN_LABELS``):
    the init and the run name too, so runs differing only by init are apart."""

    namespace: str
    sweep: str
    size: str
    seed: str
    init: str
    run: str

    @classmethod
    def of(cls, namespace: str, key: RunKey) -> RunLabels:
        """The labels of the run ``key`` in ``namespace``."""
        return cls(**key.labels(namespace))


@dataclass
class _RunState:
    gauges: dict[str, dict[tuple[str, ...], float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    counters: dict[str, dict[tuple[str, ...], float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    spike_kinds: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    open_spikes: set[tuple[str, int]] = field(default_factory=set)
    closed_spikes: set[tuple[str, int]] = field(default_factory=set)
    unrecovered: set[tuple[str, int]] = field(default_factory=set)
    phase: str | None = None
    smoothed: float | None = None


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``close()`` stops it."""

    port: int
    addr: str
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class SweepExporter:
    """All polypythia metrics on one registry (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._runs: dict[RunLabels, _RunState] = {}
        duration = catalog.metric("polypythia_reconcile_duration_seconds")
        errors = catalog.metric("polypythia_reconcile_errors_total")
        self._reconcile = Histogram(
            duration.name,
            duration.help,
            registry=self.registry,
            buckets=catalog.RECONCILE_BUCKETS,
        )
        self._errors = Counter(
            errors.name.removesuffix("_total"), errors.help, registry=self.registry
        )
        self.registry.register(_Collector(self))

    # -- updates -------------------------------------------------------------

    def _state(self, run: RunLabels) -> _RunState:
        run = RunLabels(*(str(v) for v in run))
        return self._runs.setdefault(run, _RunState())

    def observe_telemetry(self, run: RunLabels, records: Iterable[Mapping[str, Any]]) -> None:
        """Step records in step order (storage telemetry format): loss, grad norm, step,
        time, tokens/s of the last one; the smoothed loss over all of them."""
        with self._lock:
            st = self._state(run)
            last: Mapping[str, Any] | None = None
            heldout: float | None = None
            for rec in records:
                value = rec.get("heldout_loss")
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    heldout = float(value)
                loss = rec.get("loss")
                if isinstance(loss, (int, float)) and math.isfinite(loss):
                    prev = st.smoothed
                    st.smoothed = loss if prev is None else prev + SMOOTHING * (loss - prev)
                last = rec
            if last is None:
                return
            g = st.gauges
            for name, key in (
                ("polypythia_run_loss", "loss"),
                ("polypythia_run_grad_norm", "grad_norm"),
                ("polypythia_run_step", "step"),
                ("polypythia_run_last_step_timestamp_seconds", "time"),
                ("polypythia_run_tokens_per_second", "tokens_per_s"),
            ):
                value = last.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    g[name][()] = float(value)
            if st.smoothed is not None:
                g["polypythia_run_loss_smoothed"][()] = st.smoothed
            if heldout is not None:
                g["polypythia_run_heldout_loss"][()] = heldout

    def observe_spikes(
        self, run: RunLabels, events: Iterable[SpikeEvent], *, count: bool = True
    ) -> None:
        """Spike events of the run. Each spike is counted once, from its ``open`` event,
        under that event's ``kind`` and ``cause`` (pass events settled by
        the run core's ``SweepSpikes``); closing events end
        ``spike_in_progress``. ``count=False``: open events only start
        ``spike_in_progress`` (the kind is not settled yet; alerts must not wait)."""
        with self._lock:
            st = self._state(run)
            for e in events:
                key = (e.signal, e.onset_step)
                if e.status == "open":
                    if count:
                        st.spike_kinds.setdefault(key, (e.kind, e.cause))
                    if key not in st.closed_spikes:
                        st.open_spikes.add(key)
                else:
                    st.open_spikes.discard(key)
                    st.closed_spikes.add(key)
                    if e.status == "unrecovered":
                        st.unrecovered.add(key)

    def set_spike_score(self, run: RunLabels, signal: str, score: float) -> None:
        """The detector's running spike score (a ratio in [0, 1])."""
        with self._lock:
            self._state(run).gauges["polypythia_spike_score_ratio"][(signal,)] = float(score)

    def set_outlier(self, run: RunLabels, signal: str, score: float, flagged: bool) -> None:
        """Latest cross-seed robust z of the run for ``signal`` and whether it is an outlier."""
        with self._lock:
            g = self._state(run).gauges
            g["polypythia_outlier_score"][(signal,)] = float(score)
            g["polypythia_outlier"][(signal,)] = 1.0 if flagged else 0.0

    def observe_eval(
        self, run: RunLabels, step: int, scores: Mapping[str, Mapping[str, float]]
    ) -> None:
        """Scores of one evaluated checkpoint: task -> metric -> value (latest step wins)."""
        with self._lock:
            g = self._state(run).gauges
            if step < g["polypythia_eval_step"].get((), -math.inf):
                return
            g["polypythia_eval_step"][()] = float(step)
            for task, metrics in scores.items():
                for name, value in metrics.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        g["polypythia_eval_score"][(task, name)] = float(value)

    def set_phase(self, run: RunLabels, phase: str) -> None:
        """The run's current phase (one of ``catalog.PHASES`` or another CamelCase word)."""
        if not phase.isalpha() or not phase[:1].isupper():
            raise ValueError(f"phase: must be a CamelCase word, got {phase!r}")
        with self._lock:
            st = self._state(run)
            st.phase = phase

    def set_progress(
        self,
        run: RunLabels,
        *,
        checkpoints: int | None = None,
        last_checkpoint_step: int | None = None,
        evaluations: int | None = None,
        evaluation_failures: int | None = None,
        evaluations_pending: int | None = None,
        retries: int | None = None,
        rewinds: int | None = None,
    ) -> None:
        """Absolute counts as read from storage and status (idempotent; None = unchanged)."""
        with self._lock:
            st = self._state(run)
            for name, value in (
                ("polypythia_checkpoints_total", checkpoints),
                ("polypythia_evaluations_total", evaluations),
                ("polypythia_evaluation_failures_total", evaluation_failures),
                ("polypythia_run_retries_total", retries),
                ("polypythia_run_rewinds_total", rewinds),
            ):
                if value is not None:
                    st.counters[name][()] = float(value)
            for name, value in (
                ("polypythia_checkpoint_last_step", last_checkpoint_step),
                ("polypythia_evaluations_pending", evaluations_pending),
            ):
                if value is not None:
                    st.gauges[name][()] = float(value)

    def observe_reconcile(self, seconds: float, error: bool = False) -> None:
        """One operator reconcile pass."""
        self._reconcile.observe(seconds)
        if error:
            self._errors.inc()

    def remove_run(self, run: RunLabels) -> None:
        """Drop every series of one run (e.g. a seed removed from the sweep)."""
        with self._lock:
            self._runs.pop(RunLabels(*(str(v) for v in run)), None)

    def remove_sweep(self, namespace: str, sweep: str) -> None:
        """Drop every series of a sweep (it was deleted)."""
        with self._lock:
            for run in [r for r in self._runs if (r.namespace, r.sweep) == (namespace, sweep)]:
                del self._runs[run]

    # -- output --------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text exposition format, as a scrape would see it."""
        return generate_latest(self.registry)

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve /metrics over HTTP in a daemon thread (port 0 picks a free port)."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        return MetricsServer(server.server_port, addr, server, thread)

    def _collect(self) -> Iterator[Metric]:
        with self._lock:
            families = {m.name: _family(m) for m in catalog.METRICS if m.name not in _DIRECT}
            for run, st in self._runs.items():
                for name, values in st.gauges.items():
                    for extra, value in values.items():
                        families[name].add_metric([*run, *extra], value)
                for name, values in st.counters.items():
                    for extra, value in values.items():
                        families[name].add_metric([*run, *extra], value)
                counts: dict[tuple[str, str, str], int] = defaultdict(int)
                for key, (kind, cause) in st.spike_kinds.items():
                    counts[(key[0], kind, cause)] += 1
                for (signal, kind, cause), n in sorted(counts.items()):
                    families["polypythia_spikes_total"].add_metric([*run, signal, kind, cause], n)
                signals = {k[0] for k in (*st.spike_kinds, *st.closed_spikes, *st.open_spikes)}
                for signal in sorted(signals):
                    active = any(k[0] == signal for k in st.open_spikes)
                    families["polypythia_spike_in_progress"].add_metric(
                        [*run, signal], 1.0 if active else 0.0
                    )
                    lost = sum(1 for k in st.unrecovered if k[0] == signal)
                    families["polypythia_spikes_unrecovered_total"].add_metric([*run, signal], lost)
                if st.phase is not None:
                    for phase in _phases(st.phase):
                        families["polypythia_run_phase"].add_metric(
                            [*run, phase], 1.0 if phase == st.phase else 0.0
                        )
            per_sweep: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for run, st in self._runs.items():
                if st.phase is not None:
                    per_sweep[(run.namespace, run.sweep)][st.phase] += 1
            for (namespace, sweep), phases in per_sweep.items():
                for phase in _phases(*phases):
                    families["polypythia_sweep_runs"].add_metric(
                        [namespace, sweep, phase], phases.get(phase, 0)
                    )
        yield from families.values()


_DIRECT = {"polypythia_reconcile_duration_seconds", "polypythia_reconcile_errors_total"}


def _phases(*current: str) -> list[str]:
    return list(catalog.PHASES) + sorted(set(current) - set(catalog.PHASES))


def _family(m: catalog.Metric) -> Metric:
    if m.type == "counter":
        return CounterMetricFamily(m.name.removesuffix("_total"), m.help, labels=m.labels)
    return GaugeMetricFamily(m.name, m.help, labels=m.labels)


class _Collector:
    """Adapter: prometheus_client calls ``collect`` at scrape time."""

    def __init__(self, exporter: SweepExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        return self._exporter._collect()

    def describe(self) -> list[Metric]:
        return []
