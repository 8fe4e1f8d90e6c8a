"""kmock's KubernetesEmulator, made to behave like kube-apiserver where kopf and we rely on it.

kmock 0.8 serves discovery and HTTP, but its object store lacks what a real server adds
(ENVIRONMENT.md lists the gaps). This subclass keeps its own store with: namespaces that must
exist, uid / resourceVersion / generation / creationTimestamp, 201 on create, generateName,
409 on a stale resourceVersion, 422 on a failed JSON-patch test or an invalid object,
label and field selectors, list chunking, watches that resume from a resourceVersion (410 when
too old), status subresource isolation, finalizers, owner-reference garbage collection, and
CRDs loaded from their YAML that prune, default and validate like the real thing. Request
history is not kept (kmock rescans it per request: 1000 creates took minutes); instead the
set of (verb, group, resource) calls is recorded for RBAC tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import pickle
import random
import re
import string
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, rendering

from support.k8s_schema import StructuralSchema, crd_versions, load_crd_file

_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SELECTOR_TERM = re.compile(
    r"^\s*(!)?\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


@dataclass
class ResourceType:
    """What the server knows of one group/version/plural."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: frozenset[str] = frozenset()
    schema: StructuralSchema | None = None
    validate: Callable[[dict[str, Any]], list[str]] | None = None
    defaults: Callable[[dict[str, Any]], None] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}"


@dataclass
class _Watcher:
    namespace: str | None
    match: Callable[[dict[str, Any]], bool]
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    # Events held back by ``ClusterEmulator.watch_lag``, oldest first.
    held: deque[bytes | None] = field(default_factory=deque)


def parse_label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` -> predicate over a label dict."""
    terms: list[Callable[[dict[str, str]], bool]] = []
    for raw in _split_selector(text):
        m = _SELECTOR_TERM.match(raw)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {raw!r}")
        neg, key, op, value, set_op, values = m.groups()
        if neg:
            terms.append(lambda labels, k=key: k not in labels)
        elif op in ("=", "=="):
            terms.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            terms.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif set_op:
            choices = {v.strip() for v in values.split(",") if v.strip()}
            if set_op == "in":
                terms.append(lambda labels, k=key, c=choices: labels.get(k) in c)
            else:
                terms.append(lambda labels, k=key, c=choices: labels.get(k) not in c)
        else:
            terms.append(lambda labels, k=key: k in labels)
    return lambda labels: all(t(labels) for t in terms)


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]


def parse_field_selector(text: str) -> Callable[[dict[str, Any]], bool]:
    """Field selectors on ``metadata.name`` / ``metadata.namespace`` (what clients use)."""
    terms = []
    for raw in _split_selector(text):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not m or m.group(1) not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f"field label not supported: {raw!r}")
        path, op, value = m.groups()
        key = path.split(".")[1]
        want = op != "!="
        terms.append(lambda o, k=key, v=value, w=want: (o["metadata"].get(k) == v) == w)
    return lambda obj: all(t(obj) for t in terms)


def _copy(obj: Any) -> Any:
    """A deep copy of JSON data; pickle round-trips it 2.5x faster than ``copy.deepcopy``,
    and the server copies each object several times per request."""
    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without server-owned metadata and status (for generation bumps)."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic-merge, as kmock does)."""
    if not isinstance(patch, dict):
        return _copy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _validate_job(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    tmpl = (spec.get("template") or {}).get("spec") or {}
    errs = []
    if not tmpl.get("containers"):
        errs.append("spec.template.spec.containers: Required value")
    if tmpl.get("restartPolicy") not in ("Never", "OnFailure"):
        errs.append(
            "spec.template.spec.restartPolicy: Unsupported value: must be Never or OnFailure"
        )
    for i, c in enumerate(tmpl.get("containers") or []):
        if not c.get("name") or not c.get("image"):
            errs.append(f"spec.template.spec.containers[{i}]: name and image are required")
    return errs


def _default_job(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completions", 1)
    spec.setdefault("parallelism", 1)
    spec.setdefault("suspend", False)


BUILTINS = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceType("", "v1", "events", "Event"),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap"),
    ResourceType("", "v1", "pods", "Pod", subresources=frozenset({"status"})),
    ResourceType(
        "batch",
        "v1",
        "jobs",
        "Job",
        subresources=frozenset({"status"}),
        validate=_validate_job,
        defaults=_default_job,
    ),
    ResourceType("events.k8s.io", "v1", "events", "Event"),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
]


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """A stateful, validating Kubernetes API server for tests (see the module docstring)."""

    history_limit: int = 5000
    watch_timeout: float = 1800.0
    types: dict[str, ResourceType] = attrs.field(factory=dict, init=False)
    store: dict[str, dict[tuple[str, str], dict[str, Any]]] = attrs.field(factory=dict, init=False)
    calls: set[tuple[str, str, str, str]] = attrs.field(factory=set, init=False)
    warnings: list[str] = attrs.field(factory=list, init=False)
    rejected: list[str] = attrs.field(factory=list, init=False)
    # Seconds the watch events of a resource (key ``group/version/plural``) reach open
    # streams late, still in order, as from a loaded API server; reads are not delayed.
    watch_lag: dict[str, float] = attrs.field(factory=dict, init=False)
    # Requests to fail once each with a 500 (etcd timing out): (verb, plural[/subresource],
    # a text the request's JSON body holds); an entry is used up by the first match.
    fail_next: list[tuple[str, str, str]] = attrs.field(factory=list, init=False)
    _rv: itertools.count = attrs.field(factory=lambda: itertools.count(100), init=False)
    _last_rv: int = attrs.field(default=99, init=False)
    _history: dict[str, deque] = attrs.field(factory=dict, init=False)
    _watchers: dict[str, list[_Watcher]] = attrs.field(factory=dict, init=False)
    _mutex: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for rt in BUILTINS:
            self.register(rt)
        self.put_object("v1/namespaces", {"metadata": {"name": "default"}})
        self.put_object("v1/namespaces", {"metadata": {"name": "kube-system"}})

    # --- registration -------------------------------------------------------------------------

    def register(self, rt: ResourceType) -> None:
        """Serve a resource: discovery, store, validation."""
        self.types[rt.key] = rt
        self.store.setdefault(rt.key, {})
        self._history.setdefault(rt.key, deque(maxlen=self.history_limit))
        self._watchers.setdefault(rt.key, [])
        self.resources[kmock.resource(rt.group, rt.version, rt.plural)] = kmock.ResourceInfo(
            kind=rt.kind,
            namespaced=rt.namespaced,
            singular=rt.kind.lower(),
            subresources=set(rt.subresources),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        )

    def load_crds(self, path: str) -> None:
        """Register every served version of every CRD in a YAML file, with its schema."""
        for crd in load_crd_file(str(path)):
            spec = crd["spec"]
            schemas = crd_versions(crd)
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                self.register(
                    ResourceType(
                        spec["group"],
                        version["name"],
                        spec["names"]["plural"],
                        spec["names"]["kind"],
                        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                        subresources=frozenset(version.get("subresources") or {}),
                        schema=schemas[version["name"]],
                    )
                )
                info = self.resources[
                    kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
                ]
                info.shortnames = set(spec["names"].get("shortNames") or [])
                info.categories = set(spec["names"].get("categories") or [])

    def resolve(self, key: str) -> ResourceType:
        """``ray.io/v1/rayjobs``, ``batch/v1/jobs`` or ``v1/secrets`` -> its type."""
        full = key if key.count("/") == 2 else f"/{key}"
        if full not in self.types:
            raise KeyError(f"resource {key!r} is not served")
        return self.types[full]

    # --- direct (in-process) access for tests -------------------------------------------------

    def list_objects(
        self, key: str, namespace: str | None = None, labels: str | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the stored objects of a resource, optionally filtered."""
        rt = self.resolve(key)
        match = parse_label_selector(labels) if labels else (lambda _: True)
        with self._mutex:
            return [
                _copy(o)
                for (ns, _), o in self.store[rt.key].items()
                if (namespace is None or ns == namespace)
                and match(o["metadata"].get("labels") or {})
            ]

    def count_objects(
        self, key: str, namespace: str | None = None, labels: str | None = None
    ) -> int:
        """How many stored objects match, without copying them: cheap enough to poll (copying
        1000 RayJobs every 50 ms under the store's lock starved the server in the benchmark)."""
        rt = self.resolve(key)
        match = parse_label_selector(labels) if labels else (lambda _: True)
        with self._mutex:
            return sum(
                1
                for (ns, _), o in self.store[rt.key].items()
                if (namespace is None or ns == namespace)
                and match(o["metadata"].get("labels") or {})
            )

    def get_object(self, key: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        rt = self.resolve(key)
        with self._mutex:
            obj = self.store[rt.key].get((namespace or "", name))
            return _copy(obj) if obj else None

    def put_object(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object as if POSTed (validation, defaults, events included)."""
        rt = self.resolve(key)
        return self._create(rt, obj["metadata"].get("namespace"), _copy(obj), None)

    # --- HTTP ---------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve without keeping the request history (see the module docstring)."""
        self._loop = asyncio.get_running_loop()
        try:
            found = _NAMESPACE_PATH.match(raw_request.path)
            if found:  # kmock's parser cannot read /api/v1/namespaces[/x]
                body = await raw_request.read()
                request = rendering.Request(
                    method=raw_request.method,
                    url=raw_request.url,
                    params=dict(raw_request.query),
                    headers=dict(raw_request.headers),
                    body=body,
                    data=json.loads(body) if body else None,
                    resource=kmock.resource("", "v1", "namespaces"),
                    name=found.group(1),
                    raw_request=raw_request,
                )
            else:
                request = await rendering.Request._parse(raw_request)
            return await self._handle(request)
        except ApiError as exc:
            return self._status(exc)
        except Exception as exc:  # surfaced to the client like a server bug would be
            return self._status(
                ApiError(500, "InternalError", f"{exc!r}\n{traceback.format_exc()}")
            )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        rt = None
        if res is not None and res.plural:
            rt = self.types.get(f"{res.group}/{res.version}/{res.plural}")
        if rt is None:
            if res is not None and res.plural:
                raise ApiError(
                    404,
                    "NotFound",
                    f"the server could not find the requested resource ({request.url.path})",
                )
            # kmock's reactions match a request by finding it in the history: keep it there
            # only while discovery is served.
            self._requests.append(request)
            try:
                return await apps.RawHandler._handle(self, request)
            finally:
                self._requests.clear()
        if request.subresource and request.subresource not in rt.subresources:
            raise ApiError(
                404, "NotFound", f"{rt.plural} has no subresource {request.subresource!r}"
            )
        return await self._serve(rt, request)

    async def _serve(self, rt: ResourceType, req: rendering.Request) -> aiohttp.web.StreamResponse:
        method = req.method.value
        params = req.params
        ns, name = req.namespace, req.name
        if rt.namespaced is False and ns is not None:
            raise ApiError(404, "NotFound", f"{rt.plural} is cluster-scoped")
        sub = f"/{req.subresource}" if req.subresource else ""
        watching = method == "GET" and params.get("watch") in ("true", "1")
        verb = {
            ("GET", True): "get",
            ("GET", False): "list",
            ("POST", False): "create",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("DELETE", False): "deletecollection",
        }.get((method, name is not None))
        if watching:
            verb = "watch"
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {req.url.path}")
        auth = req.headers.get("Authorization", "")
        user = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else "anonymous"
        self.calls.add((user, verb, rt.group, rt.plural + sub))
        with self._mutex:
            body = json.dumps(req.data) if req.data is not None else ""
            for entry in self.fail_next:
                if entry[:2] == (verb, rt.plural + sub) and entry[2] in body:
                    self.fail_next.remove(entry)
                    raise ApiError(500, "InternalError", "etcdserver: request timed out (injected)")
        if watching:
            return await self._watch(rt, req)
        if verb == "list":
            return self._json(self._list(rt, ns, params))
        if verb == "get":
            return self._json(self._get(rt, ns, name))
        if verb == "create":
            if not isinstance(req.data, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            strict = params.get("fieldValidation") == "Strict"
            return self._json(self._create(rt, ns, req.data, strict), 201)
        if verb in ("update", "patch"):
            ctype = req.headers.get("Content-Type", "application/json").split(";")[0]
            strict = params.get("fieldValidation") == "Strict"
            return self._json(
                self._update(rt, ns, name, req.subresource, verb, ctype, req.data, strict)
            )
        if verb == "delete":
            opts = req.data if isinstance(req.data, dict) else {}
            policy = params.get("propagationPolicy") or opts.get("propagationPolicy")
            return self._json(self._delete(rt, ns, name, policy))
        with self._mutex:
            doomed = [o for o in self._select(rt, ns, params)]
        for obj in doomed:
            self._delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], None)
        return self._json(self._list_body(rt, doomed))

    # --- reads --------------------------------------------------------------------------------

    def _select(self, rt: ResourceType, ns: str | None, params: dict[str, str]) -> Iterator[dict]:
        labels = (
            parse_label_selector(params["labelSelector"]) if params.get("labelSelector") else None
        )
        fields = (
            parse_field_selector(params["fieldSelector"]) if params.get("fieldSelector") else None
        )
        for (ons, _), obj in sorted(self.store[rt.key].items()):
            if ns is not None and ons != ns:
                continue
            if labels and not labels(obj["metadata"].get("labels") or {}):
                continue
            if fields and not fields(obj):
                continue
            yield obj

    def _list_body(self, rt: ResourceType, items: list[dict], cont: str = "") -> dict[str, Any]:
        return {
            "apiVersion": rt.api_version,
            "kind": f"{rt.kind}List",
            "metadata": {"resourceVersion": str(self._last_rv), "continue": cont},
            "items": items,
        }

    def _list(self, rt: ResourceType, ns: str | None, params: dict[str, str]) -> dict[str, Any]:
        with self._mutex:
            items = [_copy(o) for o in self._select(rt, ns, params)]
            start = int(params.get("continue") or 0)
            limit = int(params.get("limit") or 0)
            cont = ""
            if limit and start + limit < len(items):
                cont = str(start + limit)
            items = items[start : start + limit] if limit else items[start:]
            return self._list_body(rt, items, cont)

    def _get(self, rt: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        with self._mutex:
            return _copy(self._stored(rt, ns, name)[1])

    def _stored(
        self, rt: ResourceType, ns: str | None, name: str
    ) -> tuple[tuple[str, str], dict[str, Any]]:
        """The store key and the object itself (under the mutex); 404 when absent."""
        key = (ns or "", name)
        obj = self.store[rt.key].get(key)
        if obj is None:
            raise self._not_found(rt, name)
        return key, obj

    # --- writes -------------------------------------------------------------------------------

    def _admit(self, rt: ResourceType, obj: dict[str, Any], strict: bool) -> dict[str, Any]:
        """Prune, default, validate; 422 like kube-apiserver on invalid objects."""
        meta = obj["metadata"]
        errs = []
        name = meta.get("name", "")
        if not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            errs.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain")
        for k, v in (meta.get("labels") or {}).items():
            kname = k.rsplit("/", 1)[-1]
            if not _LABEL_NAME.match(kname) or len(kname) > 63:
                errs.append(f"metadata.labels: Invalid value: {k!r}: not a qualified name")
            if not isinstance(v, str) or not _LABEL_VALUE.match(v) or len(v) > 63:
                errs.append(f"metadata.labels: Invalid value: {v!r}: not a valid label value")
        if rt.schema is not None:
            obj, dropped, schema_errs = rt.schema.admit(obj)
            errs += schema_errs
            if dropped:
                if strict:
                    errs += [f"{p}: unknown field" for p in dropped]
                else:
                    self.warnings += [f"{rt.kind} {name}: unknown field {p!r}" for p in dropped]
        if rt.defaults:
            rt.defaults(obj)
        if rt.validate:
            errs += rt.validate(obj)
        if errs:
            message = f'{rt.kind}.{rt.group} "{name}" is invalid: ' + "; ".join(errs)
            self.rejected.append(message)
            raise ApiError(422, "Invalid", message, {"name": name, "kind": rt.kind, "causes": errs})
        return obj

    def _create(
        self, rt: ResourceType, ns: str | None, obj: dict[str, Any], strict: bool | None
    ) -> dict[str, Any]:
        obj = _copy(obj)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if ns and body_ns and body_ns != ns:
                raise ApiError(
                    400, "BadRequest", "the namespace of the object does not match the URL"
                )
            ns = ns or body_ns
            if not ns:
                raise ApiError(400, "BadRequest", "a namespace is required")
            meta["namespace"] = ns
        else:
            ns = ""
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName")
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if "status" in rt.subresources:
            obj.pop("status", None)
        obj = self._admit(rt, obj, bool(strict))
        meta = obj["metadata"]
        with self._mutex:
            if rt.namespaced and ("", ns) not in self.store["/v1/namespaces"]:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
            if (ns, meta["name"]) in self.store[rt.key]:
                raise ApiError(
                    409, "AlreadyExists", f'{rt.plural}.{rt.group} "{meta["name"]}" already exists'
                )
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(k, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
            self.store[rt.key][(ns, meta["name"])] = obj
            self._emit(rt, "ADDED", obj)
            return _copy(obj)

    def _update(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        subresource: str | None,
        verb: str,
        ctype: str,
        body: Any,
        strict: bool,
    ) -> dict[str, Any]:
        with self._mutex:
            key, old = self._stored(rt, ns, name)
            if verb == "update":
                new = _copy(body)
                wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
            elif ctype == "application/json-patch+json":
                try:
                    new = jsonpatch.apply_patch(old, body)
                except jsonpatch.JsonPatchTestFailed as exc:
                    raise ApiError(
                        422, "Invalid", f"the server rejected our request: {exc}"
                    ) from exc
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise ApiError(422, "Invalid", f"invalid JSON patch: {exc}") from exc
                wanted_rv = None
            else:
                new = _merge(old, body)
                wanted_rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rt.plural}.{rt.group} "{name}": '
                    "the object has been modified; please apply your changes to the latest version",
                )
            has_status = "status" in rt.subresources
            if subresource == "status":
                new = {**_copy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif has_status:
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = _copy(old["status"])
            meta = new.setdefault("metadata", {})
            for k in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            new["apiVersion"], new["kind"] = rt.api_version, rt.kind
            if old["metadata"].get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(
                    old["metadata"].get("finalizers") or []
                )
                if added:
                    raise ApiError(
                        422,
                        "Forbidden",
                        "no new finalizers can be added if the object is being deleted",
                    )
            new = self._admit(rt, new, strict)
            if new == old:
                return _copy(old)
            if _strip(new) != _strip(old):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            new["metadata"]["resourceVersion"] = self._next_rv()
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                self._remove(rt, key, new)
            else:
                self.store[rt.key][key] = new
                self._emit(rt, "MODIFIED", new)
            return _copy(new)

    def _delete(
        self, rt: ResourceType, ns: str | None, name: str, policy: str | None
    ) -> dict[str, Any]:
        with self._mutex:
            key, obj = self._stored(rt, ns, name)
            if obj["metadata"].get("deletionTimestamp"):
                return _copy(obj)
            if obj["metadata"].get("finalizers"):
                obj = _copy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                obj["metadata"]["resourceVersion"] = self._next_rv()
                self.store[rt.key][key] = obj
                self._emit(rt, "MODIFIED", obj)
                return _copy(obj)
            obj = _copy(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._remove(rt, key, obj, orphan=policy == "Orphan")
            return obj

    def _remove(
        self, rt: ResourceType, key: tuple[str, str], obj: dict[str, Any], orphan: bool = False
    ) -> None:
        """Drop an object for good, then collect what it owned (background cascading)."""
        self.store[rt.key].pop(key, None)
        self._emit(rt, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        if rt.key == "/v1/namespaces":
            for other in self.types.values():
                if other.namespaced:
                    for okey in [k for k in self.store[other.key] if k[0] == key[1]]:
                        self._remove(other, okey, self.store[other.key][okey])
            return
        for other in self.types.values():
            for okey, dep in list(self.store[other.key].items()):
                refs = dep["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == uid for r in refs):
                    continue
                if orphan:
                    dep = _copy(dep)
                    dep["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    dep["metadata"]["resourceVersion"] = self._next_rv()
                    self.store[other.key][okey] = dep
                    self._emit(other, "MODIFIED", dep)
                else:
                    self._delete(other, okey[0] or None, okey[1], None)

    # --- watches ------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _emit(self, rt: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
        rv = int(obj["metadata"]["resourceVersion"])
        snapshot = _copy(obj)
        self._history[rt.key].append((rv, snapshot, line))
        lag = self.watch_lag.get(rt.key, 0.0)
        for w in self._watchers[rt.key]:
            if w.match(snapshot):
                self._deliver(w, line, lag)

    def _deliver(self, w: _Watcher, line: bytes | None, lag: float = 0.0) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if lag > 0:
            call, args = self._hold, (w, line, lag)
        else:
            call, args = w.queue.put_nowait, (line,)
        if running is loop:
            call(*args)
        else:
            loop.call_soon_threadsafe(call, *args)

    @staticmethod
    def _hold(w: _Watcher, line: bytes | None, lag: float) -> None:
        """Queue ``line`` for ``w`` after ``lag`` seconds, behind every line held before
        (each release hands over the oldest held line, so the order is kept)."""
        w.held.append(line)
        asyncio.get_running_loop().call_later(lag, lambda: w.queue.put_nowait(w.held.popleft()))

    async def _watch(self, rt: ResourceType, req: rendering.Request) -> aiohttp.web.StreamResponse:
        params = req.params
        ns = req.namespace
        labels = (
            parse_label_selector(params["labelSelector"]) if params.get("labelSelector") else None
        )
        fields = (
            parse_field_selector(params["fieldSelector"]) if params.get("fieldSelector") else None
        )
        only = req.name

        def match(obj: dict[str, Any]) -> bool:
            if ns is not None and obj["metadata"].get("namespace") != ns:
                return False
            if only and obj["metadata"]["name"] != only:
                return False
            if labels and not labels(obj["metadata"].get("labels") or {}):
                return False
            return not (fields and not fields(obj))

        watcher = _Watcher(ns, match)
        timeout = min(float(params.get("timeoutSeconds") or self.watch_timeout), self.watch_timeout)
        since = params.get("resourceVersion")
        backlog: list[bytes] = []
        with self._mutex:
            if params.get("sendInitialEvents") == "true" or not since or since == "0":
                for obj in self._select(rt, ns, params):
                    if match(obj):
                        backlog.append(
                            json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n"
                        )
                if params.get("sendInitialEvents") == "true":
                    mark = {
                        "kind": rt.kind,
                        "apiVersion": rt.api_version,
                        "metadata": {
                            "resourceVersion": str(self._last_rv),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }
                    backlog.append(
                        json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n"
                    )
            else:
                history = self._history[rt.key]
                rv = int(since)
                if history and history[0][0] > rv + 1 and len(history) == history.maxlen:
                    gone = {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "code": 410,
                        "reason": "Expired",
                        "message": f"too old resource version: {rv}",
                    }
                    backlog.append(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                else:
                    backlog += [line for erv, snap, line in history if erv > rv and match(snap)]
            self._watchers[rt.key].append(watcher)
        resp = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            assert req._raw_request is not None
            await resp.prepare(req._raw_request)
            for line in backlog:
                await resp.write(line)
            deadline = asyncio.get_running_loop().time() + timeout
            while not self._closing:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    line = await asyncio.wait_for(watcher.queue.get(), timeout=min(left, 0.5))
                except TimeoutError:
                    continue
                if line is None:
                    break
                await resp.write(line)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with self._mutex:
                self._watchers[rt.key].remove(watcher)
        return resp

    def close_watches(self) -> None:
        """End every open watch stream (before the server stops)."""
        self._closing = True
        with self._mutex:
            for watchers in self._watchers.values():
                for w in watchers:
                    self._deliver(w, None)

    def drop_watches(self) -> None:
        """End the open streams but keep serving: clients reconnect, as after an API blip."""
        with self._mutex:
            for watchers in self._watchers.values():
                for w in watchers:
                    self._deliver(w, None)

    # --- responses ----------------------------------------------------------------------------

    def _not_found(self, rt: ResourceType, name: str) -> ApiError:
        return ApiError(
            404,
            "NotFound",
            f'{rt.plural}.{rt.group} "{name}" not found'
            if rt.group
            else f'{rt.plural} "{name}" not found',
            {"name": name, "group": rt.group, "kind": rt.plural},
        )

    @staticmethod
    def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(
            body=json.dumps(body).encode(), status=status, content_type="application/json"
        )

    @staticmethod
    def _status(exc: ApiError) -> aiohttp.web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": exc.message,
            "reason": exc.reason,
            "details": exc.details,
            "code": exc.code,
        }
        return aiohttp.web.Response(
            body=json.dumps(body).encode(), status=exc.code, content_type="application/json"
        )


class EmulatorThread:
    """Serve a ClusterEmulator over real HTTP from its own thread and event loop.

    Sync test code and an operator in another thread or process talk to ``url`` as they would
    to a cluster; the emulator's loop is never the one a sync client blocks.
    """

    def __init__(self, emulator: ClusterEmulator | None = None) -> None:
        self.emulator = emulator if emulator is not None else ClusterEmulator()
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.emulator._loop = self._loop
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
            self.emulator.close_watches()
            await asyncio.sleep(0.6)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error or not self.url:
            raise RuntimeError(f"the emulator did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def kubeconfig(self, path: str, namespace: str = "default", token: str = "operator") -> str:
        """Write a kubeconfig pointing at this server; calls are recorded under ``token``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "operator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        with open(path, "w") as fh:
            json.dump(config, fh)
        return path
