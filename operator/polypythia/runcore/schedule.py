"""When a run may start: the rules the local driver and the operator share.

Pure: phases and numbers in, a verdict out; the driver compares wall-clock seconds, the
operator RayJob timestamps, with the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from polypythia.runcore.phase import RunPhase

# KubeRay >= 1.6 fails an attempt past preRunningDeadlineSeconds itself; the operator
# (and the local driver, which has no KubeRay) does it this much later, same rule.
PENDING_GRACE_S = 60


@dataclass(frozen=True)
class Gate:
    """``start``; ``wait`` (``message`` says for what); ``fail``: it never can start."""

    verdict: Literal["start", "wait", "fail"]
    message: str = ""


def reference_gate(requires: str | None, phases: Mapping[str, str]) -> Gate:
    """A run initialised from another run's checkpoint starts once that run *succeeded*
    (its checkpoint is final and verified); it fails when that run ended otherwise."""
    if requires is None:
        return Gate("start")
    phase = phases.get(requires)
    if phase == RunPhase.SUCCEEDED:
        return Gate("start")
    if phase in (RunPhase.FAILED, RunPhase.STOPPED):
        return Gate(
            "fail",
            f"reference run {requires} {str(phase).lower()}; no checkpoint to initialise from",
        )
    return Gate("wait", f"waiting for reference run {requires} to finish")


def failure_budget_spent(phases: Iterable[str], max_failed: int | None) -> bool:
    """``spec.maxFailedRuns``: once that many runs failed, no run starts (0/None: no budget)."""
    return bool(max_failed) and sum(1 for p in phases if p == RunPhase.FAILED) >= int(max_failed)  # type: ignore[arg-type]


def budget_message(phases: Iterable[str], max_failed: int) -> str:
    failed = sum(1 for p in phases if p == RunPhase.FAILED)
    return f"not started: {failed} run(s) failed, spec.maxFailedRuns is {max_failed}"


def may_retry(retries_spent: int, max_retries: int) -> bool:
    """``spec.maxRetries``: a failed attempt (not a preemption) is retried while fewer
    than that many retries were spent."""
    return retries_spent < int(max_retries)


def pending_too_long(waited_s: float, timeout_s: int | None) -> bool:
    """``spec.pendingTimeoutSeconds``: an attempt that has not started training this long
    after it began (plus ``PENDING_GRACE_S``) has failed."""
    return bool(timeout_s) and waited_s > int(timeout_s) + PENDING_GRACE_S  # type: ignore[arg-type]


def pending_message(timeout_s: int) -> str:
    return (
        f"attempt did not start training within spec.pendingTimeoutSeconds "
        f"({timeout_s} s; pods unschedulable, image not pullable or a Secret missing?)"
    )
