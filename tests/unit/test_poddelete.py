"""poddelete: the one way a sandbox pod is deleted, and never with a zero grace period."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from codeexec import podspec
from codeexec.api.models import SandboxPoolSpec
from codeexec.kube.client import PODS
from codeexec.poddelete import GRACE_SECONDS, delete_pod

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "codeexec"


class RecordingKube:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def delete(self, res: Any, name: str, namespace: str, **kw: Any) -> None:
        self.calls.append((res, name, namespace, kw))


def test_pods_are_deleted_in_one_place_only() -> None:
    """Issue 10, finding 6: lifecycle, controller and pool each deleted pods their own way
    (caught: on main this lists lifecycle.py, controller.py and pool.py)."""
    pattern = re.compile(r"\.delete\(\s*PODS\b|grace_period\s*=")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "poddelete.py"
        and path != PACKAGE / "kube" / "client.py"
        and pattern.search(path.read_text())
    ]
    assert offenders == []


async def test_a_sandbox_pod_is_never_force_deleted() -> None:
    """A zero grace period removes the object while the container may still run (caught:
    GRACE_SECONDS = 0 fails here)."""
    kube = RecordingKube()
    await delete_pod(kube, "sandboxes", "p-1", resource_version="7")  # type: ignore[arg-type]
    [(res, name, ns, kw)] = kube.calls
    assert (res, name, ns) == (PODS, "p-1", "sandboxes")
    assert kw["grace_period"] == GRACE_SECONDS >= 1
    assert kw["resource_version"] == "7"


def test_a_delete_without_a_grace_period_waits_for_the_kubelet_too() -> None:
    """kubectl or a namespace deletion take the pod's own grace period (caught: 0 on main)."""
    spec = SandboxPoolSpec.model_validate({"language": "python", "image": "i"})
    pod = podspec.sandbox_pod("python", spec, "sandboxes")
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 1
