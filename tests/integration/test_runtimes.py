"""Pools under gVisor run their code on gVisor's user-space kernel; runc pools on the host's."""

from __future__ import annotations

from typing import Any

import pytest

from codeexec.client import Client

from .conftest import RUNTIMES

pytestmark = pytest.mark.cluster

# The kernel as the code sees it: its version string and its log (syslog(2), what dmesg reads).
PROBE = """
import ctypes
def main():
    with open('/proc/version') as f:
        version = f.read()
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(1 << 16)
    n = libc.klogctl(3, buf, len(buf))  # SYSLOG_ACTION_READ_ALL
    log = buf.raw[:n].decode(errors='replace') if n >= 0 else f'errno {ctypes.get_errno()}'
    return {'version': version, 'dmesg': log}
"""
NODE_PROBE = """
module.exports = () => ({ version: require('fs').readFileSync('/proc/version', 'utf8') });
"""


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_gvisor_pool_runs_its_code_on_gvisors_kernel(
    cx: Client, runtime: str, runtime_pools: dict[str, str]
) -> None:
    """From inside the pod: gVisor's kernel log opens with "Starting gVisor..." and its
    /proc/version is not the host's; a runc pod reads neither (its kernel log is closed to it).
    caught: a gvisor pool without runtimeClassName (runc) failed the gVisor case."""
    with open("/proc/version") as f:
        host_version = f.read()
    done = await cx.run(PROBE, pool=runtime_pools["python"], timeout_seconds=20, wait_timeout=180)
    assert done.status.reason == "Succeeded", done.status
    seen: dict[str, Any] = done.status.result.return_value  # type: ignore[union-attr]
    js = await cx.run(
        NODE_PROBE, language="nodejs", pool=runtime_pools["nodejs"], wait_timeout=180
    )
    assert js.status.reason == "Succeeded", js.status
    js_version = js.status.result.return_value["version"]  # type: ignore[union-attr]
    if runtime == "gvisor":
        assert "Starting gVisor" in seen["dmesg"], seen
        assert seen["version"] != host_version and js_version != host_version, seen
    else:
        assert "gVisor" not in seen["dmesg"], seen
        assert seen["version"] == host_version == js_version, seen
