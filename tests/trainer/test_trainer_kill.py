"""Exact resume: a real `polypythia train` process killed with SIGKILL mid-run and started
again ends with exactly the losses of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer_helpers import losses, nano_config

from polypythia.storage import RunStore

REPO = Path(__file__).resolve().parents[2]
# Long enough past the kill point (step 8) that a busy machine cannot finish the run
# before the test's SIGKILL lands.
STEPS = 80
CHECKPOINTS = {"steps": [0, STEPS], "resumeEvery": 8, "keepResume": 2}


def train_process(config_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    paths = [str(REPO / p) for p in ("operator", "trainer_image", "eval_image")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "polypythia.cli", "train", "--no-ray", "--config", str(config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill reaches it and its children
    )


def test_killed_run_resumes_bit_identically(tmp_path) -> None:
    # The reference is a process like the killed one: CPU kernels pick their reduction
    # order by thread count, and pytest's own process may run with another count.
    reference = tmp_path / "reference"
    reference_config = tmp_path / "reference.json"
    reference_config.write_text(
        json.dumps(nano_config(reference, steps=STEPS, checkpoints=CHECKPOINTS))
    )
    done = train_process(reference_config)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err.decode()[-2000:]
    expected = losses(str(reference))
    assert len(expected) == STEPS

    store = tmp_path / "killed"
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(nano_config(store, steps=STEPS, checkpoints=CHECKPOINTS)))
    proc = train_process(config_path)
    run = RunStore.open(str(store))
    deadline = time.monotonic() + 300
    try:
        while max(run.complete_checkpoints(), default=-1) < 8:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint at step 8 within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = max(run.complete_checkpoints())
    assert killed_at < STEPS, "the run finished before it could be killed"

    restart = train_process(config_path)
    out, err = restart.communicate(timeout=600)
    assert restart.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["status"] == "completed"
    assert summary["resumed_from"] >= 8 and summary["attempt"] >= 1
    assert losses(str(store)) == expected  # bit-identical, every step
    assert run.read_run_config()["run"] == "t-nano-s0"
