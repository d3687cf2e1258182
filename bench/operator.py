"""Our own operator process: spawned, probed, killed, and its CPU and memory sampled."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.cluster import INSTANCE, INSTANCE_LABEL, KUBECONFIG, LOG_DIR, poll
from bench.metrics import Metrics
from bench.results import REPO, utcnow

log = logging.getLogger("bench")

METRICS_PORT = int(os.environ.get("BENCH_METRICS_PORT", "18090"))


# ---- our operator process ------------------------------------------------------------------


@dataclass
class ProcStats:
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    hwm_bytes: int = 0


def read_proc(pid: int) -> ProcStats | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at state (field 3).
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return ProcStats(cpu, values.get("VmRSS", 0), values.get("VmHWM", 0))


@dataclass
class Sampler:
    """Samples CPU time and RSS of the operator's processes (one per (re)start)."""

    interval: float = 0.1
    per_pid: dict[int, ProcStats] = field(default_factory=dict)
    series: list[tuple[float, int, float, int]] = field(default_factory=list)
    _pids: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def watch(self, pid: int) -> None:
        self._pids.append(pid)
        self.per_pid.setdefault(pid, ProcStats())
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="proc-sampler", daemon=True)
            self._thread.start()

    def sample(self, pid: int) -> None:
        st = read_proc(pid)
        if st is None:
            return
        known = self.per_pid[pid]
        known.cpu_seconds = max(known.cpu_seconds, st.cpu_seconds)
        known.rss_bytes = max(known.rss_bytes, st.rss_bytes)
        known.hwm_bytes = max(known.hwm_bytes, st.hwm_bytes)
        self.series.append((time.monotonic() - self._t0, pid, st.cpu_seconds, st.rss_bytes))
        if len(self.series) > 200_000:
            del self.series[: len(self.series) // 2]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in list(self._pids[-1:]):
                self.sample(pid)
            self._stop.wait(self.interval)

    def cpu_seconds(self) -> float:
        for pid in self._pids[-1:]:
            self.sample(pid)
        return sum(s.cpu_seconds for s in self.per_pid.values())

    def peak_rss(self) -> int:
        for pid in self._pids[-1:]:
            self.sample(pid)
        return max([max(s.rss_bytes, s.hwm_bytes) for s in self.per_pid.values()] or [0])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class Operator:
    """`python -m bench.opwrap operator` (the operator, with its API requests counted)."""

    def __init__(
        self,
        *,
        sandbox_namespace: str,
        namespaces: list[str],
        log_name: str,
        env: dict[str, str] | None = None,
        port: int = METRICS_PORT,
        cgroup: Path | None = None,
    ) -> None:
        self.sandbox_namespace = sandbox_namespace
        self.namespaces = namespaces
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{log_name}.log"
        self.extra_env = env or {}
        self._port = port
        # A cgroup v2 directory the process starts in (make chaos cuts its traffic by it).
        self.cgroup = cgroup
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler = Sampler()
        self.starts = 0
        self.kills = 0
        self._http: aiohttp.ClientSession | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> float:
        """Starts the process; returns time.monotonic() of the start."""
        if self.alive():
            raise RuntimeError("operator already running")
        env = {
            **os.environ,
            "KUBECONFIG": str(KUBECONFIG),
            "CODEEXEC_SANDBOX_NAMESPACE": self.sandbox_namespace,
            "CODEEXEC_NAMESPACES": ",".join(self.namespaces),
            "CODEEXEC_POOL_SELECTOR": f"{INSTANCE_LABEL}={INSTANCE}",
            "CODEEXEC_METRICS_PORT": str(self.port),
            "CODEEXEC_LEADER_ELECTION": "false",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        env.pop("CODEEXEC_FAILPOINTS", None)
        with self.log_path.open("ab") as fh:
            fh.write(f"\n=== {utcnow()} bench operator start #{self.starts + 1} ===\n".encode())
        log_fh = self.log_path.open("ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self._in_cgroup(
                [sys.executable, "-m", "bench.opwrap", "operator"]
                + (["-v"] if os.environ.get("BENCH_OPERATOR_VERBOSE") else [])
            ),
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,  # a Ctrl-C of make is ours to handle, not the child's
        )
        log_fh.close()
        self.starts += 1
        self.sampler.watch(self.proc.pid)
        return t0

    def _in_cgroup(self, argv: list[str]) -> list[str]:
        """argv, started inside self.cgroup (the shell joins it, then execs: same PID)."""
        if self.cgroup is None:
            return argv
        join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["sh", "-c", join, str(self.cgroup), *argv]

    def pause(self) -> None:
        """SIGSTOP: the process is frozen as a whole (a GC pause, a throttled or stuck VM)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    async def healthy(self) -> bool:
        """/healthz: alive (a standby waiting for the lease is healthy, not ready)."""
        if not self.alive():
            return False
        try:
            session = await self.http()
            async with session.get(f"http://127.0.0.1:{self.port}/healthz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._http

    async def ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(
                f"operator exited ({self.proc and self.proc.returncode}); see {self.log_path}"
            )
        try:
            session = await self.http()
            async with session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def wait_ready(self, t0: float | None = None, timeout: float = 120) -> float:
        start = time.monotonic() if t0 is None else t0
        await poll(self.ready, timeout=timeout, interval=0.05, what="operator /readyz")
        return time.monotonic() - start

    async def start(self, timeout: float = 120) -> float:
        """Spawns and waits for /readyz; returns the seconds it took."""
        t0 = self.spawn()
        return await self.wait_ready(t0, timeout)

    async def ensure_ready(self, attempts: int = 5) -> None:
        """Running and ready: (re)spawned as needed; a start that does not get ready is killed
        and tried again."""
        for _ in range(attempts):
            if not self.alive():
                self.spawn()
            try:
                await self.wait_ready(timeout=90)
                return
            except (RuntimeError, TimeoutError) as err:
                log.error("operator did not become ready: %s\n%s", err, self.log_tail(20))
                self.kill()
        raise RuntimeError(f"operator does not start; see {self.log_path}")

    async def metrics(self) -> Metrics:
        session = await self.http()
        async with session.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
            return Metrics.parse(await resp.text())

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.sampler.sample(self.proc.pid)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.kills += 1

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.sampler.sample(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # a paused process must run to stop
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    async def close(self) -> None:
        self.stop()
        self.sampler.stop()
        if self._http is not None:
            await self._http.close()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_warnings(self, since_bytes: int = 0) -> list[str]:
        """WARNING/ERROR lines of the operator's log (after `since_bytes`)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(since_bytes)
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        return [
            line
            for line in text.splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        ]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0
