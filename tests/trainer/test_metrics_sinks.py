"""Metrics back-ends: TensorBoard files that TensorBoard's own reader loads, and W&B offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_helpers import nano_config

from polypythia.metrics_sinks import (
    TENSORBOARD_FOLDER,
    MetricsProcessor,
    TensorBoardSink,
    build_processor,
    store_put,
)
from polypythia.storage import RunStore
from polypythia_trainer.loop import run_worker
from support.waiting import wait_for
from support.wandb_log import wandb_history


def _scalars(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_training_writes_tensorboard_scalars_beside_the_telemetry(tmp_path) -> None:
    run_worker(nano_config(tmp_path))
    store = RunStore.open(str(tmp_path))
    records = store.read_telemetry()
    board = tmp_path / TENSORBOARD_FOLDER
    # One immutable event file per telemetry flush, as the telemetry chunks themselves.
    assert len(list(board.glob("events.out.tfevents.*"))) == len(store.telemetry_files()) > 1
    acc = _scalars(board)
    tags = set(acc.Tags()["scalars"])
    assert {
        "loss/train",
        "optim/grad_norm",
        "optim/lr",
        "perf/tokens_per_second",
        "instability/update_ratio",
        "instability/max_attn_logit",
    } <= tags
    assert "perf/mfu" not in tags  # null on CPU: left out, not written as 0
    loss = acc.Scalars("loss/train")
    assert [e.step for e in loss] == [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)


def test_a_resumed_attempt_replaces_the_abandoned_tail(tmp_path) -> None:
    store = RunStore.open(str(tmp_path))
    first = TensorBoardSink(store_put(store), attempt=0)
    first.log_steps([(s, {"loss/train": 10.0 + s}) for s in range(1, 7)])
    second = TensorBoardSink(store_put(store), attempt=1, resumed_from=3)
    second.log_steps([(s, {"loss/train": 20.0 + s}) for s in range(4, 9)])
    events = _scalars(tmp_path / TENSORBOARD_FOLDER).Scalars("loss/train")
    assert [(e.step, e.value) for e in events] == [
        (1, 11.0), (2, 12.0), (3, 13.0), (4, 24.0), (5, 25.0), (6, 26.0), (7, 27.0), (8, 28.0)
    ]  # fmt: skip


def test_evaluation_scores_land_at_their_checkpoint_steps(tmp_path) -> None:
    board = MetricsProcessor([TensorBoardSink(store_put(RunStore.open(str(tmp_path))), 0)])
    board.log_eval(1000, {"lambada_openai": {"acc": 0.31, "perplexity": 40.5}})
    board.log_eval(2000, {"lambada_openai": {"acc": 0.35, "perplexity": float("nan")}})
    acc = _scalars(tmp_path / TENSORBOARD_FOLDER / "eval")
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("eval/lambada_openai/acc")] == [
        (1000, 0.31),
        (2000, 0.35),
    ]
    assert [e.step for e in acc.Scalars("eval/lambada_openai/perplexity")] == [1000]


def test_a_failing_sink_warns_once_and_the_others_still_write(tmp_path, capsys) -> None:
    def broken(_key: str, _data: bytes) -> None:
        raise OSError("disk full")

    good = TensorBoardSink(store_put(RunStore.open(str(tmp_path))), 0)
    processor = MetricsProcessor([TensorBoardSink(broken, 0), good])
    for step in (1, 2):
        processor.log_records([{"step": step, "loss": 3.0}])
    assert capsys.readouterr().err.count("metrics sink TensorBoardSink failed") == 1
    assert len(_scalars(tmp_path / TENSORBOARD_FOLDER).Scalars("loss/train")) == 2


def _wandb_rows(log: Path) -> list[dict]:
    """The log's history once its last row (the evaluation) is there: W&B's service process
    writes the file and, on a loaded machine, may still be writing when finish returns."""
    from google.protobuf.message import DecodeError

    try:
        rows = wandb_history(log)
    except DecodeError:  # a record still being written
        return []
    return rows if any("eval/sciq/acc" in row for row in rows) else []


def test_wandb_offline_writes_one_run_per_polypythia_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "polypythia-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    config = nano_config(tmp_path / "store")
    processor = build_processor(
        RunStore.open(str(tmp_path / "store")), config, attempt=0, work_dir=tmp_path / "work"
    )
    assert [type(s).__name__ for s in processor.sinks] == ["TensorBoardSink", "WandbSink"]
    wandb_run = processor.sinks[1].run
    assert (wandb_run.project, wandb_run.group, wandb_run.name) == (
        "polypythia-test",
        config["sweep"],
        config["run"],
    )
    processor.log_records([{"step": s, "loss": 5.0 - s, "lr": 1e-3} for s in (1, 2, 3)])
    processor.log_eval(3, {"sciq": {"acc": 0.5}})
    processor.close()
    (offline,) = (tmp_path / "work" / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    assert log.name == f"run-{wandb_run.id}.wandb" and log.stat().st_size > 0
    history = wait_for("the run's history in W&B's offline log", lambda: _wandb_rows(log), 60)
    assert [row["loss/train"] for row in history if "loss/train" in row] == [4.0, 3.0, 2.0]
    assert [row["eval/sciq/acc"] for row in history if "eval/sciq/acc" in row] == [0.5]


def test_an_evaluation_writes_into_the_trained_run_without_owning_it() -> None:
    """Online, W&B's shared mode lets the evaluator write while the trainer still runs;
    it never finishes the trainer's run nor rewrites its metadata."""
    import wandb

    from polypythia.metrics_sinks import secondary_settings

    online = secondary_settings("eval", None)
    assert online == {
        "x_label": "eval",
        "x_primary": False,
        "x_update_finish_state": False,
        "mode": "shared",
    }
    assert "mode" not in secondary_settings("eval", "offline")
    parsed = wandb.Settings(**online)  # W&B's own validation accepts them
    assert parsed.mode == "shared" and parsed.x_update_finish_state is False
