"""The local driver: a damaged final checkpoint is not "already finished", drift is refused
before anything trains, failed trainers are retried (spec.maxRetries, backoff), a second
driver on a workdir is refused, and trainers die with a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from trainer_helpers import nano_config

from polypythia.errors import RuntimeFault, UsageError
from polypythia.local import driver as driver_module
from polypythia.local.cli import _one_driver
from polypythia.local.driver import DriverOptions, LocalDriver
from polypythia.runcore.phase import RunPhase
from polypythia.spec import sweep_from_object
from polypythia.storage import RunStore

REPO = Path(__file__).resolve().parents[2]


def sweep(**training):
    return sweep_with(training=training)


def sweep_with(training: dict | None = None, **spec):
    """The faults sweep (nano, seeds 0 and 1, maxRetries 2) with ``spec`` fields set."""
    return sweep_from_object(
        {
            "apiVersion": "polypythia.io/v1alpha1",
            "kind": "PolyPythiaSweep",
            "metadata": {"name": "f"},
            "spec": {
                "sizes": ["nano"],
                "seeds": {"list": [0, 1]},
                "training": {
                    "steps": 10,
                    "globalBatchSize": 8,
                    "sequenceLength": 32,
                    "precision": "fp32",
                    **(training or {}),
                },
                "checkpoints": {"schedule": "every", "every": 5},
                "maxRetries": 2,
                **spec,
            },
        }
    )


def driver(tmp_path: Path, **training) -> LocalDriver:
    return LocalDriver(
        sweep(**training),
        str(tmp_path / "store"),
        DriverOptions(workdir=tmp_path / "work", evaluate=False, retry_base_s=0.0),
    )


def finish(run: RunStore, steps: int, tmp_path: Path, config: dict) -> None:
    """What a finished run leaves: its run.json and a final checkpoint."""
    run.write_run_config(config)
    src = tmp_path / f"ckpt-{run.uri.rsplit('/', 1)[-1]}"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 4096)
    run.commit_checkpoint(steps, src)


def test_a_damaged_final_checkpoint_is_not_finished(tmp_path: Path) -> None:
    first = driver(tmp_path)
    for run in first.runs:
        finish(run.store, 10, tmp_path, run.plan.config)
    broken = first.runs[0].store
    path = Path(broken.uri) / "checkpoints" / "step10" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])

    again = driver(tmp_path)
    again.prepare()
    assert [r.phase for r in again.runs] == [RunPhase.PENDING, "Succeeded"]
    assert broken.complete_checkpoints() == []
    assert list((Path(broken.uri) / "quarantine").glob("step10-*/model.safetensors"))


def test_drift_is_refused_before_anything_trains(tmp_path: Path) -> None:
    first = driver(tmp_path)
    for run in first.runs:
        finish(run.store, 5, tmp_path, run.plan.config)
    with pytest.raises(UsageError) as refused:
        driver(tmp_path, learningRate=0.01).prepare()
    assert "training.learningRate" in str(refused.value) and "-> 0.01" in str(refused.value)


def test_a_change_of_tensor_shapes_is_refused_even_with_allow_changes(tmp_path: Path) -> None:
    first = driver(tmp_path)
    for run in first.runs:
        stored = json.loads(json.dumps(run.plan.config))
        stored["model"]["numLayers"] += 1
        finish(run.store, 5, tmp_path, stored)
    allowed = LocalDriver(
        sweep(),
        str(tmp_path / "store"),
        DriverOptions(workdir=tmp_path / "work", evaluate=False, allow_changes=True),
    )
    with pytest.raises(UsageError) as refused:
        allowed.prepare()
    assert "tensor shapes (model.numLayers: " in str(refused.value)


def test_resume_only_checkpoints_are_not_evaluated(tmp_path: Path) -> None:
    """They are pruned (keepResume) while training goes on, often before an evaluation
    reaches them; selecting one failed the evaluation and turned it off for the sweep."""
    d = LocalDriver(
        sweep_with(
            checkpoints={"schedule": "every", "every": 5, "resumeEvery": 2, "keepResume": 2},
            evaluation={"tasks": ["pp_cloze"], "schedule": "all"},
        ),
        str(tmp_path / "store"),
        DriverOptions(workdir=tmp_path / "work", retry_base_s=0.0),
    )
    run = d.runs[0]
    run.checkpoints = [0, 2, 4, 5, 6, 8]
    assert d.to_evaluate(run) == [0, 5]
    run.evaluated = {0}
    run.checkpoints = [0, 5, 8, 10]
    assert d.to_evaluate(run) == [5, 10]


class Exited:
    """A trainer process that has already exited with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code

    def error_summary(self) -> str:
        return "RuntimeError: boom (log: x.log)"


def test_failed_trainers_are_retried_up_to_max_retries(tmp_path: Path) -> None:
    d = driver(tmp_path)
    run = d.runs[0]
    phases = []
    for _ in range(3):
        run.phase, run.process = RunPhase.RUNNING, Exited(1)
        d._reap()
        phases.append(run.phase)
    assert phases == [RunPhase.RETRYING, RunPhase.RETRYING, RunPhase.FAILED]  # maxRetries 2
    assert "boom" in run.error


def test_kills_from_outside_spend_no_retry_and_refusals_none_at_all(tmp_path: Path) -> None:
    d = driver(tmp_path)
    run = d.runs[0]
    for _ in range(5):
        run.phase, run.process = RunPhase.RUNNING, Exited(-signal.SIGKILL)
        d._reap()
        assert run.phase == RunPhase.PREEMPTED
    assert run.retries == 0
    run.phase, run.process = RunPhase.RUNNING, Exited(2)  # config drift, a bad field
    d._reap()
    assert run.phase == RunPhase.FAILED


def test_retries_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = driver(tmp_path)
    d.options.retry_base_s = 5.0
    run = d.runs[0]
    run.phase, run.process = RunPhase.RUNNING, Exited(1)
    d._reap()
    assert run.not_before >= time.time() + 4
    started = []
    monkeypatch.setattr(d, "_start_process", lambda r: started.append(r.plan.name))
    d._launch()
    assert run.plan.name not in started  # not before its backoff ends
    monkeypatch.setattr(driver_module.time, "time", lambda: run.not_before + 1)
    d._launch()
    assert run.plan.name in started


def test_a_second_driver_on_a_workdir_is_refused(tmp_path: Path) -> None:
    with _one_driver(tmp_path), pytest.raises(RuntimeFault) as refused, _one_driver(tmp_path):
        pass
    assert f"pid {os.getpid()}" in str(refused.value)
    with _one_driver(tmp_path):  # released when the first driver ends
        pass


def test_trainers_die_with_a_killed_driver(tmp_path: Path) -> None:
    """SIGKILL the driver: its trainer must not keep writing the run alone."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps(nano_config(tmp_path / "store", steps=100_000)))
    parent = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from polypythia.local.processes import RunProcess
        p = RunProcess("r", Path({str(config)!r}), Path({str(tmp_path / "r.log")!r}),
                       None, {{}}, no_ray=True)
        p.start()
        print(p.process.pid, flush=True)
        time.sleep(600)
        """
    )
    paths = [str(REPO / d) for d in ("operator", "trainer_image", "eval_image")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    driver_proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, env=env, text=True
    )
    child = int(driver_proc.stdout.readline())
    time.sleep(2)  # the trainer is importing or training by now
    assert driver_proc.poll() is None
    driver_proc.kill()
    driver_proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # A zombie (dead, not reaped by init yet) counts as gone.
        state = Path(f"/proc/{child}/stat").read_text().split()[2]
        if state == "Z":
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the trainer outlived its driver")


def test_a_child_whose_driver_died_before_it_was_armed_ends_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver can die between fork and prctl(PR_SET_PDEATHSIG): no signal would come
    then, so the child checks that its parent is still the driver and ends if not."""
    from polypythia.local.processes import die_with_parent

    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: 2**22 + 7)  # the child will not find it as its parent
        arm = die_with_parent()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=arm)
    try:
        assert orphan.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        orphan.kill()
    armed = subprocess.Popen([sys.executable, "-c", "pass"], preexec_fn=die_with_parent())
    assert armed.wait(timeout=60) == 0  # its driver is alive: it runs as usual


def test_sigterm_stops_the_driver_like_ctrl_c(tmp_path: Path) -> None:
    """kill / systemd / Kubernetes send SIGTERM: the driver stops its trainers and exits 130."""
    from polypythia.local.cli import _sigterm_as_interrupt

    d = driver(tmp_path)
    stopped = []
    d.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
    d._launch = lambda: os.kill(os.getpid(), signal.SIGTERM)  # type: ignore[method-assign]
    with _sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        d.run()
    assert stopped == [True]


class Hanging:
    """A trainer process that never trains a step (waiting for Ray resources)."""

    def __init__(self) -> None:
        self.stopped = False

    def poll(self) -> int | None:
        return -15 if self.stopped else None

    def stop(self) -> None:
        self.stopped = True

    def error_summary(self) -> str:
        return ""


def test_max_failed_runs_stops_new_starts_and_ends_the_sweep(tmp_path: Path) -> None:
    """spec.maxFailedRuns in local mode, the operator's rule: once that many runs failed
    no run starts, and the driver ends when nothing trains any more."""
    d = LocalDriver(
        sweep_with(maxFailedRuns=1, maxRetries=0),
        str(tmp_path / "store"),
        DriverOptions(workdir=tmp_path / "work", evaluate=False, retry_base_s=0.0),
    )
    first, second = d.runs
    first.phase, first.process = RunPhase.RUNNING, Exited(1)
    d._reap()
    assert first.phase == RunPhase.FAILED
    started = []
    d._start_process = lambda r: started.append(r.plan.name)  # type: ignore[method-assign]
    d._launch()
    assert started == [] and second.phase == RunPhase.PENDING
    assert "spec.maxFailedRuns is 1" in (second.error or "")
    assert d._all_done()


def test_an_attempt_that_never_trains_fails_after_pending_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spec.pendingTimeoutSeconds in local mode: a trainer that has written no telemetry
    that long (plus the operator's grace) is stopped, and that attempt spends a retry."""
    d = LocalDriver(
        sweep_with(pendingTimeoutSeconds=30, maxRetries=1),
        str(tmp_path / "store"),
        DriverOptions(workdir=tmp_path / "work", evaluate=False, retry_base_s=0.0),
    )
    run, other = d.runs
    now = time.time()
    monkeypatch.setattr(driver_module.time, "time", lambda: now)
    for r in d.runs:
        r.process = Hanging()
    run.phase = other.phase = RunPhase.RUNNING
    run.started_at = other.started_at = now
    # The other run trained: a telemetry batch appeared after it started.
    other.store.append_telemetry([{"step": 1, "loss": 3.0}], attempt=0)
    monkeypatch.setattr(driver_module.time, "time", lambda: now + 60)
    d._reap()
    assert run.phase == RunPhase.RUNNING  # 60 s: within 30 s + grace
    monkeypatch.setattr(driver_module.time, "time", lambda: now + 200)
    d._reap()
    assert run.phase == RunPhase.RETRYING and run.retries == 1 and run.process.stopped
    assert other.phase == RunPhase.RUNNING and other.started_at is None
    run.phase, run.process, run.started_at = RunPhase.RUNNING, Hanging(), now
    d._reap()
    assert run.phase == RunPhase.FAILED
    assert "pendingTimeoutSeconds" in (run.error or "")


def test_an_init_study_run_starts_only_after_its_reference_run_succeeded(tmp_path: Path) -> None:
    """The operator's rule in local mode: the reference run's checkpoint alone is not
    enough (it may still be rewound or fail); its run must have succeeded."""
    study = sweep_with(
        maxConcurrentRuns=4,
        seeds={"list": [0]},
        inits=[
            {"name": "base", "strategy": "pythia"},
            {
                "name": "perm",
                "strategy": "permute",
                "reference": {"run": {"seed": 0, "init": "base"}},
            },
        ],
    )
    d = LocalDriver(
        study,
        str(tmp_path / "store"),
        DriverOptions(workdir=tmp_path / "work", evaluate=False),
    )
    base, perm = d.runs
    assert perm.plan.requires == base.plan.name
    started = []
    d._start_process = lambda r: started.append(r.plan.name)  # type: ignore[method-assign]
    base.phase, base.checkpoints = RunPhase.RUNNING, [0, 5]
    d._launch()
    assert started == [] and perm.phase == RunPhase.PENDING
    base.phase = RunPhase.SUCCEEDED
    d._launch()
    assert started == [perm.plan.name]
    again = LocalDriver(study, str(tmp_path / "store2"), DriverOptions(workdir=tmp_path / "w2"))
    again.runs[0].phase = RunPhase.FAILED
    again._start_process = lambda r: None  # type: ignore[method-assign]
    again._launch()
    assert again.runs[1].phase == RunPhase.FAILED
    assert "reference run f-nano-s0-base failed" in (again.runs[1].error or "")


def test_stopping_the_driver_ends_running_evaluations_and_their_children(tmp_path) -> None:
    """SIGTERM or Ctrl-C to `polypythia run` ends the `polypythia evaluate` children too
    (their whole process group), so none outlives the driver; a stopped driver starts none."""
    import threading

    import psutil

    from polypythia.local.evaluation import EvaluationChildren

    # A stand-in evaluation that starts a grandchild and hangs, as lm-eval's workers would.
    hang = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
    )
    children = EvaluationChildren(program=(sys.executable, "-c", hang))
    errors: list[Exception] = []

    def evaluate() -> None:
        try:
            children.run([], tmp_path / "eval.log", {})
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=evaluate)
    thread.start()
    deadline = time.time() + 30
    tree: list[psutil.Process] = []
    while time.time() < deadline and len(tree) < 2:
        tree = [
            p
            for p in psutil.Process().children(recursive=True)
            if "time.sleep(300)" in " ".join(p.cmdline())
        ]
        time.sleep(0.1)
    assert len(tree) == 2, "the evaluation and its grandchild did not start"
    children.stop(grace_s=10)
    thread.join(15)
    assert not thread.is_alive()
    assert errors and "exit code -15" in str(errors[0])
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    with pytest.raises(RuntimeError, match="the driver is stopping"):
        children.run([], tmp_path / "eval.log", {})
