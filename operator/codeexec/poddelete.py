"""The one way the operator deletes a sandbox pod: gracefully, so it is stopped before it is gone.

A DELETE with `gracePeriodSeconds: 0` removes the object from the API server at once, while the
kubelet stops the container later: for that while the user's code runs in a pod that no longer
exists (and on some network plugins no NetworkPolicy selects it any more). With a grace period
the object stays, `Terminating`, until the kubelet has stopped every container and reports it;
only then does the kubelet itself remove it. A Terminating pod is never warm capacity
(`pool.counts` skips it). A claimed pod holds the claim finalizer (podspec.CLAIM_FINALIZER)
until it is deleted here, so a deletion by anyone else leaves its record readable.
"""

from __future__ import annotations

from codeexec.kube.client import PODS, ApiError, Kube
from codeexec.podspec import CLAIM_FINALIZER, TERMINATION_GRACE_SECONDS

# The supervisor is PID 1 and installs no SIGTERM handler, so the kernel drops the runtime's
# SIGTERM; the SIGKILL that follows the grace period is what stops the container: 1 s is the
# shortest non-zero grace, and the pod is gone ~1-2 s after the call.
GRACE_SECONDS = TERMINATION_GRACE_SECONDS


async def delete_pod(
    kube: Kube, namespace: str, name: str, *, resource_version: str | None = None
) -> None:
    """Deletes a sandbox pod (a vanished one is fine). With `resource_version`, only if nobody
    changed it since: a warm pod claimed in the meantime is not deleted (ApiError 409).

    A claimed pod's finalizer goes first (callers delete a claimed pod only once its run is
    judged): were the pod deleted first and this process stopped in between, it would stay
    Terminating, claimed, for the sweep to find.
    """
    if resource_version is None:
        await release_claim(kube, namespace, name)
    await kube.delete(
        PODS,
        name,
        namespace,
        grace_period=GRACE_SECONDS,
        resource_version=resource_version,
        missing_ok=True,
    )


async def release_claim(kube: Kube, namespace: str, name: str) -> None:
    """Removes the claim finalizer (the claim patch put it first in the list), if it is there."""
    ops = [
        {"op": "test", "path": "/metadata/finalizers/0", "value": CLAIM_FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]
    try:
        await kube.patch(PODS, name, ops, namespace, patch_type="json", answer=False)
    except ApiError as err:
        # 404: gone already; 422: the test failed, the finalizer is not (or no longer) there.
        if not (err.not_found or err.status == 422):
            raise
