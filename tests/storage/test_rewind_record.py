"""telemetry/rewinds.json: the storage record of spike rewinds, and how readers obey it."""

from __future__ import annotations

import json
from pathlib import Path

from polypythia.storage import RunStore, resolve_history

SPIKE = {"signal": "loss", "onsetStep": 30, "magnitude": 9.5, "attempt": 0}


def records(first: int, last: int, attempt: int, loss: float) -> list[dict]:
    return [{"step": s, "loss": loss, "attempt": attempt} for s in range(first, last + 1)]


def checkpoint(run: RunStore, tmp_path: Path, step: int, attempt: int | None = None) -> None:
    folder = tmp_path / f"ck{step}-{attempt}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w" * 10)
    run.commit_checkpoint(step, folder, attempt=attempt)


def test_resolve_history_drops_abandoned_records_before_the_new_attempt_writes() -> None:
    recs = records(1, 40, 0, 1.0)
    # No rewind: the whole of attempt 0.
    assert [r["step"] for r in resolve_history(recs, {0: 1})][-1] == 40
    # Rewound to step 20 with attempt 1 next: steps 21..40 of attempt 0 are gone at once.
    out = resolve_history(recs, {0: 1}, [(20, 1)])
    assert [r["step"] for r in out] == list(range(1, 21))
    # Once attempt 1 wrote 21..25, the history is 1..20 of attempt 0, then 21..25 of attempt 1.
    out = resolve_history(recs + records(21, 25, 1, 2.0), {0: 1, 1: 21}, [(20, 1)])
    assert [(r["step"], r["attempt"]) for r in out] == [(s, 0) for s in range(1, 21)] + [
        (s, 1) for s in range(21, 26)
    ]


def test_record_rewind_cuts_telemetry_checkpoints_and_evals(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    run.append_telemetry(records(1, 20, 0, 1.0), attempt=0)
    run.append_telemetry(records(21, 40, 0, 5.0), attempt=0)
    for step in (0, 10, 20, 30, 40):
        checkpoint(run, tmp_path, step, attempt=0)
    for step in (10, 30, 40):
        run.write_eval(step, {"step": step})
    assert run.next_attempt() == 1

    entry = run.record_rewind(10, (20, 30), SPIKE, at=123.0)
    assert entry == {
        "restartStep": 10,
        "skipBatches": [20, 30],
        "spike": SPIKE,
        "attempt": 1,
        "at": 123.0,
    }
    assert json.loads(run.store.get_bytes(run.key("telemetry/rewinds.json")))["rewinds"] == [entry]
    # The abandoned timeline is gone: checkpoints and evaluations past step 10, telemetry too.
    assert run.complete_checkpoints() == [0, 10]
    assert run.evaluated_steps() == [10]
    assert [r["step"] for r in run.read_telemetry()] == list(range(1, 11))
    assert run.read_telemetry_since(5)[-1]["step"] == 10
    assert run.skip_ranges() == [[20, 30]]
    assert run.handled(SPIKE) and not run.handled({**SPIKE, "attempt": 1})
    assert run.next_attempt() == 1

    # The rewound attempt writes its own timeline; a late flush of the old trainer
    # (attempt 0) past the restart step never shows.
    run.append_telemetry(records(11, 25, 1, 2.0), attempt=1)
    run.append_telemetry(records(41, 45, 0, 9.0), attempt=0)
    history = run.read_telemetry()
    assert [r["step"] for r in history] == list(range(1, 26))
    assert {r["loss"] for r in history if r["step"] > 10} == {2.0}
    assert run.next_attempt() == 2


def test_drop_abandoned_keeps_the_new_timeline(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    run.append_telemetry(records(1, 30, 0, 1.0), attempt=0)
    for step in (0, 10, 20):
        checkpoint(run, tmp_path, step, attempt=0)
    run.record_rewind(10, (12, 20), SPIKE)
    assert run.complete_checkpoints() == [0, 10]
    # The new timeline (attempt 1) checkpoints step 20; the old trainer, still alive for a
    # moment, committed step 30 after the rewind.
    checkpoint(run, tmp_path, 20, attempt=1)
    run.write_eval(20, {"step": 20})
    checkpoint(run, tmp_path, 30, attempt=0)
    run.write_eval(30, {"step": 30})
    assert run.drop_abandoned() == [30]
    assert run.complete_checkpoints() == [0, 10, 20]
    assert run.evaluated_steps() == [20]
    assert run.drop_abandoned() == []


def test_recommitting_a_checkpoint_drops_its_stale_evaluation(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    checkpoint(run, tmp_path, 20, attempt=0)
    run.write_eval(20, {"step": 20})
    checkpoint(run, tmp_path, 20, attempt=1)
    assert run.evaluated_steps() == []
    assert run.read_manifest(20)["attempt"] == 1


def test_refusals_are_recorded_beside_rewinds(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    assert run.read_rewinds() == {"rewinds": [], "refused": []}
    assert not run.handled(SPIKE)
    run.record_refusal("maxRewinds reached", SPIKE, at=1.0)
    assert run.read_rewinds()["refused"] == [
        {"reason": "maxRewinds reached", "spike": SPIKE, "at": 1.0}
    ]
    assert run.handled(SPIKE)
    assert run.next_attempt() == 0 and run.skip_ranges() == []
