"""The road of one `CodeExecution`: Pending -> Running -> Succeeded | Failed.

Every step that must survive a crash is recorded *before* it is acted on. The claim is that
record: the patch that wins a pod also writes the execution's uid, the request id and the attempt
onto it, in one conditional write, before any code is sent. Running the road again from the top
(a restarted operator) therefore resumes where it stood: a pod claimed for this execution is
re-attached instead of claimed again, and the runner, which accepts one request in its life,
makes a repeated send harmless. The user's code starts at most once.

The `Running` status is for people and is written alongside the delivery rather than before it;
a run that reports back within RUNNING_RECORD_DELAY goes straight to its terminal status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any

from codeexec import clock, failpoints, metrics, podspec
from codeexec import status as st
from codeexec.api.models import ArtifactInfo
from codeexec.artifacts import Owner
from codeexec.artifacts.s3 import Credentials
from codeexec.artifacts.stores import Stores, keep
from codeexec.claim import Broker, NoPodInTime
from codeexec.collect import collect
from codeexec.deliver import NeverSent, deliver
from codeexec.execution import Execution, Invalid, parse
from codeexec.files import FileProblem, resolve
from codeexec.kube.client import CODE_EXECUTIONS, ApiError, Kube
from codeexec.kube.events import Recorder
from codeexec.kube.lease import Fence, unfenced
from codeexec.outcomes import Evidence, Outcome, Reason, classify
from codeexec.podcache import PodCache
from codeexec.poddelete import delete_pod
from codeexec.pool import Pool, PoolManager
from codeexec.preattach import Preattacher
from codeexec.protocol import Report, Request, new_request_id, road_parts
from codeexec.settings import Settings

log = logging.getLogger(__name__)

# Most warm runs report back well within this; sparing them the intermediate write takes a
# request per execution off the API server and the hot path.
RUNNING_RECORD_DELAY = 0.15
# A waiting execution's reason (a warm pod, or its namespace's cap) is looked at this often and
# written only when it changes. Only the head of a namespace's line can flip between the two (a
# namespace at its cap drops below it for a moment each time one of its runs ends): this bounds
# such a waiter to one write per 5 s instead of one per run that ends.
HOLD_RECHECK_SECONDS = 5.0


# A deleted pod's container is stopped within its grace period (1 s) by the kubelet; a drain
# may give more. Past this the run is judged on what is known (started: unknown).
SETTLE_SECONDS = 60.0


class NotStarted(Exception):
    """The claimed pod ended without ever starting the code: safe to run it on another pod."""


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    cache: PodCache
    pools: PoolManager
    broker: Broker
    events: Recorder
    preattach: Preattacher
    # Which store keeps a pool's artifacts (made on first use when not given).
    stores: Stores | None = None
    # Asked before each send (kube/lease.py): a deposed leader sends nothing.
    fence: Fence = unfenced


class Road:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @property
    def stores(self) -> Stores:
        if self.rt.stores is None:
            s = self.rt.settings
            creds = (
                Credentials(s.s3_access_key_id, s.s3_secret_access_key)
                if s.s3_access_key_id and s.s3_secret_access_key
                else None
            )
            self.rt.stores = Stores(self.rt.kube, creds)
        return self.rt.stores

    async def write_status(self, ex: Execution, body: dict[str, Any]) -> None:
        started = clock.monotonic()
        await self.rt.kube.patch_status(CODE_EXECUTIONS, ex.name, body, ex.namespace)
        ex.status = {**ex.status, **body}  # what the terminal status builds on
        metrics.STEP.labels("status_write").observe(clock.monotonic() - started)

    async def write_terminal(
        self, name: str, namespace: str, known: dict[str, Any], body: dict[str, Any]
    ) -> None:
        """The terminal status, replacing the whole status in one JSON Patch (so nulls in the
        result survive); `known` is the status as last seen, for members the end does not set.

        A status the API server refuses (too large, a value it cannot hold) must still end the
        execution: it is written again without the result's bulky parts, then with phase and
        reason only, each saying why. Never a wedge that leaves the pod and the road running.
        """
        started = clock.monotonic()
        status = {**known, **body}
        for smaller in (st.reduced, st.minimal, None):
            try:
                await self.rt.kube.replace_status(CODE_EXECUTIONS, name, status, namespace)
                break
            except ApiError as err:
                if smaller is None or not refused(err):
                    raise
                log.warning(
                    "%s/%s: terminal status refused (%s); writing less", namespace, name, err
                )
                # Only the code and reason: the API server's message may quote the values.
                status = smaller({**known, **body}, f"refused by the API server: {err.status}")
        metrics.STEP.labels("status_write").observe(clock.monotonic() - started)

    async def run(self, body: dict[str, Any], seen_at: float | None = None) -> None:
        meta = body["metadata"]
        try:
            ex = parse(body, seen_at)
        except Invalid as err:
            await self.finish_early(body, Reason.INVALID_REQUEST, str(err))
            return
        pool = await self.rt.pools.resolve(ex.spec.language, ex.spec.pool, ex.namespace)
        if isinstance(pool, str):
            await self.finish_early(body, Reason.INVALID_REQUEST, pool)
            return
        if ex.spec.timeout_seconds > pool.spec.max_timeout_seconds:
            await self.finish_early(
                body,
                Reason.INVALID_REQUEST,
                f"spec.timeoutSeconds {ex.spec.timeout_seconds} is over the pool "
                f"{pool.name}'s maxTimeoutSeconds {pool.spec.max_timeout_seconds}",
            )
            return
        if ex.spec.files:
            # Read before any claim: a file that cannot be had means nothing runs.
            try:
                ex.files = tuple(
                    await resolve(
                        self.rt.kube,
                        ex.spec.files,
                        ex.namespace,
                        secrets_allowed=self.rt.settings.files_from_secrets,
                    )
                )
            except FileProblem as err:
                await self.finish_early(body, Reason.INVALID_REQUEST, str(err))
                return
        log.debug("running %s/%s", meta["namespace"], meta["name"])
        await self.run_valid(ex, pool)

    async def finish_early(self, body: dict[str, Any], reason: Reason, message: str) -> None:
        meta = body["metadata"]
        created = st.parse_timestamp(meta.get("creationTimestamp"))
        patch = st.failed_before_start(reason, message, meta.get("generation"), created)
        known = body.get("status") or {}
        await self.write_terminal(meta["name"], meta["namespace"], known, patch)
        self.rt.events.record(body, reason.value, message, warning=True)
        metrics.EXECUTIONS.labels(body.get("spec", {}).get("language", ""), reason.value).inc()

    def resume(self, pool: Pool, ex: Execution, recorded: st.Sandbox | None) -> st.Sandbox | None:
        """The pod an earlier run of this road claimed, from the claim written on the pod.

        The status (`recorded`) may lag the claim (it is written after it) or name a pod that has
        since been replaced; the pod's own claim record is what counts.
        """
        for pod in self.rt.cache.claimed_for(ex.uid):
            # A Terminating pod is resumed too: the code may have run there (a drain took the
            # operator and the pod together); its claim finalizer keeps the kubelet's record.
            if not pod.request_id:
                continue
            return st.Sandbox(
                pool=pod.pool or pool.name,
                pod=pod.name,
                pod_uid=pod.uid,
                node=pod.node,
                request_id=pod.request_id,
                claimed_at=pod.claimed_at or st.now(),
                attempts=pod.attempt,
            )
        # A status alone cannot resume a run: it shows a digest of the nonce, not the nonce.
        return None

    async def run_valid(self, ex: Execution, pool: Pool) -> None:
        recorded = st.Sandbox.load(ex.status.get("sandbox"))
        sandbox = self.resume(pool, ex, recorded)
        attempts = max(sandbox.attempts if sandbox else 0, recorded.attempts if recorded else 0)
        if sandbox is not None:
            await self.release_other_claims(ex, keep=sandbox.pod)
        elif recorded is not None:
            # The recorded pod is gone: the code may have run there, so it is not run again.
            await self.finish(
                ex,
                Outcome(
                    Reason.SANDBOX_ERROR,
                    f"sandbox pod {recorded.pod} disappeared while the operator was away",
                ),
                None,
                started=None,
                sandbox=recorded,
            )
            return
        fresh = False
        stale: str | None = None
        while True:
            if sandbox is None:
                try:
                    sandbox = await self.claim(ex, pool, attempts + 1)
                    fresh = True
                except NoPodInTime as err:
                    held = f" ({err.held.message})" if err.held is not None else ""
                    await self.finish(
                        ex,
                        Outcome(
                            Reason.POOL_EXHAUSTED,
                            f"no warm pod of pool {pool.name} became free within "
                            f"{pool.spec.queue_timeout_seconds}s{held}",
                        ),
                        None,
                        started=False,
                    )
                    return
            if stale is not None:
                # The new claim is now the record; the pod that never started can go.
                await self.delete_pod(stale)
                stale = None
            try:
                outcome, report, extra = await self.execute(ex, pool, sandbox, fresh=fresh)
            except NotStarted as err:
                last, sandbox = sandbox, None
                attempts = last.attempts
                if attempts >= self.rt.settings.max_attempts:
                    await self.finish(
                        ex,
                        Outcome(
                            Reason.SANDBOX_ERROR,
                            f"{attempts} sandbox pods ended before the code could start: {err}",
                        ),
                        None,
                        started=False,
                        sandbox=last,
                    )
                    await self.delete_pod(last.pod)
                    return
                log.info(
                    "%s: pod ended before the code started (%s); claiming another", ex.ref, err
                )
                # Kept until the next claim: a restart in between must find this attempt's
                # claim (and its "not started" record), not a status naming a vanished pod.
                stale = last.pod
                continue
            failpoints.hit(failpoints.BEFORE_STATUS)
            await self.finish(ex, outcome, report, sandbox=sandbox, **extra)
            failpoints.hit(failpoints.AFTER_STATUS)
            await self.delete_pod(sandbox.pod)
            return

    async def mark_waiting(
        self, ex: Execution, pool: Pool, waiting: asyncio.Event, done: asyncio.Event
    ) -> None:
        """Pending, saying why (a warm pod, or the namespace's cap), once the claim has to
        wait; written again only when the why changes, looked at every HOLD_RECHECK_SECONDS."""
        await waiting.wait()
        written: str | None = None
        while not done.is_set():
            why = self.rt.broker.hold(pool.name, ex.uid)
            if why is None:
                return
            if why.reason != written:
                await self.write_status(ex, st.pending(why.reason, why.message, ex.generation))
                self.rt.events.record(ex.body, why.reason, why.message)
                written = why.reason
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), HOLD_RECHECK_SECONDS)

    async def claim(self, ex: Execution, pool: Pool, attempt: int) -> st.Sandbox:
        waiting, done = asyncio.Event(), asyncio.Event()
        request_id = new_request_id()
        started = clock.monotonic()
        marker = asyncio.create_task(self.mark_waiting(ex, pool, waiting, done))
        self.rt.pools.demand(pool.name)
        try:
            claimed = await self.rt.broker.claim(
                pool.name,
                pool.template,
                execution_uid=ex.uid,
                execution_ref=ex.ref,
                created=ex.created,
                deadline=(ex.created if attempt == 1 else clock.time())
                + pool.spec.queue_timeout_seconds,
                timeout_seconds=ex.spec.timeout_seconds,
                request_id=request_id,
                attempt=attempt,
                on_wait=waiting,
                namespace_cap=pool.spec.fairness.max_running_per_namespace,
            )
        finally:
            done.set()
            if not waiting.is_set():
                marker.cancel()
            # A Pending write on the wire is awaited, never abandoned: it must not land after
            # what the road writes next.
            try:
                await asyncio.shield(marker)
            except asyncio.CancelledError:
                if not marker.cancelled():
                    raise  # this road itself is being cancelled
        metrics.STEP.labels("claim").observe(clock.monotonic() - started)
        sandbox = st.Sandbox(
            pool=pool.name,
            pod=claimed.pod.name,
            pod_uid=claimed.pod.uid,
            node=claimed.pod.node,
            request_id=request_id,
            claimed_at=claimed.claimed_at,
            attempts=attempt,
        )
        metrics.QUEUE_WAIT.labels(ex.spec.language).observe(
            max(0.0, claimed.claimed_at.timestamp() - ex.created)
        )
        # The claim on the pod is the record a restart resumes from.
        failpoints.hit(failpoints.AFTER_CLAIM)
        await failpoints.pause(failpoints.AFTER_CLAIM)
        return sandbox

    async def delete_pod(self, name: str) -> None:
        await delete_pod(self.rt.kube, self.rt.settings.sandbox_namespace, name)

    async def release_other_claims(self, ex: Execution, keep: str) -> None:
        """Older pods claimed for this execution were given up on; make sure they are gone."""
        for pod in self.rt.cache.claimed_for(ex.uid):
            if pod.name != keep and (not pod.deleting or pod.held):
                log.info("%s: releasing earlier claim on pod %s", ex.ref, pod.name)
                await self.delete_pod(pod.name)

    async def record_running(
        self, ex: Execution, sandbox: st.Sandbox, writing: asyncio.Event
    ) -> None:
        await asyncio.sleep(RUNNING_RECORD_DELAY)
        writing.set()
        await self.write_status(ex, st.running(sandbox, ex.created_at, ex.generation))
        failpoints.hit(failpoints.AFTER_RECORD)

    async def execute(
        self, ex: Execution, pool: Pool, sandbox: st.Sandbox, *, fresh: bool
    ) -> tuple[Outcome, Report | None, dict[str, Any]]:
        """Deliver and classify; the Running record is written meanwhile, unless the run is
        over first, and always settled before this returns so it never lands after the end."""
        writing = asyncio.Event()
        running = asyncio.create_task(self.record_running(ex, sandbox, writing))
        try:
            return await self._execute(ex, pool, sandbox, fresh=fresh)
        finally:
            # A write already on the wire is waited for, never abandoned: the API server could
            # otherwise apply it after the terminal status.
            if not writing.is_set():
                running.cancel()
            try:
                await asyncio.shield(running)
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise  # this road itself is being cancelled
            except Exception as err:  # the terminal status will say what matters
                log.warning("%s: could not record Running: %r", ex.ref, err)

    async def _execute(
        self, ex: Execution, pool: Pool, sandbox: st.Sandbox, *, fresh: bool
    ) -> tuple[Outcome, Report | None, dict[str, Any]]:
        s = self.rt.settings
        store = await self.stores.for_pool(pool)
        request = Request(
            id=sandbox.request_id,
            language=ex.spec.language,
            code=ex.code,
            arguments=ex.spec.arguments,
            timeout_ms=ex.spec.timeout_seconds * 1000,
            max_output_bytes=ex.spec.max_output_bytes or s.max_output_bytes,
            keep_bytes=s.keep_bytes,
            files=tuple(f.wire() for f in ex.files),
            artifacts=store.limits.wire(),
        )
        deadline = (
            sandbox.claimed_at.timestamp()
            + ex.spec.timeout_seconds
            + podspec.DEADLINE_SLACK_SECONDS
            + s.grace_seconds
        )
        started = clock.monotonic()
        held = await self.rt.preattach.take(sandbox.pod) if fresh else None
        metrics.DELIVERIES.labels("held" if held else "new").inc()
        try:
            delivery = await deliver(
                self.rt.kube,
                self.rt.cache,
                s.sandbox_namespace,
                sandbox.pod,
                request,
                deadline,
                held=held,
                fresh=fresh,
                fence=self.rt.fence,
            )
        except NeverSent as err:
            raise NotStarted(str(err)) from err
        metrics.STEP.labels("deliver_and_run").observe(clock.monotonic() - started)
        report = delivery.report
        if report is not None and report.started:
            for part, seconds in road_parts(
                delivery.sent_at, delivery.seen_at, report.timing
            ).items():
                metrics.ROAD.labels(part).observe(seconds)
            if report.exit_from is not None:
                metrics.WORKER_EXITS.labels(report.exit_from).inc()
        evidence = Evidence(network_allowed=pool.spec.allow_network, language=ex.spec.language)
        if report is not None and report.started:
            outcome = classify(_with(evidence, report=report))
            owner = Owner(ex.namespace, ex.name, ex.uid)
            outcome, stored = await keep(store, owner, outcome, report, delivery.artifacts)
            return outcome, report, {"artifacts": stored}
        if report is not None and not report.started:
            raise NotStarted(report.protocol_error or "the runner got no request")
        await self.settled(sandbox.pod)
        pod = await collect(self.rt.kube, s.sandbox_namespace, sandbox.pod, sandbox.request_id)
        if pod.record.report is not None and pod.record.report.started:
            return classify(_with(evidence, report=pod.record.report)), pod.record.report, {}
        if (
            not delivery.started
            and not pod.gone
            and pod.terminated is not None
            and not pod.record.started
            and pod.terminated.reason != "OOMKilled"
        ):
            raise NotStarted(
                f"pod {sandbox.pod} ended ({pod.terminated.reason}, exit "
                f"{pod.terminated.exit_code}) before receiving the code"
            )
        overdue = clock.time() >= deadline and pod.terminated is None and not pod.gone
        # Started if either record says so; unknown while the pod has no final record to
        # consult (gone, or not yet terminated as it is being deleted).
        code_started: bool | None = True
        if not (delivery.started or pod.record.started):
            code_started = None if pod.gone or pod.terminated is None else False
        outcome = classify(
            _with(
                evidence,
                terminated=pod.terminated,
                pod_reason=pod.reason,
                pod_message=pod.message,
                pod_gone=pod.gone,
                pod_deleting=pod.deleting,
                oom_ends_sandbox=podspec.user_space_kernel(pod.runtime_class),
                code_started=code_started,
                operator_deadline=overdue,
            )
        )
        extra: dict[str, Any] = {"started": code_started}
        if pod.terminated is not None:
            extra["exit_code"] = pod.terminated.exit_code
            extra["signal"] = pod.terminated.signal
        return outcome, None, extra

    async def settled(self, name: str) -> None:
        """A Terminating pod is judged on the kubelet's final record (its claim finalizer keeps
        the object until then): wait until its container is reported stopped."""
        until = clock.monotonic() + SETTLE_SECONDS
        while clock.monotonic() < until:
            view = self.rt.cache.pods.get(name)
            if view is None or not view.deleting or view.terminated is not None:
                return
            await self.rt.cache.wait_changed(min(5.0, until - clock.monotonic()))

    async def finish(
        self,
        ex: Execution,
        outcome: Outcome,
        report: Report | None,
        *,
        started: bool | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
        sandbox: st.Sandbox | None = None,
        artifacts: list[ArtifactInfo] | None = None,
    ) -> None:
        res = st.result(
            outcome,
            report,
            exit_code=exit_code,
            signal=signal,
            started=started,
            artifacts=artifacts,
        )
        body = st.finished(
            outcome, res, created_at=ex.created_at, generation=ex.generation, sandbox=sandbox
        )
        await self.write_terminal(ex.name, ex.namespace, ex.status, body)
        if not outcome.succeeded or self.rt.settings.success_events:
            self.rt.events.record(
                ex.body, outcome.reason.value, outcome.message, warning=not outcome.succeeded
            )
        lang = ex.spec.language
        metrics.EXECUTIONS.labels(lang, outcome.reason.value).inc()
        metrics.END_TO_END.labels(lang).observe(max(0.0, clock.time() - ex.created))
        if report is not None and report.wall_ms is not None:
            metrics.RUN_TIME.labels(lang).observe(report.wall_ms / 1000)


def refused(err: ApiError) -> bool:
    """The API server will never take this write as it is (retrying it cannot help)."""
    if err.status in (400, 413, 422):
        return True
    # etcd's own size limit surfaces as a 500 "etcdserver: request is too large".
    return err.status == 500 and "too large" in str(err.body.get("message", "")).lower()


def _with(ev: Evidence, **changes: Any) -> Evidence:
    return replace(ev, **changes)
