"""kopf handlers: one daemon per sweep runs the pure reconcile on a timer or when poked.

Level-based: each pass reads the sweep, its children (by label, owned by the sweep's uid)
and storage, asks `reconcile` what to do, does it, and writes status. Child events and
spec updates only wake the sweep's daemon early. Kubernetes calls go through the sync
`kubernetes` client in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from polypythia import branch, crd, planner
from polypythia.k8s import labels as L
from polypythia.k8s import preflight as P
from polypythia.k8s import reconcile as R
from polypythia.k8s.observe import SweepObserver
from polypythia.k8s.rayjob import ClusterSettings
from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.runcore.phase import is_terminal
from polypythia.spec import SpecError, Sweep, sweep_from_object, with_storage_defaults
from polypythia.storage import StorageError, StorageUnavailable

RAY = ("ray.io", "v1", "rayjobs")
RAY_CLUSTERS = ("ray.io", "v1", "rayclusters")
AGGREGATE_EVENTS_OVER = 5
# KubeRay labels the RayCluster of a RayJob with the RayJob's name.
ORIGINATED_FROM = "ray.io/originated-from-cr-name"
# After a RayJob ends, its RayCluster is looked for this long (KubeRay deletes it at once
# with ttlSecondsAfterFinished 0; pods then take their grace period to go).
CLUSTER_LINGER_S = 600
# Pod conditions/reasons that mean the pod was taken away, not that it failed.
DISRUPTION = "DisruptionTarget"
SETTLED = ("Complete", "Failed", "Invalid")
# kopf indexes of the sweeps' children, filled by one watch per kind: a pass reads them
# instead of LISTing. A child this operator created shows in its pass until the watch
# delivers it, for at most this long.
RAYJOB_INDEX, EVAL_INDEX = "rayjobs_by_sweep", "evaljobs_by_sweep"
CREATED_GRACE_S = 60.0
BRANCH_RECHECK_S = 60.0  # a refused branch parent is read again this often


@dataclass
class OperatorConfig:
    """What the operator process was started with (CLI flags and environment)."""

    trainer_image: str = ""
    eval_image: str = ""
    storage_endpoint: str | None = None
    storage_defaults: dict = field(default_factory=dict)
    poll_interval: float = 10.0
    # A sweep that has settled (Complete, Failed, Invalid) and has nothing being
    # evaluated is passed over this rarely; spec edits and child events still wake it.
    idle_interval: float = 3600.0
    api_workers: int = 8
    exporter: SweepExporter = field(default_factory=SweepExporter)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    # Read each sweep's spec.storage.secretName (needs `get secrets` in its namespace);
    # off: the operator reads storage with its own credentials (env or workload identity).
    read_sweep_secrets: bool = False


@dataclass
class _SweepState:
    wake: asyncio.Event
    lock: asyncio.Lock
    observer: SweepObserver
    # The sweep's uid and the status this operator's last pass announced (its Events
    # posted) and wrote, or tried to: a failed write is retried by the next pass, which
    # starts from this status, so its Events are not posted again (see previous_status).
    announced: tuple[str | None, dict] | None = None
    settled: bool = False  # the last pass found nothing left to do but wait for edits
    # Children created by this operator and not yet seen through the watch: name ->
    # (body, monotonic time of creation), per kind.
    created: dict[str, dict[str, tuple[dict, float]]] = field(
        default_factory=lambda: {"rayjobs": {}, "jobs": {}}
    )
    # spec.branch: (generation, monotonic time, problems) of the last parent check.
    branch_check: tuple[int | None, float, list[str]] | None = None
    preflight: P.Preflight = field(default_factory=P.Preflight)  # bucket and data paths


class Operator:
    """Handlers bound to one configuration and one Kubernetes client."""

    def __init__(self, config: OperatorConfig, api: kubernetes.client.ApiClient) -> None:
        self.config = config
        self.api = api
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.batch = kubernetes.client.BatchV1Api(api)
        self.core = kubernetes.client.CoreV1Api(api)
        self.pool = ThreadPoolExecutor(max_workers=config.api_workers, thread_name_prefix="k8s-api")
        self.sweeps: dict[tuple[str, str], _SweepState] = {}

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Attach every handler to ``registry`` (the CLI passes a fresh one)."""
        res = (crd.GROUP, crd.VERSION, crd.PLURAL)
        kopf.on.login(registry=registry)(kopf.login_via_client)
        kopf.on.startup(registry=registry)(self.startup)
        kopf.index(*RAY, labels={L.COMPONENT: L.TRAINER}, id=RAYJOB_INDEX, registry=registry)(
            self.child_index
        )
        kopf.index(
            "batch",
            "v1",
            "jobs",
            labels={L.COMPONENT: L.EVALUATOR},
            id=EVAL_INDEX,
            registry=registry,
        )(self.child_index)
        kopf.daemon(*res, registry=registry, cancellation_timeout=5.0)(self.sweep_daemon)
        kopf.on.update(*res, field="spec", registry=registry)(self.poke_sweep)
        kopf.on.event(*res, registry=registry)(self.sweep_event)
        kopf.on.event(*RAY, labels={L.COMPONENT: L.TRAINER}, registry=registry)(self.child_event)
        kopf.on.event("batch", "v1", "jobs", labels={L.COMPONENT: L.EVALUATOR}, registry=registry)(
            self.child_event
        )
        kopf.on.event(
            "",
            "v1",
            "pods",
            labels={L.RUN: kopf.PRESENT, L.ATTEMPT: kopf.PRESENT},
            registry=registry,
        )(self.pod_event)

    # --- handlers ---------------------------------------------------------------------------

    async def startup(self, settings: kopf.OperatorSettings, **_: object) -> None:
        settings.peering.standalone = True  # one active replica (Recreate strategy in the chart)
        settings.scanning.disabled = True  # no CRD/namespace watching: fewer permissions
        settings.posting.level = logging.WARNING
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="polypythia.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="polypythia.io"
        )
        settings.watching.server_timeout = 300

    def _state(self, namespace: str, name: str) -> _SweepState:
        key = (namespace, name)
        if key not in self.sweeps:
            self.sweeps[key] = _SweepState(
                asyncio.Event(), asyncio.Lock(), SweepObserver(key, self.config.exporter)
            )
        return self.sweeps[key]

    async def child_index(self, body: kopf.Body, **_: object) -> dict:
        """Children by (namespace, sweep): one watch per kind replaces two LISTs per pass."""
        sweep = body.metadata.labels.get(L.SWEEP)
        return {(body.metadata.namespace, sweep): _plain(body)} if sweep else {}

    async def sweep_daemon(
        self,
        body: kopf.Body,
        stopped: kopf.DaemonStopped,
        logger: logging.Logger,
        **kwargs: object,
    ) -> None:
        state = self._state(body.metadata.namespace, body.metadata.name)
        indexes = (kwargs.get(RAYJOB_INDEX), kwargs.get(EVAL_INDEX))
        while not stopped:
            state.wake.clear()
            await self.reconcile_once(body, state, logger, indexes)
            wait = self.config.idle_interval if state.settled else self.config.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=wait)

    async def poke_sweep(self, body: kopf.Body, **_: object) -> None:
        self._state(body.metadata.namespace, body.metadata.name).wake.set()

    async def sweep_event(self, body: kopf.Body, type: str | None, **_: object) -> None:
        if type == "DELETED":
            self.sweeps.pop((body.metadata.namespace, body.metadata.name), None)
            self.config.exporter.remove_sweep(body.metadata.namespace, body.metadata.name)

    async def child_event(self, body: kopf.Body, **_: object) -> None:
        sweep = body.metadata.labels.get(L.SWEEP)
        state = self.sweeps.get((body.metadata.namespace, sweep or ""))
        if state is not None:
            state.wake.set()

    async def pod_event(self, body: kopf.Body, logger: logging.Logger, **_: object) -> None:
        """A training pod taken away (eviction, preemption, node loss) marks its RayJob,
        so the attempt's failure is retried without spending spec.maxRetries."""
        reason = disruption(_plain(body))
        labels = body.metadata.labels
        if reason is None or labels.get(L.SWEEP) is None:
            return
        try:
            name = L.rayjob_name(labels[L.RUN], int(labels[L.ATTEMPT]))
        except ValueError:
            return
        patch = {"metadata": {"annotations": {L.PREEMPTED: reason[:200]}}}
        try:
            await self._run(
                self.custom.patch_namespaced_custom_object,
                *RAY[:2],
                body.metadata.namespace,
                RAY[2],
                name,
                patch,
            )
        except ApiException as exc:
            if exc.status != 404:
                logger.warning(f"cannot mark RayJob {name} preempted: {exc.status} {exc.reason}")

    # --- one pass ---------------------------------------------------------------------------

    async def reconcile_once(
        self,
        body: kopf.Body,
        state: _SweepState,
        logger: logging.Logger,
        indexes: tuple[object, object] = (None, None),
    ) -> None:
        started = time.perf_counter()
        error = False
        try:
            async with state.lock:
                await self._reconcile(body, state, logger, indexes)
        except ApiException as exc:
            error = True
            logger.warning(f"reconcile failed, will retry: {exc.status} {exc.reason}")
            if _refused(exc):
                await self._report_refusal(
                    body, state, f"{exc.status} {exc.reason}: {_api_message(exc)}"
                )
        except OSError as exc:
            error = True
            logger.warning(f"reconcile failed, will retry: {exc}")
        finally:
            self.config.exporter.observe_reconcile(time.perf_counter() - started, error)

    async def _report_refusal(self, body: kopf.Body, state: _SweepState, message: str) -> None:
        """A pass the API server refused (RBAC, admission): a Warning Event and Ready False."""
        obj = _plain(body)
        previous = previous_status(obj, state.announced)
        status = R.with_refusals(
            previous, [message], previous, _now(), obj["metadata"].get("generation")
        )
        if _ready(status) != _ready(previous):
            kopf.event(body, type="Warning", reason="APIRequestRefused", message=message[:1000])
        state.announced = (obj["metadata"].get("uid"), status)
        if _to_write(obj, previous, status):
            with contextlib.suppress(ApiException, OSError):
                await self._run(
                    self._patch_status,
                    obj["metadata"]["namespace"],
                    obj["metadata"]["name"],
                    status,
                )

    async def _children(
        self, ns: str, name: str, uid: str, state: _SweepState, indexes: tuple[object, object]
    ) -> tuple[list[dict], list[dict]]:
        """The sweep's RayJobs and eval Jobs: from the watch indexes (plus what this
        operator created and the watch has not delivered yet), else by LIST."""
        rayjob_index, eval_index = indexes
        if rayjob_index is None or eval_index is None:
            return await asyncio.gather(
                self._run(self._list_rayjobs, ns, name, uid),
                self._run(self._list_jobs, ns, name, uid),
            )
        out = []
        for kind, index in (("rayjobs", rayjob_index), ("jobs", eval_index)):
            seen = [o for o in index.get((ns, name), ()) if _owned(o, uid)]
            names = {o["metadata"]["name"] for o in seen}
            created = state.created[kind]
            now = time.monotonic()
            for child in list(created):
                if child in names or now - created[child][1] > CREATED_GRACE_S:
                    del created[child]
            out.append(seen + [body for body, _ in created.values()])
        return out[0], out[1]

    async def _reconcile(
        self,
        body: kopf.Body,
        state: _SweepState,
        logger: logging.Logger,
        indexes: tuple[object, object] = (None, None),
    ) -> None:
        obj = _plain(body)
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        previous = previous_status(obj, state.announced)
        now = _now()
        spec_obj = {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj}
        try:
            sweep = sweep_from_object(spec_obj, source=f"{crd.KIND} {ns}/{name}", namespace=ns)
            sweep = with_storage_defaults(sweep, self.config.storage_defaults)
            images = self._images(sweep.spec)
        except SpecError as exc:
            message = "; ".join(exc.errors)
            await self._invalid(body, obj, previous, message, now, state)
            return
        except ValueError as exc:
            await self._invalid(body, obj, previous, str(exc), now, state)
            return
        plan = planner.plan_sweep(sweep)
        problems = await self._branch_problems(sweep, plan, previous, state)
        if problems:
            await self._invalid(body, obj, previous, "; ".join(problems), now, state)
            return
        uid = obj["metadata"]["uid"]
        rayjobs, eval_jobs = await self._children(ns, name, uid, state, indexes)
        poll = R.runs_to_poll(plan, previous)
        # Ended runs are not polled, but the cross-seed outlier rule needs every seed's
        # history: a started run this observer never read (after a restart) is read once.
        polled = set(poll)
        poll += [
            n
            for n in R.runs_started(plan, previous)
            if n not in polled and n not in state.observer.runs
        ]
        observations: dict[str, R.RunObservation] = {}
        secret_name = sweep.spec["storage"].get("secretName")
        creds: tuple[str | None, str | None] = (None, None)
        missing = None
        if self.config.read_sweep_secrets and secret_name:
            found = await self._run(self._credentials, ns, secret_name)
            if found is None:
                missing = (
                    f"spec.storage.secretName: Secret {ns}/{secret_name} not found; "
                    "no run starts until it exists (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
                )
            else:
                creds = found
        clusters: frozenset[str] = frozenset()
        if R.recently_ended(rayjobs, now, CLUSTER_LINGER_S):
            clusters = await self._run(self._list_clusters, ns, name)
        annotations = obj["metadata"].get("annotations") or {}
        blockers = R.Blockers(
            secret=missing,
            allow_destructive=annotations.get(L.ALLOW_DESTRUCTIVE) == "true",
            clusters=clusters,
        )
        if poll and sweep.spec["storage"].get("bucket"):
            try:
                observations = await self._run(
                    state.observer.observe,
                    sweep,
                    plan,
                    poll,
                    creds,
                    self.config.storage_endpoint,
                    R.running_runs(rayjobs),
                )
            except Exception as exc:  # storage down must not stop the Kubernetes side
                logger.warning(f"storage of {ns}/{name} not readable this pass: {exc}")
            try:
                await self._run(
                    state.observer.record_applied, sweep, creds, self.config.storage_endpoint
                )
            except Exception as exc:  # the same: tried again next pass
                logger.warning(f"sweep.json of {ns}/{name} not written this pass: {exc}")
        outcome = R.reconcile(
            sweep, plan, rayjobs, eval_jobs, previous, observations, images, now, blockers
        )
        if missing is None:
            outcome = await self._preflight(sweep, state, creds, outcome, previous, now)
        state.observer.finish(
            [r["name"] for r in outcome.status.get("runs", []) if is_terminal(r.get("phase"))]
        )
        status = outcome.status
        refusals: list[str] = []
        try:
            actions = await self._record(outcome.actions, state, logger)
            refusals = await self._apply(body, ns, actions, state)
        finally:
            # Written whatever happened to the calls: a refused create must show.
            status = R.with_refusals(status, refusals, previous, now, sweep.generation)
            if refusals and _ready(status) != _ready(previous):
                # Once per change, not every pass while the refusal lasts.
                for text in refusals[:AGGREGATE_EVENTS_OVER]:
                    kopf.event(
                        body, type="Warning", reason="APIRequestRefused", message=text[:1000]
                    )
            self._export(sweep, plan, status)
            state.settled = (
                status.get("phase") in SETTLED
                and not (status.get("evaluations") or {}).get("running")
                and all(r.get("evaluationDone", True) for r in status.get("runs") or [])
            )
            state.announced = (uid, status)
            if _to_write(obj, previous, status):
                await self._run(self._patch_status, ns, name, status)

    async def _branch_problems(
        self, sweep: Sweep, plan: list[planner.RunPlan], previous: dict, state: _SweepState
    ) -> list[str]:
        """Why spec.branch's parent cannot start the runs (polypythia.branch, as `validate`
        says it); read before any run starts, again every BRANCH_RECHECK_S while refused
        (a parent may still be training), and once per generation when it passed."""
        if not sweep.spec.get("branch") or R.runs_started(plan, previous):
            return []
        last = state.branch_check
        fresh = last is not None and last[0] == sweep.generation
        if fresh and (not last[2] or time.monotonic() - last[1] < BRANCH_RECHECK_S):
            return last[2]
        creds: tuple[str | None, str | None] = (None, None)
        secret = sweep.spec["storage"].get("secretName")
        if self.config.read_sweep_secrets and secret:
            creds = await self._run(self._credentials, sweep.namespace, secret) or creds
        try:
            problems = await self._run(
                functools.partial(
                    branch.check_sweep,
                    sweep,
                    endpoint=self.config.storage_endpoint,
                    credentials=creds,
                )
            )
        except StorageUnavailable as exc:  # not a verdict: the trainer checks again at claim
            logging.getLogger(__name__).warning(f"branch parent not checked this pass: {exc}")
            return []
        state.branch_check = (sweep.generation, time.monotonic(), problems)
        return problems

    async def _preflight(
        self,
        sweep: Sweep,
        state: _SweepState,
        creds: tuple[str | None, str | None],
        outcome: R.Outcome,
        previous: dict,
        now: str,
    ) -> R.Outcome:
        """StorageReady: the bucket and s3:// data paths, probed with backoff (preflight)."""
        wanted = P.targets(sweep.spec)
        finding = state.preflight.finding
        if finding is None or state.preflight.due(wanted):
            opener = P.opener_for(sweep.spec, creds, self.config.storage_endpoint)
            finding = state.preflight.record(wanted, await self._run(P.probe, wanted, opener))
        return P.gate(outcome, finding, previous, now, sweep.generation)

    async def _record(
        self, actions: list[R.Action], state: _SweepState, logger: logging.Logger
    ) -> list[R.Action]:
        """Carry out the run core's storage actions first (a rewind's record is what its
        next attempt obeys); a run whose record failed keeps its attempt this pass."""
        failed: set[str] = set()
        rest: list[R.Action] = []
        for action in actions:
            if not isinstance(action, (R.RecordRewind, R.RecordRefusal)):
                rest.append(action)
                continue
            try:
                await self._run(state.observer.carry_out, action)
            except StorageError as exc:
                failed.add(action.run)
                logger.warning(f"rewind record of {action.run} not written, retried: {exc}")
        return [
            a
            for a in rest
            if not (isinstance(a, (R.DeleteRayJob, R.Event)) and a.run in failed and a.run)
        ]

    def _images(self, spec: dict) -> R.Images:
        images = spec.get("images") or {}
        trainer = images.get("trainer") or self.config.trainer_image
        evaluator = images.get("eval") or self.config.eval_image
        if not trainer:
            raise ValueError(
                "spec.images.trainer: no trainer image; set it or POLYPYTHIA_TRAINER_IMAGE"
            )
        if not evaluator:
            raise ValueError("spec.images.eval: no eval image; set it or POLYPYTHIA_EVAL_IMAGE")
        return R.Images(trainer, evaluator, self.config.storage_endpoint, self.config.cluster)

    async def _invalid(
        self,
        body: kopf.Body,
        obj: dict,
        previous: dict,
        message: str,
        now: str,
        state: _SweepState,
    ) -> None:
        status = R.invalid_status(message, obj["metadata"].get("generation"), previous, now)
        if previous.get("phase") != "Invalid" or _changed(previous, status):
            kopf.event(body, type="Warning", reason="InvalidSpec", message=message[:1000])
        state.announced = (obj["metadata"].get("uid"), status)
        if _to_write(obj, previous, status):
            await self._run(
                self._patch_status, obj["metadata"]["namespace"], obj["metadata"]["name"], status
            )

    async def _apply(
        self, body: kopf.Body, ns: str, actions: list[R.Action], state: _SweepState | None = None
    ) -> list[str]:
        """Carry out ``actions``; returns the calls the API server refused (with Events)."""
        calls = []
        creates = []
        events: list[R.Event] = []
        for action in actions:
            if isinstance(action, R.Event):
                events.append(action)
                continue
            if isinstance(action, (R.CreateRayJob, R.CreateEvalJob)):
                kopf.adopt(action.body, owner=body)
            creates.append(action)
            calls.append(self._run(self._do, action, ns))
        results = await asyncio.gather(*calls)
        refusals = [r for r in results if r]
        if state is not None:
            for action, result in zip(creates, results, strict=True):
                if result is None and isinstance(action, (R.CreateRayJob, R.CreateEvalJob)):
                    kind = "rayjobs" if isinstance(action, R.CreateRayJob) else "jobs"
                    meta = action.body["metadata"]
                    state.created[kind][meta["name"]] = (action.body, time.monotonic())
        counts = Counter(e.reason for e in events)
        for reason, n in counts.items():
            same = [e for e in events if e.reason == reason]
            if n > AGGREGATE_EVENTS_OVER:
                message = f"{n} runs: " + "; ".join(e.message for e in same[:3]) + "; ..."
                kopf.event(body, type=same[0].type, reason=reason, message=message)
            else:
                for e in same:
                    kopf.event(body, type=e.type, reason=e.reason, message=e.message)
        return refusals

    # --- Kubernetes calls (worker threads) --------------------------------------------------

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _list_rayjobs(self, ns: str, sweep: str, uid: str) -> list[dict]:
        resp = self.custom.list_namespaced_custom_object(
            *RAY[:2], ns, RAY[2], label_selector=L.selector(sweep, L.TRAINER)
        )
        return [o for o in resp.get("items", []) if _owned(o, uid)]

    def _list_jobs(self, ns: str, sweep: str, uid: str) -> list[dict]:
        resp = self.batch.list_namespaced_job(
            ns, label_selector=L.selector(sweep, L.EVALUATOR), _preload_content=False
        )
        return [o for o in json.loads(resp.data).get("items", []) if _owned(o, uid)]

    def _list_clusters(self, ns: str, sweep: str) -> frozenset[str]:
        """RayJobs of the sweep whose RayCluster still exists (KubeRay copies the RayJob's
        labels onto its RayCluster)."""
        resp = self.custom.list_namespaced_custom_object(
            *RAY_CLUSTERS[:2], ns, RAY_CLUSTERS[2], label_selector=L.selector(sweep, L.TRAINER)
        )
        return frozenset(
            (o["metadata"].get("labels") or {}).get(ORIGINATED_FROM, "")
            for o in resp.get("items", [])
        ) - {""}

    def _credentials(self, ns: str, secret: str) -> tuple[str | None, str | None] | None:
        """The sweep's storage keys, or None when its Secret does not exist."""
        try:
            data = self.core.read_namespaced_secret(secret, ns).data or {}
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        access, secret_key = (
            base64.b64decode(data[k]).decode() if k in data else None for k in keys
        )
        return access, secret_key

    def _do(self, action: R.Action, ns: str) -> str | None:
        """One call; returns what the API server said when it refused it (else None)."""
        try:
            if isinstance(action, R.CreateRayJob):
                self.custom.create_namespaced_custom_object(*RAY[:2], ns, RAY[2], action.body)
            elif isinstance(action, R.CreateEvalJob):
                self.batch.create_namespaced_job(ns, action.body)
            elif isinstance(action, R.DeleteRayJob):
                self.custom.delete_namespaced_custom_object(
                    *RAY[:2],
                    ns,
                    RAY[2],
                    action.name,
                    propagation_policy="Foreground" if action.foreground else "Background",
                )
            elif isinstance(action, R.DeleteEvalJob):
                self.batch.delete_namespaced_job(action.name, ns, propagation_policy="Background")
            elif isinstance(action, R.AnnotateRayJob):
                self.custom.patch_namespaced_custom_object(
                    *RAY[:2],
                    ns,
                    RAY[2],
                    action.name,
                    {"metadata": {"annotations": action.annotations}},
                )
            elif isinstance(action, R.SuspendRayJob):
                self.custom.patch_namespaced_custom_object(
                    *RAY[:2], ns, RAY[2], action.name, {"spec": {"suspend": action.suspend}}
                )
        except ApiException as exc:
            # Already there / already gone: the level is what we wanted.
            if exc.status in (404, 409):
                return None
            if not _refused(exc):
                raise
            return f"{_describe(action)}: {exc.status} {exc.reason}: {_api_message(exc)}"
        return None

    def _patch_status(self, ns: str, name: str, status: dict) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                crd.GROUP, crd.VERSION, ns, crd.PLURAL, name, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _export(self, sweep: object, plan: list[planner.RunPlan], status: dict) -> None:
        exporter = self.config.exporter
        keys = {r.name: r.key for r in plan}
        for row in status.get("runs", []):
            if row["name"] not in keys:
                continue
            labels = RunLabels.of(sweep.namespace, keys[row["name"]])
            exporter.set_phase(labels, row["phase"])
            exporter.set_progress(
                labels,
                retries=row.get("retries", 0),
                rewinds=row.get("rewinds", 0),
                evaluation_failures=len(row.get("evalFailed", [])),
            )


def _refused(exc: ApiException) -> bool:
    """A refusal that will not pass by itself (403 RBAC/quota, 422 invalid, 400): not
    a server hiccup (5xx), throttling (429) or a conflict the next pass settles."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (404, 409, 429)


def _ready(status: dict) -> tuple[str | None, str | None]:
    """Ready's reason and message: what a refusal Event is posted once per change of."""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return ready.get("reason"), ready.get("message")


def _describe(action: R.Action) -> str:
    """`create RayJob ns-70m-s1` for messages."""
    verb = type(action).__name__
    target = getattr(action, "name", None) or (getattr(action, "body", {}) or {}).get(
        "metadata", {}
    ).get("name")
    return f"{verb} {target}"


def _api_message(exc: ApiException) -> str:
    """The Status message of a refused call (the API server's own words)."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)[:500]
    except (ValueError, AttributeError):
        return str(exc.reason)


def disruption(pod: dict) -> str | None:
    """Why a pod was taken away (DisruptionTarget condition, kubelet eviction), or None."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == DISRUPTION and cond.get("status") == "True":
            return f"{cond.get('reason') or DISRUPTION}: {cond.get('message') or ''}".strip(": ")
    if status.get("reason") == "Evicted":
        return f"Evicted: {status.get('message') or ''}".strip(": ")
    return None


def _owned(obj: dict, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def _plain(value: object) -> object:
    """kopf's live Body views -> plain dicts and lists (a snapshot for this pass)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def previous_status(obj: dict, announced: tuple[str | None, dict] | None) -> dict:
    """The status a pass starts from: the one this operator last announced and wrote (or
    tried to) for this very sweep (same uid), else the one on the object. The operator is
    status's only writer, and a watch that lags (a loaded API server) hands a pass the
    sweep as it was one or more writes ago; a status write can fail after the pass's
    Events went out. Starting from the object's status, a pass announced every transition
    since a second time (each "cannot start" Event posted twice)."""
    if announced is not None and announced[0] == obj["metadata"].get("uid"):
        return announced[1]
    return obj.get("status") or {}


def _to_write(obj: dict, previous: dict, status: dict) -> bool:
    """Whether to patch ``status``: it differs from what this operator last wrote, or from
    what the object holds (another writer replaced it: the true counts are put back).
    Transitions are told from ``previous`` alone, so Events are not repeated either way."""
    return _changed(previous, status) or _changed(obj.get("status") or {}, status)


def _changed(previous: dict, status: dict) -> bool:
    """Whether writing ``status`` changes anything (conditions keep their times when unchanged)."""
    return any(previous.get(k) != v for k, v in status.items())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
