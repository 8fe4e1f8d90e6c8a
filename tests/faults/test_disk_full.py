"""Train into a really full disk: a 6 MiB tmpfs mounted in a user namespace
(`unshare -rm`, no root needed), too small for the third checkpoint. `polypythia train`
must stop with one line saying "disk full" and the path, exit 1, leave its last complete
checkpoint sound (the half-written one invisible) and no lease; given room (the tmpfs
grown by a remount), the same command resumes to the losses and weights of a run that
never met a full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import nano_config

from polypythia.storage import RunStore
from polypythia.storage.lease import LEASE
from polypythia.storage.verify import sound_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.fault_suite]

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12
# step0 is ~1 MiB, each later checkpoint ~2.8 MiB (model + Adam state): step8 cannot fit.
CHECKPOINTS = {"steps": [0, 4, 8, STEPS], "resumeEvery": None, "keepResume": 2}
SMALL, ROOMY = "6m", "64m"

# Runs as (namespace) root: mount the tmpfs, train into it until the disk is full, keep a
# copy of what is there, grow the tmpfs, train again, keep a copy of the result.
CHILD = """
import json, shutil, subprocess, sys
from pathlib import Path
mount, config, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
small, roomy = sys.argv[4], sys.argv[5]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + small, "tmpfs", str(mount)], check=True)
train = [sys.executable, "-m", "polypythia.cli", "train", "--no-ray", "--config", config]
results = {}
for name, size in (("full", None), ("rerun", roomy)):
    if size:
        subprocess.run(["mount", "-o", "remount,size=" + size, str(mount)], check=True)
    done = subprocess.run(train, capture_output=True, text=True)
    results[name] = {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    shutil.copytree(mount, out / name, symlinks=True)
(out / "results.json").write_text(json.dumps(results))
"""


def env() -> dict[str, str]:
    paths = [str(ROOT / p) for p in ("operator", "trainer_image", "eval_image")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}


def user_namespace_mounts() -> str | None:
    """Why a tmpfs cannot be mounted without root here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    done = subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/mnt"],
        capture_output=True,
        text=True,
    )
    return None if done.returncode == 0 else f"unshare -rm mount -t tmpfs: {done.stderr.strip()}"


def train(config: dict, folder: Path) -> subprocess.CompletedProcess:
    path = folder / "run.json"
    path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "polypythia.cli", "train", "--no-ray", "--config", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)


def test_a_full_disk_stops_training_with_one_line_and_a_rerun_with_room_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = user_namespace_mounts()
    if why:
        pytest.skip(f"cannot mount a small tmpfs without root here ({why})")
    monkeypatch.setenv("POLYPYTHIA_CACHE", str(tmp_path / "cache"))  # the data, not on the tmpfs

    reference = tmp_path / "reference" / "t" / "t-nano-s0"
    reference.parent.mkdir(parents=True)
    done = train(nano_config(reference, steps=STEPS, checkpoints=CHECKPOINTS), reference.parent)
    assert done.returncode == 0, done.stderr[-3000:]

    mount, out = tmp_path / "mnt", tmp_path / "out"
    mount.mkdir()
    out.mkdir()
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps(nano_config(mount / "t" / "t-nano-s0", steps=STEPS, checkpoints=CHECKPOINTS))
    )
    child = [sys.executable, "-c", CHILD, str(mount), str(config), str(out), SMALL, ROOMY]
    done = subprocess.run(
        ["unshare", "-rm", *child], capture_output=True, text=True, env=env(), timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    full = results["full"]
    assert full["rc"] == 1, full["stderr"][-3000:]
    message = full["stderr"].strip()
    assert len(message.splitlines()) == 1, message  # one line, no traceback
    assert message.startswith("polypythia train: error: ") and "disk full" in message
    assert f"{mount}/t/t-nano-s0/checkpoints/step8" in message
    after_full = RunStore.open(str(out / "full" / "t" / "t-nano-s0"))
    checked = sound_checkpoints(after_full)
    assert checked.sound == [0, 4] and checked.damaged == {}  # step8's files: no COMPLETE
    assert after_full.store.exists(after_full.key("checkpoints", "step8", "model.safetensors"))
    assert not after_full.store.exists(after_full.key(LEASE))

    rerun = results["rerun"]
    assert rerun["rc"] == 0, rerun["stderr"][-3000:]
    summary = json.loads(rerun["stdout"].strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["resumed_from"] == 4
    run, expected = (
        RunStore.open(str(out / "rerun" / "t" / "t-nano-s0")),
        RunStore.open(str(reference)),
    )
    records = run.read_telemetry()
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records] == [r["loss"] for r in expected.read_telemetry()]
    assert sound_checkpoints(run).sound == expected.complete_checkpoints() == [0, 4, 8, STEPS]
    got = load_file(run.fetch_checkpoint(STEPS, tmp_path / "a") / "model.safetensors")
    want = load_file(expected.fetch_checkpoint(STEPS, tmp_path / "b") / "model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not run.store.exists(run.key(LEASE))
