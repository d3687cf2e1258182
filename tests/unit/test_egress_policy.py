"""A network-enabled pool's NetworkPolicy never opens the cluster (podspec.egress_policy), and
reaches the API server soon after its pool appears, a refused write included (egress)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from codeexec import clock, podspec
from codeexec.api.models import SandboxPoolSpec
from codeexec.egress import REFRESH_SECONDS, EgressPolicies
from tests.fakeapi import vtime
from tests.fakeapi.client import FakeKube
from tests.fakeapi.server import Call, FakeApi, status

NODE = "192.0.2.2"  # the test bed's node: outside every private range


def spec(**kw: object) -> SandboxPoolSpec:
    return SandboxPoolSpec.model_validate(
        {"language": "python", "image": "img:1", "allowNetwork": True, **kw}
    )


def policy(**kw: object) -> dict[str, Any]:
    blocked = podspec.blocked_ranges(["10.244.0.0/16", "10.96.0.0/16", NODE])
    return podspec.egress_policy("net", spec(**kw), "sbx", blocked)


def internet_rule(p: dict[str, Any]) -> dict[str, Any]:
    (rule,) = [r for r in p["spec"]["egress"] if r["to"][0].get("ipBlock", {}).get("except")]
    return rule


def test_no_policy_opens_all_egress() -> None:
    """caught: the old `egress: [{}]` (every destination, every port) failed this."""
    for kw in ({}, {"egress": {"dns": True}}, {"egress": {"allow": [{"cidr": "203.0.113.0/24"}]}}):
        for rule in policy(**kw)["spec"]["egress"]:
            assert rule.get("to"), rule


def test_internet_rule_excepts_cluster_private_link_local_and_nodes() -> None:
    """caught: dropping the node address from the except list made this fail."""
    excepted = [
        ipaddress.ip_network(n) for n in internet_rule(policy())["to"][0]["ipBlock"]["except"]
    ]
    for address in (
        NODE,  # kubelet, and the API server's endpoint behind 10.96.0.1
        "169.254.169.254",  # cloud metadata
        "10.96.0.1",  # the kubernetes Service
        "10.244.0.7",  # another pod
        "172.16.3.4",
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "100.100.100.200",  # Alibaba metadata
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
    ):
        ip = ipaddress.ip_address(address)
        assert any(ip in net for net in excepted), address
    for address in ("198.51.100.10", "8.8.8.8", "1.1.1.1"):
        ip = ipaddress.ip_address(address)
        assert not any(ip in net for net in excepted), address


def test_pool_selects_only_its_own_network_pods() -> None:
    selector = policy()["spec"]["podSelector"]["matchLabels"]
    assert selector == {
        podspec.MANAGED_BY: podspec.OPERATOR,
        podspec.POOL_LABEL: "net",
        podspec.EGRESS_LABEL: "allow",
    }
    assert policy()["spec"]["policyTypes"] == ["Egress"]


def test_allow_rules_open_exactly_their_cidr_and_ports() -> None:
    p = policy(
        egress={
            "internet": False,
            "allow": [
                {
                    "cidr": "198.51.100.7/24",
                    "ports": [{"port": 8080}, {"port": 9000, "endPort": 9010}],
                },
                {"cidr": "10.1.2.3/32"},
            ],
        }
    )
    assert p["spec"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
            "ports": [
                {"protocol": "TCP", "port": 8080},
                {"protocol": "TCP", "port": 9000, "endPort": 9010},
            ],
        },
        {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]},
    ]


def test_closed_pool_has_no_rules() -> None:
    assert policy(egress={"internet": False})["spec"]["egress"] == []


def test_dns_opens_port_53_to_the_cluster_dns_pods_only() -> None:
    (dns,) = [r for r in policy(egress={"dns": True})["spec"]["egress"] if "ports" in r]
    assert dns["to"] == [podspec.CLUSTER_DNS_PEER]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}


def test_ipv6_and_garbage_never_reach_the_ipv4_except_list() -> None:
    blocked = podspec.blocked_ranges(["fd00::/8", "not-an-address", " 203.0.113.9 "])
    assert "203.0.113.9/32" in blocked
    assert all(":" not in b for b in blocked)


def test_deny_all_is_the_only_namespace_wide_policy() -> None:
    """caught: the old allow-all policy for every network pod failed this."""
    policies = podspec.network_policies("sbx")
    assert [p["metadata"]["name"] for p in policies] == ["codeexec-sandbox-deny-all"]
    assert "egress" not in policies[0]["spec"] and "ingress" not in policies[0]["spec"]


def test_who_may_use_a_pool_and_where_it_connects_do_not_replace_pods() -> None:
    base = podspec.template_hash(spec())
    assert podspec.template_hash(spec(tenants={"namespaces": ["a"]})) == base
    assert podspec.template_hash(spec(egress={"internet": False})) == base


def test_a_refused_policy_write_after_a_pool_change_is_tried_again_within_seconds() -> None:
    """A network pool appears and its policy's write is refused (a 500 from a busy API
    server): the policy is there seconds later, not at the minute's refresh.

    Caught: with pools_changed only clearing what was applied (no wake), the policy came at
    the loop's next refresh, 60 s on."""

    async def scenario() -> None:
        api = FakeApi()
        api.create("namespaces", "", {"metadata": {"name": "sbx"}})
        api.create("nodes", "", {"metadata": {"name": "n"}, "status": {"addresses": []}})
        egress = EgressPolicies(FakeKube(api, "op"), "sbx")
        pools: dict[str, SandboxPoolSpec] = {}
        asyncio.get_running_loop().create_task(egress.run(lambda: pools))
        await vtime.settle(1)

        def write(call: Call) -> bool:
            return call.plural == "networkpolicies" and call.verb == "create"

        api.fail(write, status(500, "InternalError", "etcd is busy"), times=1)
        pools["net"] = spec()
        t0 = clock.monotonic()
        await egress.pools_changed(pools)
        name = podspec.EGRESS_POLICY_PREFIX + "net"
        await vtime.until(lambda: api.read("networkpolicies", "sbx", name) is not None)
        assert clock.monotonic() - t0 < REFRESH_SECONDS / 4

    vtime.run(scenario)
