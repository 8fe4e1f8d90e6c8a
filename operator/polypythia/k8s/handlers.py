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

from polypythia import crd, planner
from polypythia.k8s import labels as L
from polypythia.k8s import reconcile as R
from polypythia.k8s.observe import SweepObserver
from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.spec import SpecError, sweep_from_object, with_storage_defaults

RAY = ("ray.io", "v1", "rayjobs")
AGGREGATE_EVENTS_OVER = 5


@dataclass
class OperatorConfig:
    """What the operator process was started with (CLI flags and environment)."""

    trainer_image: str = ""
    eval_image: str = ""
    storage_endpoint: str | None = None
    storage_defaults: dict = field(default_factory=dict)
    poll_interval: float = 10.0
    api_workers: int = 8
    exporter: SweepExporter = field(default_factory=SweepExporter)


@dataclass
class _SweepState:
    wake: asyncio.Event
    lock: asyncio.Lock
    observer: SweepObserver
    # The status this operator last wrote, and the sweep's resourceVersion it wrote it
    # over: a pass woken before the watch delivers that write still sees the old
    # resourceVersion, and then uses this status instead of the stale one.
    written: tuple[str | None, dict] | None = None


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
        kopf.daemon(*res, registry=registry, cancellation_timeout=5.0)(self.sweep_daemon)
        kopf.on.update(*res, field="spec", registry=registry)(self.poke_sweep)
        kopf.on.event(*res, registry=registry)(self.sweep_event)
        kopf.on.event(*RAY, labels={L.COMPONENT: L.TRAINER}, registry=registry)(self.child_event)
        kopf.on.event("batch", "v1", "jobs", labels={L.COMPONENT: L.EVALUATOR}, registry=registry)(
            self.child_event
        )

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

    async def sweep_daemon(
        self, body: kopf.Body, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: object
    ) -> None:
        state = self._state(body.metadata.namespace, body.metadata.name)
        while not stopped:
            state.wake.clear()
            await self.reconcile_once(body, state, logger)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=self.config.poll_interval)

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

    # --- one pass ---------------------------------------------------------------------------

    async def reconcile_once(
        self, body: kopf.Body, state: _SweepState, logger: logging.Logger
    ) -> None:
        started = time.perf_counter()
        error = False
        try:
            async with state.lock:
                await self._reconcile(body, state, logger)
        except (ApiException, OSError) as exc:
            error = True
            logger.warning(f"reconcile failed, will retry: {exc}")
        finally:
            self.config.exporter.observe_reconcile(time.perf_counter() - started, error)

    async def _reconcile(self, body: kopf.Body, state: _SweepState, logger: logging.Logger) -> None:
        obj = _plain(body)
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        previous = obj.get("status") or {}
        if state.written is not None and state.written[0] == obj["metadata"].get("resourceVersion"):
            previous = state.written[1]
        now = _now()
        spec_obj = {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in obj}
        try:
            sweep = sweep_from_object(spec_obj, source=f"{crd.KIND} {ns}/{name}", namespace=ns)
            sweep = with_storage_defaults(sweep, self.config.storage_defaults)
            images = self._images(sweep.spec)
        except SpecError as exc:
            message = "; ".join(exc.errors)
            await self._invalid(body, obj, previous, message, now)
            return
        except ValueError as exc:
            await self._invalid(body, obj, previous, str(exc), now)
            return
        plan = planner.plan_sweep(sweep)
        uid = obj["metadata"]["uid"]
        rayjobs, eval_jobs = await asyncio.gather(
            self._run(self._list_rayjobs, ns, name, uid), self._run(self._list_jobs, ns, name, uid)
        )
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
        if poll and sweep.spec["storage"].get("bucket"):
            creds = await self._run(self._credentials, ns, sweep.spec["storage"].get("secretName"))
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
        outcome = R.reconcile(sweep, plan, rayjobs, eval_jobs, previous, observations, images, now)
        state.observer.finish(
            [r["name"] for r in outcome.status.get("runs", []) if r.get("phase") in R.ENDED]
        )
        await self._apply(body, ns, outcome.actions)
        self._export(sweep, plan, outcome.status)
        if _changed(previous, outcome.status):
            await self._run(self._patch_status, ns, name, outcome.status)
            state.written = (obj["metadata"].get("resourceVersion"), outcome.status)

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
        return R.Images(trainer, evaluator, self.config.storage_endpoint)

    async def _invalid(
        self, body: kopf.Body, obj: dict, previous: dict, message: str, now: str
    ) -> None:
        status = R.invalid_status(message, obj["metadata"].get("generation"), previous, now)
        if previous.get("phase") != "Invalid" or _changed(previous, status):
            kopf.event(body, type="Warning", reason="InvalidSpec", message=message[:1000])
            await self._run(
                self._patch_status, obj["metadata"]["namespace"], obj["metadata"]["name"], status
            )

    async def _apply(self, body: kopf.Body, ns: str, actions: list[R.Action]) -> None:
        calls = []
        events: list[R.Event] = []
        for action in actions:
            if isinstance(action, R.Event):
                events.append(action)
                continue
            if isinstance(action, (R.CreateRayJob, R.CreateEvalJob)):
                kopf.adopt(action.body, owner=body)
            calls.append(self._run(self._do, action, ns))
        await asyncio.gather(*calls)
        counts = Counter(e.reason for e in events)
        for reason, n in counts.items():
            same = [e for e in events if e.reason == reason]
            if n > AGGREGATE_EVENTS_OVER:
                message = f"{n} runs: " + "; ".join(e.message for e in same[:3]) + "; ..."
                kopf.event(body, type=same[0].type, reason=reason, message=message)
            else:
                for e in same:
                    kopf.event(body, type=e.type, reason=e.reason, message=e.message)

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

    def _credentials(self, ns: str, secret: str | None) -> tuple[str | None, str | None]:
        if not secret:
            return None, None
        try:
            data = self.core.read_namespaced_secret(secret, ns).data or {}
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        access, secret_key = (
            base64.b64decode(data[k]).decode() if k in data else None for k in keys
        )
        return access, secret_key

    def _do(self, action: R.Action, ns: str) -> None:
        try:
            if isinstance(action, R.CreateRayJob):
                self.custom.create_namespaced_custom_object(*RAY[:2], ns, RAY[2], action.body)
            elif isinstance(action, R.CreateEvalJob):
                self.batch.create_namespaced_job(ns, action.body)
            elif isinstance(action, R.DeleteRayJob):
                self.custom.delete_namespaced_custom_object(
                    *RAY[:2], ns, RAY[2], action.name, propagation_policy="Background"
                )
            elif isinstance(action, R.DeleteEvalJob):
                self.batch.delete_namespaced_job(action.name, ns, propagation_policy="Background")
            elif isinstance(action, R.SuspendRayJob):
                self.custom.patch_namespaced_custom_object(
                    *RAY[:2], ns, RAY[2], action.name, {"spec": {"suspend": action.suspend}}
                )
        except ApiException as exc:
            # Already there / already gone: the level is what we wanted.
            if exc.status not in (404, 409):
                raise

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


def _changed(previous: dict, status: dict) -> bool:
    """Whether writing ``status`` changes anything (conditions keep their times when unchanged)."""
    return any(previous.get(k) != v for k, v in status.items())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
