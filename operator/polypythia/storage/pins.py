"""Checkpoint pins: a rewind's restart checkpoint stays whole from the moment it is chosen.

```
<run>/pins/step<N>.json      the pin: {step, attempt, reason, at}
<run>/pins/step<N>.pruning   a pruner at work on step N: {step, at}
```

The operator chooses a restart checkpoint while the old attempt may still be running (its
RayJob is deleted in the background), and that trainer keeps pruning resume checkpoints
(``keepResume``) and dropping optimiser state (``optimizerState: latest``). Both sides
write before they look, so one of them always sees the other:

- the pinner writes the pin, then looks for a pruner at work on the step, then for the
  checkpoint itself; finding a pruner, or no checkpoint, it withdraws the pin and the
  restart checkpoint is chosen again;
- a pruner announces itself (``.pruning``), then looks for a pin, and leaves a pinned
  checkpoint alone; it removes its announcement when done.

If a pruner deleted a checkpoint the pinner found, the pruner looked before the pin was
written, so it had announced itself before that, and the pinner, looking after writing
the pin, saw the announcement or, the prune done and its announcement removed, no
checkpoint (it looks for the checkpoint last for this reason). This needs
read-after-write and list-after-write consistency, which S3 (since 2020), MinIO and a
local disk give. An announcement left by a pruner that died is ignored after
``PRUNING_STALE_S``.

A pin is released when an attempt at least as new as the pin's has committed a newer
checkpoint (``release_reached``, called by the trainer), when the run ends
(``release_all``), or when a later rewind abandons the pinned step (``release_abandoned``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from polypythia.storage.base import StorageError, StorageNotFound

if TYPE_CHECKING:
    from polypythia.storage.layout import RunStore

PINS = "pins"
PRUNING_STALE_S = 3600.0  # an announcement this old is a pruner that died mid-way
_PIN = re.compile(r"^pins/step(\d+)\.json$")
_PRUNING = re.compile(r"^pins/step(\d+)\.pruning$")


class CheckpointUnavailable(StorageError):
    """The checkpoint chosen to restart from is gone or being pruned: choose again."""


def _pin_rel(step: int) -> str:
    return f"{PINS}/step{int(step)}.json"


def _pruning_rel(step: int) -> str:
    return f"{PINS}/step{int(step)}.pruning"


def _scan(run: RunStore) -> tuple[list[int], list[int]]:
    """One listing of ``pins/``: the pinned steps and the steps being pruned."""
    pinned, pruning = [], []
    for key in run.store.list(run.key(PINS) + "/"):
        rel = key[len(run.key()) + 1 :] if run.key() else key
        if m := _PIN.match(rel):
            pinned.append(int(m[1]))
        elif m := _PRUNING.match(rel):
            pruning.append(int(m[1]))
    return sorted(pinned), sorted(pruning)


def _read(run: RunStore, rel: str) -> dict | None:
    try:
        data = json.loads(run.store.get_bytes(run.key(rel)))
    except StorageNotFound:
        return None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def pins(run: RunStore) -> dict[int, dict]:
    """The run's pins by step (a pin whose body cannot be parsed still pins its step)."""
    out = {}
    for step in _scan(run)[0]:
        body = _read(run, _pin_rel(step))
        if body is not None:
            out[step] = {**body, "step": step}
    return out


def pinned_steps(run: RunStore) -> set[int]:
    """The pinned steps (one listing)."""
    return set(_scan(run)[0])


def being_pruned(run: RunStore, now: float | None = None) -> set[int]:
    """Steps a live pruner announced (announcements past ``PRUNING_STALE_S`` are not)."""
    now = time.time() if now is None else now
    live = set()
    for step in _scan(run)[1]:
        body = _read(run, _pruning_rel(step))  # None: the pruner finished meanwhile
        at = body.get("at") if body else None
        if isinstance(at, (int, float)) and now - at < PRUNING_STALE_S:
            live.add(step)
    return live


def rewind_candidates(run: RunStore, checkpoints: Iterable[int]) -> list[int]:
    """``checkpoints`` without the ones a pruner is deleting now: what a rewind may choose."""
    steps = sorted(checkpoints)
    busy = being_pruned(run) if steps else set()
    return [s for s in steps if s not in busy]


def pin(run: RunStore, step: int, attempt: int, reason: str, at: float | None = None) -> dict:
    """Pin checkpoint ``step`` for ``attempt`` (the attempt that will restart from it) and
    make sure it is still whole; returns the pin. CheckpointUnavailable (the pin withdrawn)
    when the checkpoint is gone or a pruner is at work on it."""
    entry = {
        "step": int(step),
        "attempt": int(attempt),
        "reason": reason,
        "at": time.time() if at is None else at,
    }
    run.store.put_bytes(run.key(_pin_rel(step)), json.dumps(entry, indent=2).encode() + b"\n")
    problem = None
    if int(step) in being_pruned(run):
        problem = "a trainer is pruning it"
    elif not run.is_complete(step):
        problem = "it is no longer complete (pruned or quarantined)"
    if problem is not None:
        release(run, step)
        raise CheckpointUnavailable(
            f"{run.uri}/checkpoints/step{int(step)}: cannot restart from it, {problem}; "
            "a restart checkpoint is chosen again"
        )
    return entry


def release(run: RunStore, step: int) -> None:
    """Remove the pin of ``step`` (absent: nothing to do)."""
    run.store.delete(run.key(_pin_rel(step)))


def release_reached(run: RunStore, step: int, attempt: int) -> list[int]:
    """``attempt`` committed checkpoint ``step``: release the pins it has gone past (older
    steps pinned for this attempt or an earlier one). A still-running older attempt never
    releases the pin of the attempt that replaces it. Returns the released steps."""
    done = [
        s
        for s, p in pins(run).items()
        if s < step and int(p.get("attempt", attempt + 1)) <= attempt
    ]
    for s in done:
        release(run, s)
    return done


def release_all(run: RunStore) -> list[int]:
    """The run ended: nothing restarts from its pins any more. Returns the released steps."""
    steps = sorted(pinned_steps(run))
    for s in steps:
        release(run, s)
    return steps


def release_abandoned(run: RunStore, rewinds: list[dict]) -> list[int]:
    """Release pins past the latest rewind's restart step: that rewind abandoned the
    timeline they belonged to (pins are only made by rewinds, so every pin past it is
    older than it). Returns the released steps."""
    if not rewinds:
        return []
    restart = int(rewinds[-1]["restartStep"])
    done = [s for s in sorted(pinned_steps(run)) if s > restart]
    for s in done:
        release(run, s)
    return done


def _announce(run: RunStore, step: int) -> None:
    body = {"step": int(step), "at": time.time()}
    run.store.put_bytes(run.key(_pruning_rel(step)), json.dumps(body).encode() + b"\n")


def prune(run: RunStore, step: int) -> bool:
    """Delete checkpoint ``step`` unless it is pinned; returns whether it was deleted."""
    _announce(run, step)
    try:
        if int(step) in pinned_steps(run):
            return False
        run.delete_checkpoint(step)
        return True
    finally:
        run.store.delete(run.key(_pruning_rel(step)))


def prune_files(run: RunStore, step: int, drop: Callable[[str], bool], reason: str) -> int | None:
    """``RunStore.drop_checkpoint_files`` unless ``step`` is pinned (None then): a pinned
    checkpoint keeps its optimiser state for the attempt that restarts from it."""
    _announce(run, step)
    try:
        if int(step) in pinned_steps(run):
            return None
        return run.drop_checkpoint_files(step, drop, reason)
    finally:
        run.store.delete(run.key(_pruning_rel(step)))
