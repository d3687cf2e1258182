"""What the runs create on the cluster (namespaces, pools, bare pods) and how it goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from bench.cluster import (
    BENCH_LABEL,
    IMAGES,
    INSTANCE,
    INSTANCE_LABEL,
    SERVICE_ACCOUNTS,
    Abort,
    poll,
)
from codeexec.api.models import SandboxPoolSpec
from codeexec.kube.client import (
    CODE_EXECUTIONS,
    NAMESPACES,
    PODS,
    SANDBOX_POOLS,
    ApiError,
    Kube,
)
from codeexec.podspec import CLAIM_FINALIZER, sandbox_pod

log = logging.getLogger("bench")


# ---- what we create ------------------------------------------------------------------------


def namespace_manifest(name: str, *, restricted: bool = False) -> dict[str, Any]:
    labels = {BENCH_LABEL: "true"}
    if restricted:
        labels["pod-security.kubernetes.io/enforce"] = "restricted"
        labels["pod-security.kubernetes.io/enforce-version"] = "latest"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


async def create_namespace(kube: Kube, name: str, *, restricted: bool = False) -> None:
    for _ in range(120):
        try:
            await kube.create(NAMESPACES, namespace_manifest(name, restricted=restricted))
            break
        except ApiError as err:
            if not err.conflict:
                raise
            try:
                ns = await kube.get(NAMESPACES, name)
            except ApiError as gone:
                if gone.not_found:
                    continue
                raise
            if ns.get("metadata", {}).get("deletionTimestamp"):
                await asyncio.sleep(1)  # a namespace of an earlier run is still going away
                continue
            if ns.get("metadata", {}).get("labels", {}).get(BENCH_LABEL) != "true":
                raise Abort(f"namespace {name} exists and is not ours") from err
            break
    else:
        raise TimeoutError(f"namespace {name} still terminating after 120s")

    async def has_sa() -> bool:
        try:
            await kube.get(SERVICE_ACCOUNTS, "default", name)
            return True
        except ApiError:
            return False

    await poll(has_sa, timeout=60, what=f"ServiceAccount default in {name}")


def pool_manifest(name: str, language: str, size: int, **spec: Any) -> dict[str, Any]:
    if not name.startswith("bench-"):
        raise ValueError("bench pools are named bench-*")
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": name, "labels": {INSTANCE_LABEL: INSTANCE, BENCH_LABEL: "true"}},
        "spec": {
            "language": language,
            "image": IMAGES[language],
            "size": size,
            "default": True,
            "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
            **spec,
        },
    }


async def create_pool(kube: Kube, name: str, language: str, size: int, **spec: Any) -> None:
    body = pool_manifest(name, language, size, **spec)
    try:
        await kube.create(SANDBOX_POOLS, body)
    except ApiError as err:
        if not err.conflict:
            raise
        await kube.patch(SANDBOX_POOLS, name, {"spec": body["spec"]})


async def pool_ready(kube: Kube, name: str) -> int:
    pool = await kube.get(SANDBOX_POOLS, name)
    return int(pool.get("status", {}).get("ready") or 0)


async def wait_pools_full(kube: Kube, sizes: dict[str, int], timeout: float = 240) -> float:
    t0 = time.monotonic()

    async def full() -> bool:
        for name, size in sizes.items():
            if await pool_ready(kube, name) < size:
                return False
        return True

    await poll(full, timeout=timeout, interval=0.25, what=f"pools full {sizes}")
    return time.monotonic() - t0


async def cleanup(kube: Kube, namespaces: list[str] | None = None) -> None:
    """Deletes our pools, then our namespaces' pods (no grace), then the namespaces.

    With `namespaces` None: everything labelled as ours (leftovers of a killed run).
    """
    pools = await kube.list(SANDBOX_POOLS, label_selector=f"{BENCH_LABEL}=true")
    for p in pools.get("items", []):
        name = p["metadata"]["name"]
        if name.startswith("bench-") and p["metadata"]["labels"].get(INSTANCE_LABEL) == INSTANCE:
            await kube.delete(SANDBOX_POOLS, name)
    if namespaces is None:
        listing = await kube.list(NAMESPACES, label_selector=f"{BENCH_LABEL}=true")
        namespaces = [n["metadata"]["name"] for n in listing.get("items", [])]
    for ns in namespaces:
        with contextlib.suppress(ApiError):
            ns_obj = await kube.get(NAMESPACES, ns)
            if ns_obj.get("metadata", {}).get("labels", {}).get(BENCH_LABEL) != "true":
                continue
            for pod in (await kube.list(PODS, ns)).get("items", []):
                name = pod["metadata"]["name"]
                if CLAIM_FINALIZER in (pod["metadata"].get("finalizers") or []):
                    # The operator is gone: nobody else would let the pod (and the namespace) go.
                    with contextlib.suppress(ApiError):
                        await kube.patch(PODS, name, {"metadata": {"finalizers": None}}, ns)
                await kube.delete(PODS, name, ns, grace_period=0)
            await kube.delete(NAMESPACES, ns)


async def wait_namespaces_gone(kube: Kube, names: list[str], timeout: float = 120) -> None:
    async def gone() -> bool:
        for ns in names:
            try:
                await kube.get(NAMESPACES, ns)
                return False
            except ApiError as err:
                if not err.not_found:
                    raise
        return True

    with contextlib.suppress(TimeoutError):
        await poll(gone, timeout=timeout, interval=1, what="namespaces gone")


def bare_pod(
    name: str, language: str, namespace: str, command: list[str], labels: dict[str, str]
) -> dict[str, Any]:
    """The hardened sandbox pod spec of a pool, running `command` instead of the runner.

    The same image, security context, limits and memory /tmp as a warm pod, so the cold
    baseline differs only in that the pod is made for the one execution.
    """
    spec = SandboxPoolSpec.model_validate(
        {
            "language": language,
            "image": IMAGES[language],
            "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
        }
    )
    pod = sandbox_pod("bench-cold", spec, namespace)
    pod["metadata"] = {
        "name": name,
        "namespace": namespace,
        "labels": {BENCH_LABEL: "true", **labels},
    }
    pod["spec"]["activeDeadlineSeconds"] = 120
    container = pod["spec"]["containers"][0]
    container["stdin"] = False
    container["stdinOnce"] = False
    container["command"] = command
    container["args"] = []
    return pod


# ---- other operators on the cluster ---------------------------------------------------------


async def foreign_operator(kube: Kube, namespace: str, *, watch_s: float = 6) -> str | None:
    """Whether another operator serves `namespace` (one started without CODEEXEC_NAMESPACES
    watches every namespace): a canary execution must stay untouched while ours is not running.
    Returns what touched it, or None."""
    name = f"canary-{os.getpid()}-{int(time.time())}"
    body = {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "CodeExecution",
        "metadata": {"name": name, "labels": {BENCH_LABEL: "canary"}},
        "spec": {"language": "python", "code": "def main():\n    return 0\n", "pool": "bench-none"},
    }
    await kube.create(CODE_EXECUTIONS, body, namespace)
    try:
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status = (await kube.get(CODE_EXECUTIONS, name, namespace)).get("status") or {}
            if status:
                return f"{status.get('phase')} {status.get('reason')}: {status.get('message')}"
        return None
    finally:
        await kube.delete(CODE_EXECUTIONS, name, namespace)


async def wait_no_foreign_operator(kube: Kube, namespace: str, timeout: float) -> None:
    """Waits (bounded) until no other operator serves our tenant namespace; else exits."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await foreign_operator(kube, namespace)
        if seen is None:
            return
        if time.monotonic() > deadline:
            raise Abort(
                f"another codeexec operator serves namespace {namespace} (it wrote {seen!r} "
                "on our canary): it would race ours for every execution. Stop it, or start it "
                "with CODEEXEC_NAMESPACES set to its own namespaces, and run again."
            )
        log.warning(
            "another operator serves %s (%s); waiting for it to stop (up to %.0fs more)",
            namespace,
            seen,
            deadline - time.monotonic(),
        )
        await asyncio.sleep(30)
