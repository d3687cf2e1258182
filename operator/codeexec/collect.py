"""When the runner's report is missing: read what the pod itself says happened.

The container's `state.terminated` (exit code, OOMKilled) and the pod's reason
(DeadlineExceeded, Evicted) come from the kubelet, the deletion mark and RuntimeClass from the
pod's own object; the termination message is the supervisor's
own record of whether the code started, and its compact report when it got that far.
"""

from __future__ import annotations

from dataclasses import dataclass

from codeexec.kube.client import PODS, ApiError, Kube
from codeexec.outcomes import Terminated
from codeexec.podcache import terminated_state
from codeexec.protocol import PodRecord, parse_termination_message


@dataclass(frozen=True)
class PodEvidence:
    gone: bool
    terminated: Terminated | None
    reason: str | None
    message: str | None
    record: PodRecord
    deleting: bool = False
    runtime_class: str | None = None


async def collect(kube: Kube, namespace: str, pod: str, request_id: str) -> PodEvidence:
    try:
        body = await kube.get(PODS, pod, namespace)
    except ApiError as err:
        if err.not_found:
            return PodEvidence(True, None, None, None, PodRecord(started=False, report=None))
        raise
    terminated = terminated_state(body)
    status = body.get("status", {})
    record = parse_termination_message(terminated.message if terminated else None, request_id)
    return PodEvidence(
        gone=False,
        terminated=terminated,
        reason=status.get("reason"),
        message=status.get("message"),
        record=record,
        deleting=bool(body.get("metadata", {}).get("deletionTimestamp")),
        runtime_class=body.get("spec", {}).get("runtimeClassName"),
    )
