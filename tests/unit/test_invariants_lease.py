"""Leadership (kube/lease.py) on the fake API server: never two actors, whatever the clocks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from codeexec import clock
from codeexec.kube.lease import LeaderElector, NotLeading
from tests.fakeapi import vtime
from tests.fakeapi.client import FakeKube
from tests.fakeapi.operator import Replica
from tests.fakeapi.server import Call, FakeApi
from tests.fakeapi.world import World


def _from(client: str, plural: str, verb: str | None = None):  # type: ignore[no-untyped-def]
    def match(c: Call) -> bool:
        return c.client == client and c.plural == plural and (verb is None or c.verb == verb)

    return match


def test_a_deposed_leader_never_sends() -> None:
    """The leader's renewals hang and its claims answer slowly; a standby takes over. Even a
    deposed leader that does not exit (its on_lost does nothing) never sends a request once
    the standby leads: every start by the first replica precedes the second's first term.

    Catches finding 1 (no renew deadline, no fence). Caught: with the fence checks in
    Broker._try_claim and deliver._Exchange.run both removed, op-a went on claiming and
    starting code after op-b led, and this test failed (starts by op-a after op-b's
    acquisition). The conditional claim alone stops the late claims this scenario makes, so
    the send fence is shown by removing both.
    """

    async def scenario() -> None:
        w = World(pool_size=4)
        a = Replica(w.api, "op-a", elect=True)
        b = Replica(w.api, "op-b", elect=True)
        a.exit_on_loss = False
        await a.start()
        standby = asyncio.get_running_loop().create_task(b.start())
        await vtime.until(lambda: w.warm_ready() == 4)
        first = [w.submit(i)["metadata"]["name"] for i in range(3)]
        await w.wait_finished(*first)
        # The leader is cut off from its Lease (its renewals hang), and its pod writes take
        # 20 s: claims sent while it leads land after it has lost the lease.
        w.api.fail(_from("op-a", "leases"), hang=True)
        w.api.fail(_from("op-a", "pods", "patch"), latency=20.0)
        names = []
        b_leads_at = None
        for i in range(40):
            names.append(w.submit(100 + i)["metadata"]["name"])
            await vtime.settle(1.0)
            if b_leads_at is None and b.elector is not None and b.elector.leading():
                b_leads_at = clock.time()
        await standby
        assert b_leads_at is not None
        await w.wait_finished(*names)
        late = [s for s in w.kubelet.starts if s.sender == "op-a" and s.at >= b_leads_at]
        assert not late, late
        assert a.deposed
        for name in first + names:
            ex = w.execution(name)
            assert ex is not None
            assert len(w.kubelet.started_for(ex["metadata"]["uid"])) <= 1, name
            assert ex["status"]["phase"] == "Succeeded", (name, ex["status"])

    vtime.run(scenario)


def test_a_standby_never_deposes_a_leader_whose_clock_is_behind() -> None:
    """The leader's wall clock is 20 s behind the standby's: its renewTime always looks stale.

    Catches finding 1's clock skew (expiry judged as renewTime + duration < the standby's
    now). Caught: on main before the fix the standby took the lease on its first try.
    """

    async def scenario() -> None:
        api = FakeApi()
        api.create("namespaces", "", {"metadata": {"name": "codeexec-system"}})

        async def behind(call: Call) -> None:
            if (
                call.client == "leader"
                and call.plural == "leases"
                and call.verb
                in (
                    "patch",
                    "create",
                )
            ):
                spec = (call.body or {}).get("spec") or {}
                if "renewTime" in spec:
                    behind = datetime.fromtimestamp(clock.time() - 20.0, UTC)
                    spec["renewTime"] = behind.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        api.faults.append(behind)
        leader = LeaderElector(
            FakeKube(api, "leader"), "codeexec-system", "l", "leader", on_lost=lambda: None
        )
        standby = LeaderElector(
            FakeKube(api, "standby"), "codeexec-system", "l", "standby", on_lost=lambda: None
        )
        await leader.acquire()
        keeping = asyncio.get_running_loop().create_task(leader.keep())
        trying = asyncio.get_running_loop().create_task(standby.acquire())
        await vtime.settle(120.0)
        assert leader.leading()
        assert not trying.done()
        try:
            standby.fence()
        except NotLeading:
            pass
        else:
            raise AssertionError("the standby thinks it leads")
        keeping.cancel()
        trying.cancel()

    vtime.run(scenario)


def test_a_leader_whose_renewal_hangs_stops_before_a_standby_may_lead() -> None:
    """The renewal call never returns: the leader's fence refuses at the renew deadline, and
    the standby leads only later (a lease duration after it last saw the record change).

    Catches a renewal awaited without a deadline (the old keep() waited on it forever and the
    replica went on acting: 28 s of two leaders). Caught: replacing keep()'s
    `asyncio.wait_for(self._try(), left)` with `self._try()` made this fail.
    """

    async def scenario() -> None:
        api = FakeApi()
        api.create("namespaces", "", {"metadata": {"name": "codeexec-system"}})
        lost: list[float] = []
        leader = LeaderElector(
            FakeKube(api, "leader"),
            "codeexec-system",
            "l",
            "leader",
            on_lost=lambda: lost.append(clock.monotonic()),
        )
        standby = LeaderElector(
            FakeKube(api, "standby"), "codeexec-system", "l", "standby", on_lost=lambda: None
        )
        await leader.acquire()
        loop = asyncio.get_running_loop()
        keeping = loop.create_task(leader.keep())
        trying = loop.create_task(standby.acquire())
        await vtime.settle(5.0)
        api.fail(lambda c: c.client == "leader", hang=True)
        overlap = []
        while not trying.done():
            if leader.leading() and standby.leading():
                overlap.append(clock.monotonic())
            await asyncio.sleep(0.1)
        assert not overlap
        assert lost, "the leader never noticed it lost the lease"
        assert standby.leading()
        keeping.cancel()

    vtime.run(scenario)
