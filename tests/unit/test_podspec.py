"""podspec: every hardening point of a sandbox pod, checked on the manifest."""

from __future__ import annotations

from codeexec import podspec
from codeexec.api.models import SandboxPoolSpec


def spec(**kw: object) -> SandboxPoolSpec:
    return SandboxPoolSpec.model_validate({"language": "python", "image": "img:1", **kw})


def test_sandbox_pod_is_hardened() -> None:
    pod = podspec.sandbox_pod("py", spec(), "sbx")
    s = pod["spec"]
    c = s["containers"][0]
    assert s["automountServiceAccountToken"] is False
    assert s["enableServiceLinks"] is False
    assert s["restartPolicy"] == "Never"
    assert s["securityContext"]["runAsNonRoot"] is True
    assert s["securityContext"]["runAsUser"] >= podspec.UID_MIN
    assert s["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(c["resources"]["limits"]) >= {"cpu", "memory", "ephemeral-storage"}
    assert s["volumes"][0]["emptyDir"]["sizeLimit"] == "64Mi"
    assert c["stdin"] and c["stdinOnce"] and not c["tty"]
    assert pod["metadata"]["labels"][podspec.EGRESS_LABEL] == "deny"


def test_uid_differs_between_pods() -> None:
    uids = {
        podspec.sandbox_pod("py", spec(), "s")["spec"]["securityContext"]["runAsUser"]
        for _ in range(20)
    }
    assert len(uids) > 1


def test_template_hash_follows_shaping_fields_only() -> None:
    base = podspec.template_hash(spec())
    assert podspec.template_hash(spec(size=9, default=True)) == base
    assert podspec.template_hash(spec(image="img:2")) != base
    assert podspec.template_hash(spec(resources={"limits": {"memory": "1Gi"}})) != base


def test_runtime_class_and_network() -> None:
    pod = podspec.sandbox_pod("py", spec(runtimeClassName="gvisor", allowNetwork=True), "s")
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["metadata"]["labels"][podspec.EGRESS_LABEL] == "allow"


def test_claim_patch_is_conditional() -> None:
    patch = podspec.claim_patch("uid-1", "ns/name", "42", 30)
    assert patch["metadata"]["resourceVersion"] == "42"
    assert patch["spec"]["activeDeadlineSeconds"] == 30
    assert patch["metadata"]["labels"][podspec.STATE_LABEL] == podspec.CLAIMED
