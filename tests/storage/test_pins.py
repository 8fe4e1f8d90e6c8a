"""pins/: a rewind's restart checkpoint is pinned from the moment it is chosen, and a
trainer that keeps pruning (keepResume, optimizerState latest) cannot take it away.
Every test runs on a local folder and on a moto S3 bucket (conftest)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polypythia.retention import optimizer_state_kept
from polypythia.storage import CheckpointUnavailable, RunStore, pins

SPIKE = {"signal": "loss", "onsetStep": 61, "magnitude": 9.0, "attempt": 0}


def _is_optimizer(path: str) -> bool:
    return path.startswith("trainer_state/optimizer")


def _checkpoint(run: RunStore, tmp_path: Path, step: int, attempt: int = 0) -> None:
    folder = tmp_path / f"ck{step}-a{attempt}"
    (folder / "trainer_state").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "trainer_state" / "optimizer.pt").write_bytes(b"o" * 300)
    run.commit_checkpoint(step, folder, attempt=attempt)


def _trained(run_uri: str, tmp_path: Path, steps: range = range(0, 70, 10)) -> RunStore:
    """Attempt 0 checkpointed every 10 steps (resume checkpoints) and still runs."""
    run = RunStore.open(run_uri)
    run.append_telemetry([{"step": s, "loss": 3.0} for s in range(1, 71)], attempt=0)
    for step in steps:
        _checkpoint(run, tmp_path, step)
    return run


class _Hooked:
    """The run's object store, calling ``hook`` once, right after the first listing of
    ``pins/`` (where the other party of the race looks for pins or prunes)."""

    def __init__(self, store, hook: Callable[[], None]) -> None:  # type: ignore[no-untyped-def]
        self._store, self._hook = store, hook

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._store, name)

    def list(self, prefix: str) -> list[str]:
        out = self._store.list(prefix)
        if prefix.endswith("pins/") and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
        return out


def _hooked(run: RunStore, hook: Callable[[], None]) -> RunStore:
    return RunStore(_Hooked(run.store, hook), run.prefix, run.uri)  # type: ignore[arg-type]


def test_a_rewind_pins_its_restart_checkpoint_and_pruning_leaves_it_whole(
    run_uri: str, tmp_path: Path
) -> None:
    run = _trained(run_uri, tmp_path)
    entry = run.record_rewind(50, (51, 56), SPIKE, at=5.0)
    assert pins.pins(run) == {
        50: {"step": 50, "attempt": entry["attempt"], "reason": "rewind: spike at 61", "at": 5.0}
    }
    # The old attempt (0) prunes on after the choice: the pinned checkpoint stays whole,
    # optimiser state included; unpinned ones go as before.
    assert pins.prune(run, 50) is False
    assert pins.prune_files(run, 50, _is_optimizer, "checkpoints.optimizerState latest") is None
    run.verify_checkpoint(50)
    assert "trainer_state/optimizer.pt" in {f["path"] for f in run.read_manifest(50)["files"]}
    assert pins.prune(run, 10) is True
    assert pins.prune_files(run, 20, _is_optimizer, "latest") == 300
    assert run.complete_checkpoints() == [0, 20, 30, 40, 50]
    assert pins.being_pruned(run) == set()  # every pruner took its announcement back
    # The new attempt resumes from it.
    run.drop_abandoned()
    assert run.sound_checkpoint() == 50


def test_a_pruner_that_looked_before_the_pin_makes_the_choice_fail(
    run_uri: str, tmp_path: Path
) -> None:
    """The old trainer found no pin and goes on to delete step 50 while the operator pins
    it: the operator sees the pruner at work and records nothing (it chooses again)."""
    run = _trained(run_uri, tmp_path)
    failed: list[Exception] = []

    def operator_chooses_now() -> None:
        try:
            run.record_rewind(50, (51, 56), SPIKE)
        except CheckpointUnavailable as exc:
            failed.append(exc)

    assert pins.prune(_hooked(run, operator_chooses_now), 50) is True
    assert len(failed) == 1 and "checkpoints/step50: cannot restart from it" in str(failed[0])
    assert run.read_rewinds()["rewinds"] == [] and pins.pins(run) == {}
    assert run.complete_checkpoints() == [0, 10, 20, 30, 40, 60]
    # Chosen again from what is there, the next choice holds.
    assert run.record_rewind(40, (51, 56), SPIKE)["restartStep"] == 40
    assert pins.prune(run, 40) is False and run.is_complete(40)


def test_a_pruner_that_looks_after_the_pin_leaves_the_checkpoint(
    run_uri: str, tmp_path: Path
) -> None:
    """The operator pinned step 50 and is checking it; the old trainer prunes right then:
    it sees the pin and leaves the checkpoint, and the choice holds."""
    run = _trained(run_uri, tmp_path)
    pruned: list[bool] = []
    hooked = _hooked(run, lambda: pruned.append(pins.prune(run, 50)))
    entry = hooked.record_rewind(50, (51, 56), SPIKE)
    assert pruned == [False]
    assert entry["restartStep"] == 50 and run.is_complete(50) and 50 in pins.pins(run)


def test_a_checkpoint_gone_before_the_pin_is_not_recorded(run_uri: str, tmp_path: Path) -> None:
    run = _trained(run_uri, tmp_path)
    run.delete_checkpoint(50)
    with pytest.raises(CheckpointUnavailable, match=r"step50: cannot restart from it, it is no"):
        run.record_rewind(50, (51, 56), SPIKE)
    assert run.read_rewinds()["rewinds"] == [] and pins.pins(run) == {}


def test_a_checkpoint_being_pruned_is_not_a_rewind_candidate(run_uri: str, tmp_path: Path) -> None:
    run = _trained(run_uri, tmp_path)
    run.store.put_bytes(
        run.key("pins/step50.pruning"), json.dumps({"step": 50, "at": time.time()}).encode()
    )
    assert pins.rewind_candidates(run, run.complete_checkpoints()) == [0, 10, 20, 30, 40, 60]
    with pytest.raises(CheckpointUnavailable, match="a trainer is pruning it"):
        run.record_rewind(50, (51, 56), SPIKE)
    # A pruner that died mid-way an hour ago holds nothing back.
    stale = time.time() - pins.PRUNING_STALE_S - 1
    run.store.put_bytes(run.key("pins/step50.pruning"), json.dumps({"at": stale}).encode())
    assert 50 in pins.rewind_candidates(run, run.complete_checkpoints())
    assert run.record_rewind(50, (51, 56), SPIKE)["restartStep"] == 50


def test_the_pin_goes_once_the_new_attempt_checkpoints_past_it(
    run_uri: str, tmp_path: Path
) -> None:
    run = _trained(run_uri, tmp_path)
    attempt = run.record_rewind(50, (51, 56), SPIKE)["attempt"]
    # The old attempt's late checkpoint past the pin does not release it.
    _checkpoint(run, tmp_path, 70, attempt=attempt - 1)
    assert pins.release_reached(run, 70, attempt - 1) == []
    _checkpoint(run, tmp_path, 60, attempt=attempt)
    assert pins.release_reached(run, 60, attempt) == [50]
    assert pins.pins(run) == {} and pins.prune(run, 50) is True


def test_a_later_rewind_before_the_pin_abandons_it(run_uri: str, tmp_path: Path) -> None:
    run = _trained(run_uri, tmp_path)
    run.record_rewind(50, (51, 56), SPIKE)
    # The rewound attempt spikes again before writing anything: back to step 30.
    second = run.record_rewind(30, (41, 46), {**SPIKE, "onsetStep": 41, "attempt": 1})
    assert sorted(pins.pins(run)) == [30]
    assert second["attempt"] == 1
    assert run.complete_checkpoints() == [0, 10, 20, 30]
    assert pins.release_all(run) == [30] and pins.pins(run) == {}


def test_latest_keeps_the_optimiser_state_of_a_pinned_checkpoint() -> None:
    kept = optimizer_state_kept(
        [0, 10, 20, 30], policy="latest", planned={0, 10, 20, 30}, resume_every=None,
        keep_resume=2, pinned=[10, 99],
    )  # fmt: skip
    assert kept == {10, 30}
