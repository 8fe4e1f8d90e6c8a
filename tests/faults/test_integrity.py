"""A checkpoint is trusted only when every file matches COMPLETE (size and sha256);
a damaged one is quarantined (moved aside, never deleted) and readers fall back to the
newest sound one with a warning naming it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from polypythia.storage import COMPLETE, CheckpointDamaged, RunStore


def make_checkpoint(folder: Path, tag: str) -> Path:
    (folder / "trainer_state").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(tag.encode() * 1000)
    (folder / "trainer_state" / "optimizer.pt").write_bytes(b"opt-" + tag.encode() * 50)
    return folder


@pytest.fixture
def run(run_uri: str, tmp_path: Path) -> RunStore:
    """A run with sound checkpoints at steps 2, 4 and 6."""
    store = RunStore.open(run_uri)
    for step in (2, 4, 6):
        store.commit_checkpoint(step, make_checkpoint(tmp_path / f"src{step}", f"s{step}"))
    return store


def damage(run: RunStore, step: int, rel: str, how: str) -> None:
    """Rewrite a stored file: truncated to half, or one byte flipped (same size)."""
    key = run.checkpoint_key(step, rel)
    data = bytearray(run.store.get_bytes(key))
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    run.store.put_bytes(key, bytes(data))


def test_complete_records_size_and_sha256(run: RunStore) -> None:
    manifest = run.read_manifest(6)
    files = {f["path"]: f for f in manifest["files"]}
    assert files["model.safetensors"]["size"] == 2000
    assert len(files["trainer_state/optimizer.pt"]["sha256"]) == 64
    run.verify_checkpoint(6)  # sound: no error


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("rel", ["model.safetensors", "trainer_state/optimizer.pt"])
def test_damaged_newest_is_quarantined_and_the_previous_one_used(
    run: RunStore, rel: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage(run, 6, rel, how)
    with pytest.raises(CheckpointDamaged, match=rel):
        run.verify_checkpoint(6)
    with caplog.at_level(logging.WARNING):
        assert run.sound_checkpoint() == 4
    assert run.complete_checkpoints() == [2, 4]
    warning = caplog.text
    assert "step6" in warning and "quarantine" in warning and rel in warning
    # Moved aside with its reason, never deleted: every byte is still in storage.
    kept = [k for k in run.store.list(run.key("quarantine") + "/")]
    assert any(k.endswith(f"/{rel}") for k in kept)
    assert any(k.endswith(f"/{COMPLETE}") for k in kept)
    reason = next(k for k in kept if k.endswith("/REASON"))
    assert rel in run.store.get_bytes(reason).decode()


def test_fetch_and_local_path_refuse_a_damaged_checkpoint(run: RunStore, tmp_path: Path) -> None:
    damage(run, 4, "model.safetensors", "flip")
    with pytest.raises(CheckpointDamaged, match="sha256"):
        run.fetch_checkpoint(4, tmp_path / "out")
    if run.store.local_dir(run.key()) is not None:
        with pytest.raises(CheckpointDamaged):
            run.local_path(4)
    assert run.fetch_checkpoint(2, tmp_path / "ok").joinpath("model.safetensors").exists()


def test_a_missing_file_or_a_garbled_manifest_is_damage(run: RunStore) -> None:
    run.store.delete(run.checkpoint_key(6, "trainer_state/optimizer.pt"))
    with pytest.raises(CheckpointDamaged, match="missing"):
        run.verify_checkpoint(6)
    run.store.put_bytes(run.checkpoint_key(4, COMPLETE), b"{not json")
    with pytest.raises(CheckpointDamaged):
        run.verify_checkpoint(4)
    assert run.sound_checkpoint() == 2


def test_manifests_without_checksums_are_still_checked_by_size(run: RunStore) -> None:
    key = run.checkpoint_key(6, COMPLETE)
    manifest = json.loads(run.store.get_bytes(key))
    for entry in manifest["files"]:
        del entry["sha256"]
    run.store.put_bytes(key, json.dumps(manifest).encode())
    run.verify_checkpoint(6)
    damage(run, 6, "model.safetensors", "truncate")
    with pytest.raises(CheckpointDamaged, match="COMPLETE says 2000"):
        run.verify_checkpoint(6)


def test_sound_checkpoint_respects_the_bound(run: RunStore) -> None:
    assert run.sound_checkpoint(at_most=5) == 4
    assert run.sound_checkpoint(at_most=1) is None
