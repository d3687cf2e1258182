"""podspec: every hardening point of a sandbox pod, checked on the manifest."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

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
    assert c["stdin"] and not c["tty"]
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
    patch = podspec.claim_patch(
        "uid-1", "ns/name", "42", 30, request_id="r1", claimed_at="2026-01-01T00:00:00Z", attempt=2
    )
    assert patch["metadata"]["resourceVersion"] == "42"
    assert patch["spec"]["activeDeadlineSeconds"] == 30
    assert patch["metadata"]["labels"][podspec.STATE_LABEL] == podspec.CLAIMED


def test_claim_patch_is_the_record_a_restart_resumes_from() -> None:
    patch = podspec.claim_patch(
        "uid-1", "ns/name", "42", 30, request_id="r1", claimed_at="2026-01-01T00:00:00Z", attempt=2
    )
    annotations = patch["metadata"]["annotations"]
    assert patch["metadata"]["labels"][podspec.CLAIMED_BY_LABEL] == "uid-1"
    assert annotations[podspec.REQUEST_ANNOTATION] == "r1"
    assert annotations[podspec.CLAIMED_AT_ANNOTATION] == "2026-01-01T00:00:00Z"
    assert annotations[podspec.ATTEMPT_ANNOTATION] == "2"


def test_stdin_stays_open_across_attach_sessions() -> None:
    # Pre-attaching to a warm pod must not use up its stdin: the runner, not the kubelet, makes
    # a pod single-request.
    pod = podspec.sandbox_pod("py", spec(), "sbx")
    container = pod["spec"]["containers"][0]
    assert container["stdin"] is True
    assert container["stdinOnce"] is False


def test_preload_reaches_the_worker_and_shapes_the_template() -> None:
    def env(s: SandboxPoolSpec) -> dict[str, str]:
        c = podspec.sandbox_pod("py", s, "sbx")["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in c["env"]}

    assert "CODEEXEC_PRELOAD" not in env(spec())  # the image's default
    assert env(spec(preload=[]))["CODEEXEC_PRELOAD"] == ""
    assert env(spec(preload=["numpy", "json"]))["CODEEXEC_PRELOAD"] == "numpy,json"
    assert podspec.template_hash(spec(preload=[])) != podspec.template_hash(spec())


def test_file_size_limit_follows_the_scratch_size() -> None:
    """RLIMIT_FSIZE for the code is the scratch size: that bounds what it can write to
    /dev/termination-log, which lives on the node's disk (issue 10, finding 2)."""
    spec = SandboxPoolSpec.model_validate(
        {"language": "python", "image": "i", "scratchSizeLimit": "32Mi"}
    )
    env = {
        e["name"]: e["value"]
        for e in podspec.sandbox_pod("p", spec, "ns")["spec"]["containers"][0]["env"]
    }
    assert env["CODEEXEC_MAX_FILE_BYTES"] == str(32 * 1024 * 1024)
    assert podspec.quantity_bytes("1G") == 10**9 and podspec.quantity_bytes("12") == 12
    assert podspec.quantity_bytes("lots") is None


def test_gvisor_runtime_classes_are_recognised() -> None:
    for name in ("gvisor", "runsc", "gvisor-sandbox"):
        assert podspec.user_space_kernel(name), name
    for name in (None, "", "runc", "kata", "kata-qemu"):
        assert not podspec.user_space_kernel(name), name


def test_the_startup_probe_waits_for_warmth_instead_of_failing_until_it_comes(
    tmp_path: Path,
) -> None:
    """A probe that fails each second until the worker is warm costs a runc exec and a kubelet
    Event write per failure (11 per execution measured); this one passes once, within ~50 ms
    of the ready file appearing, and gives up before the kubelet's timeout would cut it."""
    probe = podspec.sandbox_pod("py", spec(), "sbx")["spec"]["containers"][0]["startupProbe"]
    command = probe["exec"]["command"]
    assert command[:4] == ["python3", "-I", "-S", "-c"]
    ready = tmp_path / "ready"
    script = command[4].replace(podspec.READY_FILE, str(ready))
    assert script != command[4]
    threading.Timer(0.3, ready.touch).start()
    t0 = time.monotonic()
    assert subprocess.run([sys.executable, "-I", "-S", "-c", script]).returncode == 0
    assert time.monotonic() - t0 < 2.0
    ready.unlink()
    t0 = time.monotonic()
    assert subprocess.run([sys.executable, "-I", "-S", "-c", script]).returncode == 1
    assert time.monotonic() - t0 < probe["timeoutSeconds"]
