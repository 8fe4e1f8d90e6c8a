"""Common-mode spikes: a spike that most runs sharing a data order show at the
same step comes from the data (a bad batch), not from the seed's instability.

Pure functions over spike events. ``label_common_mode`` settles a whole set;
``CommonModeTracker`` settles spikes while runs are still training, each as soon
as every run that shares its data order has passed the spike's step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from polypythia.monitoring.spikes import SpikeEvent, with_kind


def _is_common(
    event: SpikeEvent,
    onsets: Mapping[str, list[int]],
    group: list[str],
    fraction: float,
    tolerance: int,
) -> bool:
    hits = sum(
        1
        for run in group
        if any(abs(o - event.onset_step) <= tolerance for o in onsets.get(run, ()))
    )
    return hits >= 2 and hits / len(group) > fraction


def _onsets(events: Iterable[SpikeEvent], signal: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.signal == signal:
            out[e.run].append(e.onset_step)
    return out


def label_common_mode(
    events: Iterable[SpikeEvent],
    data_order: Mapping[str, Hashable],
    fraction: float = 0.5,
    tolerance: int = 2,
) -> list[SpikeEvent]:
    """Every event relabelled: ``data-driven`` when more than ``fraction`` of the runs
    with its run's data order (and at least two) have a spike of the same signal
    within ``tolerance`` steps of its onset; otherwise ``seed-specific``.

    Runs missing from ``data_order`` form a group of their own.
    """
    events = list(events)
    groups: dict[Hashable, list[str]] = defaultdict(list)
    for run, order in data_order.items():
        groups[order].append(run)
    by_signal = {s: _onsets(events, s) for s in {e.signal for e in events}}
    out = []
    for e in events:
        group = groups.get(data_order.get(e.run, ("run", e.run)), [e.run])
        common = _is_common(e, by_signal[e.signal], group, fraction, tolerance)
        out.append(with_kind(e, "data-driven" if common else "seed-specific"))
    return out


@dataclass
class CommonModeTracker:
    """Holds spike onsets until their kind is certain, then releases them labelled.

    A spike's kind is certain once every run of its data-order group has reached
    ``onset + tolerance`` (``progress``) or ended (``finish``). Each spike
    (run, signal, onset) is released once, with its ``open`` event.
    """

    data_order: Mapping[str, Hashable]
    fraction: float = 0.5
    tolerance: int = 2
    _reached: dict[str, float] = field(default_factory=dict)
    _pending: list[SpikeEvent] = field(default_factory=list)
    _all: list[SpikeEvent] = field(default_factory=list)
    _released: set[tuple[str, str, int]] = field(default_factory=set)

    def add(self, run: str, events: Iterable[SpikeEvent], last_step: int) -> list[SpikeEvent]:
        """Record a run's new events and progress; return the spikes now settled."""
        for e in events:
            key = (e.run, e.signal, e.onset_step)
            pending = any((p.run, p.signal, p.onset_step) == key for p in self._pending)
            if e.status == "open" and key not in self._released and not pending:
                self._pending.append(e)
                self._all.append(e)
        self._reached[run] = max(self._reached.get(run, -math.inf), last_step)
        return self._settle()

    def finish(self, run: str) -> list[SpikeEvent]:
        """The run ended (or failed): it will show no more spikes."""
        self._reached[run] = math.inf
        return self._settle()

    def _group(self, run: str) -> list[str]:
        if run not in self.data_order:
            return [run]
        order = self.data_order[run]
        return [r for r, o in self.data_order.items() if o == order]

    def _settle(self) -> list[SpikeEvent]:
        ready, waiting = [], []
        for e in self._pending:
            group = self._group(e.run)
            limit = e.onset_step + self.tolerance
            if all(self._reached.get(r, -math.inf) >= limit for r in group):
                ready.append(e)
            else:
                waiting.append(e)
        self._pending = waiting
        if not ready:
            return []
        labelled = label_common_mode(self._all, self.data_order, self.fraction, self.tolerance)
        kinds = {(e.run, e.signal, e.onset_step): e.kind for e in labelled}
        out = []
        for e in ready:
            key = (e.run, e.signal, e.onset_step)
            self._released.add(key)
            out.append(with_kind(e, kinds[key]))
        return out
