"""Per-run and per-sweep monitoring, the same in the local driver and the operator.

Telemetry records go in; spike events, checkpoint losses, settled spike labels, outlier
verdicts and spike actions come out. Nothing here reads or writes storage: the
adapters read, hand the records over, and carry out the actions returned.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polypythia.monitoring.actions import decide_rewind
from polypythia.monitoring.common_mode import CommonModeTracker
from polypythia.monitoring.cross_seed import (
    CrossSeedResult,
    RunHistory,
    cross_seed_outliers,
    run_group,
)
from polypythia.monitoring.settings import InstabilitySettings
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent, SpikeSettings
from polypythia.planner import RunPlan


def number(value: object) -> float | None:
    """A telemetry value as a float (NaN and infinities kept: the detector flags them);
    None when the record has no number there."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def checkpoint_losses(records: Iterable[Mapping], planned: Collection[int]) -> dict[int, float]:
    """step -> training loss at the planned checkpoint steps among ``records``: finite ones
    only (a non-finite loss is a spike, not a score); a later record of a step wins."""
    out: dict[int, float] = {}
    for rec in records:
        step, loss = rec.get("step"), number(rec.get("loss"))
        if isinstance(step, int) and step in planned and loss is not None and math.isfinite(loss):
            out[step] = loss
    return out


@dataclass
class RunMonitor:
    """What one run's telemetry says so far; rebuilt from storage after a restart."""

    name: str
    settings: SpikeSettings
    # Checkpoint steps of the plan: the loss at these steps feeds the outlier rule.
    planned: frozenset[int]
    detector: RunSpikeDetector = field(init=False)
    step: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    # Spikes ever opened (a rewind keeps them: they happened).
    spikes: list[SpikeEvent] = field(default_factory=list)
    # Finite losses at planned checkpoint steps (a non-finite loss is a spike, not a score).
    checkpoint_losses: dict[int, float] = field(default_factory=dict)
    # Spikes opened and not yet acted on, with the attempt whose telemetry showed them.
    unhandled: list[tuple[SpikeEvent, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.detector = RunSpikeDetector(self.name, self.settings)

    @classmethod
    def for_plan(cls, run: RunPlan, settings: SpikeSettings) -> RunMonitor:
        return cls(run.name, settings, frozenset(run.config["checkpoints"]["steps"]))

    def ingest(self, records: Iterable[Mapping]) -> list[SpikeEvent]:
        """Feed records past the last step read (older ones are skipped, so overlapping
        reads are harmless); returns the spike events they opened or closed."""
        out: list[SpikeEvent] = []
        fresh: list[Mapping] = []
        for rec in records:
            step = rec.get("step")
            if not isinstance(step, int) or (self.step is not None and step <= self.step):
                continue
            fresh.append(rec)
            loss, grad = number(rec.get("loss")), number(rec.get("grad_norm"))
            events = self.detector.feed(step, loss, grad)  # type: ignore[arg-type]
            self.step = step
            if loss is not None:
                self.loss = loss
            tokens = number(rec.get("tokens_per_s"))
            if tokens is not None:
                self.tokens_per_s = tokens
            attempt = rec.get("attempt", 0)
            for event in events:
                if event.status == "open":
                    self.spikes.append(event)
                    self.unhandled.append((event, attempt if isinstance(attempt, int) else 0))
            out += events
        self.checkpoint_losses.update(checkpoint_losses(fresh, self.planned))
        return out

    def rewound(self, restart_step: int, records: Iterable[Mapping]) -> None:
        """State as if the run had just reached ``restart_step``: ``records`` is the
        run's history after the rewind (its abandoned steps gone). Spikes already
        counted stay counted; the others of the abandoned timeline are dropped."""
        spikes = self.spikes
        self.detector = RunSpikeDetector(self.name, self.settings)
        self.step, self.loss = None, None
        self.checkpoint_losses = {
            s: v for s, v in self.checkpoint_losses.items() if s <= restart_step
        }
        self.ingest(records)
        self.spikes, self.unhandled = spikes, []

    def drop_unhandled(self) -> None:
        """The spikes seen so far need no action (the run cannot be rewound now)."""
        self.unhandled = []


@dataclass(frozen=True)
class RecordRewind:
    """Restart ``run`` from ``restart_step`` skipping ``skip_batches``: record it in the
    run's storage (what every later attempt obeys), then replace the running attempt."""

    run: str
    restart_step: int
    skip_batches: tuple[int, int]
    spike: dict
    reason: str


@dataclass(frozen=True)
class RecordRefusal:
    """A spike that is not rewound: record why in the run's storage."""

    run: str
    reason: str
    spike: dict


SpikeAction = RecordRewind | RecordRefusal


def spike_record(spike: SpikeEvent, attempt: int) -> dict:
    """The spike as the rewind record stores it; ``attempt`` tells a spike of the
    rewound timeline from one at the same step before the rewind."""
    return {
        "signal": spike.signal,
        "onsetStep": spike.onset_step,
        "magnitude": spike.magnitude if math.isfinite(spike.magnitude) else None,
        "attempt": attempt,
    }


def spike_key(record: Mapping) -> tuple:
    """What identifies one spike across restarts: signal, onset, attempt."""
    return (record.get("signal"), record.get("onsetStep"), record.get("attempt"))


def next_spike_action(
    monitor: RunMonitor,
    recorded: Mapping[str, list[dict]],
    checkpoints: Iterable[int],
    settings: InstabilitySettings,
) -> SpikeAction | None:
    """Under ``action: rewind``, what to do about the run's first spike that storage's
    record (``{"rewinds": [...], "refused": [...]}``) has not handled yet; spikes already
    handled leave ``monitor.unhandled``. None: nothing to do."""
    if settings.action != "rewind":
        monitor.drop_unhandled()
        return None
    done = {spike_key(e.get("spike") or {}) for e in [*recorded["rewinds"], *recorded["refused"]]}
    monitor.unhandled = [
        (s, a) for s, a in monitor.unhandled if spike_key(spike_record(s, a)) not in done
    ]
    if not monitor.unhandled:
        return None
    spike, attempt = monitor.unhandled[0]
    record = spike_record(spike, attempt)
    decision = decide_rewind(spike, checkpoints, settings.rewind, len(recorded["rewinds"]))
    if decision.action == "refuse":
        return RecordRefusal(monitor.name, decision.reason, record)
    assert decision.restart_step is not None and decision.skip_batches is not None
    return RecordRewind(
        monitor.name, decision.restart_step, decision.skip_batches, record, decision.reason
    )


def handled(monitor: RunMonitor, action: SpikeAction) -> None:
    """``action`` was carried out: its spike needs nothing more."""
    key = spike_key(action.spike)
    monitor.unhandled = [
        (s, a) for s, a in monitor.unhandled if spike_key(spike_record(s, a)) != key
    ]


def data_orders(plan: Iterable[RunPlan]) -> dict[str, Hashable]:
    """Run -> its data order for common-mode spikes: the data seed (every size of a
    seed reads the same batches, as in Pythia), as the report groups them."""
    return {r.name: r.data_seed for r in plan}


@dataclass
class SweepSpikes:
    """Every spike of a sweep labelled ``common-mode`` (with a cause) or
    ``seed-specific`` once its kind is certain (``monitoring.common_mode``): the
    exporter counts these, the status shows them, the report applies the same rule."""

    tracker: CommonModeTracker
    settled: dict[str, list[SpikeEvent]] = field(default_factory=dict)

    @classmethod
    def for_plan(cls, plan: Iterable[RunPlan], settings: SpikeSettings) -> SweepSpikes:
        return cls(
            CommonModeTracker(
                data_orders(plan), settings.common_mode_fraction, settings.common_mode_tolerance
            )
        )

    def observe(
        self, run: str, events: Iterable[SpikeEvent], last_step: int | None
    ) -> list[SpikeEvent]:
        """The run's new events, its telemetry now at ``last_step``; returns the spikes
        (of any run) whose kind this settled."""
        if last_step is None:
            return []
        return self._keep(self.tracker.add(run, events, last_step))

    def finish(self, run: str) -> list[SpikeEvent]:
        """The run ended: it shows no more spikes."""
        return self._keep(self.tracker.finish(run))

    def _keep(self, settled: list[SpikeEvent]) -> list[SpikeEvent]:
        for event in settled:
            self.settled.setdefault(event.run, []).append(event)
        return settled


def stored_history(
    name: str,
    config: Mapping[str, Any],
    telemetry: Iterable[Mapping],
    evals: Mapping[int, Mapping],
) -> RunHistory:
    """A run read back from storage (``run.json``, its resolved telemetry, its evaluation
    files) as the live monitors see it: what the report and `polypythia outliers` test."""
    planned = frozenset((config.get("checkpoints") or {}).get("steps") or ())
    return RunHistory(run_group(config), name, checkpoint_losses(telemetry, planned), evals)


def outlier_verdicts(
    plan: Iterable[RunPlan],
    monitors: Mapping[str, RunMonitor],
    evals: Mapping[str, Mapping[int, Mapping]],
    settings: InstabilitySettings,
) -> CrossSeedResult:
    """Cross-seed robust z of the loss and each evaluation task's headline score at
    checkpoints, per size, init and branch parent, over every run monitored so far."""
    return cross_seed_outliers(
        [
            RunHistory(
                run_group(r.config),
                r.name,
                monitors[r.name].checkpoint_losses,
                evals.get(r.name, {}),
            )
            for r in plan
            if r.name in monitors
        ],
        settings.outliers,
    )
