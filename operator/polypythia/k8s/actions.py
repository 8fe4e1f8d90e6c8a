"""What reconcile asks the handler to do (create, delete, annotate, suspend children;
record a spike action in storage; emit an Event), and what it needs from outside the
sweep (images, blockers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polypythia.k8s.rayjob import ClusterSettings
from polypythia.runcore.monitor import RecordRefusal, RecordRewind


@dataclass(frozen=True)
class CreateRayJob:
    """Create attempt ``attempt`` of ``run`` (``body`` is the rendered RayJob)."""

    run: str
    attempt: int
    body: dict


@dataclass(frozen=True)
class DeleteRayJob:
    """Delete a RayJob (a run left the sweep, a rewind replaces it, Kueue suspends it)."""

    name: str
    # Foreground: the RayJob goes only after its RayCluster and pods are gone, so a
    # rewind's next attempt never overlaps the old trainer.
    foreground: bool = False
    # Set for a rewind's deletion: the handler skips it when the rewind's record failed.
    run: str | None = None


@dataclass(frozen=True)
class AnnotateRayJob:
    """Add annotations to a RayJob (the operator's own verdicts, e.g. timed out)."""

    name: str
    annotations: dict


@dataclass(frozen=True)
class SuspendRayJob:
    """Set a RayJob's ``spec.suspend`` (spec.suspend of the sweep, a timed-out attempt)."""

    name: str
    suspend: bool


@dataclass(frozen=True)
class CreateEvalJob:
    """Create an eval Job for ``steps`` of ``run``."""

    run: str
    steps: tuple[int, ...]
    body: dict


@dataclass(frozen=True)
class DeleteEvalJob:
    """Delete an eval Job whose run left the sweep."""

    name: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the sweep."""

    reason: str
    message: str
    type: str = "Normal"
    run: str | None = None  # set for a rewind's Event (see DeleteRayJob.run)


Action = (
    CreateRayJob
    | DeleteRayJob
    | AnnotateRayJob
    | SuspendRayJob
    | CreateEvalJob
    | DeleteEvalJob
    | Event
    | RecordRewind
    | RecordRefusal
)


@dataclass
class Outcome:
    actions: list[Action] = field(default_factory=list)
    status: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Images:
    trainer: str
    eval: str
    storage_endpoint: str | None = None
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass(frozen=True)
class Blockers:
    """What the handler found outside the sweep that must stop new runs, or allow more.

    ``secret``: why the storage Secret is unusable (missing). ``allow_destructive``: the
    sweep's allow-destructive-changes annotation. ``clusters``: RayJobs whose RayCluster
    still exists (KubeRay has not finished deleting it: its GPUs are still held)."""

    secret: str | None = None
    allow_destructive: bool = False
    clusters: frozenset[str] = frozenset()
