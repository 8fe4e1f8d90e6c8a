"""Streaming loss-spike detection for one run (pure: no I/O, no clocks).

The rule combines published practice:

* OLMo-core: a value is a spike when it exceeds the baseline + ``threshold`` sd,
  learnt from the last ``window`` values. The test is one-sided (upward), so the
  rapid loss drop early in training never fires.
* The baseline is detrended, because the plain sd of a window over the fast early
  loss drop is mostly trend: a nano run's 100x learning-rate shock at step 121
  (loss 2.4 -> 6.3) sat under mean + 6 sd = 9.4. The level is the mean of the
  last ``level_window`` values (it lags a falling loss from above, so a decline
  never fires); the noise sd comes from step-to-step changes over the ``window``
  (sd of first differences / sqrt 2, their mean removed), which a smooth trend
  barely inflates. Slow drift moves the level with it; only a rise of several
  noise sds within ``level_window`` steps is a spike.
* llm.c: flagged values never enter the window, so one spike does not inflate the
  baseline and mask the next.
* OLMo 2 "spike score": the share of the last ``score_window`` values lying at
  least ``score_threshold`` sd from the mean of the ``score_window`` values before
  each of them.
* BLOOM 176B: the gradient norm rose several steps before the loss, so a loss
  spike records the onset of a gradient-norm spike that preceded it
  (``precursor_step``).

The gradient norm is tested on a log scale (its noise is multiplicative); the
loss on its own scale. ``feed`` costs O(1) per step and signal; ``feed_many``
gives the same events for a whole history with numpy over quiet stretches, which
is how a restarted monitor rebuilds its state from telemetry.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from polypythia.typed import FIXED

Signal = Literal["loss", "grad_norm"]
Kind = Literal["seed-specific", "common-mode"]
# Why a common-mode spike hit many runs (see common_mode.py); "none" for seed-specific ones.
Cause = Literal["none", "data", "schedule-or-system", "unknown"]
Status = Literal["open", "recovered", "unrecovered"]

SIGNALS: tuple[str, ...] = ("loss", "grad_norm")
_CHUNK = 16384
_TINY = 1e-12


@dataclass(frozen=True)
class SpikeSettings:
    """Detector settings; defaults follow OLMo-core / OLMo 2 (see module docstring).
    ``FIXED`` ones are no sweep field (``spec.instability`` does not set them)."""

    signals: tuple[str, ...] = SIGNALS
    window: int = 128
    threshold: float = 6.0
    # The baseline's level: mean of the last ``level_window`` values (at most ``window``).
    level_window: int = field(default=16, metadata=FIXED)
    min_history: int = 32
    score_window: int = 1000
    score_threshold: float = 7.0
    recovery_steps: int = 500
    # A spike has recovered after ``recovery_confirm`` values in a row within
    # baseline + ``recovery_sds`` sd; its recovery step is the first of them.
    recovery_sds: float = field(default=3.0, metadata=FIXED)
    recovery_confirm: int = field(default=5, metadata=FIXED)
    precursor_steps: int = field(default=50, metadata=FIXED)
    common_mode_fraction: float = 0.5
    common_mode_tolerance: int = 2

    def __post_init__(self) -> None:
        unknown = [s for s in self.signals if s not in SIGNALS]
        if unknown or not self.signals:
            raise ValueError(f"signals: must be a non-empty subset of {SIGNALS}, got {unknown}")
        if self.window < 2 or self.score_window < 2:
            raise ValueError("window and score_window: must be >= 2")
        if not 2 <= self.min_history <= self.window:
            raise ValueError(f"min_history: must be in [2, window={self.window}]")
        if self.level_window < 1:
            raise ValueError("level_window: must be >= 1")
        if self.threshold <= 0 or self.score_threshold <= 0 or self.recovery_sds <= 0:
            raise ValueError("threshold, score_threshold, recovery_sds: must be > 0")
        if self.recovery_sds > self.threshold:
            raise ValueError("recovery_sds: must not exceed threshold")
        if self.recovery_steps < 1 or self.recovery_confirm < 1 or self.precursor_steps < 0:
            raise ValueError("recovery_steps, recovery_confirm: >= 1; precursor_steps: >= 0")
        if not 0 < self.common_mode_fraction < 1 or self.common_mode_tolerance < 0:
            raise ValueError("common_mode_fraction: in (0, 1); common_mode_tolerance: >= 0")


@dataclass(frozen=True)
class SpikeEvent:
    """One spike of one signal of one run.

    ``magnitude`` is (peak - baseline) in baseline sds (log scale for the gradient
    norm; ``inf`` for a non-finite value). ``status`` is ``open`` when the spike
    starts, then ``recovered`` (with ``recovery_step``) or ``unrecovered`` (still
    high ``recovery_steps`` after onset; the baseline then restarts).
    """

    run: str
    signal: str
    onset_step: int
    peak_step: int
    peak_value: float
    magnitude: float
    baseline: float
    recovery_step: int | None
    kind: Kind = "seed-specific"
    status: Status = "open"
    precursor_step: int | None = None
    cause: Cause = "none"

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form (non-finite numbers become null)."""
        out: dict[str, object] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[key] = value
        return out


def _transform(signal: str, value: float) -> float:
    if signal == "grad_norm":
        return math.log(max(value, _TINY)) if math.isfinite(value) else value
    return value


def _untransform(signal: str, value: float) -> float:
    return math.exp(value) if signal == "grad_norm" else value


class _RingBuffer(ABC):
    """The last ``size`` values in a circular buffer, with running sums that a subclass
    keeps in ``push`` and recomputes from the buffer in ``resum`` every ``size``
    insertions, so rounding never accumulates (amortised O(1))."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = [0.0] * size
        self.head = 0
        self.n = 0
        self.since = 0

    def _at(self, back: int) -> float:
        """The value ``back`` insertions ago (1 = the latest)."""
        return self.buf[(self.head - back) % self.size]

    def values(self) -> np.ndarray:
        """Chronological copy of the stored values."""
        buf = np.asarray(self.buf, dtype=float)
        if self.n < self.size:
            return buf[: self.n].copy()
        return np.concatenate([buf[self.head :], buf[: self.head]])

    def _store(self, x: float) -> None:
        """Put ``x`` in the buffer (over the oldest value when full); the caller has
        already moved its sums."""
        if self.n < self.size:
            self.n += 1
        self.buf[self.head] = x
        self.head = (self.head + 1) % self.size
        self.since += 1
        if self.since >= self.size:
            self.resum()

    def extend(self, xs: np.ndarray) -> None:
        """Append many values at once (vectorised)."""
        if len(xs) == 0:
            return
        merged = np.concatenate([self.values(), xs])[-self.size :]
        self.n = len(merged)
        self.buf = merged.tolist() + [0.0] * (self.size - self.n)
        self.head = self.n % self.size
        self.resum()

    def clear(self) -> None:
        self.head = self.n = 0
        self.resum()

    @abstractmethod
    def push(self, x: float) -> None:
        """Move the running sums for ``x`` entering (and the oldest leaving), then store."""

    @abstractmethod
    def resum(self) -> None:
        """Recompute the running sums from ``values()`` and reset ``since``."""


class _Ring(_RingBuffer):
    """Mean and sd of the last ``size`` values; sums kept relative to ``ref``."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.ref = self.s1 = self.s2 = 0.0

    def push(self, x: float) -> None:
        y = x - self.ref
        if self.n == self.size:
            old = self.buf[self.head] - self.ref
            self.s1 -= old
            self.s2 -= old * old
        self.s1 += y
        self.s2 += y * y
        self._store(x)

    def resum(self) -> None:
        vals = self.values()
        self.ref = float(vals.mean()) if len(vals) else 0.0
        dev = vals - self.ref
        self.s1 = float(dev.sum())
        self.s2 = float((dev * dev).sum())
        self.since = 0

    def stats(self) -> tuple[float, float]:
        """(mean, sd) of the stored values; needs n >= 2."""
        n = self.n
        mean = self.ref + self.s1 / n
        var = max((self.s2 - self.s1 * self.s1 / n) / (n - 1), 0.0)
        return mean, math.sqrt(var)


class _LevelRing(_RingBuffer):
    """The detection baseline: last ``size`` accepted values, detrended.

    ``stats`` gives the level (mean of the last ``k`` values) and the sd of a new
    value around it, from the noise sd that step-to-step changes imply; the sum of
    squared changes is a running sum.
    """

    def __init__(self, size: int, k: int) -> None:
        super().__init__(size)
        self.k = k
        self.level_sum = self.d2 = 0.0

    def push(self, x: float) -> None:
        if self.n:
            d = x - self._at(1)
            self.d2 += d * d
        if self.n >= self.k:
            self.level_sum -= self._at(self.k)
        self.level_sum += x
        if self.n == self.size:
            d = self.buf[(self.head + 1) % self.size] - self.buf[self.head]
            self.d2 -= d * d
        self._store(x)

    def resum(self) -> None:
        vals = self.values()
        self.level_sum = float(vals[-self.k :].sum())
        d = np.diff(vals)
        self.d2 = float((d * d).sum())
        self.since = 0

    def stats(self) -> tuple[float, float]:
        """(level, sd of a new value around it); needs n >= 2."""
        n, k = self.n, min(self.k, self.n)
        return _level_scale(self.level_sum / k, self._at(1) - self._at(n), self.d2, n - 1, k)


def _level_scale(level: float, d1: float, d2: float, m: int, k: int) -> tuple[float, float]:
    """Level and scale from the sums of ``m`` changes (``d1``, ``d2``) and a level over ``k``."""
    var = (d2 - d1 * d1 / m) / (m - 1) if m >= 2 else d2
    return level, math.sqrt(max(var, 0.0) / 2.0 * (1.0 + 1.0 / k))


def _scale_floor(center: float, sd: float) -> float:
    """A constant history must not make every later wiggle infinitely large."""
    return max(sd, 1e-9 * max(1.0, abs(center)))


def _window_diff(c: np.ndarray, offset: int, n: int, window: int) -> np.ndarray:
    """c[e] - c[max(e - window, 0)] for e in offset .. offset + n - 1 (slices, no gather)."""
    ends = c[offset : offset + n]
    k0 = min(max(window - offset, 0), n)
    starts = np.empty(n)
    starts[:k0] = c[0]
    starts[k0:] = c[offset + k0 - window : offset + n - window]
    return ends - starts


def _rolling_stats(
    prev: np.ndarray, xs: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each x in ``xs``: count, mean and sd of the ``window`` values before it.

    ``prev`` holds the (finite) values before ``xs``; non-finite values in ``xs``
    are left out of the statistics of later points.
    """
    allv = np.concatenate([prev, xs])
    ref = float(prev.mean()) if len(prev) else float(xs[np.isfinite(xs)][:1].sum())
    allv -= ref
    lp, n = len(prev), len(xs)
    finite = np.isfinite(allv)
    c = np.zeros(len(allv) + 1)
    if finite.all():
        cnt = np.minimum(np.arange(lp, lp + n), window).astype(float)
    else:
        allv[~finite] = 0.0
        np.cumsum(finite, out=c[1:])
        cnt = _window_diff(c, lp, n, window)
    np.cumsum(allv, out=c[1:])
    s1 = _window_diff(c, lp, n, window)
    np.square(allv, out=allv)
    np.cumsum(allv, out=c[1:])
    s2 = _window_diff(c, lp, n, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        s2 -= s1 * mean
        s2 /= cnt - 1
        np.maximum(s2, 0.0, out=s2)
        np.sqrt(s2, out=s2)
    mean += ref
    return cnt, mean, s2


def _level_stats(
    prev: np.ndarray, xs: np.ndarray, window: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each x in ``xs``: the level and scale of :class:`_LevelRing` before it,
    assuming every earlier value of ``xs`` entered the window (so only results up to
    the first flagged value are meaningful; the caller stops there). ``prev`` holds
    the window's values (at least one)."""
    allv = np.concatenate([prev, xs])
    ref = float(prev[-1])
    allv -= ref
    lp, n = len(prev), len(xs)
    cnt = np.minimum(np.arange(lp, lp + n), window).astype(float)
    kk = np.minimum(cnt, k)
    c = np.zeros(len(allv) + 1)
    with np.errstate(invalid="ignore", over="ignore"):
        np.cumsum(allv, out=c[1:])
        level = _window_diff(c, lp, n, k) / kk
        # sum of the cnt - 1 changes = last - first value of the window (telescoping)
        d1 = _window_diff(allv, lp - 1, n, window - 1)
        d = np.diff(allv)
        np.square(d, out=d)
        np.cumsum(d, out=c[1 : len(d) + 1])
        d2 = _window_diff(c[: len(d) + 1], lp - 1, n, window - 1)
        m = cnt - 1
        var = np.where(m >= 2, (d2 - d1 * d1 / np.maximum(m, 1)) / np.maximum(m - 1, 1), d2)
        np.maximum(var, 0.0, out=var)
        var *= 0.5 * (1.0 + 1.0 / kk)
        scale = np.sqrt(var, out=var)
    level += ref
    return level, scale


@dataclass
class _Open:
    onset: int
    center: float
    scale: float
    peak_step: int
    peak_t: float
    peak_raw: float
    precursor: int | None
    in_band: int = 0
    first_in_band: int | None = None


@dataclass
class _SignalState:
    name: str
    settings: SpikeSettings
    ring: _LevelRing = field(init=False)
    score_ring: _Ring = field(init=False)
    score_flags: list[bool] = field(init=False)
    score_pos: int = 0
    score_seen: int = 0
    score_count: int = 0
    open: _Open | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.ring = _LevelRing(s.window, min(s.level_window, s.window))
        self.score_ring = _Ring(self.settings.score_window)
        self.score_flags = [False] * self.settings.score_window


class RunSpikeDetector:
    """Spike detector for one run: feed it each step's loss and gradient norm.

    Steps must increase; after a rewind or restart, build a new detector from the
    run's clean telemetry history with :meth:`rebuild`.
    """

    def __init__(self, run: str, settings: SpikeSettings | None = None) -> None:
        self.run = run
        self.settings = settings or SpikeSettings()
        self.last_step: int | None = None
        self._states = {s: _SignalState(s, self.settings) for s in self.settings.signals}
        self._last_gn_onset: int | None = None

    @classmethod
    def rebuild(
        cls,
        run: str,
        steps: Sequence[int] | np.ndarray,
        loss: Sequence[float] | np.ndarray,
        grad_norm: Sequence[float] | np.ndarray | None = None,
        settings: SpikeSettings | None = None,
    ) -> tuple[RunSpikeDetector, list[SpikeEvent]]:
        """A detector in the state it would have after feeding this history, and its events."""
        detector = cls(run, settings)
        return detector, detector.feed_many(steps, loss, grad_norm)

    # -- queries -------------------------------------------------------------

    def score(self, signal: str = "loss") -> float:
        """OLMo 2 spike score: share of the last ``score_window`` values >= k sd off."""
        st = self._states[signal]
        seen = min(st.score_seen, self.settings.score_window)
        return st.score_count / seen if seen else 0.0

    def open_spikes(self) -> list[SpikeEvent]:
        """Spikes that started and have neither recovered nor been given up on."""
        return [self._event(st, "open", None) for st in self._states.values() if st.open]

    def baseline(self, signal: str = "loss") -> tuple[float, float] | None:
        """Current (level, sd) of the signal's baseline (log scale for grad_norm)."""
        ring = self._states[signal].ring
        return ring.stats() if ring.n >= 2 else None

    # -- streaming -----------------------------------------------------------

    def feed(self, step: int, loss: float, grad_norm: float | None = None) -> list[SpikeEvent]:
        """Take one step; return the spike events it opened or closed (O(1))."""
        self._check_step(step)
        self.last_step = step
        events: list[SpikeEvent] = []
        for name, raw in (("grad_norm", grad_norm), ("loss", loss)):
            st = self._states.get(name)
            if st is None or raw is None:
                continue
            raw = float(raw)
            x = _transform(name, raw)
            self._score_one(st, x)
            events.extend(self._step_one(st, step, x, raw))
        return events

    def _check_step(self, step: int) -> None:
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(
                f"run {self.run}: step {step} after step {self.last_step}; "
                "steps must increase (rebuild the detector after a rewind)"
            )

    def _score_one(self, st: _SignalState, x: float) -> None:
        s = self.settings
        ring = st.score_ring
        finite = math.isfinite(x)
        if finite and ring.n >= s.min_history:
            mean, sd = ring.stats()
            flag = abs(x - mean) >= s.score_threshold * _scale_floor(mean, sd)
        else:
            flag = not finite
        self._push_score_flag(st, flag)
        if finite:
            ring.push(x)

    def _push_score_flag(self, st: _SignalState, flag: bool) -> None:
        pos = st.score_pos
        if st.score_seen >= self.settings.score_window:
            st.score_count -= st.score_flags[pos]
        st.score_flags[pos] = flag
        st.score_count += flag
        st.score_pos = (pos + 1) % self.settings.score_window
        st.score_seen += 1

    def _step_one(self, st: _SignalState, step: int, x: float, raw: float) -> list[SpikeEvent]:
        s = self.settings
        finite = math.isfinite(x)
        if st.open is None:
            if st.ring.n < s.min_history:
                if finite:
                    st.ring.push(x)
                return []
            center, sd = st.ring.stats()
            scale = _scale_floor(center, sd)
            if finite and x <= center + s.threshold * scale:
                st.ring.push(x)
                return []
            return [self._open(st, step, x, raw, center, scale)]
        spike = st.open
        if not finite or x > spike.center + s.recovery_sds * spike.scale:
            spike.in_band = 0
            spike.first_in_band = None
            if not finite or x > spike.peak_t:
                spike.peak_step, spike.peak_t, spike.peak_raw = step, x, raw
        else:
            st.ring.push(x)
            spike.in_band += 1
            if spike.first_in_band is None:
                spike.first_in_band = step
            if spike.in_band >= s.recovery_confirm:
                return [self._close(st, "recovered", spike.first_in_band)]
        if step - spike.onset >= s.recovery_steps:
            return [self._close(st, "unrecovered", None)]
        return []

    def _open(
        self, st: _SignalState, step: int, x: float, raw: float, center: float, scale: float
    ) -> SpikeEvent:
        precursor = None
        if st.name == "grad_norm":
            self._last_gn_onset = step
        elif (
            self._last_gn_onset is not None
            and step - self._last_gn_onset <= self.settings.precursor_steps
        ):
            precursor = self._last_gn_onset
        st.open = _Open(step, center, scale, step, x, raw, precursor)
        return self._event(st, "open", None)

    def _close(self, st: _SignalState, status: Status, recovery: int | None) -> SpikeEvent:
        event = self._event(st, status, recovery)
        st.open = None
        if status == "unrecovered":
            # The signal settled at a new level: learn it afresh instead of flagging forever.
            st.ring.clear()
        return event

    def _event(self, st: _SignalState, status: Status, recovery: int | None) -> SpikeEvent:
        spike = st.open
        assert spike is not None
        if math.isfinite(spike.peak_t):
            magnitude = (spike.peak_t - spike.center) / spike.scale
        else:
            magnitude = math.inf
        return SpikeEvent(
            run=self.run,
            signal=st.name,
            onset_step=spike.onset,
            peak_step=spike.peak_step,
            peak_value=spike.peak_raw,
            magnitude=magnitude,
            baseline=_untransform(st.name, spike.center),
            recovery_step=recovery,
            status=status,
            precursor_step=spike.precursor,
        )

    # -- batch ---------------------------------------------------------------

    def feed_many(
        self,
        steps: Sequence[int] | np.ndarray,
        loss: Sequence[float] | np.ndarray,
        grad_norm: Sequence[float] | np.ndarray | None = None,
    ) -> list[SpikeEvent]:
        """Feed a whole history; the events :meth:`feed` would give step by step, faster."""
        step_arr = np.asarray(steps, dtype=np.int64)
        n = len(step_arr)
        if n == 0:
            return []
        if len(loss) != n or (grad_norm is not None and len(grad_norm) != n):
            raise ValueError("steps, loss and grad_norm: must have the same length")
        if n > 1 and np.any(np.diff(step_arr) <= 0):
            raise ValueError(f"run {self.run}: steps must increase")
        self._check_step(int(step_arr[0]))
        tagged: list[tuple[int, int, SpikeEvent]] = []
        prior_gn = self._last_gn_onset
        gn_onsets: list[int] = []
        for order, (name, values) in enumerate((("grad_norm", grad_norm), ("loss", loss))):
            st = self._states.get(name)
            if st is None or values is None:
                continue
            raw = np.asarray(values, dtype=float)
            xs = raw.copy()
            if name == "grad_norm":
                finite = np.isfinite(raw)
                xs[finite] = np.log(np.maximum(raw[finite], _TINY))
            self._score_many(st, xs)
            found = self._detect_many(st, step_arr, xs, raw, prior_gn, gn_onsets)
            if name == "grad_norm":
                gn_onsets = [e.onset_step for _, e in found if e.status == "open"]
            tagged.extend((emitted, order, event) for emitted, event in found)
        self._last_gn_onset = gn_onsets[-1] if gn_onsets else prior_gn
        self.last_step = int(step_arr[-1])
        # The order feed() gives: by step, the gradient norm before the loss.
        tagged.sort(key=lambda t: (t[0], t[1]))
        return [event for _, _, event in tagged]

    def _score_many(self, st: _SignalState, xs: np.ndarray) -> None:
        s = self.settings
        cnt, mean, sd = _rolling_stats(st.score_ring.values(), xs, s.score_window)
        floor = np.maximum(sd, 1e-9 * np.maximum(1.0, np.abs(mean)))
        finite = np.isfinite(xs)
        with np.errstate(invalid="ignore"):
            near = np.abs(xs - mean) >= s.score_threshold * floor
        flags = np.where(finite, (cnt >= s.min_history) & near, True)
        window = s.score_window
        if st.score_seen >= window:
            old = st.score_flags[st.score_pos :] + st.score_flags[: st.score_pos]
        else:
            old = st.score_flags[: st.score_seen]
        last = (old + flags[-window:].tolist())[-window:]
        st.score_flags = [bool(f) for f in last] + [False] * (window - len(last))
        st.score_count = sum(st.score_flags)
        st.score_seen += len(flags)
        st.score_pos = st.score_seen % window if st.score_seen < window else 0
        st.score_ring.extend(xs[finite])

    def _detect_many(
        self,
        st: _SignalState,
        steps: np.ndarray,
        xs: np.ndarray,
        raw: np.ndarray,
        prior_gn: int | None,
        gn_onsets: list[int],
    ) -> list[tuple[int, SpikeEvent]]:
        s = self.settings
        found: list[tuple[int, SpikeEvent]] = []
        i, n = 0, len(xs)
        while i < n:
            step = int(steps[i])
            if st.name == "loss":
                k = bisect.bisect_right(gn_onsets, step)
                self._last_gn_onset = gn_onsets[k - 1] if k else prior_gn
            if st.open is not None or st.ring.n < s.min_history:
                # Inside a spike or still learning the baseline: step by step (short stretches).
                found.extend(
                    (step, e) for e in self._step_one(st, step, float(xs[i]), float(raw[i]))
                )
                i += 1
                continue
            chunk = xs[i : min(n, i + _CHUNK)]
            mean, sd = _level_stats(st.ring.values(), chunk, s.window, st.ring.k)
            floor = np.maximum(sd, 1e-9 * np.maximum(1.0, np.abs(mean)))
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(chunk) | (chunk > mean + s.threshold * floor)
            hits = np.flatnonzero(bad)
            stop = int(hits[0]) if len(hits) else len(chunk)
            st.ring.extend(chunk[:stop])
            i += stop
            if stop < len(chunk):
                step = int(steps[i])
                if st.name == "loss":
                    k = bisect.bisect_right(gn_onsets, step)
                    self._last_gn_onset = gn_onsets[k - 1] if k else prior_gn
                center, scale = float(mean[stop]), float(floor[stop])
                found.append(
                    (step, self._open(st, step, float(xs[i]), float(raw[i]), center, scale))
                )
                i += 1
        return found


def with_kind(event: SpikeEvent, kind: Kind, cause: Cause = "none") -> SpikeEvent:
    """The same spike, relabelled (common-mode classification)."""
    return replace(event, kind=kind, cause=cause)
