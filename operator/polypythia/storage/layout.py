"""The storage layout of runs and sweeps (docs/contracts.md "Storage layout").

```
<run>/run.json
<run>/telemetry/<first:09d>-<last:09d>[.a<attempt>].jsonl
<run>/checkpoints/step<N>/...        COMPLETE written last
<run>/evals/step<N>.json
<run>/telemetry/rewinds.json         spike rewinds and refusals (see ``RunStore.record_rewind``)
<run>/pins/step<N>.json              a rewind's restart checkpoint, kept whole (``storage.pins``)
<run>/quarantine/step<N>-<time>/...  a damaged checkpoint, moved aside (never deleted)
<run>/history.json                   accepted config changes (``--allow-changes``)
<run>/optimizer-restarts.json        starts from a checkpoint without optimiser state
<run>/LEASE                          the one writer of the run (``storage.lease``)
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from polypythia.storage import pins
from polypythia.storage.base import ObjectStore, StorageError, StorageNotFound, check_key
from polypythia.storage.local import TEMP_MARK
from polypythia.storage.uri import open_store

log = logging.getLogger(__name__)

RUN_CONFIG = "run.json"
# The sweep as last applied (beside its runs): what a report made later reads its settings from.
APPLIED_SWEEP = "sweep.json"
COMPLETE = "COMPLETE"
REWINDS = "telemetry/rewinds.json"  # beside the telemetry it cuts: one listing sees both
_TELEMETRY = re.compile(r"^(\d{9,})-(\d{9,})(?:\.a(\d+))?\.jsonl$")
_CHECKPOINT = re.compile(r"^checkpoints/step(\d+)/COMPLETE$")
_EVAL = re.compile(r"^evals/step(\d+)\.json$")
HISTORY = "history.json"
OPTIMIZER_RESTARTS = "optimizer-restarts.json"
QUARANTINE = "quarantine"
_HASH_CHUNK = 8 << 20


class CheckpointDamaged(StorageError):
    """A checkpoint whose files do not match its COMPLETE manifest (size or sha256)."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TelemetryFile:
    """One telemetry batch as named in storage: steps ``first``..``last`` of ``attempt``.

    ``rel`` is its path inside the run folder (``telemetry/...jsonl``).
    """

    rel: str
    first: int
    last: int
    attempt: int

    @staticmethod
    def name(first: int, last: int, attempt: int) -> str:
        """The file name for a batch; attempt 0 carries no suffix."""
        suffix = f".a{attempt}" if attempt > 0 else ""
        return f"{first:09d}-{last:09d}{suffix}.jsonl"


def resolve_history(
    records: list[dict],
    starts: dict[int, int],
    rewinds: list[tuple[int, int]] = (),
) -> list[dict]:
    """One clean history from the records of several attempts, sorted by step.

    For each step the record of the highest attempt wins. A record of attempt ``a`` at
    a step at or past the first step of any later attempt is dropped too: that later
    attempt resumed (or rewound) from an earlier checkpoint, so the older attempt's
    records from there on belong to an abandoned history. ``starts`` maps attempt to
    its first step. ``rewinds`` are ``(restart_step, attempt)`` pairs from
    ``rewinds.json``: records of attempts before ``attempt`` past ``restart_step`` are
    abandoned even before the rewound attempt has written anything.
    """
    cutoff: dict[int, float] = {}
    later_start = float("inf")
    for attempt in sorted(starts, reverse=True):
        cutoff[attempt] = later_start
        later_start = min(later_start, starts[attempt])
    best: dict[int, dict] = {}
    for rec in records:
        step, attempt = rec["step"], rec["attempt"]
        if step >= cutoff.get(attempt, float("inf")):
            continue
        if any(attempt < first and step > restart for restart, first in rewinds):
            continue
        if step not in best or attempt >= best[step]["attempt"]:
            best[step] = rec
    return [best[s] for s in sorted(best)]


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


_Folder = TypeVar("_Folder", bound="StoreFolder")


class StoreFolder:
    """A folder of a store (a run's, a sweep's) with the URI it was opened at."""

    def __init__(self, store: ObjectStore, prefix: str, uri: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._uri = uri.rstrip("/")

    @classmethod
    def open(cls: type[_Folder], uri: str, **store_kwargs) -> _Folder:
        """Open the folder at ``uri``: a local path or ``s3://bucket/prefix`` (a run's
        ``<storage.uri>/<sweep>/<run>``, a sweep's ``<storage.uri>/<sweep>``)."""
        store, prefix = open_store(uri, **store_kwargs)
        return cls(store, prefix, store.url(prefix))

    @property
    def uri(self) -> str:
        """The folder's URI (local paths absolute)."""
        return self._uri

    def key(self, *parts: str) -> str:
        """The store key of a path inside the folder."""
        return _join(self.prefix, *parts)

    def _read_json(self, rel: str):
        data = self.store.get_bytes(self.key(rel))
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{self._uri}/{rel}: not valid JSON ({exc})") from None

    def _write_json(self, rel: str, obj) -> None:
        self.store.put_bytes(self.key(rel), json.dumps(obj, indent=2).encode() + b"\n")


class RunStore(StoreFolder):
    """Everything one run keeps in storage: config, telemetry, checkpoints, evaluations."""

    def __repr__(self) -> str:
        return f"RunStore({self._uri!r})"

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _list(self, folder: str) -> list[str]:
        """Keys under a run sub-folder, relative to the run folder."""
        return [self._rel(k) for k in self.store.list(self.key(folder) + "/")]

    # run config

    def write_run_config(self, cfg: dict) -> None:
        """Store the resolved run config (what the trainer ran)."""
        self._write_json(RUN_CONFIG, cfg)

    def read_run_config(self) -> dict:
        """The resolved run config; StorageNotFound when the run was never planned."""
        return self._read_json(RUN_CONFIG)

    # telemetry

    def telemetry_files(self) -> list[TelemetryFile]:
        """The telemetry batches in storage, parsed from their names (one listing)."""
        return self._scan_telemetry()[0]

    def _scan_telemetry(self) -> tuple[list[TelemetryFile], bool]:
        """One listing of ``telemetry/``: the batches, and whether a rewind record is there."""
        files = []
        rewound = False
        for rel in self._list("telemetry"):
            rewound = rewound or rel == REWINDS
            m = _TELEMETRY.match(rel.rpartition("/")[2])
            if m and "/" not in rel[len("telemetry/") :]:
                files.append(TelemetryFile(rel, int(m[1]), int(m[2]), int(m[3] or 0)))
        return sorted(files, key=lambda f: (f.first, f.attempt)), rewound

    def append_telemetry(self, records: list[dict], attempt: int) -> str | None:
        """Write one batch of step records as a new JSONL file; return its key.

        Records without ``attempt`` get this one; writing the same batch again replaces
        the file, so a retried flush is harmless. An empty batch writes nothing.
        """
        if attempt < 0:
            raise ValueError(f"telemetry attempt must be >= 0, got {attempt}")
        if not records:
            return None
        batch = []
        for rec in records:
            if not isinstance(rec.get("step"), int) or rec["step"] < 0:
                raise ValueError(f"telemetry record needs an integer step >= 0: {rec!r}")
            if rec.get("attempt", attempt) != attempt:
                raise ValueError(
                    f"telemetry record of attempt {rec['attempt']} in attempt {attempt}"
                )
            batch.append({**rec, "attempt": attempt})
        steps = [r["step"] for r in batch]
        key = self.key("telemetry", TelemetryFile.name(min(steps), max(steps), attempt))
        body = "".join(json.dumps(r, allow_nan=True) + "\n" for r in batch)
        self.store.put_bytes(key, body.encode())
        return key

    def _read_telemetry_file(self, f: TelemetryFile) -> list[dict]:
        text = self.store.get_bytes(self.key(f.rel)).decode()
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise StorageError(f"{self._uri}/{f.rel} line {n}: {exc}") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                    raise StorageError(f"{self._uri}/{f.rel} line {n}: no integer 'step'")
                rec.setdefault("attempt", f.attempt)
                out.append(rec)
        return out

    def read_telemetry(self) -> list[dict]:
        """The run's step records as one clean history (see ``resolve_history``)."""
        return self.read_telemetry_since(-1)

    def read_telemetry_since(self, step: int) -> list[dict]:
        """Records of steps after ``step``, reading only batches that reach past it.

        Cheap for monitors that poll: one listing plus the new batches. A monitor that
        sees ``next_attempt()`` grow should re-read from the new attempt's first step.
        """
        files, rewound = self._scan_telemetry()
        starts: dict[int, int] = {}
        for f in files:
            starts[f.attempt] = min(f.first, starts.get(f.attempt, f.first))
        records = [
            rec
            for f in files
            if f.last > step
            for rec in self._read_telemetry_file(f)
            if rec["step"] > step
        ]
        rewinds = self.read_rewinds()["rewinds"] if rewound else []
        cuts = [(r["restartStep"], r["attempt"]) for r in rewinds]
        return resolve_history(records, starts, cuts)

    def next_attempt(self) -> int:
        """The attempt number a (re)start of the run writes with: 0 on the first start.

        Never below a recorded rewind's attempt: the timeline after a rewind starts there.
        """
        files, rewound = self._scan_telemetry()
        written = 1 + max((f.attempt for f in files), default=-1)
        rewinds = self.read_rewinds()["rewinds"] if rewound else []
        return max([written] + [r["attempt"] for r in rewinds])

    # checkpoints

    def checkpoint_key(self, step: int, rel: str = "") -> str:
        """The store key of a checkpoint folder (Pythia revision name) or a file in it."""
        return self.key("checkpoints", f"step{int(step)}", rel)

    def complete_checkpoints(self) -> list[int]:
        """Steps whose checkpoint is complete; one without COMPLETE does not exist."""
        steps = (_CHECKPOINT.match(rel) for rel in self._list("checkpoints"))
        return sorted(int(m[1]) for m in steps if m)

    def is_complete(self, step: int) -> bool:
        """Whether the checkpoint of ``step`` is complete."""
        return self.store.exists(self.checkpoint_key(step, COMPLETE))

    def commit_checkpoint(self, step: int, local_dir: Path, attempt: int | None = None) -> dict:
        """Upload every file under ``local_dir``, then COMPLETE; return the manifest.

        A checkpoint already there for this step (complete or a crashed upload) is
        removed first, so the step is invisible until the new COMPLETE lands; so is an
        evaluation of it, which belonged to the old weights (a rewound timeline). On a
        local store the trainer may write straight into the folder ``checkpoints/step<N>``:
        committing that folder only writes COMPLETE. The manifest lists each file's size
        and sha256, which every reader checks before it trusts the checkpoint.
        ``attempt`` (the writer's telemetry attempt) goes into the manifest, so a
        checkpoint of a timeline abandoned by a rewind can be told apart.
        """
        local_dir = Path(local_dir)
        files = sorted(
            p
            for p in local_dir.rglob("*")
            if p.is_file()
            and p.relative_to(local_dir).as_posix() != COMPLETE
            and not p.name.startswith(TEMP_MARK)
        )
        if not files:
            raise ValueError(f"checkpoint step{step}: {local_dir} holds no files")
        in_store = self.store.local_dir(self.checkpoint_key(step))
        in_place = in_store is not None and local_dir.resolve() == in_store.resolve()
        if in_place:
            self.store.delete(self.checkpoint_key(step, COMPLETE))
        else:
            self.delete_checkpoint(step)
        self.store.delete(self.key(f"evals/step{int(step)}.json"))
        manifest = {"step": step, "time": time.time(), "files": []}
        if attempt is not None:
            manifest["attempt"] = attempt
        for path in files:
            rel = path.relative_to(local_dir).as_posix()
            if not in_place:
                self.store.put_file(self.checkpoint_key(step, rel), path)
            manifest["files"].append(
                {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)}
            )
        self._write_json(f"checkpoints/step{step}/{COMPLETE}", manifest)
        return manifest

    def drop_checkpoint_files(self, step: int, drop: Callable[[str], bool], reason: str) -> int:
        """Remove the files of a complete checkpoint whose manifest path ``drop`` accepts
        (``checkpoints.optimizerState: latest`` drops optimiser state); return the bytes
        freed. The manifest is rewritten first, without those files and with them listed
        under ``dropped`` (path, size, sha256, reason), so the checkpoint stays sound at
        every moment; a reader holding the old manifest finds them under ``dropped`` when it
        misses one. Idempotent: files a crash left behind are deleted on the next call."""
        manifest = self.read_manifest(step)
        gone = [f for f in manifest["files"] if drop(f["path"])]
        if gone:
            manifest = {
                **manifest,
                "files": [f for f in manifest["files"] if not drop(f["path"])],
                "dropped": [*manifest.get("dropped", []), *({**f, "reason": reason} for f in gone)],
            }
            self._write_json(f"checkpoints/step{int(step)}/{COMPLETE}", manifest)
        for entry in manifest.get("dropped", []):
            self.store.delete(self.checkpoint_key(step, check_key(entry["path"])))
        return sum(f["size"] for f in gone)

    def _dropped_since(self, step: int, path: str) -> bool:
        """Whether ``path`` was dropped from the checkpoint after the caller read its manifest."""
        try:
            manifest = self.read_manifest(step)
        except (StorageNotFound, CheckpointDamaged):
            return False
        return any(d.get("path") == path for d in manifest.get("dropped", []))

    def read_manifest(self, step: int) -> dict:
        """The COMPLETE manifest of a checkpoint; StorageNotFound when incomplete,
        CheckpointDamaged when COMPLETE itself is not a manifest."""
        try:
            manifest = self._read_json(f"checkpoints/step{int(step)}/{COMPLETE}")
        except StorageNotFound:
            raise StorageNotFound(
                f"{self._uri}/checkpoints/step{step}: no complete checkpoint"
            ) from None
        except StorageError as exc:
            raise CheckpointDamaged(str(exc)) from None
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, list) or not all(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("size"), int)
            for f in files
        ):
            raise CheckpointDamaged(
                f"{self._uri}/checkpoints/step{step}/{COMPLETE}: not a checkpoint manifest "
                "(expected files: [{path, size, sha256}])"
            )
        return manifest

    def _stored_sha256(self, key: str) -> str:
        """sha256 of a stored object: read in place on a local store, else in ranges."""
        path = self.store.local_dir(key)
        if path is not None:
            return sha256_file(path)
        digest = hashlib.sha256()
        offset = 0
        while chunk := self.store.get_range(key, offset, _HASH_CHUNK):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def verify_checkpoint(self, step: int, *, checksums: bool = True) -> None:
        """Check every file against COMPLETE (size, then sha256 unless ``checksums`` is
        False); CheckpointDamaged names the first file that differs."""
        manifest = self.read_manifest(step)
        where = f"{self._uri}/checkpoints/step{step}"
        for entry in manifest["files"]:
            key = self.checkpoint_key(step, check_key(entry["path"]))
            try:
                size = self.store.size(key)
            except StorageNotFound:
                if self._dropped_since(step, entry["path"]):
                    continue
                raise CheckpointDamaged(f"{where}/{entry['path']}: missing") from None
            if size != entry["size"]:
                raise CheckpointDamaged(
                    f"{where}/{entry['path']}: {size} bytes, COMPLETE says {entry['size']}"
                )
            if checksums and entry.get("sha256") and self._stored_sha256(key) != entry["sha256"]:
                raise CheckpointDamaged(f"{where}/{entry['path']}: sha256 differs from COMPLETE")

    def quarantine_checkpoint(self, step: int, reason: str) -> str:
        """Move a damaged checkpoint aside (COMPLETE first, so it stops existing at
        once) into ``quarantine/step<N>-<time>/`` with a REASON file; return its URI."""
        folder = self.key(QUARANTINE, f"step{int(step)}-{int(time.time() * 1000)}")
        keys = self.store.list(self.checkpoint_key(step) + "/")
        complete = self.checkpoint_key(step, COMPLETE)
        keys.sort(key=lambda k: k != complete)
        prefix = self.checkpoint_key(step) + "/"
        for key in keys:
            self.store.move(key, f"{folder}/{key[len(prefix) :]}")
        self.store.put_bytes(f"{folder}/REASON", reason.encode() + b"\n")
        return self.store.url(folder)

    def sound_checkpoint(self, at_most: int | None = None, *, checksums: bool = True) -> int | None:
        """The newest complete checkpoint (at or below ``at_most``) that passes
        ``verify_checkpoint``; damaged newer ones are quarantined with a warning."""
        for step in reversed(self.complete_checkpoints()):
            if at_most is not None and step > at_most:
                continue
            if self.checked(step, checksums=checksums):
                return step
        return None

    def checked(self, step: int, *, checksums: bool = True) -> bool:
        """Whether checkpoint ``step`` is sound; a damaged one is quarantined (warning)."""
        try:
            self.verify_checkpoint(step, checksums=checksums)
        except StorageNotFound:
            return False
        except CheckpointDamaged as exc:
            self.quarantine(step, exc)
            return False
        return True

    def quarantine(self, step: int, exc: Exception) -> None:
        """Quarantine checkpoint ``step`` because of ``exc`` and say so on the log."""
        moved = self.quarantine_checkpoint(step, str(exc))
        log.warning("damaged checkpoint step%d quarantined to %s: %s", step, moved, exc)

    def fetch_checkpoint(self, step: int, local_dir: Path) -> Path:
        """Download a complete checkpoint into ``local_dir``; every file's size and
        sha256 must match COMPLETE (CheckpointDamaged names the first that does not)."""
        manifest = self.read_manifest(step)
        local_dir = Path(local_dir)
        for entry in manifest["files"]:
            target = local_dir / check_key(entry["path"])  # never write outside local_dir
            try:
                self.store.get_file(self.checkpoint_key(step, entry["path"]), target)
            except StorageNotFound:
                if self._dropped_since(step, entry["path"]):
                    continue
                raise CheckpointDamaged(
                    f"{self._uri}/checkpoints/step{step}/{entry['path']}: missing"
                ) from None
            if target.stat().st_size != entry["size"]:
                raise CheckpointDamaged(
                    f"{self._uri}/checkpoints/step{step}/{entry['path']}: "
                    f"{target.stat().st_size} bytes, COMPLETE says {entry['size']}"
                )
            if entry.get("sha256") and sha256_file(target) != entry["sha256"]:
                raise CheckpointDamaged(
                    f"{self._uri}/checkpoints/step{step}/{entry['path']}: "
                    "sha256 differs from COMPLETE"
                )
        return local_dir

    def delete_checkpoint(self, step: int) -> None:
        """Remove a checkpoint: COMPLETE first, so readers never see a partial one."""
        self.store.delete(self.checkpoint_key(step, COMPLETE))
        self.store.delete_prefix(self.checkpoint_key(step) + "/")

    def local_path(self, step: int) -> Path | None:
        """The checkpoint folder itself on a local store (load it in place), else None.

        The folder is verified against COMPLETE first (CheckpointDamaged if it differs).
        """
        folder = self.store.local_dir(self.checkpoint_key(step))
        if folder is None:
            return None
        self.verify_checkpoint(step)
        return folder

    # config history (`--allow-changes`)

    def read_history(self) -> list[dict]:
        """Accepted config changes, oldest first: ``{field, old, new, step, at}``."""
        try:
            data = self._read_json(HISTORY)
        except StorageNotFound:
            return []
        return list(data.get("changes") or []) if isinstance(data, dict) else []

    def record_changes(self, changes: list[dict]) -> None:
        """Append accepted changes to ``history.json`` (before run.json is rewritten)."""
        self._write_json(HISTORY, {"changes": self.read_history() + list(changes)})

    # optimiser restarts (`checkpoints.optimizerState: latest`)

    def read_optimizer_restarts(self) -> list[dict]:
        """Starts from a checkpoint without optimiser state, oldest first:
        ``{step, attempt, reason, at}`` (Adam's moments began again from zero there)."""
        try:
            data = self._read_json(OPTIMIZER_RESTARTS)
        except StorageNotFound:
            return []
        return list(data.get("restarts") or []) if isinstance(data, dict) else []

    def record_optimizer_restart(
        self, step: int, attempt: int, reason: str, at: float | None = None
    ) -> dict:
        """Record that ``attempt`` started from checkpoint ``step`` with a fresh optimiser
        (the run's one writer calls it; a repeated record of the same attempt is kept once)."""
        entry = {
            "step": int(step),
            "attempt": int(attempt),
            "reason": reason,
            "at": time.time() if at is None else at,
        }
        restarts = [r for r in self.read_optimizer_restarts() if r.get("attempt") != attempt]
        self._write_json(OPTIMIZER_RESTARTS, {"restarts": [*restarts, entry]})
        return entry

    # rewinds (spike action `rewind`, docs/contracts.md)

    def read_rewinds(self) -> dict[str, list[dict]]:
        """``{"rewinds": [...], "refused": [...]}`` from ``rewinds.json`` (empty lists if none)."""
        try:
            data = self._read_json(REWINDS)
        except StorageNotFound:
            data = {}
        return {
            "rewinds": list(data.get("rewinds") or []),
            "refused": list(data.get("refused") or []),
        }

    @staticmethod
    def spike_key(spike: dict) -> tuple:
        """What identifies one spike across operator restarts: signal, onset, attempt."""
        return (spike.get("signal"), spike.get("onsetStep"), spike.get("attempt"))

    def handled(self, spike: dict) -> bool:
        """Whether this spike already led to a recorded rewind or refusal."""
        data = self.read_rewinds()
        key = self.spike_key(spike)
        return any(self.spike_key(e["spike"]) == key for e in data["rewinds"] + data["refused"])

    def record_rewind(
        self, restart_step: int, skip_batches: tuple[int, int], spike: dict, at: float | None = None
    ) -> dict:
        """Pin the restart checkpoint, record the rewind, then drop the abandoned
        timeline; return the new entry.

        The pin comes first (``storage.pins``): from then on no pruning by a trainer
        still running deletes the checkpoint or drops its optimiser state, and
        CheckpointUnavailable (nothing recorded) says it went before it was pinned.
        The record comes next: it is what every later attempt (a retry, a restarted
        operator, a second ``polypythia run``) obeys. The trainer adds ``skipBatches`` to
        its data skips and writes telemetry with ``attempt``; readers drop older
        attempts' records past ``restartStep``. Checkpoints past ``restartStep``
        (COMPLETE first) and their evaluations are deleted, so the next attempt resumes
        from ``restartStep`` and the new timeline's checkpoints are evaluated afresh.
        """
        data = self.read_rewinds()
        entry = {
            "restartStep": int(restart_step),
            "skipBatches": [int(skip_batches[0]), int(skip_batches[1])],
            "spike": dict(spike),
            "attempt": self.next_attempt(),
            "at": time.time() if at is None else at,
        }
        why = f"rewind: spike at {spike.get('onsetStep')}"
        pins.pin(self, restart_step, entry["attempt"], why, at=entry["at"])
        data["rewinds"].append(entry)
        try:
            self._write_json(REWINDS, data)
        except StorageError:
            pins.release(self, restart_step)
            raise
        self.drop_abandoned()
        return entry

    def record_refusal(self, reason: str, spike: dict, at: float | None = None) -> dict:
        """Record that a spike was not rewound and why (limit reached, no early checkpoint)."""
        data = self.read_rewinds()
        entry = {"reason": reason, "spike": dict(spike), "at": time.time() if at is None else at}
        data["refused"].append(entry)
        self._write_json(REWINDS, data)
        return entry

    def skip_ranges(self) -> list[list[int]]:
        """The batch ranges every recorded rewind asks the trainer to skip."""
        return [list(r["skipBatches"]) for r in self.read_rewinds()["rewinds"]]

    def drop_abandoned(self) -> list[int]:
        """Delete checkpoints (and their evaluations) of timelines abandoned by a rewind.

        A checkpoint past a rewind's ``restartStep`` whose manifest has no attempt or
        an attempt before the rewind's was written by the abandoned timeline (also by
        a trainer that kept running for a while after the rewind). Idempotent: the
        trainer calls it on every start. Returns the deleted steps.
        """
        rewinds = self.read_rewinds()["rewinds"]
        if not rewinds:
            return []
        pins.release_abandoned(self, rewinds)
        dropped = []
        for step in self.complete_checkpoints():
            late = [r for r in rewinds if step > r["restartStep"]]
            if not late:
                continue
            try:
                written_by = self.read_manifest(step).get("attempt", -1)
            except StorageNotFound:
                continue
            if any(written_by < r["attempt"] for r in late):
                self.delete_checkpoint(step)
                self.store.delete(self.key(f"evals/step{step}.json"))
                dropped.append(step)
        complete = set(self.complete_checkpoints())
        first_restart = min(r["restartStep"] for r in rewinds)
        for step in self.evaluated_steps():
            if step > first_restart and step not in complete:
                self.store.delete(self.key(f"evals/step{step}.json"))
        return dropped

    # evaluations

    def write_eval(self, step: int, result: dict) -> None:
        """Store the evaluation result of a checkpoint (rewriting it is idempotent)."""
        self._write_json(f"evals/step{int(step)}.json", result)

    def read_eval(self, step: int) -> dict:
        """The evaluation result of a checkpoint; StorageNotFound when not evaluated."""
        return self._read_json(f"evals/step{int(step)}.json")

    def evaluated_steps(self) -> list[int]:
        """Steps that have an evaluation result."""
        return sorted(int(m[1]) for m in map(_EVAL.match, self._list("evals")) if m)

    def read_evals(self) -> dict[int, dict]:
        """All evaluation results by step."""
        return {step: self.read_eval(step) for step in self.evaluated_steps()}

    def refresh_evals(self, cache: dict[int, dict], evaluated: list[int] | set[int]) -> list[int]:
        """Bring ``cache`` (step -> evaluation) in line with ``evaluated``: a result that
        went (a rewound run's abandoned checkpoint) leaves it, a new one is read once.
        Returns the steps read; one that cannot be read now is tried on the next call."""
        for step in cache.keys() - set(evaluated):
            del cache[step]
        fresh = []
        for step in sorted(set(evaluated) - cache.keys()):
            try:
                result = self.read_eval(step)
            except StorageError:
                continue
            if isinstance(result, dict):
                cache[step] = result
                fresh.append(step)
        return fresh


class SweepStore(StoreFolder):
    """A sweep's folder: one sub-folder per run."""

    def runs(self) -> list[str]:
        """Names of the runs that have anything in storage."""
        return self.store.list_dirs(self.prefix)

    def write_applied(self, manifest: dict) -> None:
        """Record the sweep as applied (defaults filled in): a report made later from
        storage alone then judges outliers with the settings the live verdicts used."""
        self._write_json(APPLIED_SWEEP, manifest)

    def read_applied(self) -> dict | None:
        """The sweep as last applied; None when nothing recorded it (a sweep trained
        before this was written, a folder of lm-eval files)."""
        try:
            manifest = self._read_json(APPLIED_SWEEP)
        except StorageNotFound:
            return None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("spec"), dict):
            raise StorageError(f"{self._uri}/{APPLIED_SWEEP}: not a sweep (no spec mapping)")
        return manifest

    def run(self, name: str) -> RunStore:
        """The RunStore of run ``name`` (sharing this sweep's connection)."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"run name {name!r}: must be one path component")
        return RunStore(self.store, _join(self.prefix, name), f"{self._uri}/{name}")
