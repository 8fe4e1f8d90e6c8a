"""The run layout (RunStore, SweepStore) on both back-ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polypythia.storage import COMPLETE, RunStore, StorageError, StorageNotFound, SweepStore


def records(first: int, last: int, attempt: int = 0, loss: float = 1.0) -> list[dict]:
    return [{"step": s, "loss": loss, "attempt": attempt} for s in range(first, last + 1)]


def losses(run: RunStore) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in run.read_telemetry()]


def make_checkpoint(folder: Path, tag: str = "v1") -> Path:
    (folder / "trainer_state").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"tag": tag}))
    (folder / "model.safetensors").write_bytes(tag.encode() * 1000)
    (folder / "trainer_state" / "optimizer.pt").write_bytes(b"opt" + tag.encode())
    return folder


def test_run_config_round_trip(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    with pytest.raises(StorageNotFound):
        run.read_run_config()
    cfg = {"run": "tiny-nano-s0", "seed": 0, "training": {"steps": 200}, "data": {"path": None}}
    run.write_run_config(cfg)
    assert RunStore.open(run_uri).read_run_config() == cfg
    assert run.store.exists(run.key("run.json"))


def test_telemetry_file_names_follow_the_contract(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    assert run.next_attempt() == 0
    run.append_telemetry(records(1, 25), attempt=0)
    run.append_telemetry(records(21, 45, attempt=1), attempt=1)
    assert run.append_telemetry([], attempt=0) is None
    names = [k.rpartition("/")[2] for k in run.store.list(run.key("telemetry") + "/")]
    assert names == ["000000001-000000025.jsonl", "000000021-000000045.a1.jsonl"]
    assert run.next_attempt() == 2


def test_resumed_run_reads_as_one_history(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    run.append_telemetry(records(1, 25, loss=1.0), attempt=0)
    run.append_telemetry(records(26, 30, loss=1.0), attempt=0)
    # Crashed at 30, resumed from the checkpoint at step 20: steps 21-30 are re-run.
    run.append_telemetry(records(21, 45, attempt=1, loss=2.0), attempt=1)
    got = losses(run)
    assert [s for s, _ in got] == list(range(1, 46))
    assert all(loss == (1.0 if s <= 20 else 2.0) for s, loss in got)
    assert {r["attempt"] for r in run.read_telemetry() if r["step"] > 20} == {1}


def test_rewound_run_drops_the_abandoned_tail(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    run.append_telemetry(records(1, 50, loss=1.0), attempt=0)
    # A loss spike at 45 made the run rewind to step 10; the new attempt has reached 35.
    run.append_telemetry(records(11, 35, attempt=1, loss=2.0), attempt=1)
    got = losses(run)
    assert [s for s, _ in got] == list(range(1, 36))
    assert all(loss == (1.0 if s <= 10 else 2.0) for s, loss in got)


def test_retried_flush_is_harmless_and_attempt_is_filled_in(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    batch = [{"step": s, "loss": 0.5} for s in (3, 1, 2)]
    run.append_telemetry(batch, attempt=0)
    run.append_telemetry(batch, attempt=0)
    got = run.read_telemetry()
    assert [(r["step"], r["attempt"]) for r in got] == [(1, 0), (2, 0), (3, 0)]
    with pytest.raises(ValueError):
        run.append_telemetry([{"step": 4, "attempt": 0}], attempt=1)
    with pytest.raises(ValueError):
        run.append_telemetry([{"loss": 1.0}], attempt=0)


def test_read_telemetry_since_reads_only_new_batches(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    run.append_telemetry(records(1, 25), attempt=0)
    run.append_telemetry(records(26, 50), attempt=0)
    gets: list[str] = []
    real_get = run.store.get_bytes
    run.store.get_bytes = lambda key: gets.append(key) or real_get(key)  # type: ignore[method-assign]
    assert [r["step"] for r in run.read_telemetry_since(30)] == list(range(31, 51))
    assert len(gets) == 1 and gets[0].endswith("000000026-000000050.jsonl")
    assert run.read_telemetry_since(50) == []
    assert len(gets) == 1
    run.append_telemetry(records(41, 60, attempt=1, loss=3.0), attempt=1)
    assert [(r["step"], r["loss"]) for r in run.read_telemetry_since(50)] == [
        (s, 3.0) for s in range(51, 61)
    ]


def test_checkpoint_commit_fetch_and_listing(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    assert run.complete_checkpoints() == []
    src = make_checkpoint(tmp_path / "local" / "s1000")
    manifest = run.commit_checkpoint(1000, src)
    run.commit_checkpoint(0, make_checkpoint(tmp_path / "local" / "s0", "v0"))
    assert run.complete_checkpoints() == [0, 1000]
    assert run.store.exists(run.key("checkpoints/step1000/COMPLETE"))
    assert {f["path"]: f["size"] for f in manifest["files"]} == {
        "config.json": 13,
        "model.safetensors": 2000,
        "trainer_state/optimizer.pt": 5,
    }
    out = run.fetch_checkpoint(1000, tmp_path / "fetched")
    for rel in ("config.json", "model.safetensors", "trainer_state/optimizer.pt"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    assert not (out / COMPLETE).exists()


def test_checkpoint_without_complete_is_invisible(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    src = make_checkpoint(tmp_path / "s200")
    real_put_file = run.store.put_file
    uploads: list[str] = []

    def crash_after_first(key: str, path: Path) -> None:
        if uploads:
            raise ConnectionResetError("trainer pod killed mid-upload")
        uploads.append(key)
        real_put_file(key, path)

    run.store.put_file = crash_after_first  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        run.commit_checkpoint(200, src)
    run.store.put_file = real_put_file  # type: ignore[method-assign]
    assert run.store.list(run.key("checkpoints/step200/"))  # a partial upload is there
    assert run.complete_checkpoints() == []
    with pytest.raises(StorageNotFound, match="step200"):
        run.fetch_checkpoint(200, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The restarted trainer commits again; leftovers of the crashed upload are gone.
    (tmp_path / "s200b").mkdir()
    (tmp_path / "s200b" / "model.safetensors").write_bytes(b"new")
    run.commit_checkpoint(200, tmp_path / "s200b")
    assert run.complete_checkpoints() == [200]
    assert run.store.list(run.key("checkpoints/step200/")) == [
        run.key("checkpoints/step200/COMPLETE"),
        run.key("checkpoints/step200/model.safetensors"),
    ]


def test_fetch_refuses_a_checkpoint_whose_file_is_short(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    run.commit_checkpoint(8, make_checkpoint(tmp_path / "s8"))
    run.store.put_bytes(run.key("checkpoints/step8/model.safetensors"), b"truncated")
    with pytest.raises(Exception, match="model.safetensors"):
        run.fetch_checkpoint(8, tmp_path / "out")


def test_delete_checkpoint(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    run.commit_checkpoint(100, make_checkpoint(tmp_path / "a"))
    run.commit_checkpoint(143000, make_checkpoint(tmp_path / "b"))
    run.delete_checkpoint(100)
    run.delete_checkpoint(100)
    assert run.complete_checkpoints() == [143000]
    assert run.store.list(run.key("checkpoints/step100")) == []
    assert run.store.list_dirs(run.key("checkpoints")) == ["step143000"]


def test_local_path(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    run.commit_checkpoint(4, make_checkpoint(tmp_path / "s4"))
    path = run.local_path(4)
    if run_uri.startswith("s3://"):
        assert path is None
    else:
        assert (path / "config.json").read_text() == json.dumps({"tag": "v1"})
        assert path.name == "step4"
        with pytest.raises(StorageNotFound):
            run.local_path(5)


def test_local_store_commit_in_place(tmp_path: Path) -> None:
    run = RunStore.open(str(tmp_path / "run"))
    target = run.store.root / "checkpoints" / "step16"
    make_checkpoint(target)
    assert run.complete_checkpoints() == []
    run.commit_checkpoint(16, target)
    assert run.complete_checkpoints() == [16]
    assert run.local_path(16) == target
    assert (target / "model.safetensors").stat().st_size == 2000


def test_evals_are_idempotent(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    assert run.evaluated_steps() == [] and run.read_evals() == {}
    with pytest.raises(StorageNotFound):
        run.read_eval(64)
    result = {"results": {"lambada": {"acc": 0.31}}, "step": 64}
    run.write_eval(64, result)
    run.write_eval(64, result)
    run.write_eval(128, {"results": {}, "step": 128})
    assert run.evaluated_steps() == [64, 128]
    assert run.read_eval(64) == result
    assert run.read_evals() == {64: result, 128: {"results": {}, "step": 128}}


def test_sweep_store_lists_runs(root_uri: str) -> None:
    sweep = SweepStore.open(f"{root_uri}/tiny")
    assert sweep.runs() == []
    for name in ["tiny-nano-s1", "tiny-nano-s0"]:
        sweep.run(name).write_run_config({"run": name})
    SweepStore.open(f"{root_uri}/other").run("x").write_run_config({})
    assert sweep.runs() == ["tiny-nano-s0", "tiny-nano-s1"]
    run = sweep.run("tiny-nano-s1")
    assert run.uri == f"{sweep.uri}/tiny-nano-s1"
    assert RunStore.open(run.uri).read_run_config() == {"run": "tiny-nano-s1"}
    with pytest.raises(ValueError):
        sweep.run("a/b")


def test_fetch_never_writes_outside_the_target(run_uri: str, tmp_path: Path) -> None:
    run = RunStore.open(run_uri)
    evil = tmp_path / "evil"
    manifest = {"step": 1, "files": [{"path": str(evil), "size": 1}]}
    run.store.put_bytes(run.key("checkpoints/step1/COMPLETE"), json.dumps(manifest).encode())
    run.store.put_bytes(run.checkpoint_key(1, "x"), b"1")
    with pytest.raises(ValueError, match="storage key"):
        run.fetch_checkpoint(1, tmp_path / "out")
    assert not evil.exists()


def test_corrupt_telemetry_names_file_and_line(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    run.append_telemetry(records(1, 2), attempt=0)
    key = run.key("telemetry", "000000003-000000004.jsonl")
    run.store.put_bytes(key, b'{"step": 3}\n{"step": 4, "loss": \n')
    with pytest.raises(StorageError, match=r"000000003-000000004\.jsonl line 2"):
        run.read_telemetry()


def test_refresh_evals_reads_new_results_once_and_drops_vanished_ones(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    run.write_eval(10, {"results": {"pp_cloze": {"acc,none": 0.5}}})
    run.write_eval(20, {"results": {"pp_cloze": {"acc,none": 0.6}}})
    cache: dict[int, dict] = {}
    assert run.refresh_evals(cache, run.evaluated_steps()) == [10, 20]
    assert run.refresh_evals(cache, run.evaluated_steps()) == []  # nothing read twice
    run.store.delete(run.key("evals/step20.json"))  # a rewind took step 20 away
    run.write_eval(30, {"results": {"pp_cloze": {"acc,none": 0.7}}})
    assert run.refresh_evals(cache, run.evaluated_steps()) == [30]
    assert sorted(cache) == [10, 30]
    assert cache[30]["results"]["pp_cloze"]["acc,none"] == 0.7
