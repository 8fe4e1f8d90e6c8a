"""End to end: `polypythia run` with `instability.action: rewind` rewinds a spiking run.

User story: a researcher who wants usable models sets the spike action to `rewind`; a
learning-rate shock makes the loss spike, the driver restarts the run from a checkpoint
before the spike skipping a few batches (PaLM's recipe), at most `maxRewinds` times,
and the summary, the storage record and the run's telemetry all show it.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import command, env, write_sweep

from polypythia.storage import RunStore, pins

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SHOCK = 150
STEPS = 200


def test_learning_rate_shock_is_rewound_once_then_refused(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        "rw",
        {
            "sizes": ["nano"],
            "seeds": {"list": [0]},
            "training": {
                "steps": STEPS,
                "globalBatchSize": 8,
                "sequenceLength": 32,
                "precision": "fp32",
                # 100x the learning rate for 5 steps once the loss has flattened.
                # The shock is part of the schedule, so the rewound timeline meets
                # it again: the second spike finds maxRewinds used up.
                "perturbations": [{"step": SHOCK, "steps": 5, "learningRateFactor": 100}],
            },
            "checkpoints": {"schedule": "every", "every": 100, "resumeEvery": 10, "keepResume": 4},
            "evaluation": {"tasks": [], "schedule": "none"},
            "instability": {
                "action": "rewind",
                "rewind": {"stepsBefore": 10, "skipBatches": 10, "maxRewinds": 1},
            },
        },
    )
    workdir = tmp_path / "work"
    cmd = command(sweep, workdir, "--no-report", "--no-ray", metrics_port=-1)
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env(tmp_path / "cache"), timeout=600
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out

    run = RunStore.open(str(workdir / "store" / "rw" / "rw-nano-s0"))
    record = run.read_rewinds()
    assert len(record["rewinds"]) == 1, record
    rewind = record["rewinds"][0]
    spike = rewind["spike"]
    assert SHOCK < spike["onsetStep"] <= SHOCK + 5 and spike["attempt"] == 0
    restart = rewind["restartStep"]
    assert restart <= spike["onsetStep"] - 10 and restart % 10 == 0
    first = max(restart, spike["onsetStep"] - 10)
    assert rewind["skipBatches"] == [first, first + 10] and rewind["attempt"] >= 1
    # The rewound timeline met the shock again; the limit refused a second rewind.
    assert len(record["refused"]) >= 1
    assert "maxRewinds is 1" in record["refused"][0]["reason"]
    assert record["refused"][0]["spike"]["attempt"] >= rewind["attempt"]

    # One clean history: the first timeline up to the restart step, the rewound one after.
    history = run.read_telemetry()
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
    assert {r["attempt"] for r in history if r["step"] <= restart} == {0}
    assert min(r["attempt"] for r in history if r["step"] > restart) >= rewind["attempt"]
    assert all(math.isfinite(r["loss"]) for r in history)
    assert STEPS in run.complete_checkpoints()
    final = json.loads(
        (
            workdir / "store" / "rw" / "rw-nano-s0" / "checkpoints" / f"step{STEPS}" / "COMPLETE"
        ).read_text()
    )
    assert final["attempt"] >= rewind["attempt"]
    # The restart checkpoint was pinned until the rewound attempt checkpointed past it.
    assert pins.pins(run) == {} and pins.being_pruned(run) == set()

    # The summary says so.
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("RUN "))
    header, row = lines[at], next(line for line in lines[at:] if line.startswith("rw-nano-s0"))
    assert row.split()[header.split().index("REWINDS")] == "1"
    assert f"rw-nano-s0: rewound to step {restart}" in out
    assert "rewind refused" in out
