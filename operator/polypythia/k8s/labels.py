"""Names, labels and annotations the operator puts on its children (one place, one spelling)."""

from __future__ import annotations

import re

from polypythia.planner import RunPlan
from polypythia.spec import Sweep

DOMAIN = "polypythia.io"
SWEEP = f"{DOMAIN}/sweep"
SIZE = f"{DOMAIN}/size"
SEED = f"{DOMAIN}/seed"
RUN = f"{DOMAIN}/run"
ATTEMPT = f"{DOMAIN}/attempt"
COMPONENT = "app.kubernetes.io/component"
STEPS = f"{DOMAIN}/steps"  # annotation of an eval Job: the checkpoint steps it evaluates
EVAL_TRY = f"{DOMAIN}/eval-try"
REWINDS = f"{DOMAIN}/rewinds"  # annotation of a RayJob: rewinds recorded when it was created
# annotation of a RayJob: attempts of its run lost to preemption (eviction, node loss)
# when it was created; such attempts do not spend spec.maxRetries.
PREEMPTIONS = f"{DOMAIN}/preemptions"
# annotation the operator puts on a RayJob whose pod was disrupted (DisruptionTarget).
PREEMPTED = f"{DOMAIN}/preempted"
# annotation the operator puts on a RayJob pending past spec.pendingTimeoutSeconds
# (KubeRay before 1.6 has no preRunningDeadlineSeconds): the attempt counts as failed.
TIMED_OUT = f"{DOMAIN}/pending-timeout"
# annotation of a sweep: "true" allows edits that delete running RayJobs.
ALLOW_DESTRUCTIVE = f"{DOMAIN}/allow-destructive-changes"
QUEUE = "kueue.x-k8s.io/queue-name"
MANAGER = "polypythia-operator"
TRAINER = "trainer"
EVALUATOR = "evaluator"
MAX_RAYJOB_NAME = 47  # KubeRay: the RayCluster name derived from it must stay a DNS-1035 label
MAX_JOB_NAME = 63
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def common(sweep: Sweep, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels plus the sweep's own."""
    return {
        "app.kubernetes.io/name": "polypythia",
        "app.kubernetes.io/instance": sweep.name,
        COMPONENT: component,
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/part-of": "polypythia",
        SWEEP: sweep.name,
    }


def run_labels(sweep: Sweep, run: RunPlan, component: str) -> dict[str, str]:
    return {**common(sweep, component), SIZE: run.size, SEED: str(run.seed), RUN: run.name}


def rayjob_name(run: str, attempt: int) -> str:
    """`<run>` for the first attempt, `<run>-r<attempt>` for retries; DNS-1035, <= 47."""
    name = run if attempt == 0 else f"{run}-r{attempt}"
    if len(name) > MAX_RAYJOB_NAME or not _DNS1035.match(name):
        raise ValueError(f"RayJob name {name!r}: must be DNS-1035 and at most 47 characters")
    return name


def eval_job_name(run: str, first_step: int, attempt: int) -> str:
    """Deterministic from the batch's first step, so a restarted operator finds its Jobs."""
    name = f"{run}-e{first_step}" + (f"-r{attempt}" if attempt else "")
    if len(name) > MAX_JOB_NAME:
        raise ValueError(f"Job name {name!r}: at most {MAX_JOB_NAME} characters")
    return name


def selector(sweep_name: str, component: str) -> str:
    return f"{SWEEP}={sweep_name},{COMPONENT}={component}"
