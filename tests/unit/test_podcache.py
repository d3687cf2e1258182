"""podcache: what a pod's manifest says to the pool, the broker and a resumed road."""

from __future__ import annotations

from typing import Any

from codeexec import podspec
from codeexec.podcache import PodCache, view


def pod(name: str, rv: str = "1", **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "labels": {podspec.POOL_LABEL: "python", podspec.STATE_LABEL: podspec.WARM},
            **meta,
        },
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": podspec.CONTAINER, "state": {"running": {}}}],
        },
    }


def claimed(name: str, uid: str, at: str, rv: str = "2", attempt: int = 1) -> dict[str, Any]:
    body = pod(name, rv)
    body["metadata"]["labels"].update(
        {podspec.STATE_LABEL: podspec.CLAIMED, podspec.CLAIMED_BY_LABEL: uid}
    )
    body["metadata"]["annotations"] = podspec.claim_patch(
        uid, "ns/ex", rv, 30, request_id=f"req-{name}", claimed_at=at, attempt=attempt
    )["metadata"]["annotations"]
    return body


def test_claim_record_is_read_back_from_the_pod() -> None:
    v = view(claimed("p1", "ex-uid", "2026-11-26T10:00:00Z", attempt=2))
    assert v.claimed_by == "ex-uid"
    assert v.request_id == "req-p1"
    assert v.execution == "ns/ex"
    assert v.attempt == 2
    assert v.claimed_at is not None and v.claimed_at.isoformat().startswith("2026-11-26T10:00")
    assert not v.warm_ready


def test_warm_pod_is_running_and_ready() -> None:
    v = view(pod("p1"))
    assert v.running and v.ready and v.warm_ready and v.live
    assert v.request_id is None and v.attempt == 1


def test_claimed_for_lists_newest_claim_first() -> None:
    cache = PodCache(kube=None, namespace="sbx")  # type: ignore[arg-type]
    cache.apply("ADDED", claimed("old", "ex-uid", "2026-11-26T10:00:00Z"))
    cache.apply("ADDED", claimed("new", "ex-uid", "2026-11-26T10:00:05Z"))
    cache.apply("ADDED", claimed("other", "another-uid", "2026-11-26T10:00:09Z"))
    cache.apply("ADDED", pod("warm"))
    assert [p.name for p in cache.claimed_for("ex-uid")] == ["new", "old"]


def test_a_late_event_never_rolls_a_claimed_pod_back_to_warm() -> None:
    cache = PodCache(kube=None, namespace="sbx")  # type: ignore[arg-type]
    cache.apply("MODIFIED", claimed("p1", "ex-uid", "2026-11-26T10:00:00Z", rv="5"))
    cache.apply("MODIFIED", pod("p1", rv="4"))
    assert cache.pods["p1"].claimed_by == "ex-uid"


def test_claimed_for_puts_the_latest_attempt_first_even_within_one_second() -> None:
    cache = PodCache(kube=None, namespace="sbx")  # type: ignore[arg-type]
    cache.apply("ADDED", claimed("first", "ex-uid", "2026-11-26T10:00:00Z", attempt=1))
    cache.apply("ADDED", claimed("second", "ex-uid", "2026-11-26T10:00:00Z", attempt=2))
    assert [p.name for p in cache.claimed_for("ex-uid")] == ["second", "first"]


def test_a_failing_listener_neither_stops_the_cache_nor_the_other_listeners() -> None:
    """Each change reaches every listener once, in order, even after one of them raised.

    Caught: with the listeners called without the guard, the first one's error stopped the
    change before the claim broker's hand-out ran."""
    cache = PodCache(None, "sandbox")  # type: ignore[arg-type]  # no API call here
    heard: list[object] = []

    def broken(_touched: object) -> None:
        heard.append("broken")
        raise RuntimeError("a bug in another room")

    cache.listen(broken)
    cache.listen(lambda touched: heard.append(touched))
    cache.notify(frozenset({"py"}))
    cache.notify()
    assert heard == ["broken", frozenset({"py"}), "broken", None]
