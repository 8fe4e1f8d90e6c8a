"""The one set of run phases: the local driver, the operator's status, the exporter's
``polypythia_run_phase`` and the docs all use these words.

Terminal helpers sit next to the enum (as KubeRay keeps its own next to its status
types), so no caller keeps its own tuple of "ended" phases.
"""

from __future__ import annotations

from enum import StrEnum


class RunPhase(StrEnum):
    """Where one run of a sweep stands (a ``str``: it is written as is into status rows,
    metric labels and log lines)."""

    PENDING = "Pending"  # not started: waiting for a slot, its reference run or the budget
    QUEUED = "Queued"  # an attempt exists but is not training yet (RayJob starting, Kueue)
    RUNNING = "Running"  # an attempt is training
    RETRYING = "Retrying"  # the last attempt failed; the next one spends a retry
    PREEMPTED = "Preempted"  # the last attempt lost its pods; the next one spends no retry
    SUSPENDED = "Suspended"  # spec.suspend holds the attempt
    SUCCEEDED = "Succeeded"  # the final checkpoint exists
    FAILED = "Failed"  # no attempt will follow (retries spent, input refused, reference lost)
    STOPPED = "Stopped"  # local mode: the driver was interrupted; the next `run` resumes it

    @property
    def terminal(self) -> bool:
        """No attempt of this run will start again in this driver or operator pass."""
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """An attempt exists and holds (or waits for) its resources."""
        return self in ACTIVE

    @property
    def waiting(self) -> bool:
        """The run needs a new attempt (first, retry or after preemption)."""
        return self in WAITING


TERMINAL: frozenset[RunPhase] = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.STOPPED})
ACTIVE: frozenset[RunPhase] = frozenset({RunPhase.QUEUED, RunPhase.RUNNING, RunPhase.SUSPENDED})
WAITING: frozenset[RunPhase] = frozenset({RunPhase.PENDING, RunPhase.RETRYING, RunPhase.PREEMPTED})


def is_terminal(phase: str | None) -> bool:
    """``phase`` (a status row's string, possibly absent) is terminal."""
    return phase in TERMINAL
