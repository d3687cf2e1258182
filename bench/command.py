"""Running one whole bench command: options, logging, deadline, start-up and teardown."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from bench.cluster import Abort, ensure_crds, images_present, wait_cluster
from bench.results import run_lock
from bench.workload import cleanup, wait_namespaces_gone
from codeexec.kube.client import (
    SANDBOX_POOLS,
    Kube,
)

log = logging.getLogger("bench")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


# ---- running a whole command ----------------------------------------------------------------


def run_main(coro: Awaitable[int], *, deadline_s: float) -> int:
    """asyncio.run with an overall deadline and SIGTERM/SIGINT turned into cancellation
    (so every `finally` cleans up)."""

    async def guarded() -> int:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        done, _ = await asyncio.wait({task}, timeout=deadline_s)
        if not done:
            log.error("run did not finish within %.0fs: stopping it", deadline_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # its finally blocks clean up
            return 3
        try:
            return task.result()
        except Abort as err:
            log.error("%s", err)
            return 4
        except asyncio.CancelledError:
            log.error("interrupted")
            return 130
        except TimeoutError as err:
            log.error("gave up: %s", err)
            return 3

    return asyncio.run(guarded())


async def on_cluster(args: Any, body: Callable[[Kube, Any], Awaitable[int]]) -> int:
    """Runs one benchmark against the reachable cluster and closes the connection after."""
    kube = await wait_cluster(timeout=args.cluster_timeout)
    try:
        return await body(kube, args)
    finally:
        await kube.close()


async def fresh_start(kube: Kube, namespaces: list[str], timeout: float = 120) -> bool:
    """CRDs present, images on the node, no leftovers of a killed run in `namespaces`."""
    await ensure_crds(kube)
    present = await images_present(kube)
    if not all(present.values()):
        log.error("sandbox images missing on the node: %s (run make images)", present)
        return False
    await cleanup(kube)
    await wait_namespaces_gone(kube, namespaces, timeout=timeout)
    return True


async def teardown(
    kube: Kube,
    tasks: list[asyncio.Task[None]],
    pools: Iterable[str],
    op: Any,
    namespaces: list[str],
) -> None:
    """Stops a run's helpers, its pools (while the operator can still see them), the operator,
    then removes the run's namespaces."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    with contextlib.suppress(Exception):
        for pool in pools:
            await kube.delete(SANDBOX_POOLS, pool)
        await asyncio.sleep(1)
    await op.close()
    with contextlib.suppress(Exception):
        await cleanup(kube, namespaces)


def bench_main(
    parse: Callable[[list[str] | None], Any],
    run: Callable[[Any], Awaitable[int]],
    argv: list[str] | None = None,
    *,
    deadline_s: float | None = None,
) -> int:
    args = parse(argv)
    setup_logging(args.verbose)
    deadline = (deadline_s or (1200 if args.smoke else 3600)) + args.cluster_timeout
    with run_lock():
        return run_main(run(args), deadline_s=deadline)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options every benchmark command takes."""
    p.add_argument("--cluster-timeout", type=float, default=900)
    p.add_argument(
        "--foreign-wait",
        type=float,
        default=600,
        help="seconds to wait for another operator serving every namespace to go away",
    )
    p.add_argument("-v", "--verbose", action="store_true")


def smoke_defaults(p: argparse.ArgumentParser, argv: list[str] | None, **defaults: Any) -> None:
    """With --smoke, smaller defaults; options given explicitly still win."""
    if "--smoke" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**defaults)
