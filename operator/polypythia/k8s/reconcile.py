"""Desired vs observed for one sweep -> actions and the new status. Pure: no I/O, no clock.

Everything comes in as plain data (the sweep, its plan, the RayJobs and eval Jobs that
exist, what storage holds, the previous status), so a restarted operator computes the
same answer from the same world and never creates a child twice.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from polypythia.k8s import labels as L
from polypythia.k8s.evaljob import render_eval_job
from polypythia.k8s.rayjob import ClusterSettings, config_of, render_rayjob
from polypythia.planner import RunPlan, evaluation_steps
from polypythia.spec import Sweep

ACTIVE = ("Queued", "Running", "Suspended")
ENDED = ("Succeeded", "Failed")
EVAL_MAX_TRIES = 3
EVAL_BATCH_MAX = 8
MAX_DIFFS_SHOWN = 5
RECENT_REWINDS = 10  # status.recentRewinds keeps the last ones across runs
# KubeRay >= 1.6 fails an attempt past preRunningDeadlineSeconds itself; older versions
# drop that field, so the operator does it this much later (its own clock, same rule).
PENDING_GRACE_S = 60


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


@dataclass(frozen=True)
class CreateRayJob:
    run: str
    attempt: int
    body: dict


@dataclass(frozen=True)
class DeleteRayJob:
    name: str
    # Foreground: the RayJob goes only after its RayCluster and pods are gone, so a
    # rewind's next attempt never overlaps the old trainer.
    foreground: bool = False


@dataclass(frozen=True)
class AnnotateRayJob:
    name: str
    annotations: dict


@dataclass(frozen=True)
class SuspendRayJob:
    name: str
    suspend: bool


@dataclass(frozen=True)
class CreateEvalJob:
    run: str
    steps: tuple[int, ...]
    body: dict


@dataclass(frozen=True)
class DeleteEvalJob:
    name: str


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: str = "Normal"


Action = (
    CreateRayJob
    | DeleteRayJob
    | AnnotateRayJob
    | SuspendRayJob
    | CreateEvalJob
    | DeleteEvalJob
    | Event
)


@dataclass
class Outcome:
    actions: list[Action] = field(default_factory=list)
    status: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Images:
    trainer: str
    eval: str
    storage_endpoint: str | None = None
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


@dataclass(frozen=True)
class Blockers:
    """What the handler found outside the sweep that must stop new runs, or allow more.

    ``secret``: why the storage Secret is unusable (missing). ``allow_destructive``: the
    sweep's allow-destructive-changes annotation. ``clusters``: RayJobs whose RayCluster
    still exists (KubeRay has not finished deleting it: its GPUs are still held)."""

    secret: str | None = None
    allow_destructive: bool = False
    clusters: frozenset[str] = frozenset()


def rayjob_state(job: dict) -> str:
    """KubeRay's two status axes -> one attempt state (Queued..Succeeded/Failed)."""
    status = job.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job_status = status.get("jobStatus") or ""
    if deployment in ("Failed", "ValidationFailed") or _timed_out(job):
        return "Failed"
    if deployment == "Complete":
        return "Succeeded" if job_status == "SUCCEEDED" else "Failed"
    if job_status == "FAILED" and deployment not in ("Retrying",):
        return "Failed"
    if job.get("spec", {}).get("suspend") or deployment in ("Suspended", "Suspending"):
        # KubeRay reports a RayJob created suspended as Suspended; under Kueue that is a
        # job waiting for admission (a suspended sweep deletes its Kueue RayJobs instead).
        queued = L.QUEUE in (job.get("metadata", {}).get("labels") or {})
        return "Queued" if queued else "Suspended"
    if deployment == "Running":
        return "Running"
    return "Queued"


def _timed_out(job: dict) -> str | None:
    """The operator's own pending-timeout verdict on a RayJob (see `pending_too_long`)."""
    return (job.get("metadata", {}).get("annotations") or {}).get(L.TIMED_OUT)


def pending_too_long(job: dict, timeout: int | None, now: str) -> bool:
    """Whether an attempt has waited to start training past ``timeout`` (+ grace) since
    KubeRay began it (`status.startTime`). Kueue's queued RayJobs wait for quota, not
    for a node: they are left alone, like suspended ones."""
    if not timeout or rayjob_state(job) != "Queued" or job.get("spec", {}).get("suspend"):
        return False
    if _label(job, L.QUEUE):
        return False
    start = (job.get("status") or {}).get("startTime")
    if not start:
        return False
    try:
        began = datetime.datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    at = datetime.datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ")
    return (at - began).total_seconds() > int(timeout) + PENDING_GRACE_S


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


def _label(obj: dict, key: str) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(key)


def _attempt(job: dict) -> int:
    try:
        return int(_label(job, L.ATTEMPT) or 0)
    except ValueError:
        return 0


def _count_annotation(job: dict | None, key: str) -> int:
    """A count the operator wrote on a child it made (0 when absent or not a count)."""
    text = ((job or {}).get("metadata", {}).get("annotations") or {}).get(key, "0")
    return int(text) if text.isdigit() else 0


def _eval_try(job: dict) -> int:
    """Which try of its steps this eval Job is (0 = first)."""
    return _count_annotation(job, L.EVAL_TRY)


def _job_rewinds(job: dict | None) -> int:
    """How many rewinds were recorded when this RayJob was made."""
    return _count_annotation(job, L.REWINDS)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_diff(old: dict, new: dict) -> list[str]:
    """Paths of the run config that differ (`training.steps`)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def condition(
    kind: str,
    ok: bool,
    reason: str,
    message: str,
    previous: dict,
    now: str,
    generation: int | None = None,
) -> dict:
    """A condition that keeps its lastTransitionTime while its status does not change;
    ``observedGeneration`` is the spec generation it was computed from."""
    status = "True" if ok else "False"
    old = next((c for c in previous.get("conditions", []) if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now
    out = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def invalid_status(message: str, generation: int | None, previous: dict, now: str) -> dict:
    """The status of a sweep whose spec cannot run: a condition with the message, no children."""
    return {
        **{k: v for k, v in previous.items() if k not in ("conditions", "phase")},
        "observedGeneration": generation,
        "phase": "Invalid",
        "conditions": [
            condition("Ready", False, "InvalidSpec", message, previous, now, generation),
            condition(
                "Progressing",
                False,
                "InvalidSpec",
                "the spec must be fixed",
                previous,
                now,
                generation,
            ),
            condition("Degraded", True, "InvalidSpec", message, previous, now, generation),
        ],
    }


def _size_text(sizes: list[str]) -> str:
    return ",".join(sizes)


@dataclass
class _Run:
    plan: RunPlan
    row: dict
    jobs: list[dict]
    latest: dict | None
    state: str = "Pending"
    attempt: int = 0
    needs: int | None = None  # attempt to create when a slot frees up
    rewinds: int = 0  # rewinds recorded in storage (or, unobserved, the last known count)
    job_rewinds: int = 0  # of those, how many the latest RayJob already obeys
    preemptions: int = 0  # attempts lost to preemption (they spend no retry)
    message: str | None = None  # why a run without a RayJob waits or failed
    rewinding: bool = False  # a rewind's old RayJob is being deleted; new attempt after


def reconcile(
    sweep: Sweep,
    plan: list[RunPlan],
    rayjobs: list[dict],
    eval_jobs: list[dict],
    previous: dict,
    observations: dict[str, RunObservation],
    images: Images,
    now: str,
    blockers: Blockers | None = None,
) -> Outcome:
    """One level-based pass over a sweep (see the module docstring)."""
    spec = sweep.spec
    blockers = blockers or Blockers()
    out = Outcome()
    prev_rows = {r.get("name"): r for r in previous.get("runs") or []}
    planned = {r.name: r for r in plan}
    by_run: dict[str, list[dict]] = {}
    timeout = spec.get("pendingTimeoutSeconds")
    for job in rayjobs:
        if pending_too_long(job, timeout, now):
            # Failed from now on (annotation), its cluster's pending pods released (suspend).
            name = job["metadata"]["name"]
            text = (
                f"attempt did not start training within spec.pendingTimeoutSeconds "
                f"({timeout} s; pods unschedulable, image not pullable or a Secret missing?)"
            )
            out.actions += [AnnotateRayJob(name, {L.TIMED_OUT: text}), SuspendRayJob(name, True)]
            meta = {**job["metadata"]}
            meta["annotations"] = {**(meta.get("annotations") or {}), L.TIMED_OUT: text}
            job = {**job, "metadata": meta}
        by_run.setdefault(_label(job, L.RUN) or "", []).append(job)

    # Runs no longer asked for: their RayJobs and eval Jobs go, but deleting a running
    # one needs an explicit yes (spec.allowDestructiveChanges or the annotation).
    allow = bool(spec.get("allowDestructiveChanges")) or blockers.allow_destructive
    removed_live = sorted(
        name
        for name, jobs in by_run.items()
        if name not in planned and any(rayjob_state(j) not in ENDED for j in jobs)
    )
    destructive = ""
    if removed_live and not allow:
        destructive = (
            f"spec change removes {len(removed_live)} run(s) that are still running "
            f"({', '.join(removed_live[:3])}{', ...' if len(removed_live) > 3 else ''}); "
            f"set spec.allowDestructiveChanges: true or annotate the sweep "
            f"{L.ALLOW_DESTRUCTIVE}=true to delete them, or revert the change"
        )
    for name, jobs in sorted(by_run.items()):
        if name not in planned and not (destructive and name in removed_live):
            for job in jobs:
                out.actions.append(DeleteRayJob(job["metadata"]["name"]))
            out.actions.append(Event("RunRemoved", f"run {name} left the sweep; RayJobs deleted"))
    for job in eval_jobs:
        if _label(job, L.RUN) not in planned and not (
            destructive and _label(job, L.RUN) in removed_live
        ):
            out.actions.append(DeleteEvalJob(job["metadata"]["name"]))

    # Changes that would alter the meaning of a run that already has RayJobs are refused.
    changed: dict[str, list[str]] = {}
    for name, jobs in by_run.items():
        if name in planned:
            latest = max(jobs, key=_attempt)
            old = config_of(latest)
            if old is not None and old != planned[name].config:
                changed[name] = config_diff(old, planned[name].config)
    rejected = ""
    if changed:
        fields = sorted({f for diffs in changed.values() for f in diffs})
        runs = sorted(changed)
        rejected = (
            f"spec change alters {len(runs)} run(s) that already started "
            f"({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}): run config fields "
            f"{', '.join(fields[:MAX_DIFFS_SHOWN])}{', ...' if len(fields) > MAX_DIFFS_SHOWN else ''}"
            " would change; revert them or create a new sweep (adding or removing sizes and "
            "seeds is allowed)"
        )

    rejected_reason = "SpecChangeRejected"
    if destructive and not rejected:
        rejected, rejected_reason = destructive, "DestructiveChangeRefused"
    runs = [
        _run_state(p, prev_rows.get(p.name, {}), by_run.get(p.name, []), observations, spec)
        for p in plan
    ]
    suspended = bool(spec.get("suspend"))
    failed_now = sum(1 for r in runs if r.state == "Failed")
    budget = spec.get("maxFailedRuns")
    exhausted = bool(budget) and failed_now >= int(budget)
    frozen = bool(rejected) or bool(blockers.secret)

    # Suspend / resume running RayJobs.
    for run in runs:
        for job in run.jobs:
            if rayjob_state(job) in ENDED:
                continue
            kueue = _label(job, L.QUEUE) is not None
            name = job["metadata"]["name"]
            if suspended and not kueue and not job["spec"].get("suspend"):
                out.actions.append(SuspendRayJob(name, True))
                run.state = "Suspended"
            elif suspended and kueue:
                out.actions.append(DeleteRayJob(name))  # Kueue owns spec.suspend
                run.state = "Suspended"
            elif not suspended and not kueue and job["spec"].get("suspend"):
                out.actions.append(SuspendRayJob(name, False))
                run.state = "Queued"

    # A rewind recorded in storage (observe.py decided it) replaces the running attempt:
    # its trainer must restart from the rewind's checkpoint. Not a retry: maxRewinds bounds it.
    # The new attempt is created only once the old RayJob is gone (its trainer stopped
    # writing the run): first pass deletes it, a later pass creates the next attempt.
    for run in runs:
        if suspended or frozen or run.rewinds <= run.job_rewinds:
            continue
        if run.latest is not None and rayjob_state(run.latest) in ("Queued", "Running"):
            if not run.row.get("rewinding"):
                out.actions.append(
                    Event("RunRewound", _rewind_message(run, observations), "Warning")
                )
            out.actions.append(DeleteRayJob(run.latest["metadata"]["name"], foreground=True))
            run.rewinding, run.needs = True, None
            continue
        if not run.row.get("rewinding"):
            continue
        gone = run.row.get("rayJob")
        if gone and any(j["metadata"]["name"] == gone for j in run.jobs):
            run.rewinding, run.needs, run.state = True, None, "Queued"
            continue
        attempt = max(run.attempt, int(run.row.get("attempt", 0))) + 1
        body = render_rayjob(
            sweep,
            run.plan,
            attempt=attempt,
            trainer_image=images.trainer,
            storage_endpoint=images.storage_endpoint,
            rewinds=run.rewinds,
            preemptions=run.preemptions,
            cluster=images.cluster,
        )
        out.actions.append(CreateRayJob(run.plan.name, attempt, body))
        run.state, run.attempt, run.latest, run.job_rewinds = "Queued", attempt, body, run.rewinds
        run.needs, run.rewinding = None, False

    # Start runs and retries within maxConcurrentRuns, in the planner's order.
    # A run counts while its RayJob is active, while its old RayJob is being deleted for a
    # rewind, and while KubeRay still deletes the RayCluster of its ended RayJob (the
    # GPUs are held until the cluster is gone; Kueue and quotas see it too).
    active = sum(
        1
        for r in runs
        if (r.state in ACTIVE and r.latest is not None)
        or r.rewinding
        or any(j["metadata"]["name"] in blockers.clusters for j in r.jobs)
    )
    slots = max(0, int(spec["maxConcurrentRuns"]) - active)
    candidates = sorted(
        (r for r in runs if r.needs is not None),
        key=lambda r: (0 if r.needs else 1, r.plan.order),
    )
    done_runs = {r.plan.name for r in runs if r.state == "Succeeded"}
    failed_runs = {r.plan.name for r in runs if r.state == "Failed"}
    for run in candidates:
        required = run.plan.requires
        if required and required in failed_runs and run.latest is None:
            # Its initial weights come from a run that failed for good: it never can start.
            run.state, run.needs = "Failed", None
            run.message = f"reference run {required} failed; no checkpoint to initialise from"
        elif required and required not in done_runs:
            run.message = f"waiting for reference run {required} to finish"
    for run in candidates:
        if suspended or frozen or exhausted or slots <= 0:
            break
        if run.needs is None or (run.plan.requires and run.plan.requires not in done_runs):
            continue
        attempt = run.needs or 0
        resume = max(run.row.get("lastCheckpoint", -1), -1)
        body = render_rayjob(
            sweep,
            run.plan,
            attempt=attempt,
            trainer_image=images.trainer,
            resume_from=resume if attempt and resume >= 0 else None,
            storage_endpoint=images.storage_endpoint,
            rewinds=run.rewinds,
            preemptions=run.preemptions,
            cluster=images.cluster,
        )
        out.actions.append(CreateRayJob(run.plan.name, attempt, body))
        if attempt:
            where = f"step {resume}" if resume >= 0 else "the start"
            why = run.latest and (
                _timed_out(run.latest) or (run.latest.get("status") or {}).get("message")
            )
            out.actions.append(
                Event(
                    "RunPreempted" if run.state == "Preempted" else "RunRetried",
                    f"run {run.plan.name}: "
                    + (
                        "preempted, restarted without spending a retry, "
                        if run.state == "Preempted"
                        else f"retry {attempt - run.job_rewinds - run.preemptions} of "
                        f"{spec['maxRetries']}, "
                    )
                    + f"attempt {attempt}, resuming from {where}"
                    + (f"; last attempt: {why[:200]}" if why else ""),
                    "Warning",
                )
            )
        else:
            out.actions.append(
                Event(
                    "RunStarted", f"run {run.plan.name}: RayJob {body['metadata']['name']} created"
                )
            )
        run.state, run.attempt, run.latest = "Queued", attempt, body
        run.job_rewinds = run.rewinds
        slots -= 1
    if exhausted:
        for run in runs:
            if run.needs is not None and run.state in ("Pending", "Retrying", "Preempted"):
                run.message = (
                    f"not started: {failed_now} run(s) failed, spec.maxFailedRuns is {budget}"
                )

    eval_actions, eval_rows = _evaluations(sweep, runs, eval_jobs, observations, images)
    if exhausted and previous.get("phase") != "Failed":
        out.actions.append(
            Event(
                "FailureBudgetExhausted",
                f"{failed_now} run(s) failed (spec.maxFailedRuns {budget}): no more runs start",
                "Warning",
            )
        )
    if blockers.secret and blockers.secret not in str(previous.get("conditions")):
        out.actions.append(Event("SecretMissing", blockers.secret, "Warning"))
    if destructive and destructive not in str(previous.get("conditions")):
        out.actions.append(Event("DestructiveChangeRefused", destructive, "Warning"))
    out.actions += eval_actions
    rows = []
    spike_type = (
        "Normal" if (spec.get("instability") or {}).get("action") == "observe" else "Warning"
    )
    for run in runs:
        row = _row(run, observations.get(run.plan.name), eval_rows.get(run.plan.name))
        if run.rewinding:
            row["rewinding"] = True
        out.actions += _transition_events(run.row, row, spike_type)
        rows.append(row)
    out.status = _status(
        sweep,
        rows,
        previous,
        (rejected_reason, rejected),
        now,
        eval_jobs,
        blockers.secret,
        int(budget) if exhausted else None,
    )
    out.status["recentRewinds"] = _recent_rewinds(runs, observations, previous)
    return out


def _rewind_message(run: _Run, observations: dict[str, RunObservation]) -> str:
    """The Event text of a rewind: where from, what it skips, which spike caused it."""
    obs = observations.get(run.plan.name)
    entry = obs.rewinds[-1] if obs and obs.rewinds else None
    head = f"run {run.plan.name}: rewind {run.rewinds}, attempt {run.attempt + 1}"
    if entry is None:
        return head
    spike = entry.get("spike") or {}
    first, last = entry["skipBatches"]
    return (
        f"{head} restarts from step {entry['restartStep']} skipping batches [{first}, {last}) "
        f"after a {spike.get('signal')} spike at step {spike.get('onsetStep')}"
    )


def _iso(at: float | None) -> str | None:
    if not isinstance(at, (int, float)):
        return None
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _recent_rewinds(
    runs: list[_Run], observations: dict[str, RunObservation], previous: dict
) -> list[dict]:
    """The last RECENT_REWINDS rewinds of the sweep; runs not observed this pass keep
    what the previous status said about them."""
    kept: list[dict] = []
    for run in runs:
        obs = observations.get(run.plan.name)
        if obs is None:
            kept += [
                r for r in previous.get("recentRewinds") or [] if r.get("run") == run.plan.name
            ]
            continue
        for entry in obs.rewinds:
            spike = entry.get("spike") or {}
            kept.append(
                {
                    "run": run.plan.name,
                    "restartStep": entry["restartStep"],
                    "skipBatches": list(entry["skipBatches"]),
                    "signal": spike.get("signal"),
                    "onsetStep": spike.get("onsetStep"),
                    "at": _iso(entry.get("at")),
                }
            )
    kept.sort(key=lambda r: (r.get("at") or "", r["run"]))
    return [{k: v for k, v in r.items() if v is not None} for r in kept[-RECENT_REWINDS:]]


def _run_state(
    plan: RunPlan,
    row: dict,
    jobs: list[dict],
    observations: dict[str, RunObservation],
    spec: dict,
) -> _Run:
    run = _Run(plan, row, jobs, max(jobs, key=_attempt) if jobs else None)
    obs = observations.get(plan.name)
    run.job_rewinds = _job_rewinds(run.latest)
    known = len(obs.rewinds) if obs is not None else int(row.get("rewinds", 0))
    run.rewinds = max(known, run.job_rewinds)
    # A rewind's old RayJob was being deleted at the last pass; over once an attempt obeys it.
    run.rewinding = bool(row.get("rewinding")) and run.rewinds > run.job_rewinds
    if run.latest is None:
        obs = observations.get(plan.name)
        final = spec["training"]["steps"]
        if row.get("phase") in ENDED:
            run.state, run.attempt = row["phase"], int(row.get("attempt", 0))
        elif obs is not None and final in obs.checkpoints:
            run.state, run.attempt = "Succeeded", int(row.get("attempt", 0))
        else:
            run.attempt = int(row.get("attempt", 0))
            run.state, run.needs = "Pending", run.attempt
        return run
    run.attempt = _attempt(run.latest)
    run.preemptions = _count_annotation(run.latest, L.PREEMPTIONS)
    state = rayjob_state(run.latest)
    if state == "Failed" and _preempted(run.latest):
        # Eviction, spot loss, node drain: not the run's fault, so no retry is spent.
        run.preemptions += 1
        run.state, run.needs = "Preempted", run.attempt + 1
    elif state == "Failed":
        if run.attempt - run.job_rewinds - run.preemptions < int(spec["maxRetries"]):
            run.state, run.needs = "Retrying", run.attempt + 1
        else:
            run.state = "Failed"
    else:
        run.state = state
    return run


def _preempted(job: dict) -> bool:
    """Whether the operator marked this RayJob's pods as disrupted (see handlers)."""
    return bool((job.get("metadata", {}).get("annotations") or {}).get(L.PREEMPTED))


def _evaluations(
    sweep: Sweep,
    runs: list[_Run],
    eval_jobs: list[dict],
    observations: dict[str, RunObservation],
    images: Images,
) -> tuple[list[Action], dict[str, dict]]:
    """New eval Jobs for complete, selected, not yet evaluated checkpoints (never twice)."""
    spec = sweep.spec
    actions: list[Action] = []
    rows: dict[str, dict] = {}
    jobs_by_run: dict[str, list[dict]] = {}
    for job in eval_jobs:
        jobs_by_run.setdefault(_label(job, L.RUN) or "", []).append(job)
    active_total = sum(1 for j in eval_jobs if job_state(j) == "Active")
    free = max(0, int(spec["evaluation"]["concurrency"]) - active_total)
    for run in runs:
        name = run.plan.name
        jobs = jobs_by_run.get(name, [])
        obs = observations.get(name)
        prev = run.row
        if obs is None:
            rows[name] = {
                k: prev[k]
                for k in ("evaluated", "lastEvaluated", "evalFailed", "evalTries", "evaluationDone")
                if k in prev
            }
            continue
        done = set(obs.evaluated)
        covered: set[int] = set()
        # Failed tries per step. Failed Jobs go with their TTL, so the status remembers
        # the count (evalTries) and the given-up steps (evalFailed): a checkpoint whose
        # evaluation failed EVAL_MAX_TRIES times is never tried again.
        failures = {int(s): int(n) for s, n in (prev.get("evalTries") or {}).items()}
        active = 0
        for job in jobs:
            state = job_state(job)
            steps = set(job_steps(job))
            if state == "Active":
                covered |= steps
                active += 1
            elif state == "Succeeded":
                covered |= steps & done or steps
            else:
                for step in steps - done:
                    failures[step] = max(failures.get(step, 0), _eval_try(job) + 1)
        failures = {s: n for s, n in failures.items() if s not in done}
        gave_up = sorted(
            (
                {s for s, n in failures.items() if n >= EVAL_MAX_TRIES}
                | set(prev.get("evalFailed") or [])
            )
            - done
        )
        selected = evaluation_steps(spec, list(obs.checkpoints))
        pending = [s for s in selected if s not in done and s not in covered and s not in gave_up]
        names = {j["metadata"]["name"] for j in jobs}
        while pending and free > 0:
            # One batch holds steps tried equally often, so the Job's try number is
            # each of its steps' own.
            attempt = failures.get(pending[0], 0)
            batch = [s for s in pending if failures.get(s, 0) == attempt][:EVAL_BATCH_MAX]
            pending = [s for s in pending if s not in batch]
            while L.eval_job_name(name, batch[0], attempt) in names:
                attempt += 1
            body = render_eval_job(
                sweep,
                run.plan,
                batch,
                attempt=attempt,
                eval_image=images.eval,
                storage_endpoint=images.storage_endpoint,
            )
            names.add(body["metadata"]["name"])
            actions.append(CreateEvalJob(name, tuple(batch), body))
            free -= 1
            active += 1
        newly_failed = sorted(set(gave_up) - set(prev.get("evalFailed") or []))
        if newly_failed:
            actions.append(
                Event(
                    "EvaluationFailed",
                    f"run {name}: evaluation of steps {newly_failed} failed {EVAL_MAX_TRIES} times",
                    "Warning",
                )
            )
        rows[name] = {
            "evaluated": len(done),
            "lastEvaluated": max(done) if done else None,
            "evalFailed": gave_up,
            "evaluationDone": run.state in ENDED and not pending and active == 0,
        }
        tries = {str(s): n for s, n in sorted(failures.items()) if s not in gave_up}
        if tries:
            rows[name]["evalTries"] = tries
    return actions, rows


def _row(run: _Run, obs: RunObservation | None, evals: dict | None) -> dict:
    prev = run.row
    latest = run.latest
    row = {
        "name": run.plan.name,
        "size": run.plan.size,
        "seed": run.plan.seed,
        "init": run.plan.init,
        "phase": run.state,
        "attempt": run.attempt,
        "retries": max(0, run.attempt - run.job_rewinds - run.preemptions),
        "preemptions": run.preemptions or None,
        "rewinds": run.rewinds,
        "rayJob": latest["metadata"]["name"] if latest else None,
        "step": obs.step if obs and obs.step is not None else prev.get("step"),
        "lastCheckpoint": max(obs.checkpoints)
        if obs and obs.checkpoints
        else prev.get("lastCheckpoint"),
        # Spikes ever detected: never lower than status says, so an observer rebuilding after a
        # restart (spikes count once their kind settles) cannot make one spike two Events.
        "spikes": max(obs.spikes, prev.get("spikes", 0)) if obs else prev.get("spikes", 0),
        "outlier": obs.outlier if obs else prev.get("outlier", False),
        "outlierSignal": obs.outlier_signal if obs else prev.get("outlierSignal"),
        "outlierStep": obs.outlier_step if obs else prev.get("outlierStep"),
        "outlierScore": obs.outlier_score if obs else prev.get("outlierScore"),
        "rewindsRefused": len(obs.refused) if obs else prev.get("rewindsRefused", 0),
        "rewindRefusedReason": obs.refused[-1]["reason"]
        if obs and obs.refused
        else prev.get("rewindRefusedReason"),
    }
    if run.message and (latest is None or run.state in ("Pending", "Retrying", "Preempted")):
        row["message"] = run.message
    elif latest is not None:
        message = _timed_out(latest) or (latest.get("status") or {}).get("message")
        if message and run.state in ("Failed", "Retrying", "Preempted"):
            row["message"] = message[:300]
    elif prev.get("message") and run.state in ENDED:
        row["message"] = prev["message"]
    row.update(evals or {})
    return {k: v for k, v in row.items() if v is not None}


def _transition_events(prev: dict, row: dict, spike_type: str = "Warning") -> list[Event]:
    """Events for what changed in a run's row; ``spike_type`` is Normal under
    ``action: observe`` and Warning under ``alert``/``rewind``."""
    events = []
    name, phase, old = row["name"], row["phase"], prev.get("phase")
    if phase != old:
        if phase == "Running":
            events.append(Event("RunRunning", f"run {name}: training (attempt {row['attempt']})"))
        elif phase == "Succeeded":
            events.append(Event("RunSucceeded", f"run {name}: finished"))
        elif phase == "Failed" and not row.get("rayJob"):
            events.append(
                Event("RunFailed", f"run {name}: cannot start: {row.get('message')}", "Warning")
            )
        elif phase == "Preempted":
            events.append(
                Event(
                    "RunPreempted",
                    f"run {name}: attempt {row['attempt']} lost its pods (eviction or node loss); "
                    "restarting without spending a retry",
                    "Warning",
                )
            )
        elif phase in ("Failed", "Retrying"):
            detail = f": {row['message']}" if row.get("message") else ""
            final = " after the last retry" if phase == "Failed" else ""
            events.append(
                Event(
                    "RunFailed",
                    f"run {name}: attempt {row['attempt']} failed{final}{detail}",
                    "Warning",
                )
            )
    if row.get("evaluated", 0) > prev.get("evaluated", 0):
        events.append(
            Event(
                "CheckpointEvaluated",
                f"run {name}: {row['evaluated']} checkpoint(s) evaluated, last step {row.get('lastEvaluated')}",
            )
        )
    if row.get("spikes", 0) > prev.get("spikes", 0):
        events.append(
            Event("LossSpike", f"run {name}: {row['spikes']} loss spike(s) so far", spike_type)
        )
    if row.get("rewindsRefused", 0) > prev.get("rewindsRefused", 0):
        events.append(
            Event("RewindRefused", row.get("rewindRefusedReason") or f"run {name}", "Warning")
        )
    if row.get("outlier") and not prev.get("outlier"):
        detail = ""
        if row.get("outlierSignal"):
            detail = (
                f" on {row['outlierSignal']} from step {row.get('outlierStep')}"
                f" (robust z {row.get('outlierScore')})"
            )
        events.append(
            Event(
                "OutlierDetected",
                f"run {name}: off the other seeds of size {row['size']}{detail}",
                "Warning",
            )
        )
    return events


def _status(
    sweep: Sweep,
    rows: list[dict],
    previous: dict,
    rejected: tuple[str, str],
    now: str,
    eval_jobs: list[dict],
    secret: str | None = None,
    budget: int | None = None,
) -> dict:
    spec = sweep.spec
    gen = sweep.generation
    rejected_reason, rejected_text = rejected
    count = {p: sum(1 for r in rows if r["phase"] == p) for p in ("Succeeded", "Failed")}
    running = sum(1 for r in rows if r["phase"] in ("Queued", "Running"))
    suspended = sum(1 for r in rows if r["phase"] == "Suspended")
    pending = len(rows) - running - suspended - count["Succeeded"] - count["Failed"]
    ended = count["Succeeded"] + count["Failed"] == len(rows)
    active_now = running + suspended
    if budget is not None and not active_now:
        phase = "Failed"
    elif spec.get("suspend") and not ended:
        phase = "Suspended"
    elif ended:
        phase = "Complete"
    elif running or count["Succeeded"] or count["Failed"]:
        phase = "Running"
    else:
        phase = "Pending"
    failed = [r["name"] for r in rows if r["phase"] == "Failed"]
    if rejected_text:
        ready = condition("Ready", False, rejected_reason, rejected_text, previous, now, gen)
    elif secret:
        ready = condition("Ready", False, "SecretMissing", secret, previous, now, gen)
    else:
        ready = condition(
            "Ready", True, "Reconciled", f"{len(rows)} run(s) planned", previous, now, gen
        )
    if phase == "Suspended":
        progressing = condition(
            "Progressing", False, "Suspended", "spec.suspend is true", previous, now, gen
        )
    elif budget is not None:
        progressing = condition(
            "Progressing",
            False,
            "FailureBudgetExhausted",
            f"{count['Failed']} run(s) failed, spec.maxFailedRuns is {budget}: no run starts; "
            f"{running} still running",
            previous,
            now,
            gen,
        )
    elif ended:
        progressing = condition(
            "Progressing", False, "Complete", "every run has ended", previous, now, gen
        )
    else:
        progressing = condition(
            "Progressing",
            True,
            "RunsActive",
            f"{running} running, {pending} waiting",
            previous,
            now,
            gen,
        )
    if failed:
        degraded = condition(
            "Degraded",
            True,
            "FailureBudgetExhausted" if budget is not None else "RunsFailed",
            f"{len(failed)} run(s) failed after {spec['maxRetries']} retries: {', '.join(failed[:5])}",
            previous,
            now,
            gen,
        )
    else:
        degraded = condition(
            "Degraded", False, "AsPlanned", "no run has failed", previous, now, gen
        )
    return {
        "observedGeneration": sweep.generation,
        "phase": phase,
        "sizesText": _size_text(sweep.sizes()),
        "seedCount": len(sweep.seeds()),
        "runsRunning": running,
        "runsSucceeded": count["Succeeded"],
        "runsFailed": count["Failed"],
        "runsPending": pending + suspended,
        "spikes": sum(int(r.get("spikes", 0)) for r in rows),
        "rewinds": sum(int(r.get("rewinds", 0)) for r in rows),
        "outliers": sum(1 for r in rows if r.get("outlier")),
        "evaluations": {
            "done": sum(int(r.get("evaluated", 0)) for r in rows),
            "failed": sum(len(r.get("evalFailed", [])) for r in rows),
            "running": sum(1 for j in eval_jobs if job_state(j) == "Active"),
        },
        "conditions": [ready, progressing, degraded],
        "runs": rows,
    }


def running_runs(rayjobs: list[dict]) -> frozenset[str]:
    """Runs whose latest RayJob is running: the ones a spike may rewind (a finished run
    keeps its history; a queued one has not trained yet)."""
    latest: dict[str, dict] = {}
    for job in rayjobs:
        run = _label(job, L.RUN) or ""
        if run not in latest or _attempt(job) > _attempt(latest[run]):
            latest[run] = job
    return frozenset(r for r, job in latest.items() if rayjob_state(job) == "Running")


def runs_to_poll(plan: list[RunPlan], previous: dict) -> list[str]:
    """Runs whose storage is worth listing this pass: started and not fully evaluated."""
    rows = {r.get("name"): r for r in previous.get("runs") or []}
    out = []
    for run in plan:
        row = rows.get(run.name)
        if row is None or row.get("phase") == "Pending":
            continue
        if not row.get("evaluationDone"):
            out.append(run.name)
    return out


def runs_started(plan: list[RunPlan], previous: dict) -> list[str]:
    """Runs the previous status saw start (ended ones too): their storage holds history."""
    rows = {r.get("name"): r for r in previous.get("runs") or []}
    return [
        run.name
        for run in plan
        if run.name in rows and rows[run.name].get("phase") not in (None, "Pending")
    ]


def with_refusals(
    status: dict, refusals: list[str], previous: dict, now: str, generation: int | None
) -> dict:
    """``status`` with Ready False (reason APIRequestRefused) naming the calls the API
    server refused this pass (403 RBAC, 422 admission/validation, quota...)."""
    if not refusals:
        return status
    shown = "; ".join(refusals[:3]) + ("; ..." if len(refusals) > 3 else "")
    message = f"{len(refusals)} API request(s) refused: {shown}"[:1000]
    ready = condition("Ready", False, "APIRequestRefused", message, previous, now, generation)
    conditions = [c for c in status.get("conditions", []) if c["type"] != "Ready"]
    return {**status, "conditions": [ready, *conditions]}


def recently_ended(rayjobs: list[dict], now: str, window_s: int) -> bool:
    """Whether a RayJob of the sweep ended less than ``window_s`` ago (or has no end
    time yet): only then may its RayCluster still be on its way out."""
    stamp = datetime.datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    for job in rayjobs:
        if rayjob_state(job) not in ENDED:
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
