"""The pure ``reconcile()``, table-driven: a world (sweep, RayJobs, previous status, what
storage says) in, actions and status out. No server, no clock."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import kubernetes
import pytest

from k8s.harness import sweep_body
from polypythia import planner
from polypythia.k8s import labels as L
from polypythia.k8s import reconcile as R
from polypythia.k8s.handlers import Operator, OperatorConfig, _SweepState, previous_status
from polypythia.monitoring.spikes import SpikeEvent
from polypythia.spec import sweep_from_object
from polypythia.storage import StorageUnavailable

NOW = "2026-12-01T12:00:00Z"
IMAGES = R.Images("trainer:1", "eval:1", "minio:9000")
REWIND = R.RecordRewind(
    "t-nano-s0", 50, (51, 56), {"signal": "loss", "onsetStep": 61, "attempt": 0}, "spike"
)
REFUSAL = R.RecordRefusal(
    "t-nano-s0", "run t-nano-s0: 1 rewinds done, maxRewinds is 1", {"signal": "loss"}
)


def _job(run: str, deployment: str, job_status: str, attempt: int = 0, **meta: dict) -> dict:
    """A RayJob of the sweep as KubeRay would report it."""
    name = run if attempt == 0 else f"{run}-r{attempt}"
    return {
        "metadata": {
            "name": name,
            "labels": {L.RUN: run, L.ATTEMPT: str(attempt), **meta.get("labels", {})},
            "annotations": meta.get("annotations", {}),
        },
        "spec": {"suspend": False},
        "status": {
            "jobDeploymentStatus": deployment,
            "jobStatus": job_status,
            **meta.get("status", {}),
        },
    }


@dataclass
class World:
    spec: dict = field(default_factory=dict)
    jobs: list[dict] = field(default_factory=list)
    rows: dict[str, str] = field(default_factory=dict)  # run -> previous phase
    observations: dict[str, R.RunObservation] = field(default_factory=dict)
    inits: bool = False


def _pass(world: World, previous: dict | None = None) -> R.Outcome:
    body = sweep_body("t", seeds=2, sizes=("nano",), **world.spec)
    body["spec"]["storage"] = {"bucket": "bkt"}
    if world.inits:
        body["spec"]["inits"] = [
            {"name": "base", "strategy": "pythia"},
            {
                "name": "perm",
                "strategy": "permute",
                "reference": {"run": {"seed": 0, "init": "base"}},
            },
        ]
    body["metadata"]["generation"] = 1
    sweep = sweep_from_object(body, namespace="ns")
    plan = planner.plan_sweep(sweep)
    if previous is None:
        previous = {"runs": [{"name": n, "phase": p} for n, p in world.rows.items()]}
    return R.reconcile(sweep, plan, world.jobs, [], previous, world.observations, IMAGES, NOW)


def _summary(out: R.Outcome) -> list[str]:
    """Actions as short words: ``create t-nano-s0@1``, ``event RunRetried``..."""
    words = []
    for a in out.actions:
        if isinstance(a, R.CreateRayJob):
            words.append(f"create {a.run}@{a.attempt}")
        elif isinstance(a, R.DeleteRayJob):
            words.append(f"delete {a.name}{' (foreground)' if a.foreground else ''}")
        elif isinstance(a, R.SuspendRayJob):
            words.append(f"suspend {a.name}" if a.suspend else f"resume {a.name}")
        elif isinstance(a, R.AnnotateRayJob):
            words.append(f"annotate {a.name}")
        elif isinstance(a, R.Event):
            words.append(f"event {a.reason}")
        elif isinstance(a, R.RecordRewind):
            words.append(f"record rewind {a.run} from {a.restart_step}")
        elif isinstance(a, R.RecordRefusal):
            words.append(f"record refusal {a.run}")
    return words


def _phases(out: R.Outcome) -> dict[str, str]:
    return {r["name"]: r["phase"] for r in out.status["runs"]}


SEED1_DONE = {"t-nano-s1-base": "Succeeded", "t-nano-s1-perm": "Succeeded"}


def _study(deployment: str, job_status: str, **spec: object) -> World:
    """An init study (inits base and perm, perm from seed 0's base run) whose seed 1 is
    done and whose seed-0 base run has the RayJob described."""
    return World(
        spec={"maxConcurrentRuns": 4, **spec},
        inits=True,
        jobs=[_job("t-nano-s0-base", deployment, job_status)],
        rows={**SEED1_DONE, "t-nano-s0-base": "Running"},
    )


RUNNING = _job("t-nano-s0", "Running", "RUNNING")


def _spiking(proposal: R.RecordRewind | R.RecordRefusal, **spec: object) -> World:
    """Seed 0 trains under ``action: rewind`` and the run core proposes ``proposal``."""
    return World(
        spec={"instability": {"action": "rewind"}, **spec},
        jobs=[RUNNING],
        rows={"t-nano-s0": "Running", "t-nano-s1": "Succeeded"},
        observations={"t-nano-s0": R.RunObservation(checkpoints=(50,), proposal=proposal)},
    )


FAILED = _job("t-nano-s0", "Complete", "FAILED")
LATE = _job("t-nano-s0", "Initializing", "", status={"startTime": "2026-12-01T11:00:00Z"})

CASES = {
    "a new sweep starts runs up to maxConcurrentRuns, in plan order": (
        World(spec={"maxConcurrentRuns": 1}),
        ["create t-nano-s0@0", "event RunStarted"],
        {"t-nano-s0": "Queued", "t-nano-s1": "Pending"},
        "Running",
    ),
    "a failed attempt with retries left is retried from its last checkpoint": (
        World(
            spec={"maxRetries": 1},
            jobs=[FAILED],
            rows={"t-nano-s0": "Running", "t-nano-s1": "Succeeded"},
        ),
        ["create t-nano-s0@1", "event RunRetried"],
        {"t-nano-s0": "Queued", "t-nano-s1": "Succeeded"},
        "Running",
    ),
    "maxFailedRuns spent: nothing more starts and the sweep fails": (
        World(
            spec={"maxRetries": 0, "maxFailedRuns": 1}, jobs=[FAILED], rows={"t-nano-s0": "Running"}
        ),
        ["event FailureBudgetExhausted", "event RunFailed"],
        {"t-nano-s0": "Failed", "t-nano-s1": "Pending"},
        "Failed",
    ),
    "an attempt pending past pendingTimeoutSeconds is failed and its pods released": (
        World(
            spec={"pendingTimeoutSeconds": 600, "maxRetries": 0},
            jobs=[LATE],
            rows={"t-nano-s0": "Queued", "t-nano-s1": "Succeeded"},
        ),
        ["annotate t-nano-s0", "suspend t-nano-s0", "event RunFailed"],
        {"t-nano-s0": "Failed", "t-nano-s1": "Succeeded"},
        "Complete",
    ),
    "the run core's rewind of a running run: recorded, then the attempt deleted": (
        _spiking(REWIND),
        ["record rewind t-nano-s0 from 50", "event RunRewound", "delete t-nano-s0 (foreground)"],
        {"t-nano-s0": "Running", "t-nano-s1": "Succeeded"},
        "Running",
    ),
    "a rewind is not taken while the sweep is suspended": (
        _spiking(REWIND, suspend=True),
        ["suspend t-nano-s0"],
        {"t-nano-s0": "Suspended", "t-nano-s1": "Succeeded"},
        "Suspended",
    ),
    "a refused rewind is recorded and the attempt keeps running": (
        _spiking(REFUSAL),
        ["record refusal t-nano-s0"],
        {"t-nano-s0": "Running", "t-nano-s1": "Succeeded"},
        "Running",
    ),
    "an init-study run waits while its reference run trains": (
        _study("Running", "RUNNING"),
        [],
        {**SEED1_DONE, "t-nano-s0-base": "Running", "t-nano-s0-perm": "Pending"},
        "Running",
    ),
    "an init-study run starts once its reference run succeeded": (
        _study("Complete", "SUCCEEDED"),
        ["create t-nano-s0-perm@0", "event RunStarted", "event RunSucceeded"],
        {**SEED1_DONE, "t-nano-s0-base": "Succeeded", "t-nano-s0-perm": "Queued"},
        "Running",
    ),
    "an init-study run fails when its reference run failed for good": (
        _study("Complete", "FAILED", maxRetries=0),
        ["event RunFailed", "event RunFailed"],
        {**SEED1_DONE, "t-nano-s0-base": "Failed", "t-nano-s0-perm": "Failed"},
        "Complete",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_reconcile(case: str) -> None:
    world, actions, phases, sweep_phase = CASES[case]
    out = _pass(world)
    assert _summary(out) == actions
    assert _phases(out) == phases
    assert out.status["phase"] == sweep_phase


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_second_pass_over_the_same_world_posts_no_event_again(case: str) -> None:
    """Events mark transitions: a pass that starts from the status the first one wrote
    (the children not yet seen to change, as under a slow watch) repeats the level-based
    calls (creates answer 409) but announces nothing a second time."""
    world = CASES[case][0]
    first = _pass(world)
    second = _pass(world, first.status)
    assert [a for a in second.actions if isinstance(a, R.Event)] == []
    creates = [a for a in first.actions if isinstance(a, R.CreateRayJob)]
    assert [a for a in second.actions if isinstance(a, R.CreateRayJob)] == creates
    assert _phases(second) == _phases(first)


def test_a_pass_starts_from_the_status_it_wrote_not_from_a_lagging_watch() -> None:
    """The sweep a pass is woken with may be older than the operator's last status write
    (the watch lags under load): the pass starts from what it wrote, unless the sweep
    is another object of the same name (deleted and created again)."""
    written = {"phase": "Running", "runs": [{"name": "t-nano-s0", "phase": "Failed"}]}
    lagging = {
        "metadata": {"uid": "u1", "resourceVersion": "7"},
        "status": {"phase": "Running", "runs": [{"name": "t-nano-s0", "phase": "Running"}]},
    }
    assert previous_status(lagging, ("u1", written)) == written
    recreated = {**lagging, "metadata": {"uid": "u2", "resourceVersion": "9"}}
    assert previous_status(recreated, ("u1", written)) == lagging["status"]
    assert previous_status({"metadata": {"uid": "u1"}}, None) == {}


def test_the_status_shows_each_settled_spike_with_the_run_cores_label() -> None:
    """The same label the exporter counts (``kind``/``cause``) shows in status."""
    shared = SpikeEvent(
        "t-nano-s0", "loss", 61, 62, 8.0, 9.0, 3.0, 70, "common-mode", "open", None, "data"
    )
    alone = SpikeEvent("t-nano-s1", "loss", 90, 90, 7.0, 8.0, 3.0, 95)
    world = World(
        jobs=[RUNNING, _job("t-nano-s1", "Running", "RUNNING")],
        rows={"t-nano-s0": "Running", "t-nano-s1": "Running"},
        observations={
            "t-nano-s0": R.RunObservation(step=100, spikes=1, settled=(shared,)),
            "t-nano-s1": R.RunObservation(step=100, spikes=1, settled=(alone,)),
        },
    )
    out = _pass(world)
    assert out.status["recentSpikes"] == [
        {
            "run": "t-nano-s0",
            "signal": "loss",
            "onsetStep": 61,
            "kind": "common-mode",
            "cause": "data",
        },
        {
            "run": "t-nano-s1",
            "signal": "loss",
            "onsetStep": 90,
            "kind": "seed-specific",
            "cause": "none",
        },
    ]
    rows = {r["name"]: r for r in out.status["runs"]}
    assert rows["t-nano-s0"]["commonModeSpikes"] == 1
    assert rows["t-nano-s1"]["commonModeSpikes"] == 0


def test_a_rewind_whose_record_fails_keeps_its_attempt() -> None:
    """The handler records the run core's actions before any Kubernetes call; when the
    record cannot be written, that run's rewind Event and deletion are dropped this pass
    (its trainer keeps running; the next pass decides again from storage)."""

    class Down:
        def carry_out(self, action: object) -> dict:
            raise StorageUnavailable("bucket unreachable")

    operator = Operator(OperatorConfig(), kubernetes.client.ApiClient())
    state = _SweepState(asyncio.Event(), asyncio.Lock(), Down())  # type: ignore[arg-type]
    other = R.CreateRayJob("t-nano-s1", 0, {})
    actions = [
        REWIND,
        R.Event("RunRewound", "rewind 1", "Warning", REWIND.run),
        R.DeleteRayJob("t-nano-s0", foreground=True, run=REWIND.run),
        other,
    ]
    kept = asyncio.run(operator._record(actions, state, logging.getLogger("test")))
    assert kept == [other]
