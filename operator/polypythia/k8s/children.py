"""The sweep's children as reconcile sees them: KubeRay's RayJob states and eval Jobs
read into one state per run (``RunView``), and what storage said about each run
(``RunObservation``). Pure: dicts in, plain data out.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from polypythia.k8s import labels as L
from polypythia.monitoring.spikes import SpikeEvent
from polypythia.planner import RunPlan
from polypythia.runcore import schedule
from polypythia.runcore.monitor import RecordRewind, SpikeAction
from polypythia.runcore.phase import RunPhase, is_terminal


@dataclass(frozen=True)
class RunObservation:
    """What storage says about one run (read by the handler, judged here)."""

    checkpoints: tuple[int, ...] = ()
    evaluated: tuple[int, ...] = ()
    step: int | None = None
    spikes: int = 0
    outlier: bool = False
    # The verdict that flagged the run first: ``loss`` or ``eval:<task>/<metric>``, the
    # checkpoint step where its streak began, and its worst robust z.
    outlier_signal: str | None = None
    outlier_step: int | None = None
    outlier_score: float | None = None
    rewinds: tuple[dict, ...] = ()  # storage's rewind record (RunStore.record_rewind)
    refused: tuple[dict, ...] = ()
    # The run's spikes whose kind (common-mode or seed-specific) is settled, as labelled
    # by the run core for the exporter too.
    settled: tuple[SpikeEvent, ...] = ()
    # The run core's action for the run's first unhandled spike (``action: rewind``);
    # reconcile takes it only while the run's attempt is running.
    proposal: SpikeAction | None = None


def rayjob_state(job: dict) -> RunPhase:
    """KubeRay's two status axes -> one attempt state (Queued..Succeeded/Failed)."""
    status = job.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job_status = status.get("jobStatus") or ""
    if deployment in ("Failed", "ValidationFailed") or timed_out(job):
        return RunPhase.FAILED
    if deployment == "Complete":
        return RunPhase.SUCCEEDED if job_status == "SUCCEEDED" else RunPhase.FAILED
    if job_status == "FAILED" and deployment not in ("Retrying",):
        return RunPhase.FAILED
    if job.get("spec", {}).get("suspend") or deployment in ("Suspended", "Suspending"):
        # KubeRay reports a RayJob created suspended as Suspended; under Kueue that is a
        # job waiting for admission (a suspended sweep deletes its Kueue RayJobs instead).
        queued = L.QUEUE in (job.get("metadata", {}).get("labels") or {})
        return RunPhase.QUEUED if queued else RunPhase.SUSPENDED
    if deployment == "Running":
        return RunPhase.RUNNING
    return RunPhase.QUEUED


def timed_out(job: dict) -> str | None:
    """The operator's own pending-timeout verdict on a RayJob (see `attempt_pending_too_long`)."""
    return (job.get("metadata", {}).get("annotations") or {}).get(L.TIMED_OUT)


def attempt_pending_too_long(job: dict, timeout: int | None, now: str) -> bool:
    """Whether an attempt has waited to start training past ``timeout`` (+ grace) since
    KubeRay began it (`status.startTime`). Kueue's queued RayJobs wait for quota, not
    for a node: they are left alone, like suspended ones."""
    if not timeout or rayjob_state(job) != RunPhase.QUEUED or job.get("spec", {}).get("suspend"):
        return False
    if label(job, L.QUEUE):
        return False
    start = (job.get("status") or {}).get("startTime")
    if not start:
        return False
    try:
        began = datetime.datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    at = datetime.datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ")
    return schedule.pending_too_long((at - began).total_seconds(), timeout)


def job_state(job: dict) -> str:
    """A batch/v1 Job -> Active / Succeeded / Failed."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    return "Active"


def job_steps(job: dict) -> list[int]:
    text = (job.get("metadata", {}).get("annotations") or {}).get(L.STEPS, "")
    return [int(s) for s in text.split(",") if s.strip().isdigit()]


def label(obj: dict, key: str) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(key)


def attempt_of(job: dict) -> int:
    try:
        return int(label(job, L.ATTEMPT) or 0)
    except ValueError:
        return 0


def count_annotation(job: dict | None, key: str) -> int:
    """A count the operator wrote on a child it made (0 when absent or not a count)."""
    text = ((job or {}).get("metadata", {}).get("annotations") or {}).get(key, "0")
    return int(text) if text.isdigit() else 0


def eval_try(job: dict) -> int:
    """Which try of its steps this eval Job is (0 = first)."""
    return count_annotation(job, L.EVAL_TRY)


def job_rewinds(job: dict | None) -> int:
    """How many rewinds were recorded when this RayJob was made."""
    return count_annotation(job, L.REWINDS)


def preempted(job: dict) -> bool:
    """Whether the operator marked this RayJob's pods as disrupted (see handlers)."""
    return bool((job.get("metadata", {}).get("annotations") or {}).get(L.PREEMPTED))


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_diff(old: dict, new: dict) -> list[str]:
    """Paths of the run config that differ (`training.steps`)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


@dataclass
class RunView:
    """One run in this pass: its plan, previous status row, RayJobs and what to do."""

    plan: RunPlan
    row: dict
    jobs: list[dict]
    latest: dict | None
    state: RunPhase = RunPhase.PENDING
    attempt: int = 0
    needs: int | None = None  # attempt to create when a slot frees up
    rewinds: int = 0  # rewinds recorded in storage (or, unobserved, the last known count)
    job_rewinds: int = 0  # of those, how many the latest RayJob already obeys
    preemptions: int = 0  # attempts lost to preemption (they spend no retry)
    message: str | None = None  # why a run without a RayJob waits or failed
    rewinding: bool = False  # a rewind's old RayJob is being deleted; new attempt after
    rewind: RecordRewind | None = None  # the run core's rewind taken this pass


def run_view(
    plan: RunPlan,
    row: dict,
    jobs: list[dict],
    observations: dict[str, RunObservation],
    spec: dict,
) -> RunView:
    run = RunView(plan, row, jobs, max(jobs, key=attempt_of) if jobs else None)
    obs = observations.get(plan.name)
    run.job_rewinds = job_rewinds(run.latest)
    known = len(obs.rewinds) if obs is not None else int(row.get("rewinds", 0))
    run.rewinds = max(known, run.job_rewinds)
    # A rewind's old RayJob was being deleted at the last pass; over once an attempt obeys it.
    run.rewinding = bool(row.get("rewinding")) and run.rewinds > run.job_rewinds
    if run.latest is None:
        obs = observations.get(plan.name)
        final = spec["training"]["steps"]
        if is_terminal(row.get("phase")):
            run.state, run.attempt = RunPhase(row["phase"]), int(row.get("attempt", 0))
        elif obs is not None and final in obs.checkpoints:
            run.state, run.attempt = RunPhase.SUCCEEDED, int(row.get("attempt", 0))
        else:
            run.attempt = int(row.get("attempt", 0))
            run.state, run.needs = RunPhase.PENDING, run.attempt
        return run
    run.attempt = attempt_of(run.latest)
    run.preemptions = count_annotation(run.latest, L.PREEMPTIONS)
    state = rayjob_state(run.latest)
    if state == RunPhase.FAILED and preempted(run.latest):
        # Eviction, spot loss, node drain: not the run's fault, so no retry is spent.
        run.preemptions += 1
        run.state, run.needs = RunPhase.PREEMPTED, run.attempt + 1
    elif state == RunPhase.FAILED:
        if run.attempt - run.job_rewinds - run.preemptions < int(spec["maxRetries"]):
            run.state, run.needs = RunPhase.RETRYING, run.attempt + 1
        else:
            run.state = RunPhase.FAILED
    else:
        run.state = state
    return run


def running_runs(rayjobs: list[dict]) -> frozenset[str]:
    """Runs whose latest RayJob is running: the ones a spike may rewind (a finished run
    keeps its history; a queued one has not trained yet)."""
    latest: dict[str, dict] = {}
    for job in rayjobs:
        run = label(job, L.RUN) or ""
        if run not in latest or attempt_of(job) > attempt_of(latest[run]):
            latest[run] = job
    return frozenset(r for r, job in latest.items() if rayjob_state(job) == RunPhase.RUNNING)


def recently_ended(rayjobs: list[dict], now: str, window_s: int) -> bool:
    """Whether a RayJob of the sweep ended less than ``window_s`` ago (or has no end
    time yet): only then may its RayCluster still be on its way out."""
    stamp = datetime.datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    for job in rayjobs:
        if not rayjob_state(job).terminal:
            continue
        end = (job.get("status") or {}).get("endTime")
        if not end:
            return True
        try:
            at = datetime.datetime.strptime(end, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return True
        if (stamp - at).total_seconds() < window_s:
            return True
    return False
