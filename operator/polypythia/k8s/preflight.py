"""Before a sweep's RayJobs start: its bucket and ``s3://`` data paths exist and answer.

A missing bucket or dataset would otherwise show only as RayJobs failing minutes later,
each spending a retry. Instead the sweep gets ``StorageReady=False`` with a reason and a
message naming the URI, one Event per change, and no new RayJob until the check passes;
the check is retried with backoff and the condition turns True once storage answers.
Local data paths (inside the image or a volume) cannot be seen from the operator and are
left to the trainer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from polypythia.errors import UsageError
from polypythia.k8s import reconcile as R
from polypythia.storage import StorageError, StorageUnavailable, open_store
from polypythia.storage.uri import connection

CONDITION = "StorageReady"
FIRST_RETRY_S = 10.0
MAX_RETRY_S = 300.0
RECHECK_OK_S = 600.0  # a bucket deleted under a running sweep is noticed within this


@dataclass(frozen=True)
class Target:
    """One thing that must exist: ``field`` of the spec, its ``uri``, and whether only
    the bucket is checked (the storage prefix need not exist before the first run)."""

    field: str
    uri: str
    bucket_only: bool = False


@dataclass(frozen=True)
class Finding:
    """The check's verdict as a condition's status, reason and message."""

    ok: bool
    reason: str
    message: str


def targets(spec: dict) -> list[Target]:
    """What a sweep needs in S3 before any run can start (pure: no I/O)."""
    out: list[Target] = []
    bucket = (spec.get("storage") or {}).get("bucket")
    if bucket:
        out.append(Target("spec.storage.bucket", f"s3://{bucket}", bucket_only=True))
    data = spec.get("data") or {}
    for name in ("path", "validationPath"):
        prefix = data.get(name)
        if isinstance(prefix, str) and prefix.startswith("s3://"):
            out += [Target(f"spec.data.{name}", prefix + suffix) for suffix in (".bin", ".idx")]
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer.startswith("s3://"):
        out.append(Target("spec.data.tokenizer", tokenizer))
    return out


def probe(wanted: list[Target], opener: Callable[[str], tuple[object, str]]) -> Finding:
    """Check each target through ``opener(uri) -> (store, key)``; the first problem wins."""
    if not wanted:
        return Finding(True, "NothingToCheck", "no s3:// bucket or data path in the spec")
    for target in wanted:
        try:
            store, key = opener(target.uri)
            if target.bucket_only:
                found = store.bucket_exists()  # type: ignore[attr-defined]
            else:
                found = store.exists(key) or bool(store.list(key.rstrip("/") + "/"))  # type: ignore[attr-defined]
        except StorageUnavailable as exc:
            return Finding(False, "StorageUnreachable", f"{target.field}: {target.uri}: {exc}")
        except (StorageError, UsageError, ValueError) as exc:
            # Denied, or not addressable at all (no endpoint, a bad bucket name).
            return Finding(False, "StorageRefused", f"{target.field}: {target.uri}: {exc}")
        if not found:
            what = "bucket" if target.bucket_only else "object"
            reason = "BucketMissing" if target.bucket_only else "DataMissing"
            return Finding(
                False,
                reason,
                f"{target.field}: {what} {target.uri} does not exist; no run starts until it does",
            )
    shown = ", ".join(t.uri for t in wanted[:4]) + (", ..." if len(wanted) > 4 else "")
    return Finding(True, "Reachable", f"reachable: {shown}")


def opener_for(
    spec: dict, credentials: tuple[str | None, str | None], default_endpoint: str | None
) -> Callable[[str], tuple[object, str]]:
    """``open_store`` with the sweep's endpoint and the credentials the operator uses."""
    options = connection(spec.get("storage"), default_endpoint)

    def opener(uri: str) -> tuple[object, str]:
        return open_store(uri, **options, access_key=credentials[0], secret_key=credentials[1])

    return opener


class Preflight:
    """One sweep's check with its backoff: failing checks are retried after 10 s,
    doubling up to 5 minutes; a passing one is repeated every 10 minutes, and at once
    whenever the targets change (a spec edit)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.wanted: list[Target] | None = None
        self.finding: Finding | None = None
        self.next_at = 0.0
        self.delay = FIRST_RETRY_S

    def due(self, wanted: list[Target]) -> bool:
        """Whether to probe now (else the last finding stands)."""
        return wanted != self.wanted or self.finding is None or self.clock() >= self.next_at

    def record(self, wanted: list[Target], finding: Finding) -> Finding:
        """Keep ``finding`` and schedule the next probe."""
        if wanted != self.wanted:
            self.delay = FIRST_RETRY_S
        self.wanted, self.finding = wanted, finding
        if finding.ok:
            self.delay = FIRST_RETRY_S
            self.next_at = self.clock() + RECHECK_OK_S
        else:
            self.next_at = self.clock() + self.delay
            self.delay = min(self.delay * 2, MAX_RETRY_S)
        return finding


def gate(
    outcome: R.Outcome, finding: Finding, previous: dict, now: str, generation: int | None
) -> R.Outcome:
    """``outcome`` with the StorageReady condition; while storage is not ready, no new
    RayJob is created (running ones go on), Ready is False with the same reason, and
    one Event marks each change of the condition."""
    status = dict(outcome.status)
    storage = R.condition(
        CONDITION, finding.ok, finding.reason, finding.message, previous, now, generation
    )
    conditions = [c for c in status.get("conditions", []) if c.get("type") != CONDITION]
    actions = list(outcome.actions)
    if not finding.ok:
        ready = R.condition(
            "Ready", False, finding.reason, finding.message, previous, now, generation
        )
        conditions = [ready, *(c for c in conditions if c.get("type") != "Ready")]
        actions = [a for a in actions if not isinstance(a, R.CreateRayJob)]
    status["conditions"] = [*conditions, storage]
    old = next((c for c in previous.get("conditions", []) if c.get("type") == CONDITION), None)
    changed = old is None or (old.get("status"), old.get("reason")) != (
        storage["status"],
        storage["reason"],
    )
    if changed and not (old is None and finding.ok):
        kind = "Normal" if finding.ok else "Warning"
        reason = "StorageReady" if finding.ok else finding.reason
        actions.append(R.Event(reason, finding.message[:1000], kind))
    return replace(outcome, status=status, actions=actions)
