"""The sweep's ``spec.instability`` block -> typed monitoring settings.

Field names and defaults match the CRD (camelCase there, snake_case here; each default
is written once, in the dataclasses, and tests/core/test_crd_defaults.py holds it to the
CRD's); a bad value raises UsageError naming ``spec.instability.<field>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from polypythia.errors import UsageError
from polypythia.monitoring.outliers import OutlierSettings
from polypythia.monitoring.spikes import SpikeSettings
from polypythia.output import camel
from polypythia.typed import build, camel_names

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
        spikes = build(SpikeSettings, block, _PATH, signals=signals)
    except ValueError as exc:
        raise UsageError(f"{_PATH}: {camel_names(str(exc))}") from None
    out_block = block.get("outliers", {}) or {}
    if not isinstance(out_block, Mapping):
        raise UsageError(f"{_PATH}.outliers: must be an object, got {out_block!r}")
    o = OutlierSettings()
    opath = f"{_PATH}.outliers"
    signals = _signals(
        out_block.get("signals", list(o.signals)),
        f"{opath}.signals",
        {"loss": "loss", "eval": "eval"},
    )
    try:
        outliers = build(OutlierSettings, out_block, opath, signals=signals)
    except ValueError as exc:
        raise UsageError(f"{opath}: {camel_names(str(exc))}") from None
    action = block.get("action", InstabilitySettings.action)
    if action not in ACTIONS:
        raise UsageError(f"{_PATH}.action: must be one of {list(ACTIONS)}, got {action!r}")
    rw_block = block.get("rewind", {}) or {}
    if not isinstance(rw_block, Mapping):
        raise UsageError(f"{_PATH}.rewind: must be an object, got {rw_block!r}")
    rpath = f"{_PATH}.rewind"
    rewind = build(RewindSettings, rw_block, rpath)
    for f in fields(rewind):
        value = getattr(rewind, f.name)
        if value < 0:
            raise UsageError(f"{rpath}.{camel(f.name)}: must be >= 0, got {value}")
    return InstabilitySettings(spikes=spikes, outliers=outliers, action=action, rewind=rewind)
