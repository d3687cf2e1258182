"""tenants: which namespaces a SandboxPool admits."""

from __future__ import annotations

from codeexec import tenants
from codeexec.api.models import PoolTenants


def t(**kw: object) -> PoolTenants:
    return PoolTenants.model_validate(kw)


def test_a_pool_without_tenants_admits_every_namespace() -> None:
    assert tenants.admits(None, "anyone", None)
    assert not tenants.needs_labels(None, "anyone")


def test_listed_namespaces_are_admitted_without_reading_labels() -> None:
    pool = t(namespaces=["team-a"], namespaceSelector={"matchLabels": {"x": "y"}})
    assert not tenants.needs_labels(pool, "team-a")
    assert tenants.admits(pool, "team-a", None)


def test_a_namespace_neither_listed_nor_selected_is_refused() -> None:
    """caught: returning True for a selector mismatch made this fail."""
    pool = t(namespaces=["team-a"], namespaceSelector={"matchLabels": {"net": "yes"}})
    assert tenants.needs_labels(pool, "team-b")
    assert not tenants.admits(pool, "team-b", {"net": "no"})
    assert not tenants.admits(pool, "team-b", {})
    assert not tenants.admits(pool, "team-b", None)  # labels not read: closed
    assert tenants.admits(pool, "team-b", {"net": "yes"})
    assert not tenants.admits(t(namespaces=["team-a"]), "team-b", {"net": "yes"})


def test_empty_selector_selects_every_namespace() -> None:
    assert tenants.admits(t(namespaceSelector={}), "x", {})


def test_match_expressions_follow_kubernetes() -> None:
    def sel(op: str, *values: str) -> PoolTenants:
        return t(
            namespaceSelector={
                "matchExpressions": [{"key": "k", "operator": op, "values": list(values)}]
            }
        )

    assert tenants.admits(sel("In", "a", "b"), "n", {"k": "b"})
    assert not tenants.admits(sel("In", "a"), "n", {"k": "b"})
    assert not tenants.admits(sel("In", "a"), "n", {})
    assert tenants.admits(sel("NotIn", "a"), "n", {"k": "b"})
    assert tenants.admits(sel("NotIn", "a"), "n", {})
    assert not tenants.admits(sel("NotIn", "a"), "n", {"k": "a"})
    assert tenants.admits(sel("Exists"), "n", {"k": ""})
    assert not tenants.admits(sel("Exists"), "n", {})
    assert tenants.admits(sel("DoesNotExist"), "n", {})
    assert not tenants.admits(sel("DoesNotExist"), "n", {"k": "v"})
