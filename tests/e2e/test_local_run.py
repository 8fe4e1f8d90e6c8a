"""End to end: `polypythia run` trains a real sweep on a local Ray cluster.

User story: a researcher with no cluster runs a multi-seed sweep, sees it train,
checkpoint, evaluate and report; a failing run does not stop the others; Ctrl-C
stops cleanly and the same command resumes from the last complete checkpoints.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import e2e_helpers
import pytest
from e2e_helpers import command, env

from polypythia.storage import RunStore

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def write_sweep(tmp_path: Path, name: str, **spec) -> Path:
    """Two nano seeds, 30 steps, evaluated at the end; ``spec`` overrides top-level keys."""
    body = {
        "sizes": ["nano"],
        "seeds": {"list": [0, 1]},
        "training": {"steps": 30, "globalBatchSize": 8, "sequenceLength": 32, "precision": "fp32"},
        "checkpoints": {"schedule": "every", "every": 10},
        "evaluation": {
            "tasks": ["pp_subject_verb_agreement", "pp_cloze"],
            "schedule": "final",
            "limit": 20,
        },
        "maxConcurrentRuns": 2,
    }
    return e2e_helpers.write_sweep(tmp_path, name, {**body, **spec})


def test_sweep_trains_evaluates_reports_and_isolates_a_failing_run(tmp_path: Path) -> None:
    # No retries: this failure is permanent, and each retry would restart the trainer.
    sweep = write_sweep(tmp_path, "e2e", maxRetries=0)
    workdir = tmp_path / "work"
    # Sabotage one run's storage: a plain file where its checkpoints folder must go.
    broken = workdir / "store" / "e2e" / "e2e-nano-s1"
    broken.mkdir(parents=True)
    (broken / "checkpoints").write_text("not a folder")

    result = subprocess.run(
        command(sweep, workdir), capture_output=True, text=True, env=env(tmp_path / "cache"),
        timeout=600,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in result.stdout
    good = RunStore.open(str(workdir / "store" / "e2e" / "e2e-nano-s0"))
    assert good.complete_checkpoints() == [0, 10, 20, 30]
    assert [r["step"] for r in good.read_telemetry()] == list(range(1, 31))
    assert good.evaluated_steps() == [30]
    scores = good.read_eval(30)["results"]
    assert "pp_subject_verb_agreement" in scores
    assert good.read_run_config()["run"] == "e2e-nano-s0"
    # Evaluation ran as `polypythia evaluate`; its progress bars stayed in its log.
    assert "polypythia.cli evaluate" in (workdir / "logs" / "e2e-nano-s0.eval.log").read_text()
    assert "loglikelihood requests" not in out and "SIGTERM" not in out
    summary = [line for line in result.stdout.splitlines() if line.startswith("e2e-nano-s")]
    assert any("Succeeded" in line and "30/30" in line for line in summary), out
    assert any("e2e-nano-s1" in line and "Failed" in line for line in summary), out
    assert "e2e-nano-s1: exit code" in result.stdout
    report = workdir / "report" / "index.html"
    assert report.exists() and f"report: {report}" in result.stdout
    assert "e2e-nano-s0" in report.read_text()


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        "resume",
        seeds={"list": [0]},
        # Long enough (about 30 s of training on a laptop core) that the stop always lands
        # mid-run, however slowly a loaded machine passes the signal on.
        training={"steps": 1000, "globalBatchSize": 8, "sequenceLength": 32, "precision": "fp32"},
        checkpoints={"schedule": "every", "every": 50},
        evaluation={"tasks": [], "schedule": "none"},
    )
    workdir = tmp_path / "work"
    store = RunStore.open(str(workdir / "store" / "resume" / "resume-nano-s0"))
    # As from a terminal: SIGINT delivered, even when this test runs in a background job
    # (a non-interactive shell starts those with SIGINT ignored, and children inherit it).
    proc = subprocess.Popen(
        command(sweep, workdir, "--no-report"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env(tmp_path / "cache"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not [s for s in store.complete_checkpoints() if s >= 50]:
        time.sleep(0.2)
    assert [s for s in store.complete_checkpoints() if s >= 50], "no checkpoint within 300 s"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again to resume" in out
    assert "Traceback" not in out
    stopped_at = max(store.complete_checkpoints())
    assert stopped_at < 1000, "the run finished before it could be interrupted"

    result = subprocess.run(
        command(sweep, workdir, "--no-report"), capture_output=True, text=True,
        env=env(tmp_path / "cache"), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert max(store.complete_checkpoints()) == 1000
    history = store.read_telemetry()
    assert [r["step"] for r in history] == list(range(1, 1001))
    assert max(r["attempt"] for r in history) >= 1, "the second run started over"
    config = json.loads((workdir / "configs" / "resume-nano-s0.json").read_text())
    assert config["checkpoints"]["steps"][-1] == 1000
