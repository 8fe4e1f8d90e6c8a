"""`run_training` on a real Ray Train TorchTrainer: two workers, a clean stop, a resume."""

from __future__ import annotations

import threading

import pytest
from trainer_helpers import nano_config

from polypythia.storage import RunStore
from polypythia_trainer.launch import run_training

ray = pytest.importorskip("ray")
STEPS = 40


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_run_stops_cleanly_and_resumes(local_ray, tmp_path) -> None:
    cfg = nano_config(
        tmp_path, steps=STEPS, workers=2, checkpoints={"steps": [0, STEPS], "resumeEvery": 1}
    )
    stop = threading.Event()
    seen: list[int] = []

    def progress(record: dict) -> None:
        seen.append(record["step"])
        if record["step"] >= 3:
            stop.set()

    first = run_training(cfg, stop_event=stop, on_progress=progress)
    assert first["status"] == "stopped", first
    assert 3 <= first["step"] < STEPS and seen
    run = RunStore.open(str(tmp_path))
    assert run.read_run_config() == cfg
    assert [r["step"] for r in run.read_telemetry()] == list(range(1, first["step"] + 1))
    assert max(run.complete_checkpoints()) == first["step"]  # resumeEvery 1

    second = run_training(cfg)
    assert second["status"] == "completed", second
    assert second["resumed_from"] == first["step"] and second["step"] == STEPS
    records = run.read_telemetry()
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[-1]["attempt"] == 1 and records[0]["attempt"] == 0
    assert second["startup_s"] is not None and second["startup_s"] > 0
