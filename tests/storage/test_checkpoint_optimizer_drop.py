"""`checkpoints.optimizerState`: which checkpoints keep optimiser state, and dropping it from
a stored checkpoint so that it stays sound for every reader (local store and S3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypythia.retention import optimizer_state_kept
from polypythia.storage import RunStore

PYTHIA_EARLY = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def _is_optimizer(path: str) -> bool:
    return path.startswith("trainer_state/optimizer")


def test_latest_keeps_the_newest_and_the_resume_checkpoints() -> None:
    planned = {*PYTHIA_EARLY, 1000, 2000, 3000}
    # Training has reached step 2,500: planned up to 2,000, resume-only 1,500 and 2,500
    # (resumeEvery 500, keepResume 2: the trainer already pruned 500).
    complete = [*PYTHIA_EARLY, 1000, 1500, 2000, 2500]
    kept = optimizer_state_kept(
        complete, policy="latest", planned=planned, resume_every=500, keep_resume=2
    )
    assert kept == {1500, 2500, 2000}
    # Without resume checkpoints only the newest keeps it.
    alone = optimizer_state_kept(
        [0, 1, 2, 4, 1000], policy="latest", planned=planned, resume_every=None, keep_resume=2
    )
    assert alone == {1000}
    assert optimizer_state_kept(
        complete, policy="all", planned=planned, resume_every=500, keep_resume=2
    ) == set(complete)
    assert optimizer_state_kept([], policy="latest", planned=planned, resume_every=None, keep_resume=2) == set()  # fmt: skip


def test_an_unknown_policy_names_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"checkpoints.optimizerState: 'some'; allowed: all, latest"
    ):
        optimizer_state_kept([1], policy="some", planned=set(), resume_every=None, keep_resume=2)


def _checkpoint(run: RunStore, tmp_path: Path, step: int) -> dict:
    folder = tmp_path / f"ck{step}"
    (folder / "trainer_state").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / "trainer_state" / "state.pt").write_bytes(b"s" * 10)
    (folder / "trainer_state" / "optimizer.pt").write_bytes(b"o" * 3000)
    return run.commit_checkpoint(step, folder, attempt=0)


def test_dropping_rewrites_the_manifest_then_deletes_and_the_checkpoint_stays_sound(
    run_uri: str, tmp_path: Path
) -> None:
    run = RunStore.open(run_uri)
    _checkpoint(run, tmp_path, 4)
    freed = run.drop_checkpoint_files(4, _is_optimizer, "checkpoints.optimizerState latest")
    assert freed == 3000
    manifest = run.read_manifest(4)
    assert [f["path"] for f in manifest["files"]] == [
        "model.safetensors",
        "trainer_state/state.pt",
    ]
    (dropped,) = manifest["dropped"]
    assert dropped["path"] == "trainer_state/optimizer.pt" and dropped["size"] == 3000
    assert dropped["reason"] == "checkpoints.optimizerState latest"
    assert manifest["attempt"] == 0 and manifest["step"] == 4
    assert not run.store.exists(run.checkpoint_key(4, "trainer_state/optimizer.pt"))
    run.verify_checkpoint(4)
    assert run.complete_checkpoints() == [4]
    fetched = run.fetch_checkpoint(4, tmp_path / "fetched")
    assert sorted(p.name for p in fetched.rglob("*") if p.is_file()) == [
        "model.safetensors",
        "state.pt",
    ]
    # Idempotent; a file a crash left behind (manifest written, delete not done) goes next time.
    run.store.put_bytes(run.checkpoint_key(4, "trainer_state/optimizer.pt"), b"o" * 3000)
    assert run.drop_checkpoint_files(4, _is_optimizer, "again") == 0
    assert not run.store.exists(run.checkpoint_key(4, "trainer_state/optimizer.pt"))
    assert len(run.read_manifest(4)["dropped"]) == 1


def test_a_reader_holding_the_old_manifest_does_not_call_the_checkpoint_damaged(
    run_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evaluator that read COMPLETE just before the trainer dropped the optimiser state
    finds the file gone: the fresh manifest lists it as dropped, so nothing is quarantined."""
    run = RunStore.open(run_uri)
    stale = _checkpoint(run, tmp_path, 8)
    run.drop_checkpoint_files(8, _is_optimizer, "checkpoints.optimizerState latest")
    fresh_read = RunStore.read_manifest
    calls = iter(range(10**6))
    monkeypatch.setattr(
        RunStore,
        "read_manifest",
        lambda self, step: stale if next(calls) == 0 else fresh_read(self, step),
    )
    run.verify_checkpoint(8)
    calls = iter(range(10**6))
    run.fetch_checkpoint(8, tmp_path / "fetched")
    calls = iter(range(10**6))
    assert run.sound_checkpoint() == 8
    assert not run.store.list(run.key("quarantine") + "/")
