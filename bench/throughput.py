"""`make bench`, throughput: the operator's completions per second against raw pod churn at the
same concurrency, and what each costs the whole machine in CPU-seconds per execution."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bench import report
from bench.breakdown import operator_breakdown
from bench.metrics import counter_delta, histogram_delta
from bench.results import MachineLoad, summarize
from bench.workload import create_pool, wait_pools_full
from codeexec.api.models import Language

if TYPE_CHECKING:
    from bench.run import Bench, Sample

log = logging.getLogger("bench")

LANGUAGE: Language = "python"


async def _saturate(
    one: Callable[[], Awaitable[Sample]], width: int, duration: float
) -> tuple[list[tuple[float, Sample]], dict[str, Any]]:
    """`width` loops of `one` for `duration`: (seconds since the start, sample) of each, and
    the whole machine's load over the loops (the last ones in flight included)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    done: list[tuple[float, Sample]] = []

    async def worker() -> None:
        while loop.time() < start + duration:
            s = await one()
            done.append((loop.time() - start, s))

    load = MachineLoad()
    await asyncio.gather(*(worker() for _ in range(width)))
    return done, load.stop()


def window_rates(done: list[tuple[float, Sample]], duration: float) -> dict[str, Any]:
    ok = [t for t, s in done if s.ok]
    inside = [t for t in ok if t <= duration]
    second_half = [t for t in inside if t > duration / 2]
    return {
        "duration_seconds": duration,
        "completed_in_window": len(inside),
        "per_second": round(len(inside) / duration, 3),
        "per_second_second_half": round(len(second_half) / (duration / 2), 3),
        "failed": sum(1 for _, s in done if not s.ok),
    }


def _outcome(
    done: list[tuple[float, Sample]], load: dict[str, Any], duration: float
) -> dict[str, Any]:
    out = window_rates(done, duration)
    ok = sum(1 for _, s in done if s.ok)
    # Whole machine: the API server, kubelet, containerd, the pods and (ours) the operator;
    # the bench's own client runs on the same CPUs on both sides.
    out["machine"] = load
    out["machine_cpu_seconds_per_execution"] = (
        round(load["busy_cpu_seconds"] / ok, 3) if ok else None
    )
    out["latency_ms"] = summarize([s.total_ms for _, s in done if s.ok])
    out["failures"] = [s.detail for _, s in done if not s.ok][:10]
    return out


async def operator_side(
    bench: Bench,
    pool: str,
    size: int,
    clients: int,
    duration: float,
    preload: list[str] | None = None,
) -> dict[str, Any]:
    """C clients in a loop for `duration`; completions inside the window count.

    `preload` None keeps the image's default (numpy and pandas imported while each pod
    warms); [] makes the pool's pods do the same work as the bare pods of the churn.
    """
    spec = {} if preload is None else {"preload": preload}
    await create_pool(bench.kube, pool, LANGUAGE, size, **spec)
    await wait_pools_full(bench.kube, {pool: size})
    m0, cpu0 = await bench.op.metrics(), bench.op.sampler.cpu_seconds()
    mark = bench.probe.mark()
    done, load = await _saturate(
        lambda: bench.warm_one(LANGUAGE, timeout=duration + 120), clients, duration
    )
    cpu1, m1 = bench.op.sampler.cpu_seconds(), await bench.op.metrics()
    # The operator counts an execution after its terminal write returns; the client may
    # see that status on its watch a moment before (a smoke run counted 7 of 8).
    for _ in range(50):
        counted = counter_delta(m0, m1, "codeexec_executions_total", ("reason",))
        if sum(counted.values()) >= len(done):
            break
        await asyncio.sleep(0.1)
        m1 = await bench.op.metrics()
    out = _outcome(done, load, duration)
    out["clients"], out["pool_size"] = clients, size
    out["api_probe"] = bench.probe.summary(mark)
    out["operator_cpu_seconds"] = round(cpu1 - cpu0, 3)
    out["executions_total"] = len(done)
    out["operator_breakdown"] = operator_breakdown(m0, m1, LANGUAGE)
    reasons = counter_delta(m0, m1, "codeexec_executions_total", ("reason",))
    out["reasons"] = {k: int(v) for k, v in reasons.items()}
    writes = histogram_delta(m0, m1, "codeexec_step_seconds", step="status_write")["count"]
    out["status_writes_per_execution"] = round(writes / len(done), 2) if done else None
    out["preload"] = "image default" if preload is None else preload
    return out


async def churn(bench: Bench, workers: int, duration: float) -> dict[str, Any]:
    """Bare pods: create, run to completion, delete; C workers for `duration`."""
    mark = bench.probe.mark()
    done, load = await _saturate(
        lambda: bench.cold_one(LANGUAGE, timeout=duration + 120), workers, duration
    )
    out = _outcome(done, load, duration)
    out["workers"] = workers
    out["api_probe"] = bench.probe.summary(mark)
    return out


async def compare(
    bench: Bench, pool: str, size: int, clients: int, duration: float
) -> dict[str, Any]:
    """The operator (default preload, then `preload: []`) and raw churn, one after the other."""
    log.info("throughput: %d clients for %.0fs", clients, duration)
    tp = await operator_side(bench, pool, size, clients, duration)
    log.info("throughput: %s/s", tp["per_second"])
    log.info("throughput, no preload: %d clients for %.0fs", clients, duration)
    lean = await operator_side(bench, pool, size, clients, duration, preload=[])
    log.info("throughput, no preload: %s/s", lean["per_second"])
    log.info("raw pod churn: %d workers for %.0fs", clients, duration)
    ch = await churn(bench, clients, duration)
    log.info("raw pod churn: %s/s", ch["per_second"])
    cpu = "machine_cpu_seconds_per_execution"
    return {
        "operator": tp,
        "operator_no_preload": lean,
        "raw_pod_churn": ch,
        "ratio": report.safe_ratio(tp["per_second"], ch["per_second"]),
        "ratio_second_half": report.safe_ratio(
            tp["per_second_second_half"], ch["per_second_second_half"]
        ),
        "ratio_no_preload": report.safe_ratio(lean["per_second"], ch["per_second"]),
        "ratio_no_preload_second_half": report.safe_ratio(
            lean["per_second_second_half"], ch["per_second_second_half"]
        ),
        # Above 1: an execution of ours costs the machine more CPU than a bare pod's.
        "machine_cpu_per_execution_ratio": report.safe_ratio(tp[cpu], ch[cpu]),
        "machine_cpu_per_execution_ratio_no_preload": report.safe_ratio(lean[cpu], ch[cpu]),
    }
