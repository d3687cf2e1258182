"""Pools under gVisor run their code on gVisor's user-space kernel; runc pools on the host's."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeexec.client import Client

from .conftest import RUNTIMES

pytestmark = pytest.mark.cluster

# The node's kernel, as the host (this test, on the node) sees it.
HOST_VERSION = Path("/proc/version").read_text().strip()
PY_PROBE = "def main():\n    return open('/proc/version').read().strip()\n"
JS_PROBE = "module.exports = () => require('fs').readFileSync('/proc/version', 'utf8').trim();\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_gvisor_pool_runs_its_code_on_gvisors_kernel(
    cx: Client, runtime: str, runtime_pools: dict[str, str]
) -> None:
    """From inside the pod, Python and Node.js alike: gVisor's kernel names itself in
    /proc/version (`Linux version 4.19.0-gvisor ...`, not the host's); a runc pod reads the
    host's. (Its kernel log would say "Starting gVisor..." too, but syslog(2) needs
    CAP_SYSLOG there as on Linux, which sandbox pods lack.)
    caught: the gvisor case run against the runc pools failed."""
    seen = {}
    for language, code in (("python", PY_PROBE), ("nodejs", JS_PROBE)):
        done = await cx.run(
            code,
            language=language,
            pool=runtime_pools[language],
            timeout_seconds=20,
            wait_timeout=180,
        )
        assert done.status.reason == "Succeeded", done.status
        assert done.status.result is not None
        seen[language] = done.status.result.return_value
    for language, version in seen.items():
        if runtime == "gvisor":
            assert "gvisor" in version and version != HOST_VERSION, (language, version)
        else:
            assert version == HOST_VERSION, (language, version)
