"""Desired vs observed for one sweep -> actions and the new status. Pure: no I/O, no clock.

Everything comes in as plain data (the sweep, its plan, the RayJobs and eval Jobs that
exist, what storage holds, the previous status), so a restarted operator computes the
same answer from the same world and never creates a child twice.

This module orchestrates; its rooms: ``children`` (RayJob/Job states, one ``RunView``
per run), ``evaluations`` (eval Jobs), ``status`` (rows, conditions, Events),
``actions`` (what the handler carries out), and the run core (``polypythia.runcore``)
for phases, spike actions and the scheduling rules shared with the local driver.
"""

from __future__ import annotations

from polypythia.k8s import labels as L
from polypythia.k8s.actions import (
    Action,
    AnnotateRayJob,
    Blockers,
    CreateEvalJob,
    CreateRayJob,
    DeleteEvalJob,
    DeleteRayJob,
    Event,
    Images,
    Outcome,
    SuspendRayJob,
)
from polypythia.k8s.children import (
    RunObservation,
    RunView,
    attempt_of,
    attempt_pending_too_long,
    config_diff,
    job_state,
    label,
    rayjob_state,
    recently_ended,
    run_view,
    running_runs,
    timed_out,
)
from polypythia.k8s.evaluations import plan_evaluations
from polypythia.k8s.rayjob import config_of, render_rayjob
from polypythia.k8s.status import (
    condition,
    invalid_status,
    recent_rewinds,
    recent_spikes,
    rewind_message,
    run_row,
    runs_started,
    runs_to_poll,
    sweep_status,
    transition_events,
    with_refusals,
)
from polypythia.planner import RunPlan
from polypythia.runcore import schedule
from polypythia.runcore.monitor import RecordRefusal, RecordRewind
from polypythia.runcore.phase import RunPhase
from polypythia.spec import Sweep

# What the handler and tests use from here (the rooms above define them).
__all__ = [
    "Action",
    "AnnotateRayJob",
    "Blockers",
    "CreateEvalJob",
    "CreateRayJob",
    "DeleteEvalJob",
    "DeleteRayJob",
    "Event",
    "Images",
    "Outcome",
    "RecordRefusal",
    "RecordRewind",
    "RunObservation",
    "SuspendRayJob",
    "condition",
    "config_diff",
    "invalid_status",
    "job_state",
    "rayjob_state",
    "reconcile",
    "recently_ended",
    "running_runs",
    "runs_started",
    "runs_to_poll",
    "with_refusals",
]

MAX_DIFFS_SHOWN = 5


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
    planned = {r.name: r for r in plan}
    by_run = _rayjobs_by_run(rayjobs, spec.get("pendingTimeoutSeconds"), now, out)
    destructive = _remove_unplanned(spec, blockers, planned, by_run, eval_jobs, out)
    rejected, rejected_reason = _refused_changes(planned, by_run), "SpecChangeRejected"
    if destructive and not rejected:
        rejected, rejected_reason = destructive, "DestructiveChangeRefused"
    prev_rows = {r.get("name"): r for r in previous.get("runs") or []}
    runs = [
        run_view(p, prev_rows.get(p.name, {}), by_run.get(p.name, []), observations, spec)
        for p in plan
    ]
    suspended = bool(spec.get("suspend"))
    budget = spec.get("maxFailedRuns")
    exhausted = schedule.failure_budget_spent((r.state for r in runs), budget)
    # Nothing new starts and nothing is replaced while the spec is refused or storage
    # credentials are missing.
    held = suspended or bool(rejected) or bool(blockers.secret)

    _suspend_or_resume(runs, suspended, out)
    _take_spike_actions(runs, observations, held, out)
    _replace_rewound(sweep, runs, observations, images, held, out)
    _start(sweep, runs, images, blockers, held or exhausted, out)
    if exhausted:
        for run in runs:
            if run.needs is not None and run.state.waiting:
                run.message = schedule.budget_message((r.state for r in runs), int(budget))

    eval_actions, eval_rows = plan_evaluations(sweep, runs, eval_jobs, observations, images)
    if exhausted and previous.get("phase") != "Failed":
        failed_now = sum(1 for r in runs if r.state == RunPhase.FAILED)
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
        row = run_row(run, observations.get(run.plan.name), eval_rows.get(run.plan.name))
        if run.rewinding:
            row["rewinding"] = True
        out.actions += transition_events(run.row, row, spike_type)
        rows.append(row)
    out.status = sweep_status(
        sweep,
        rows,
        previous,
        (rejected_reason, rejected),
        now,
        eval_jobs,
        blockers.secret,
        int(budget) if exhausted else None,
    )
    out.status["recentRewinds"] = recent_rewinds(runs, observations, previous)
    out.status["recentSpikes"] = recent_spikes(plan, observations, previous)
    return out


def _rayjobs_by_run(
    rayjobs: list[dict], timeout: int | None, now: str, out: Outcome
) -> dict[str, list[dict]]:
    """The RayJobs of each run; one pending past ``spec.pendingTimeoutSeconds`` is failed
    from now on (annotation) and its cluster's pending pods released (suspend)."""
    by_run: dict[str, list[dict]] = {}
    for job in rayjobs:
        if attempt_pending_too_long(job, timeout, now):
            name = job["metadata"]["name"]
            text = schedule.pending_message(int(timeout))  # type: ignore[arg-type]
            out.actions += [AnnotateRayJob(name, {L.TIMED_OUT: text}), SuspendRayJob(name, True)]
            meta = {**job["metadata"]}
            meta["annotations"] = {**(meta.get("annotations") or {}), L.TIMED_OUT: text}
            job = {**job, "metadata": meta}
        by_run.setdefault(label(job, L.RUN) or "", []).append(job)
    return by_run


def _remove_unplanned(
    spec: dict,
    blockers: Blockers,
    planned: dict[str, RunPlan],
    by_run: dict[str, list[dict]],
    eval_jobs: list[dict],
    out: Outcome,
) -> str:
    """Runs no longer asked for: their RayJobs and eval Jobs go, but deleting a running
    one needs an explicit yes (spec.allowDestructiveChanges or the annotation). Returns
    why the removal is refused ("" when it is not)."""
    allow = bool(spec.get("allowDestructiveChanges")) or blockers.allow_destructive
    removed_live = sorted(
        name
        for name, jobs in by_run.items()
        if name not in planned and any(not rayjob_state(j).terminal for j in jobs)
    )
    destructive = ""
    if removed_live and not allow:
        destructive = (
            f"spec change removes {len(removed_live)} run(s) that are still running "
            f"({', '.join(removed_live[:3])}{', ...' if len(removed_live) > 3 else ''}); "
            f"set spec.allowDestructiveChanges: true or annotate the sweep "
            f"{L.ALLOW_DESTRUCTIVE}=true to delete them, or revert the change"
        )
    kept = set(removed_live) if destructive else set()
    for name, jobs in sorted(by_run.items()):
        if name not in planned and name not in kept:
            for job in jobs:
                out.actions.append(DeleteRayJob(job["metadata"]["name"]))
            out.actions.append(Event("RunRemoved", f"run {name} left the sweep; RayJobs deleted"))
    for job in eval_jobs:
        if label(job, L.RUN) not in planned and label(job, L.RUN) not in kept:
            out.actions.append(DeleteEvalJob(job["metadata"]["name"]))
    return destructive


def _refused_changes(planned: dict[str, RunPlan], by_run: dict[str, list[dict]]) -> str:
    """Why a spec change is refused: it would alter the meaning of a run that already
    has RayJobs ("" when no such change)."""
    changed: dict[str, list[str]] = {}
    for name, jobs in by_run.items():
        if name in planned:
            old = config_of(max(jobs, key=attempt_of))
            if old is not None and old != planned[name].config:
                changed[name] = config_diff(old, planned[name].config)
    if not changed:
        return ""
    fields = sorted({f for diffs in changed.values() for f in diffs})
    runs = sorted(changed)
    return (
        f"spec change alters {len(runs)} run(s) that already started "
        f"({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}): run config fields "
        f"{', '.join(fields[:MAX_DIFFS_SHOWN])}{', ...' if len(fields) > MAX_DIFFS_SHOWN else ''}"
        " would change; revert them or create a new sweep (adding or removing sizes and "
        "seeds is allowed)"
    )


def _suspend_or_resume(runs: list[RunView], suspended: bool, out: Outcome) -> None:
    """spec.suspend on live RayJobs (Kueue owns a queued RayJob's spec.suspend: those go)."""
    for run in runs:
        for job in run.jobs:
            if rayjob_state(job).terminal:
                continue
            kueue = label(job, L.QUEUE) is not None
            name = job["metadata"]["name"]
            if suspended and not kueue and not job["spec"].get("suspend"):
                out.actions.append(SuspendRayJob(name, True))
                run.state = RunPhase.SUSPENDED
            elif suspended and kueue:
                out.actions.append(DeleteRayJob(name))
                run.state = RunPhase.SUSPENDED
            elif not suspended and not kueue and job["spec"].get("suspend"):
                out.actions.append(SuspendRayJob(name, False))
                run.state = RunPhase.QUEUED


def _take_spike_actions(
    runs: list[RunView], observations: dict[str, RunObservation], held: bool, out: Outcome
) -> None:
    """The run core's spike actions: a refusal is recorded whatever the run does; a
    rewind is taken only while the run's attempt trains and nothing holds the sweep.
    The handler records it in storage before it deletes the attempt."""
    for run in runs:
        obs = observations.get(run.plan.name)
        proposal = obs.proposal if obs is not None else None
        if isinstance(proposal, RecordRefusal):
            out.actions.append(proposal)
        elif (
            isinstance(proposal, RecordRewind)
            and not held
            and run.rewinds <= run.job_rewinds
            and run.latest is not None
            and rayjob_state(run.latest) == RunPhase.RUNNING
        ):
            out.actions.append(proposal)
            run.rewinds, run.rewind = run.rewinds + 1, proposal


def _replace_rewound(
    sweep: Sweep,
    runs: list[RunView],
    observations: dict[str, RunObservation],
    images: Images,
    held: bool,
    out: Outcome,
) -> None:
    """A rewind (taken this pass, or recorded in storage earlier) replaces the running
    attempt: its trainer must restart from the rewind's checkpoint. Not a retry:
    maxRewinds bounds it. The new attempt is created only once the old RayJob is gone
    (its trainer stopped writing the run): one pass deletes it, a later one creates."""
    for run in runs:
        if held or run.rewinds <= run.job_rewinds:
            continue
        if run.latest is not None and rayjob_state(run.latest) in (
            RunPhase.QUEUED,
            RunPhase.RUNNING,
        ):
            if not run.row.get("rewinding"):
                message = rewind_message(run, observations)
                out.actions.append(Event("RunRewound", message, "Warning", run.plan.name))
            out.actions.append(
                DeleteRayJob(run.latest["metadata"]["name"], foreground=True, run=run.plan.name)
            )
            run.rewinding, run.needs = True, None
            continue
        if not run.row.get("rewinding"):
            continue
        gone = run.row.get("rayJob")
        if gone and any(j["metadata"]["name"] == gone for j in run.jobs):
            run.rewinding, run.needs, run.state = True, None, RunPhase.QUEUED
            continue
        attempt = max(run.attempt, int(run.row.get("attempt", 0))) + 1
        _new_attempt(sweep, run, images, attempt, None, out)
        run.rewinding = False


def _start(
    sweep: Sweep,
    runs: list[RunView],
    images: Images,
    blockers: Blockers,
    held: bool,
    out: Outcome,
) -> None:
    """Start runs and retries within maxConcurrentRuns, in the planner's order, by the
    run core's rule for dependent runs. A run counts while its RayJob is active, while
    its old RayJob is being deleted for a rewind, and while KubeRay still deletes the
    RayCluster of its ended RayJob (the GPUs are held until the cluster is gone)."""
    spec = sweep.spec
    active = sum(
        1
        for r in runs
        if (r.state.active and r.latest is not None)
        or r.rewinding
        or any(j["metadata"]["name"] in blockers.clusters for j in r.jobs)
    )
    slots = max(0, int(spec["maxConcurrentRuns"]) - active)
    candidates = sorted(
        (r for r in runs if r.needs is not None),
        key=lambda r: (0 if r.needs else 1, r.plan.order),
    )
    phases = {r.plan.name: r.state for r in runs}
    gates = {r.plan.name: schedule.reference_gate(r.plan.requires, phases) for r in candidates}
    for run in candidates:
        gate = gates[run.plan.name]
        if gate.verdict == "fail" and run.latest is None:
            # Its initial weights come from a run that failed for good: it never can start.
            run.state, run.needs, run.message = RunPhase.FAILED, None, gate.message
        elif gate.verdict == "wait":
            run.message = gate.message
    for run in candidates:
        if held or slots <= 0:
            break
        if run.needs is None or gates[run.plan.name].verdict != "start":
            continue
        attempt = run.needs or 0
        resume = max(run.row.get("lastCheckpoint", -1), -1)
        why = run.latest and (
            timed_out(run.latest) or (run.latest.get("status") or {}).get("message")
        )
        preempted = run.state == RunPhase.PREEMPTED
        body = _new_attempt(
            sweep, run, images, attempt, resume if attempt and resume >= 0 else None, out
        )
        slots -= 1
        if run.row.get("rayJob") == body["metadata"]["name"]:
            continue  # announced by the pass that first created it (not yet seen since)
        if attempt:
            where = f"step {resume}" if resume >= 0 else "the start"
            spent = (
                "preempted, restarted without spending a retry, "
                if preempted
                else f"retry {attempt - run.job_rewinds - run.preemptions} of "
                f"{spec['maxRetries']}, "
            )
            out.actions.append(
                Event(
                    "RunPreempted" if preempted else "RunRetried",
                    f"run {run.plan.name}: {spent}attempt {attempt}, resuming from {where}"
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


def _new_attempt(
    sweep: Sweep,
    run: RunView,
    images: Images,
    attempt: int,
    resume_from: int | None,
    out: Outcome,
) -> dict:
    """Create ``attempt`` of the run (it obeys every rewind recorded so far)."""
    body = render_rayjob(
        sweep,
        run.plan,
        attempt=attempt,
        trainer_image=images.trainer,
        resume_from=resume_from,
        storage_endpoint=images.storage_endpoint,
        rewinds=run.rewinds,
        preemptions=run.preemptions,
        cluster=images.cluster,
    )
    out.actions.append(CreateRayJob(run.plan.name, attempt, body))
    run.state, run.attempt, run.latest, run.job_rewinds = (
        RunPhase.QUEUED,
        attempt,
        body,
        run.rewinds,
    )
    run.needs = None
    return body
