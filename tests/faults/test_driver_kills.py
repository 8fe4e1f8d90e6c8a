"""Kill `polypythia run` itself at seeded random points, rerun the same command each time,
and compare with a sweep never disturbed: every run's losses for every step exactly once
and bit-identical, the same checkpoints and final weights, no trainer or evaluation
outliving its driver, no lease left behind. SIGTERM stops the driver like Ctrl-C.

The driver trains without Ray (``--no-ray``: each run a `polypythia train` child with
one intra-op thread, so the bits match across processes); the kills are real signals
from outside, timed by what the runs have written to storage. One case trains with Ray:
the local Ray cluster the driver started (GCS, raylet, agents, workers) and its trainers
must go with a SIGKILLed driver, and the rerun must start afresh and finish.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from polypythia.storage import RunStore
from polypythia.storage.lease import LEASE
from polypythia.storage.verify import sound_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.fault_suite]

ROOT = Path(__file__).resolve().parents[2]
STEPS = 16
SEEDS = (0, 1)
SEED = 20261202
SPEC = {
    "sizes": ["nano"],
    "seeds": {"list": list(SEEDS)},
    "maxConcurrentRuns": 2,
    "training": {"steps": STEPS, "globalBatchSize": 8, "sequenceLength": 32, "precision": "fp32"},
    "checkpoints": {"schedule": "every", "every": 8, "resumeEvery": 2, "keepResume": 2},
    "evaluation": {"tasks": [], "schedule": "none"},
}
# Evaluated at every planned checkpoint (0, 8, 16; resume-only ones never are).
EVALUATED = {
    **SPEC,
    "evaluation": {"tasks": ["pp_cloze"], "schedule": "all", "limit": 8},
}


def write_sweep(folder: Path, spec: dict) -> Path:
    path = folder / "dk.yaml"
    body = {"apiVersion": "polypythia.io/v1alpha1", "kind": "PolyPythiaSweep"}
    path.write_text(yaml.safe_dump({**body, "metadata": {"name": "dk"}, "spec": spec}))
    return path


def start_driver(sweep: Path, workdir: Path, ray: bool = False) -> subprocess.Popen:
    """`polypythia run` as a user types it, in the background (``--no-ray`` unless ``ray``)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / p) for p in ("operator", "trainer_image", "eval_image")
        ),
        "POLYPYTHIA_CACHE": str(workdir.parent / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "polypythia.cli", "run", str(sweep), "--workdir", str(workdir)]
    cmd += [*([] if ray else ["--no-ray"]), "--no-report", "--metrics-port", "-1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def runs(workdir: Path) -> list[RunStore]:
    return [RunStore.open(str(workdir / "store" / "dk" / f"dk-nano-s{s}")) for s in SEEDS]


def new_progress(workdir: Path, attempts: list[int]) -> int:
    """The furthest step any run has written telemetry for since this driver started it."""
    steps = [
        f.last
        for run, attempt in zip(runs(workdir), attempts, strict=True)
        for f in (run.telemetry_files() if Path(run.uri).exists() else [])
        if f.attempt >= attempt
    ]
    return max(steps, default=-1)


def descendants(proc: subprocess.Popen, needle: str) -> list[psutil.Process]:
    """The driver's child processes whose command line contains ``needle``."""
    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if needle in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie waiting for init to reap it counts as dead)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def wait_until(predicate, what: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the driver ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def gone_within(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive(procs)
    for p in left:  # do not leave them running for the next test
        p.kill()
    return left


def kill_plan(seed: int) -> list[tuple[signal.Signals, int]]:
    """Two SIGKILLs and a final SIGTERM, each once the sweep trained to a seeded step."""
    rng = random.Random(seed)
    return [
        (sig, rng.randrange(2, STEPS - 2))
        for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM)
    ]


def interrupt(
    sweep: Path, workdir: Path, sig: signal.Signals, at: int
) -> tuple[subprocess.Popen, list]:
    """Start the driver, wait until a run trained past step ``at`` in this attempt, send
    ``sig`` to the driver alone; return it and the trainers it had then."""
    attempts = [r.next_attempt() if Path(r.uri).exists() else 0 for r in runs(workdir)]
    driver = start_driver(sweep, workdir)
    wait_until(lambda: new_progress(workdir, attempts) >= at, f"a run passed step {at}", driver)
    trainers = descendants(driver, " train ")
    assert trainers, "no trainer was running when the driver was killed"
    os.kill(driver.pid, sig)
    driver.communicate(timeout=120)
    return driver, trainers


def finish(sweep: Path, workdir: Path, ray: bool = False) -> subprocess.CompletedProcess:
    driver = start_driver(sweep, workdir, ray)
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(driver.args, driver.returncode, out, err)


def final_weights(run: RunStore, tmp: Path) -> dict[str, torch.Tensor]:
    return load_file(run.fetch_checkpoint(STEPS, tmp) / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The undisturbed sweep: per run, its losses, checkpoints and final weights."""
    folder = tmp_path_factory.mktemp("undisturbed")
    work = folder / "work"
    finish(write_sweep(folder, SPEC), work)
    return {
        Path(run.uri).name: (
            [r["loss"] for r in run.read_telemetry()],
            run.complete_checkpoints(),
            final_weights(run, folder / Path(run.uri).name),
        )
        for run in runs(work)
    }


def assert_like_reference(workdir: Path, reference: dict, tmp: Path) -> None:
    for run in runs(workdir):
        losses, checkpoints, weights = reference[Path(run.uri).name]
        records = run.read_telemetry()
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # each step once
        assert [r["loss"] for r in records] == losses  # bit-identical
        assert run.complete_checkpoints() == checkpoints
        checked = sound_checkpoints(run)
        assert checked.damaged == {} and checked.sound == checkpoints
        got = final_weights(run, tmp / Path(run.uri).name)
        assert all(torch.equal(got[k], weights[k]) for k in weights)
        assert not run.store.exists(run.key(LEASE))  # no lease left behind


def test_the_kill_plan_is_seeded() -> None:
    assert kill_plan(SEED) == kill_plan(SEED)
    assert [sig for sig, _ in kill_plan(SEED)] == [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM]
    assert all(2 <= at < STEPS - 2 for _, at in kill_plan(SEED))


def test_killed_and_terminated_drivers_lose_and_double_nothing(tmp_path: Path, reference) -> None:
    sweep = write_sweep(tmp_path, SPEC)
    work = tmp_path / "work"
    for sig, at in kill_plan(SEED):
        driver, trainers = interrupt(sweep, work, sig, at)
        if sig == signal.SIGKILL:
            assert driver.returncode == -signal.SIGKILL
            # Nobody stopped them: they must die with their driver on their own.
            assert not gone_within(trainers, 60), "a trainer outlived its SIGKILLed driver"
        else:
            # Like Ctrl-C: the driver itself stopped its trainers before it exited 130.
            assert driver.returncode == 130
            assert not gone_within(trainers, 0), "SIGTERM left a trainer running"
    finish(sweep, work)
    assert_like_reference(work, reference, tmp_path / "w")


def test_a_driver_killed_while_evaluating_leaves_no_evaluation_behind(
    tmp_path: Path, reference
) -> None:
    sweep = write_sweep(tmp_path, EVALUATED)
    work = tmp_path / "work"
    driver = start_driver(sweep, work)
    wait_until(lambda: bool(descendants(driver, " evaluate ")), "an evaluation started", driver)
    evaluations = descendants(driver, " evaluate ")
    children = [c for e in evaluations for c in e.children(recursive=True)]
    driver.kill()
    driver.communicate(timeout=60)
    assert not gone_within(evaluations + children, 60), "an evaluation outlived its driver"
    finish(sweep, work)
    assert_like_reference(work, reference, tmp_path / "w")
    for run in runs(work):
        assert run.evaluated_steps() == [0, 8, 16]


def test_a_killed_driver_takes_its_ray_cluster_and_trainers_with_it(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, SPEC)
    work = tmp_path / "work"
    driver = start_driver(sweep, work, ray=True)
    wait_until(lambda: new_progress(work, [0, 0]) >= 4, "a run passed step 4", driver, 600)
    assert descendants(driver, "raylet") and descendants(driver, " train ")
    everything = psutil.Process(driver.pid).children(recursive=True)
    driver.kill()
    driver.communicate(timeout=60)
    left = gone_within(everything, 180)
    assert not left, f"outlived their SIGKILLed driver: {[p.pid for p in left]}"
    finish(sweep, work, ray=True)
    for run in runs(work):
        records = run.read_telemetry()
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # each step once
        checked = sound_checkpoints(run)
        assert checked.damaged == {} and checked.sound == run.complete_checkpoints()
        assert {0, 8, 16} <= set(checked.sound)
        assert not run.store.exists(run.key(LEASE))
