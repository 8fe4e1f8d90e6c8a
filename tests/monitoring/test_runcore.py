"""The run core's per-run monitor and spike actions (the local driver and the operator
both hand their telemetry to it, so these rules hold in both modes)."""

from __future__ import annotations

import math
from pathlib import Path

from polypythia.monitoring.settings import InstabilitySettings, RewindSettings
from polypythia.monitoring.spikes import SpikeSettings
from polypythia.runcore.monitor import (
    RecordRefusal,
    RecordRewind,
    RunMonitor,
    next_spike_action,
    stored_history,
)
from polypythia.runcore.phase import RunPhase, is_terminal
from polypythia.runcore.schedule import (
    PENDING_GRACE_S,
    failure_budget_spent,
    pending_too_long,
    reference_gate,
)
from polypythia.storage import RunStore

SPIKES = SpikeSettings(signals=("loss",))
REWIND = InstabilitySettings(
    spikes=SPIKES,
    action="rewind",
    rewind=RewindSettings(steps_before=10, skip_batches=5, max_rewinds=1),
)


def _records(first: int, last: int, spike_at: int | None = None, attempt: int = 0) -> list[dict]:
    """A gently falling loss; four steps of blow-up from ``spike_at``."""
    out = []
    for step in range(first, last + 1):
        spiking = spike_at is not None and spike_at <= step < spike_at + 4
        loss = 8.0 if spiking else 3.0 - 0.002 * step + 0.01 * math.sin(1.7 * step)
        out.append({"step": step, "loss": loss, "attempt": attempt})
    return out


def test_a_non_finite_loss_is_a_spike_and_never_a_checkpoint_loss() -> None:
    monitor = RunMonitor("r", SPIKES, frozenset({50, 60}))
    monitor.ingest(_records(1, 59))
    events = monitor.ingest([{"step": 60, "loss": float("nan")}, {"step": 61, "loss": None}])
    assert [e.status for e in events] == ["open"] and events[0].onset_step == 60
    assert sorted(monitor.checkpoint_losses) == [50]  # step 60's loss was NaN
    assert monitor.step == 61 and math.isnan(monitor.loss)  # step 61 has no loss: 60's stays


def test_overlapping_reads_are_fed_once() -> None:
    monitor = RunMonitor("r", SPIKES, frozenset())
    monitor.ingest(_records(1, 80, spike_at=61))
    assert monitor.ingest(_records(50, 80, spike_at=61)) == []
    assert len(monitor.spikes) == 1 and monitor.step == 80


def test_rewind_then_refusal_each_spike_once() -> None:
    monitor = RunMonitor("r", SPIKES, frozenset())
    monitor.ingest(_records(1, 70, spike_at=61))
    recorded: dict[str, list[dict]] = {"rewinds": [], "refused": []}
    action = next_spike_action(monitor, recorded, range(0, 70, 10), REWIND)
    assert isinstance(action, RecordRewind)
    assert (action.restart_step, action.skip_batches) == (50, (51, 56))
    # Recorded (by the driver or the operator's handler): the same spike needs nothing more.
    recorded["rewinds"].append({"restartStep": 50, "spike": action.spike})
    assert next_spike_action(monitor, recorded, range(0, 70, 10), REWIND) is None
    monitor.rewound(50, _records(1, 50))
    assert len(monitor.spikes) == 1 and monitor.step == 50  # counted once, history cut
    monitor.ingest(_records(51, 90, spike_at=81, attempt=1))
    refusal = next_spike_action(monitor, recorded, range(0, 80, 10), REWIND)
    assert isinstance(refusal, RecordRefusal) and "maxRewinds is 1" in refusal.reason


def test_a_rewound_run_read_back_from_storage_has_the_live_monitors_checkpoint_losses(
    tmp_path: Path,
) -> None:
    # What the report and `polypythia outliers` test (stored_history) is what the live
    # monitor tested: the abandoned timeline's checkpoint losses gone, NaN never a score.
    planned = [0, 20, 40, 60, 62, 70, 80, 90]
    config = {"size": "nano", "init": {"strategy": "pythia", "name": None},
              "checkpoints": {"steps": planned}}  # fmt: skip
    store = RunStore.open(str(tmp_path / "r"))
    store.write_run_config(config)
    monitor = RunMonitor("r", SPIKES, frozenset(planned))
    first = _records(1, 70, spike_at=61)
    store.append_telemetry(first, attempt=0)
    monitor.ingest(first)
    assert monitor.checkpoint_losses[62] == 8.0  # the spike, caught by a checkpoint
    store.record_rewind(50, (51, 56), {"signal": "loss", "onsetStep": 61, "attempt": 0})
    monitor.rewound(50, store.read_telemetry())
    second = _records(51, 90, attempt=1)
    second[80 - 51]["loss"] = float("nan")
    store.append_telemetry(second, attempt=1)
    monitor.ingest(second)
    stored = stored_history("r", store.read_run_config(), store.read_telemetry(), {})
    assert stored.losses == monitor.checkpoint_losses
    assert sorted(stored.losses) == [20, 40, 60, 62, 70, 90] and stored.losses[62] < 3.0
    assert stored.group == "nano/pythia"
    branch = {**config, "branch": {"parent": "s3://b/sw/sw-nano-s0", "step": 30}}
    assert (
        stored_history("b", branch, [], {}).group == "nano/pythia from s3://b/sw/sw-nano-s0@step30"
    )


def test_observe_and_alert_take_no_action() -> None:
    monitor = RunMonitor("r", SPIKES, frozenset())
    monitor.ingest(_records(1, 70, spike_at=61))
    observe = InstabilitySettings(spikes=SPIKES)
    assert next_spike_action(monitor, {"rewinds": [], "refused": []}, [50], observe) is None
    assert monitor.unhandled == []


def test_phases_and_scheduling_rules() -> None:
    assert [p for p in RunPhase if p.terminal] == ["Succeeded", "Failed", "Stopped"]
    assert is_terminal("Failed") and not is_terminal(None) and not is_terminal("Retrying")
    phases = {"ref": RunPhase.RUNNING}
    assert reference_gate("ref", phases).verdict == "wait"
    assert reference_gate("ref", {"ref": "Succeeded"}).verdict == "start"
    assert reference_gate("ref", {"ref": "Failed"}).verdict == "fail"
    assert reference_gate(None, {}).verdict == "start"
    assert failure_budget_spent(["Failed", "Running", "Failed"], 2)
    assert not failure_budget_spent(["Failed", "Running"], 2)
    assert not failure_budget_spent(["Failed"] * 5, None)
    assert not pending_too_long(600 + PENDING_GRACE_S, 600)
    assert pending_too_long(601 + PENDING_GRACE_S, 600)
    assert not pending_too_long(10**6, None)
