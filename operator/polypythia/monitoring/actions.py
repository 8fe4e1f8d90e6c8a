"""What to do about a spike when the sweep's action is ``rewind`` (pure decision).

PaLM's recipe: restart from a checkpoint about 100 steps before the spike and skip
a few hundred batches around it. The operator or local driver carries the
decision out (new attempt from ``restart_step`` with ``skip_batches`` added to the
run config's ``data.skipBatches``) and records it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from polypythia.monitoring.settings import RewindSettings
from polypythia.monitoring.spikes import SpikeEvent


@dataclass(frozen=True)
class RewindDecision:
    """``rewind``: restart from ``restart_step``'s checkpoint and skip batches
    ``skip_batches[0]`` (inclusive) to ``skip_batches[1]`` (exclusive), 0-based batch
    indices (optimiser step k consumes batch k - 1). ``refuse``: ``reason`` says why."""

    action: Literal["rewind", "refuse"]
    reason: str
    restart_step: int | None = None
    skip_batches: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "reason": self.reason,
            "restartStep": self.restart_step,
            "skipBatches": list(self.skip_batches) if self.skip_batches else None,
        }


def decide_rewind(
    spike: SpikeEvent,
    complete_checkpoints: Iterable[int],
    settings: RewindSettings,
    rewinds_done: int,
) -> RewindDecision:
    """Restart from the last complete checkpoint at least ``steps_before`` steps before
    the spike's onset, skipping ``skip_batches`` batches from there on; refuse when the
    run has used its ``max_rewinds`` or no checkpoint is early enough."""
    if rewinds_done >= settings.max_rewinds:
        return RewindDecision(
            "refuse",
            f"run {spike.run}: {rewinds_done} rewinds done, maxRewinds is {settings.max_rewinds}",
        )
    latest_allowed = spike.onset_step - settings.steps_before
    usable = [s for s in complete_checkpoints if 0 <= s <= latest_allowed]
    if not usable:
        return RewindDecision(
            "refuse",
            f"run {spike.run}: no complete checkpoint at or before step {latest_allowed} "
            f"({settings.steps_before} steps before the spike at {spike.onset_step}); "
            "ask for resume checkpoints more often",
        )
    restart = max(usable)
    first = max(restart, latest_allowed)
    return RewindDecision(
        "rewind",
        f"{spike.signal} spike at step {spike.onset_step} ({spike.magnitude:.1f} sd): "
        f"restart from step {restart}, skip batches [{first}, {first + settings.skip_batches})",
        restart_step=restart,
        skip_batches=(first, first + settings.skip_batches),
    )
