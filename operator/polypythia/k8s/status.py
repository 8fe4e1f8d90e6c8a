"""The sweep's status and Events: a row per run, counts, conditions (Kubernetes API
conventions, with observedGeneration) and the Events for what changed since the last
status. Pure: what reconcile decided in, dicts out.
"""

from __future__ import annotations

import datetime

from polypythia.k8s.actions import Event
from polypythia.k8s.children import RunObservation, RunView, job_state, timed_out
from polypythia.planner import RunPlan
from polypythia.runcore.phase import RunPhase
from polypythia.spec import Sweep

RECENT_REWINDS = 10  # status.recentRewinds keeps the last ones across runs
RECENT_SPIKES = 10  # status.recentSpikes: the last settled spikes, with their kind


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


def size_text(sizes: list[str]) -> str:
    return ",".join(sizes)


def rewind_message(run: RunView, observations: dict[str, RunObservation]) -> str:
    """The Event text of a rewind: where from, what it skips, which spike caused it
    (the rewind taken this pass, else the last one storage recorded)."""
    obs = observations.get(run.plan.name)
    entry = obs.rewinds[-1] if obs and obs.rewinds else None
    if run.rewind is not None:
        entry = {
            "restartStep": run.rewind.restart_step,
            "skipBatches": run.rewind.skip_batches,
            "spike": run.rewind.spike,
        }
    head = f"run {run.plan.name}: rewind {run.rewinds}, attempt {run.attempt + 1}"
    if entry is None:
        return head
    spike = entry.get("spike") or {}
    first, last = entry["skipBatches"]
    return (
        f"{head} restarts from step {entry['restartStep']} skipping batches [{first}, {last}) "
        f"after a {spike.get('signal')} spike at step {spike.get('onsetStep')}"
    )


def iso(at: float | None) -> str | None:
    if not isinstance(at, (int, float)):
        return None
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def recent_rewinds(
    runs: list[RunView], observations: dict[str, RunObservation], previous: dict
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
                    "at": iso(entry.get("at")),
                }
            )
    kept.sort(key=lambda r: (r.get("at") or "", r["run"]))
    return [{k: v for k, v in r.items() if v is not None} for r in kept[-RECENT_REWINDS:]]


def recent_spikes(
    plan: list[RunPlan], observations: dict[str, RunObservation], previous: dict
) -> list[dict]:
    """The last RECENT_SPIKES spikes whose kind is settled, labelled as the exporter's
    ``polypythia_spikes_total`` and the report label them (the run core's labels);
    runs not observed this pass keep what the previous status said."""
    kept: list[dict] = []
    for run in plan:
        obs = observations.get(run.name)
        if obs is None:
            kept += [r for r in previous.get("recentSpikes") or [] if r.get("run") == run.name]
            continue
        kept += [
            {
                "run": run.name,
                "signal": e.signal,
                "onsetStep": e.onset_step,
                "kind": e.kind,
                "cause": e.cause,
            }
            for e in obs.settled
        ]
    kept.sort(key=lambda r: (r["onsetStep"], r["run"], r["signal"]))
    return kept[-RECENT_SPIKES:]


def run_row(run: RunView, obs: RunObservation | None, evals: dict | None) -> dict:
    prev = run.row
    latest = run.latest
    row = {
        "name": run.plan.name,
        "size": run.plan.size,
        "seed": run.plan.seed,
        "init": run.plan.init,
        "phase": str(run.state),
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
        # Of those settled so far, the ones most runs (or most of a data order) shared.
        "commonModeSpikes": sum(1 for e in obs.settled if e.kind == "common-mode")
        if obs
        else prev.get("commonModeSpikes"),
        "outlier": obs.outlier if obs else prev.get("outlier", False),
        "outlierSignal": obs.outlier_signal if obs else prev.get("outlierSignal"),
        "outlierStep": obs.outlier_step if obs else prev.get("outlierStep"),
        "outlierScore": obs.outlier_score if obs else prev.get("outlierScore"),
        "rewindsRefused": len(obs.refused) if obs else prev.get("rewindsRefused", 0),
        "rewindRefusedReason": obs.refused[-1]["reason"]
        if obs and obs.refused
        else prev.get("rewindRefusedReason"),
    }
    if run.message and (
        latest is None or run.state in (RunPhase.PENDING, RunPhase.RETRYING, RunPhase.PREEMPTED)
    ):
        row["message"] = run.message
    elif latest is not None:
        message = timed_out(latest) or (latest.get("status") or {}).get("message")
        if message and run.state in (RunPhase.FAILED, RunPhase.RETRYING, RunPhase.PREEMPTED):
            row["message"] = message[:300]
    elif prev.get("message") and run.state.terminal:
        row["message"] = prev["message"]
    row.update(evals or {})
    return {k: v for k, v in row.items() if v is not None}


def transition_events(prev: dict, row: dict, spike_type: str = "Warning") -> list[Event]:
    """Events for what changed in a run's row; ``spike_type`` is Normal under
    ``action: observe`` and Warning under ``alert``/``rewind``."""
    events = []
    name, phase, old = row["name"], row["phase"], prev.get("phase")
    if phase != old:
        if phase == RunPhase.RUNNING:
            events.append(Event("RunRunning", f"run {name}: training (attempt {row['attempt']})"))
        elif phase == RunPhase.SUCCEEDED:
            events.append(Event("RunSucceeded", f"run {name}: finished"))
        elif phase == RunPhase.FAILED and not row.get("rayJob"):
            events.append(
                Event("RunFailed", f"run {name}: cannot start: {row.get('message')}", "Warning")
            )
        elif phase == RunPhase.PREEMPTED:
            events.append(
                Event(
                    "RunPreempted",
                    f"run {name}: attempt {row['attempt']} lost its pods (eviction or node loss); "
                    "restarting without spending a retry",
                    "Warning",
                )
            )
        elif phase in (RunPhase.FAILED, RunPhase.RETRYING):
            detail = f": {row['message']}" if row.get("message") else ""
            final = " after the last retry" if phase == RunPhase.FAILED else ""
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


def sweep_status(
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
        "sizesText": size_text(sweep.sizes()),
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


def runs_to_poll(plan: list[RunPlan], previous: dict) -> list[str]:
    """Runs whose storage is worth listing this pass: started and not fully evaluated."""
    rows = {r.get("name"): r for r in previous.get("runs") or []}
    out = []
    for run in plan:
        row = rows.get(run.name)
        if row is None or row.get("phase") == RunPhase.PENDING:
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
        if run.name in rows and rows[run.name].get("phase") not in (None, RunPhase.PENDING)
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
