"""Issue 2, point 1 (the rest): `make cluster-down` leaves nothing of ours running.

Marked ``cluster_down``: the fixtures plugin runs it after every other test of the
session. It brings the cluster up again at the end, so the next run (and the colleagues
sharing this machine) find it running.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from e2e.fixtures import CLUSTER_SCRIPTS, Cluster, the_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.cluster_down]

KIND = os.environ.get("KIND") == "1"


def lib_value(name: str) -> str:
    """A variable as e2e/cluster/lib.sh defines it."""
    return subprocess.run(
        ["bash", "-c", f'source "$1" && printf %s "${name}"', "_", str(CLUSTER_SCRIPTS / "lib.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def our_processes(cluster_dir: Path) -> list[str]:
    """Processes whose command line names the cluster directory (all our daemons, shims
    and runc do), except this test's own process tree."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(cluster_dir) in cmdline and "pytest" not in cmdline:
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPTS / script)],
        env={**os.environ, "CLUSTER": str(the_cluster().dir)},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )


def test_cluster_down_leaves_nothing_then_up_again(cluster: Cluster) -> None:
    ports = {
        int(lib_value(v))
        for v in (
            "ETCD_CLIENT_PORT",
            "ETCD_PEER_PORT",
            "APISERVER_PORT",
            "KCM_PORT",
            "SCHEDULER_PORT",
            "KUBELET_PORT",
            "KUBELET_HEALTHZ_PORT",
            "KUBE_PROXY_HEALTHZ_PORT",
            "KUBE_PROXY_METRICS_PORT",
            "KUBE_ROUTER_HEALTH_PORT",
        )
    }
    pids = [p.read_text().strip() for p in (cluster.dir / "run").glob("*.pid")]
    assert KIND or len(pids) == 8, pids

    down = run("down.sh")
    assert down.returncode == 0, down.stdout + down.stderr
    try:
        if not KIND:
            assert not cluster.dir.exists()
            assert our_processes(cluster.dir) == []
            for pid in pids:
                assert not Path(f"/proc/{pid}").exists() or cluster.dir.name not in (
                    Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                ), f"pid {pid} survived"
            assert not (ports & listening_ports()), ports & listening_ports()
            bridge = lib_value("CNI_BRIDGE")
            assert not Path(f"/sys/class/net/{bridge}").exists()
            chains = subprocess.run(
                ["iptables-save"], capture_output=True, text=True, check=True
            ).stdout
            assert ":KUBE-" not in chains and ":CODEEXEC-" not in chains
        # Down twice is fine.
        again = run("down.sh")
        assert again.returncode == 0, again.stderr
    finally:
        # Leave the cluster running for the next run and for colleagues.
        up = run("up.sh")
        assert up.returncode == 0, up.stdout + up.stderr
    assert the_cluster().healthy()
