"""The sweep's ``spec.instability`` block -> typed monitoring settings.

Field names and defaults match the CRD (camelCase there, snake_case here; each default
is written once, in the dataclasses, and tests/core/test_crd_defaults.py holds it to the
CRD's); a bad value raises UsageError naming ``spec.instability.<field>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from polypythia.errors import UsageError
from polypythia.monitoring.outliers import OutlierSettings
from polypythia.monitoring.spikes import SpikeSettings

Action = Literal["observe", "alert", "rewind"]
ACTIONS: tuple[str, ...] = ("observe", "alert", "rewind")
_SIGNAL_NAMES = {"loss": "loss", "gradNorm": "grad_norm"}
_PATH = "spec.instability"


@dataclass(frozen=True)
class RewindSettings:
    """PaLM's recipe: restart ``steps_before`` the spike, skip ``skip_batches`` batches."""

    steps_before: int = 100
    skip_batches: int = 200
    max_rewinds: int = 3


@dataclass(frozen=True)
class InstabilitySettings:
    """Everything the monitors and the action policy need for one sweep."""

    spikes: SpikeSettings = field(default_factory=SpikeSettings)
    outliers: OutlierSettings = field(default_factory=OutlierSettings)
    action: Action = "observe"
    rewind: RewindSettings = field(default_factory=RewindSettings)


def _camel(message: str) -> str:
    """Name fields the way the CRD spells them (``min_history`` -> ``minHistory``)."""
    return re.sub(
        r"\b([a-z]+)_([a-z_]+)\b",
        lambda m: m.group(1) + "".join(w.title() for w in m.group(2).split("_")),
        message,
    )


def _get(block: Mapping[str, Any], key: str, kind: type, path: str, default: Any) -> Any:
    value = block.get(key, default)
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UsageError(f"{path}.{key}: must be {kind.__name__}, got {value!r}")
    return value


def _signals(value: Any, path: str, allowed: Mapping[str, str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or any(v not in allowed for v in value):
        raise UsageError(f"{path}: must be a non-empty list of {sorted(allowed)}, got {value!r}")
    return tuple(dict.fromkeys(allowed[v] for v in value))


def settings_from_spec(instability: Mapping[str, Any] | None) -> InstabilitySettings:
    """Typed settings from ``spec.instability`` (missing fields take the CRD defaults)."""
    block = dict(instability or {})
    d = SpikeSettings()
    crd_names = {ours: theirs for theirs, ours in _SIGNAL_NAMES.items()}
    signals = _signals(
        block.get("signals", [crd_names[s] for s in d.signals]), f"{_PATH}.signals", _SIGNAL_NAMES
    )
    try:
        spikes = SpikeSettings(
            signals=signals,
            window=_get(block, "window", int, _PATH, d.window),
            threshold=_get(block, "threshold", float, _PATH, d.threshold),
            min_history=_get(block, "minHistory", int, _PATH, d.min_history),
            score_window=_get(block, "scoreWindow", int, _PATH, d.score_window),
            score_threshold=_get(block, "scoreThreshold", float, _PATH, d.score_threshold),
            recovery_steps=_get(block, "recoverySteps", int, _PATH, d.recovery_steps),
            common_mode_fraction=_get(
                block, "commonModeFraction", float, _PATH, d.common_mode_fraction
            ),
            common_mode_tolerance=_get(
                block, "commonModeTolerance", int, _PATH, d.common_mode_tolerance
            ),
        )
    except ValueError as exc:
        raise UsageError(f"{_PATH}: {_camel(str(exc))}") from None
    out_block = block.get("outliers", {}) or {}
    if not isinstance(out_block, Mapping):
        raise UsageError(f"{_PATH}.outliers: must be an object, got {out_block!r}")
    o = OutlierSettings()
    opath = f"{_PATH}.outliers"
    try:
        outliers = OutlierSettings(
            false_alarm_rate=_get(out_block, "falseAlarmRate", float, opath, o.false_alarm_rate),
            consecutive=_get(out_block, "consecutive", int, opath, o.consecutive),
            signals=_signals(
                out_block.get("signals", list(o.signals)),
                f"{opath}.signals",
                {"loss": "loss", "eval": "eval"},
            ),
        )
    except ValueError as exc:
        raise UsageError(f"{opath}: {_camel(str(exc))}") from None
    action = block.get("action", InstabilitySettings.action)
    if action not in ACTIONS:
        raise UsageError(f"{_PATH}.action: must be one of {list(ACTIONS)}, got {action!r}")
    rw_block = block.get("rewind", {}) or {}
    if not isinstance(rw_block, Mapping):
        raise UsageError(f"{_PATH}.rewind: must be an object, got {rw_block!r}")
    r = RewindSettings()
    rpath = f"{_PATH}.rewind"
    rewind = RewindSettings(
        steps_before=_get(rw_block, "stepsBefore", int, rpath, r.steps_before),
        skip_batches=_get(rw_block, "skipBatches", int, rpath, r.skip_batches),
        max_rewinds=_get(rw_block, "maxRewinds", int, rpath, r.max_rewinds),
    )
    for key, value in (
        ("stepsBefore", rewind.steps_before),
        ("skipBatches", rewind.skip_batches),
        ("maxRewinds", rewind.max_rewinds),
    ):
        if value < 0:
            raise UsageError(f"{rpath}.{key}: must be >= 0, got {value}")
    return InstabilitySettings(spikes=spikes, outliers=outliers, action=action, rewind=rewind)
