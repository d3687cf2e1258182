"""An in-memory Kubernetes API server with the semantics the operator relies on.

Resource versions (one counter, like etcd's revision), 409 on a stale conditional write (a
merge patch carrying metadata.resourceVersion, a delete with preconditions), merge and JSON
patches, the status subresource, finalizers and graceful deletion, label and field selectors
(a CRD's selectable fields), and list+watch with a bounded event history (410 Gone past it). A
watch with a selector sees what the API server's watch cache sends: ADDED when a change brings
an object into the selection, DELETED (with the object as it was before) when one takes it out. Faults are injected per call:
an error, latency, a call that hangs, or a write applied whose answer is lost.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from codeexec import clock
from codeexec.kube.client import ApiError

JSON = dict[str, Any]
Key = tuple[str, str, str]  # (plural, namespace or "", name)

HISTORY = 10_000
# The fields a field selector may name besides metadata.name/namespace, per resource: the
# CodeExecution CRD's `selectableFields` (crds/codeexec.io_codeexecutions.yaml).
SELECTABLE = {"codeexecutions": ("status.phase",)}
# What a patch cannot change (a main-resource write also leaves status alone).
# The spec field each scale subresource writes (the CRDs' specReplicasPath).
SCALE_PATHS = {"sandboxpools": "size", "sandboxpoolscales": "replicas"}
_FIXED_META = (
    "uid",
    "name",
    "namespace",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


@dataclass(frozen=True)
class Call:
    """One request as the fake server saw it; faults match on it."""

    verb: str  # get list create patch delete watch
    plural: str
    namespace: str
    name: str
    sub: str = ""
    body: Any = None
    client: str = ""


Fault = Callable[[Call], Awaitable[None]]


@dataclass
class _Event:
    rv: int
    type: str
    key: Key
    obj: JSON
    at: float
    prev: JSON | None = None  # a MODIFIED object as it was before the change


@dataclass(eq=False)
class _Watcher:
    plural: str
    namespace: str
    selector: str
    fields: str = ""
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)


def status(code: int, reason: str, message: str) -> ApiError:
    return ApiError(
        code,
        {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message},
    )


def selector_matches(selector: str, labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
            continue
        k, sep, v = term.partition("=")
        if not sep:
            if k.strip() not in labels:
                return False
            continue
        if labels.get(k.strip()) != v.lstrip("=").strip():
            return False
    return True


def _field(obj: JSON, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)  # absent reads as "", as the API server has it


def parse_fields(plural: str, selector: str, selectable: dict[str, tuple[str, ...]]) -> None:
    """A selector naming a field the resource does not make selectable is a 400, like the API
    server's (`field label not supported`); so is one on an API server without selectable
    fields for CRDs (before Kubernetes 1.31)."""
    allowed = ("metadata.name", "metadata.namespace", *selectable.get(plural, ()))
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        name = term.split("!=", 1)[0] if "!=" in term else term.split("=", 1)[0]
        if "=" not in term or name.strip() not in allowed:
            raise status(400, "BadRequest", f'field label not supported: "{name.strip()}"')


def fields_match(selector: str, obj: JSON) -> bool:
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if _field(obj, k.strip()) == v.strip():
                return False
            continue
        k, _, v = term.partition("=")
        if _field(obj, k.strip()) != v.lstrip("=").strip():
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null deletes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


_ABSENT = object()  # what a test op finds at a path that does not exist: never equal


def json_patch(doc: JSON, ops: list[JSON]) -> JSON:
    """RFC 6902 add, remove, replace and test; a failed test is a 422 like the API server's."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            if isinstance(parent, list):
                index = int(last)
                current = parent[index] if 0 <= index < len(parent) else _ABSENT
            else:
                current = parent.get(last, _ABSENT)
            if current != op.get("value"):
                raise status(422, "Invalid", f"test failed at {op['path']}")
        elif kind == "remove":
            try:
                del parent[int(last) if isinstance(parent, list) else last]
            except (KeyError, IndexError) as err:
                raise status(422, "Invalid", f"nothing to remove at {op['path']}") from err
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise status(422, "Invalid", f"nothing to replace at {op['path']}")
                parent[last] = op["value"]
        else:
            raise status(422, "Invalid", f"unsupported op {kind}")
    return doc


class FakeApi:
    """The server side: objects, history, watchers, faults. Clients are `FakeKube`s."""

    def __init__(self) -> None:
        self.objects: dict[Key, JSON] = {}
        self.rv = 100
        self.history: list[_Event] = []
        self.watchers: set[_Watcher] = set()
        self.faults: list[Fault] = []
        self.after_faults: list[Fault] = []  # run once the write is applied: a lost answer
        self.attach: Callable[[str, str, str, str], Any] | None = None  # the kubelet's attach
        self.calls: list[Call] = []
        self.watch_lag = 0.0  # virtual seconds every watch event is held back
        self.lag: dict[str, float] = {}  # more of it for one resource's watches (by plural)
        self.hooks: list[Callable[[str, JSON], None]] = []  # after each change (kubelet)
        self._names = itertools.count(1)
        self.stopped: set[Key] = set()  # deleted for good, waiting only on finalizers
        self._compacted = 0
        self.selectable = dict(SELECTABLE)  # {} is an API server before Kubernetes 1.31

    # --- faults --------------------------------------------------------------------------------

    async def before(self, call: Call) -> None:
        self.calls.append(call)
        for fault in list(self.faults):
            await fault(call)

    async def after(self, call: Call) -> None:
        for fault in list(self.after_faults):
            await fault(call)

    def lose_answer(self, match: Callable[[Call], bool], *, times: int | None = 1) -> Fault:
        """Calls that `match` take effect, but their answer never arrives (a timeout)."""
        left = [times]

        async def fault(call: Call) -> None:
            if match(call) and left[0] != 0:
                if left[0] is not None:
                    left[0] -= 1
                raise TimeoutError(f"{call.verb} {call.plural}/{call.name}: answer lost")

        self.after_faults.append(fault)
        return fault

    def slow_answer(self, match: Callable[[Call], bool], latency: float) -> Fault:
        """Calls that `match` take effect at once, but their answer arrives `latency` later:
        the watch echoes the write before its writer hears back (a busy API server)."""

        async def fault(call: Call) -> None:
            if match(call):
                await asyncio.sleep(latency)

        self.after_faults.append(fault)
        return fault

    def fail(
        self,
        match: Callable[[Call], bool],
        error: BaseException | None = None,
        *,
        times: int | None = None,
        latency: float = 0.0,
        hang: bool = False,
    ) -> Fault:
        """Adds a fault: calls that `match` wait `latency`, then hang or raise `error`."""
        left = [times]

        async def fault(call: Call) -> None:
            if not match(call) or left[0] == 0:
                return
            if left[0] is not None:
                left[0] -= 1
            if latency:
                await asyncio.sleep(latency)
            if hang:
                await asyncio.Event().wait()
            if isinstance(error, ApiError):
                raise ApiError(error.status, copy.deepcopy(error.body))
            if error is not None:
                raise type(error)(*error.args)

        self.faults.append(fault)
        return fault

    def heal(self, fault: Fault | None = None) -> None:
        if fault is None:
            self.faults.clear()
            self.after_faults.clear()
        for faults in (self.faults, self.after_faults):
            if fault in faults:
                faults.remove(fault)

    # --- store ---------------------------------------------------------------------------------

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, type_: str, key: Key, obj: JSON, prev: JSON | None = None) -> None:
        ev = _Event(
            int(obj["metadata"]["resourceVersion"]),
            type_,
            key,
            copy.deepcopy(obj),
            clock.monotonic(),
            copy.deepcopy(prev) if prev is not None else None,
        )
        self.history.append(ev)
        del self.history[:-HISTORY]
        for w in list(self.watchers):
            seen = self._seen_by(w, ev)
            if seen is not None:
                w.queue.put_nowait(seen)
        for hook in list(self.hooks):
            hook(type_, obj)

    @staticmethod
    def _selects(w: _Watcher, key: Key, obj: JSON) -> bool:
        plural, ns, _ = key
        return (
            plural == w.plural
            and (not w.namespace or ns == w.namespace)
            and selector_matches(w.selector, obj["metadata"].get("labels"))
            and fields_match(w.fields, obj)
        )

    @classmethod
    def _seen_by(cls, w: _Watcher, ev: _Event) -> _Event | None:
        """The event as this watcher gets it (the watch cache's rule): a change into the
        selection is ADDED, one out of it DELETED carrying the object as it was before (at the
        new resourceVersion), one outside it nothing."""
        now = ev.type != "DELETED" and cls._selects(w, ev.key, ev.obj)
        before = ev.prev if ev.type == "MODIFIED" else ev.obj if ev.type == "DELETED" else None
        was = before is not None and cls._selects(w, ev.key, before)
        if now and (was or ev.type == "ADDED"):
            return ev
        if now:
            return _Event(ev.rv, "ADDED", ev.key, ev.obj, ev.at)
        if was and ev.type == "MODIFIED":
            assert before is not None
            gone = copy.deepcopy(before)
            gone["metadata"]["resourceVersion"] = str(ev.rv)
            return _Event(ev.rv, "DELETED", ev.key, gone, ev.at)
        return ev if was else None

    def read(self, plural: str, namespace: str, name: str) -> JSON | None:
        obj = self.objects.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def of(self, plural: str, namespace: str = "") -> list[JSON]:
        return [
            copy.deepcopy(o)
            for (p, ns, _), o in self.objects.items()
            if p == plural and (not namespace or ns == namespace)
        ]

    def get(self, plural: str, namespace: str, name: str) -> JSON:
        obj = self.read(plural, namespace, name)
        if obj is None:
            raise status(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    def list(
        self,
        plural: str,
        namespace: str,
        selector: str = "",
        fields: str = "",
        limit: int = 0,
        token: str = "",
    ) -> JSON:
        """With `limit`, one page and a `continue` token for the next (a position here)."""
        parse_fields(plural, fields, self.selectable)
        items = [
            o
            for o in self.of(plural, namespace)
            if selector_matches(selector, o["metadata"].get("labels")) and fields_match(fields, o)
        ]
        meta: JSON = {"resourceVersion": str(self.rv)}
        if limit:
            start = int(token or 0)
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
            items = items[start : start + limit]
        return {"items": items, "metadata": meta}

    def create(self, plural: str, namespace: str, body: JSON) -> JSON:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise status(422, "Invalid", "name or generateName is required")
            meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
        key = (plural, namespace, meta["name"])
        self._check_labels(obj)
        if key in self.objects:
            raise status(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
        if namespace:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = 1
        meta["resourceVersion"] = self._bump()
        meta.pop("deletionTimestamp", None)
        self.objects[key] = obj
        self._emit("ADDED", key, obj)
        return copy.deepcopy(obj)

    def put(self, plural: str, namespace: str, name: str, change: Callable[[JSON], None]) -> JSON:
        """A write by the cluster itself (the kubelet): no preconditions, no faults."""
        key = (plural, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise status(404, "NotFound", f'{plural} "{name}" not found')
        new = copy.deepcopy(obj)
        change(new)
        return self._store(key, obj, new)

    @staticmethod
    def _check_labels(obj: JSON) -> None:
        for v in (obj["metadata"].get("labels") or {}).values():
            if not isinstance(v, str) or len(v) > 63:
                raise status(
                    422,
                    "Invalid",
                    f"metadata.labels: Invalid value: {v!r}: must be no more than 63 characters",
                )

    def _store(self, key: Key, old: JSON, new: JSON) -> JSON:
        self._check_labels(new)
        if new == old:
            return copy.deepcopy(old)
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        new["metadata"]["resourceVersion"] = self._bump()
        if key in self.stopped and not new["metadata"].get("finalizers"):
            return self._remove(key, new)
        self.objects[key] = new
        self._emit("MODIFIED", key, new, old)
        return copy.deepcopy(new)

    def _remove(self, key: Key, obj: JSON) -> JSON:
        self.objects.pop(key, None)
        self.stopped.discard(key)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", key, obj)
        return copy.deepcopy(obj)

    def patch(
        self, plural: str, namespace: str, name: str, body: Any, kind: str, sub: str = ""
    ) -> JSON:
        key = (plural, namespace, name)
        old = self.objects.get(key)
        if old is None:
            raise status(404, "NotFound", f'{plural} "{name}" not found')
        if sub == "scale":  # the scale subresource of a CRD that has one
            path = SCALE_PATHS[plural]
            replicas = ((body or {}).get("spec") or {}).get("replicas")
            new = copy.deepcopy(old)
            new["spec"][path] = replicas
            stored = self._store(key, old, new)
            return {
                "kind": "Scale",
                "metadata": {k: stored["metadata"][k] for k in ("name", "resourceVersion")},
                "spec": {"replicas": stored["spec"][path]},
            }
        if kind == "json":
            patched = json_patch(old, body)
        else:
            want = ((body or {}).get("metadata") or {}).get("resourceVersion")
            if want is not None and want != old["metadata"]["resourceVersion"]:
                raise status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest "
                    f"version (have {old['metadata']['resourceVersion']}, sent {want})",
                )
            patched = merge_patch(old, body)
        if sub == "status":
            new = copy.deepcopy(old)
            new["status"] = patched.get("status")
        else:
            new = patched
            new["metadata"] = {**patched.get("metadata", {})}
            for fixed in _FIXED_META:
                if fixed in old["metadata"]:
                    new["metadata"][fixed] = old["metadata"][fixed]
                else:
                    new["metadata"].pop(fixed, None)
            new["status"] = copy.deepcopy(old.get("status"))
        if new.get("status") is None:
            new.pop("status", None)
        if plural == "pods":
            was = (old.get("spec") or {}).get("activeDeadlineSeconds")
            now = (new.get("spec") or {}).get("activeDeadlineSeconds")
            if was is not None and (now is None or now > was):
                raise status(422, "Invalid", "spec.activeDeadlineSeconds may only be lowered")
        return self._store(key, old, new)

    def delete(self, plural: str, namespace: str, name: str, options: JSON | None = None) -> JSON:
        key = (plural, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise status(404, "NotFound", f'{plural} "{name}" not found')
        options = options or {}
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise status(409, "Conflict", "Precondition failed: UID in precondition")
        want = pre.get("resourceVersion")
        if want and want != obj["metadata"]["resourceVersion"]:
            raise status(409, "Conflict", "Precondition failed: ResourceVersion in precondition")
        grace = options.get("gracePeriodSeconds")
        if plural == "pods" and grace is None:
            # The API server turns a graceful delete of 0 into 1 unless it is forced.
            grace = max(1, int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)))
        graceful = plural == "pods" and int(grace or 0) > 0
        if not graceful:
            self.stopped.add(key)
        if not graceful and not obj["metadata"].get("finalizers"):
            return self._remove(key, obj)
        if obj["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(obj)
        new = copy.deepcopy(obj)
        new["metadata"]["deletionTimestamp"] = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        new["metadata"]["deletionGracePeriodSeconds"] = int(grace or 0)
        return self._store(key, obj, new)

    def finish_termination(self, namespace: str, name: str) -> None:
        """The kubelet confirms a terminating pod stopped: it goes once its finalizers do."""
        key = ("pods", namespace, name)
        obj = self.objects.get(key)
        if obj is None or not obj["metadata"].get("deletionTimestamp"):
            return
        self.stopped.add(key)
        if not obj["metadata"].get("finalizers"):
            self._remove(key, obj)

    # --- watch ---------------------------------------------------------------------------------

    def compact(self) -> None:
        """Forgets the event history: a watch from an older version gets 410 Gone."""
        self.history.clear()
        self._compacted = self.rv

    def close_watches(self) -> None:
        """Ends every open watch stream, as an API server restart or a proxy timeout does."""
        for w in list(self.watchers):
            w.queue.put_nowait(None)

    async def watch(
        self,
        plural: str,
        namespace: str,
        since: str,
        selector: str,
        timeout: float,
        fields: str = "",
    ) -> AsyncIterator[JSON]:
        parse_fields(plural, fields, self.selectable)
        start = int(since) if since.isdigit() else self.rv
        if start < self._compacted or (self.history and start < self.history[0].rv - 1):
            raise status(410, "Expired", f"too old resource version: {start}")
        w = _Watcher(plural, namespace, selector, fields)
        for ev in self.history:
            seen = self._seen_by(w, ev) if ev.rv > start else None
            if seen is not None:
                w.queue.put_nowait(seen)
        self.watchers.add(w)
        ends = clock.monotonic() + timeout
        try:
            while True:
                left = ends - clock.monotonic()
                if left <= 0:
                    return
                try:
                    ev = await asyncio.wait_for(w.queue.get(), left)
                except TimeoutError:
                    return
                if ev is None:
                    return
                hold = ev.at + self.watch_lag + self.lag.get(plural, 0.0) - clock.monotonic()
                if hold > 0:
                    await asyncio.sleep(hold)
                yield {"type": ev.type, "object": copy.deepcopy(ev.obj)}
        finally:
            self.watchers.discard(w)
