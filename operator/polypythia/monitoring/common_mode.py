"""Common-mode spikes: a spike that many runs show at the same step is not one seed's
instability. The one classification used by `polypythia spikes`, the live exporters
(operator and local driver), the sweep status and the report.

A spike of one signal is ``common-mode`` when, within ``tolerance`` steps of its onset,

- more than ``fraction`` of all runs that reached that step (and at least two) spike on
  the same signal, whatever their data orders; or
- more than ``fraction`` of the runs sharing its run's known data order (at least two) do.

Its ``cause``: ``data`` when the runs that spiked share one known data order (or the
second rule holds: a bad batch), ``schedule-or-system`` when they span different data
orders (a learning-rate schedule shock, a bad node, a storage stall: the same step, not
the same batch), ``unknown`` when data orders are not known. Every other spike is
``seed-specific`` (cause ``none``).

Pure functions over spike events. ``label_common_mode`` settles a whole set;
``CommonModeTracker`` settles spikes while runs are still training, each as soon as every
run of the sweep has passed the spike's step or ended.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from polypythia.monitoring.spikes import Cause, SpikeEvent, with_kind


def _classify(
    event: SpikeEvent,
    onsets: list[tuple[int, str]],
    eligible: list[str],
    data_order: Mapping[str, Hashable | None],
    fraction: float,
    tolerance: int,
) -> tuple[str, Cause]:
    lo = bisect.bisect_left(onsets, (event.onset_step - tolerance, ""))
    hi = bisect.bisect_right(onsets, (event.onset_step + tolerance, "\uffff"))
    hits = {run for _, run in onsets[lo:hi]} | {event.run}
    population = set(eligible) | {event.run}
    common_all = len(hits) >= 2 and len(hits) / len(population) > fraction
    order = data_order.get(event.run)
    common_order = False
    if order is not None:
        group = {r for r in population if data_order.get(r) == order}
        shared = hits & group
        common_order = len(shared) >= 2 and len(shared) / len(group) > fraction
    if not (common_all or common_order):
        return "seed-specific", "none"
    if not common_all:
        return "common-mode", "data"
    orders = {data_order.get(r) for r in hits}
    if None in orders:
        return "common-mode", "data" if common_order else "unknown"
    return "common-mode", "data" if len(orders) == 1 else "schedule-or-system"


def label_common_mode(
    events: Iterable[SpikeEvent],
    data_order: Mapping[str, Hashable | None],
    fraction: float = 0.5,
    tolerance: int = 2,
    last_step: Mapping[str, float] | None = None,
) -> list[SpikeEvent]:
    """Every event relabelled ``common-mode`` (with its cause) or ``seed-specific``.

    ``data_order`` names every run of the sweep (or log) with its data order, ``None``
    where unknown; runs that only appear in ``events`` join with an unknown order.
    ``last_step`` (run -> last step seen) leaves runs that ended before a spike out of
    its denominator.
    """
    events = list(events)
    orders = dict(data_order)
    for e in events:
        orders.setdefault(e.run, None)
    by_signal: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for e in events:
        by_signal[e.signal].append((e.onset_step, e.run))
    for onsets in by_signal.values():
        onsets.sort()
    out = []
    for e in events:
        eligible = [
            r for r in orders if last_step is None or last_step.get(r, math.inf) >= e.onset_step
        ]
        kind, cause = _classify(e, by_signal[e.signal], eligible, orders, fraction, tolerance)
        out.append(with_kind(e, kind, cause))  # type: ignore[arg-type]
    return out


@dataclass
class CommonModeTracker:
    """Holds spike onsets until their kind is certain, then releases them labelled.

    A spike's kind is certain once every run of the sweep has reached ``onset +
    tolerance`` (``add``) or ended (``finish``). Each spike (run, signal, onset) is
    released once, with its ``open`` event.
    """

    data_order: Mapping[str, Hashable | None]
    fraction: float = 0.5
    tolerance: int = 2
    _reached: dict[str, float] = field(default_factory=dict)
    _ended: set[str] = field(default_factory=set)
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
        self._ended.add(run)
        return self._settle()

    def _settle(self) -> list[SpikeEvent]:
        runs = set(self.data_order) | {e.run for e in self._all}
        ready, waiting = [], []
        for e in self._pending:
            limit = e.onset_step + self.tolerance
            if all(r in self._ended or self._reached.get(r, -math.inf) >= limit for r in runs):
                ready.append(e)
            else:
                waiting.append(e)
        self._pending = waiting
        if not ready:
            return []
        last = {r: self._reached.get(r, -math.inf) for r in runs}
        labelled = label_common_mode(
            self._all, self.data_order, self.fraction, self.tolerance, last_step=last
        )
        kinds = {(e.run, e.signal, e.onset_step): e for e in labelled}
        out = []
        for e in ready:
            key = (e.run, e.signal, e.onset_step)
            self._released.add(key)
            settled = kinds[key]
            out.append(with_kind(e, settled.kind, settled.cause))
        return out
