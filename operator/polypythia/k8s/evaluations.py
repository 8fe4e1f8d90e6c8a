"""Evaluation Jobs of a sweep: new Jobs for complete, selected, not yet evaluated
checkpoints (never twice, at most ``spec.evaluation.concurrency`` at once, a step given
up after ``EVAL_MAX_TRIES`` failed tries) and each run's evaluation fields of status.
"""

from __future__ import annotations

from polypythia.k8s import labels as L
from polypythia.k8s.actions import Action, CreateEvalJob, Event, Images
from polypythia.k8s.children import RunObservation, RunView, eval_try, job_state, job_steps, label
from polypythia.k8s.evaljob import render_eval_job
from polypythia.planner import evaluation_steps
from polypythia.spec import Sweep

EVAL_MAX_TRIES = 3
EVAL_BATCH_MAX = 8


def plan_evaluations(
    sweep: Sweep,
    runs: list[RunView],
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
        jobs_by_run.setdefault(label(job, L.RUN) or "", []).append(job)
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
                    failures[step] = max(failures.get(step, 0), eval_try(job) + 1)
        failures = {s: n for s, n in failures.items() if s not in done}
        gave_up = sorted(
            (
                {s for s, n in failures.items() if n >= EVAL_MAX_TRIES}
                | set(prev.get("evalFailed") or [])
            )
            - done
        )
        selected = evaluation_steps(
            spec, list(obs.checkpoints), run.plan.config["checkpoints"]["steps"]
        )
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
            "evaluationDone": run.state.terminal and not pending and active == 0,
        }
        tries = {str(s): n for s, n in sorted(failures.items()) if s not in gave_up}
        if tries:
            rows[name]["evalTries"] = tries
    return actions, rows
