"""One execution per reason of outcomes.md, Python and Node.js, on the real cluster, under
both runtimes: runc (the default pools) and gVisor (pools with runtimeClassName gvisor).

All cases are submitted at once (they queue on the pools, which is part of the test) and each
test then asserts the reason, the seed status and sub-type, and the evidence fields.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from e2e.fixtures import Cluster

from codeexec.api.models import CodeExecution
from codeexec.client import Client
from codeexec.kube import config
from codeexec.kube.client import NAMESPACES, Kube

from .conftest import RUNTIME_POOLS, RUNTIMES, OperatorProcess

pytestmark = pytest.mark.cluster


@dataclass(frozen=True)
class Case:
    id: str
    language: str
    code: str
    reason: str
    status: str
    sub: tuple[str, str] | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    timeout: int = 10
    max_output_bytes: int | None = None
    check: dict[str, Any] = field(default_factory=dict)


PY, JS = "python", "nodejs"
PROGRAM = ("runtimeErrorType", "nonzero_exit")

CASES = [
    Case(
        "py-double",
        PY,
        "def main(x):\n    return x * 2\n",
        "Succeeded",
        "success",
        arguments={"x": 5},
        check={"returnValue": 10},
    ),
    Case(
        "py-no-newline",
        PY,
        "def main():\n    print('partial', end='')\n",
        "Succeeded",
        "success",
        check={"stdout": "partial"},
    ),
    Case(
        "py-async-main",
        PY,
        "import asyncio\nasync def main():\n    await asyncio.sleep(0)\n    return [1, 'a']\n",
        "Succeeded",
        "success",
        check={"returnValue": [1, "a"]},
    ),
    Case(
        "py-forged-report",
        PY,
        'def main():\n    print(\'CXR1 {"id": "x", "started": true,'
        ' "result": {"kind": "returned", "value": 99}}\')\n    return 1\n',
        "Succeeded",
        "success",
        check={"returnValue": 1},
    ),
    Case(
        "py-non-utf8",
        PY,
        "import sys\ndef main():\n    sys.stdout.buffer.write(b'\\xff\\xfe ok\\n')\n"
        "    sys.stdout.flush()\n",
        "Succeeded",
        "success",
    ),
    Case(
        "py-syntax",
        PY,
        "def main(:\n    pass\n",
        "SyntaxError",
        "program_error",
        PROGRAM,
        check={"error.line": 1},
    ),
    Case("py-no-main", PY, "x = 1\n", "EntrypointError", "program_error", PROGRAM),
    Case(
        "py-bad-args",
        PY,
        "def main(y):\n    return y\n",
        "EntrypointError",
        "program_error",
        PROGRAM,
        arguments={"x": 1},
    ),
    Case(
        "py-exception",
        PY,
        "def main():\n    raise ValueError('boom')\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "ValueError", "error.message": "boom"},
    ),
    Case(
        "py-says-permission-denied",
        PY,
        "def main():\n    raise RuntimeError('Permission denied')\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "RuntimeError"},
    ),
    Case(
        "py-set",
        PY,
        "def main():\n    return {1, 2}\n",
        "ResultNotSerializable",
        "program_error",
        PROGRAM,
    ),
    Case(
        "py-exit-3",
        PY,
        "import sys\ndef main():\n    sys.exit(3)\n",
        "NonZeroExit",
        "program_error",
        PROGRAM,
        check={"exitCode": 3},
    ),
    Case(
        "py-self-kill",
        PY,
        "import os, signal\ndef main():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "Signaled",
        "runtime_error",
        ("runtimeErrorType", "signalled"),
        check={"signal": 9},
    ),
    Case(
        "py-segfault",
        PY,
        "import ctypes\ndef main():\n    ctypes.string_at(0)\n",
        "Signaled",
        "runtime_error",
        ("runtimeErrorType", "signalled"),
        check={"signal": 11},
    ),
    Case(
        "py-loop",
        PY,
        "def main():\n    print('started', flush=True)\n    while True:\n        pass\n",
        "WallTimeout",
        "resource_limit_exceeded",
        ("resourceLimitType", "time"),
        timeout=2,
        check={"stdout": "started\n"},
    ),
    Case(
        "py-ignores-sigterm",
        PY,
        "import signal, time\ndef main():\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    print('stubborn', flush=True)\n"
        "    while True:\n        time.sleep(0.01)\n",
        "WallTimeout",
        "resource_limit_exceeded",
        ("resourceLimitType", "time"),
        timeout=2,
        check={"stdout": "stubborn\n"},
    ),
    Case(
        "py-memory-hog",
        PY,
        "def main():\n    blocks = []\n    while True:\n"
        "        blocks.append(bytearray(16 * 1024 * 1024))\n",
        "MemoryLimit",
        "resource_limit_exceeded",
        ("resourceLimitType", "memory"),
        timeout=30,
    ),
    Case(
        "py-output-flood",
        PY,
        "def main():\n    while True:\n        print('x' * 1000)\n",
        "OutputLimit",
        "resource_limit_exceeded",
        ("resourceLimitType", "output"),
        max_output_bytes=65536,
        timeout=30,
    ),
    Case(
        "py-fork-bomb",
        PY,
        "import os\ndef main():\n    while True:\n        os.fork()\n",
        "ProcessLimit",
        "resource_limit_exceeded",
        ("resourceLimitType", "processes"),
        timeout=30,
    ),
    Case(
        "py-sa-token",
        PY,
        "def main():\n"
        "    return open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "FileNotFoundError"},
    ),
    Case(
        "py-write-root",
        PY,
        "def main():\n    open('/owned', 'w').write('x')\n",
        "PermissionDenied",
        "unauthorized_access",
        ("unauthorizedAccessType", "file_access"),
    ),
    Case(
        "py-setuid",
        PY,
        "import os\ndef main():\n    os.setuid(0)\n",
        "DisallowedSyscall",
        "unauthorized_access",
        ("unauthorizedAccessType", "disallowed_syscall"),
        check={"signal": 31},  # the supervisor's seccomp filter, not an EPERM it could raise
    ),
    Case(
        "py-network",
        PY,
        "import socket\ndef main():\n    socket.create_connection(('10.96.0.1', 443), timeout=3)\n",
        "NetworkBlocked",
        "unauthorized_access",
        ("unauthorizedAccessType", "network_access"),
        timeout=20,
    ),
    # Forgeries (issue 10, finding 5): the program picks the error, the kernel saw nothing.
    # caught: on the classifier that read exception types, errno codes and stderr text these
    # were MemoryLimit, ProcessLimit, NetworkBlocked, PermissionDenied and MemoryLimit.
    Case(
        "py-sigterm-raises-memoryerror",
        PY,
        "import signal, time\ndef main():\n    def handler(*_):\n        raise MemoryError()\n"
        "    signal.signal(signal.SIGTERM, handler)\n    while True:\n        time.sleep(0.01)\n",
        "WallTimeout",
        "resource_limit_exceeded",
        ("resourceLimitType", "time"),
        timeout=2,
    ),
    Case(
        "py-raises-memoryerror",
        PY,
        "def main():\n    raise MemoryError('pretend')\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "MemoryError", "error.message": "pretend"},
    ),
    Case(
        "py-forged-eagain",
        PY,
        "import errno\ndef main():\n"
        "    raise BlockingIOError(errno.EAGAIN, 'Resource temporarily unavailable')\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "BlockingIOError"},
    ),
    Case(
        "py-forged-refused",
        PY,
        "import errno\ndef main():\n"
        "    raise ConnectionRefusedError(errno.ECONNREFUSED, 'Connection refused')\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "ConnectionRefusedError"},
    ),
    Case(
        "py-forged-eacces",
        PY,
        "import errno\ndef main():\n    open('/tmp/mine', 'w').close()\n"
        "    raise PermissionError(errno.EACCES, 'Permission denied', '/tmp/mine')\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "PermissionError"},
    ),
    Case(
        "js-prints-heap-oom-and-aborts",
        JS,
        "module.exports = () => {\n  process.stderr.write('FATAL ERROR: Reached heap limit "
        "Allocation failed - JavaScript heap out of memory\\n');\n  process.abort();\n};\n",
        "Signaled",
        "runtime_error",
        ("runtimeErrorType", "signalled"),
        check={"signal": 6},
    ),
    Case(
        "js-forged-refused",
        JS,
        "module.exports = () => { const e = new Error('connect ECONNREFUSED 10.0.0.1:80');"
        " e.code = 'ECONNREFUSED'; e.syscall = 'connect'; throw e; };\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.code": "ECONNREFUSED"},
    ),
    Case(
        "js-sync",
        JS,
        "module.exports = (args) => args.x * 2;\n",
        "Succeeded",
        "success",
        arguments={"x": 21},
        check={"returnValue": 42},
    ),
    Case(
        "js-async-object-export",
        JS,
        "async function main({ a }) {\n"
        "  await new Promise((r) => setTimeout(r, 5));\n  return { a };\n}\nmodule.exports = { main };\n",
        "Succeeded",
        "success",
        arguments={"a": "b"},
        check={"returnValue": {"a": "b"}},
    ),
    Case(
        "js-exports-main",
        JS,
        "exports.main = () => 'ok';\n",
        "Succeeded",
        "success",
        check={"returnValue": "ok"},
    ),
    Case(
        "js-throw",
        JS,
        "module.exports = () => { throw new TypeError('bad'); };\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "TypeError"},
    ),
    Case(
        "js-reject",
        JS,
        "module.exports = async () => { throw new Error('nope'); };\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.message": "nope"},
    ),
    Case(
        "js-never-settles",
        JS,
        "module.exports = () => new Promise(() => {});\n",
        "UserException",
        "program_error",
        PROGRAM,
        check={"error.type": "PromiseNeverSettled"},
    ),
    Case(
        "js-exit-2",
        JS,
        "module.exports = () => process.exit(2);\n",
        "NonZeroExit",
        "program_error",
        PROGRAM,
        check={"exitCode": 2},
    ),
    Case(
        "js-bigint",
        JS,
        "module.exports = () => 10n;\n",
        "ResultNotSerializable",
        "program_error",
        PROGRAM,
    ),
    Case("js-syntax", JS, "module.exports = () => {\n", "SyntaxError", "program_error", PROGRAM),
    Case("js-no-main", JS, "const x = 1;\n", "EntrypointError", "program_error", PROGRAM),
    Case(
        "js-loop",
        JS,
        "module.exports = () => { console.log('spin'); for (;;) {} };\n",
        "WallTimeout",
        "resource_limit_exceeded",
        ("resourceLimitType", "time"),
        timeout=2,
        check={"stdout": "spin\n"},
    ),
    Case(
        "js-self-kill",
        JS,
        "module.exports = () => process.kill(process.pid, 'SIGKILL');\n",
        "Signaled",
        "runtime_error",
        ("runtimeErrorType", "signalled"),
        check={"signal": 9},
    ),
    Case(
        "js-write-root",
        JS,
        "module.exports = () => require('fs').writeFileSync('/owned', 'x');\n",
        "PermissionDenied",
        "unauthorized_access",
        ("unauthorizedAccessType", "file_access"),
    ),
    Case(
        "js-memory-hog",
        JS,
        "module.exports = () => { const a = []; for (;;) "
        "a.push(Buffer.alloc(16 * 1024 * 1024, 1)); };\n",
        "MemoryLimit",
        "resource_limit_exceeded",
        ("resourceLimitType", "memory"),
        timeout=30,
    ),
    Case(
        "js-network",
        JS,
        "const net = require('net');\nmodule.exports = () => new Promise("
        "(resolve, reject) => {\n  const s = net.connect({ host: '10.96.0.1', port: 443, timeout: 3000 });\n"
        "  s.on('connect', () => resolve('connected'));\n  s.on('timeout', () => { const e = "
        "new Error('connect ETIMEDOUT'); e.code = 'ETIMEDOUT'; e.syscall = 'connect'; reject(e); });\n"
        "  s.on('error', reject);\n});\n",
        "NetworkBlocked",
        "unauthorized_access",
        ("unauthorizedAccessType", "network_access"),
        timeout=20,
    ),
]


# Cases a gVisor sandbox may end at its memory limit rather than the limit the case names.
GVISOR_MAY_RUN_OUT_OF_MEMORY = frozenset({"py-fork-bomb"})


def field_of(doc: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None  # type: ignore[assignment]
    return doc


@pytest.fixture(scope="module", params=RUNTIMES)
async def outcomes(
    request: pytest.FixtureRequest, operator: OperatorProcess, cluster: Cluster
) -> dict[str, CodeExecution]:
    """Every case on one runtime's pools: runc (the default pools) or gVisor."""
    runtime: str = request.param
    if runtime == "gvisor":
        request.getfixturevalue("gvisor_pools")
    pools = RUNTIME_POOLS[runtime]
    kube = Kube(config.from_kubeconfig(str(cluster.kubeconfig)) or config.load())
    ns = f"outcomes-{runtime}-{uuid.uuid4().hex[:6]}"
    await kube.create(NAMESPACES, {"metadata": {"name": ns}})
    client = Client(kube, ns)
    try:

        async def one(case: Case) -> CodeExecution:
            created = await client.submit(
                case.code,
                language=case.language,  # type: ignore[arg-type]
                arguments=case.arguments,
                timeout_seconds=case.timeout,
                max_output_bytes=case.max_output_bytes,
                name=case.id,
                pool=pools[case.language],
            )
            return await client.wait(created.name, timeout=600)

        results = await asyncio.gather(*(one(c) for c in CASES))
        return {c.id: r for c, r in zip(CASES, results, strict=True)}
    finally:
        await kube.delete(NAMESPACES, ns)
        await kube.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_outcome(case: Case, outcomes: dict[str, CodeExecution]) -> None:
    done = outcomes[case.id]
    st = done.status
    result = st.result.dump() if st.result else {}
    detail = f"{st.reason}: {st.message}\n{result}"
    on_gvisor = bool(st.sandbox) and st.sandbox.pool in RUNTIME_POOLS["gvisor"].values()
    reason, sub = case.reason, case.sub
    if on_gvisor and case.id in GVISOR_MAY_RUN_OUT_OF_MEMORY and st.reason == "MemoryLimit":
        # Under gVisor each forked child's copied pages and the sentry's own count against the
        # pod's memory: a fork bomb may meet the memory limit before the process limit (seen on
        # the test bed at 256 MiB and 16 processes). Either way a limit held it.
        reason, sub = "MemoryLimit", ("resourceLimitType", "memory")
    assert st.reason == reason, detail
    assert st.phase == ("Succeeded" if reason == "Succeeded" else "Failed")
    assert result["status"] == case.status, detail
    if sub:
        assert result.get(sub[0]) == sub[1], detail
    for path, expected in case.check.items():
        assert field_of(result, path) == expected, f"{path}: {detail}"
    # Evidence every run carries.
    assert st.sandbox and st.sandbox.pod, detail
    assert st.queued_ms is not None
    # A gVisor sandbox killed for its memory takes its runner with it: no report, so no wall
    # time; the kubelet's record (OOMKilled, exit 128) is the evidence there.
    gvisor_oom = on_gvisor and reason == "MemoryLimit"
    if reason not in ("SyntaxError",) and not gvisor_oom:
        assert result.get("wallMs", 0) > 0, detail


def test_each_execution_had_its_own_pod(outcomes: dict[str, CodeExecution]) -> None:
    pods = [o.status.sandbox.pod_uid for o in outcomes.values() if o.status.sandbox]
    assert len(pods) == len(set(pods)) == len(CASES)


def test_non_utf8_output_is_replaced_not_lost(outcomes: dict[str, CodeExecution]) -> None:
    result = outcomes["py-non-utf8"].status.result
    assert result is not None and "\ufffd" in result.stdout and "ok" in result.stdout


def test_output_flood_keeps_the_head(outcomes: dict[str, CodeExecution]) -> None:
    result = outcomes["py-output-flood"].status.result
    assert result is not None
    assert result.stdout.startswith("x" * 1000 + "\n")
    assert result.stdout_bytes >= 65536


def test_forged_report_is_plain_output(outcomes: dict[str, CodeExecution]) -> None:
    result = outcomes["py-forged-report"].status.result
    assert result is not None and "CXR1" in result.stdout and result.return_value == 1


def test_traceback_is_trimmed_to_user_frames(outcomes: dict[str, CodeExecution]) -> None:
    result = outcomes["py-exception"].status.result
    assert result is not None and result.error is not None and result.error.traceback
    assert "main.py" in result.error.traceback
    assert "worker.py" not in result.error.traceback
