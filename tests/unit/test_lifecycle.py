"""lifecycle's pure helpers: what the road reads from a resource before any I/O."""

from __future__ import annotations

from typing import Any

import pytest

from codeexec.execution import Invalid, creation_time, parse


def body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "ex",
            "namespace": "ns",
            "uid": "u1",
            "generation": 1,
            "creationTimestamp": "2026-11-26T10:00:00Z",
        },
        "spec": {"language": "python", **spec},
    }


T0 = 1795687200.0  # 2026-11-26T10:00:00Z


def test_creation_time_is_sharpened_by_a_watch_event_within_the_same_second() -> None:
    assert creation_time(body(code="x"), T0 + 0.42) == T0 + 0.42
    # A later sighting (a restart) cannot tell when within that second it was created.
    assert creation_time(body(code="x"), T0 + 7.0) == T0
    assert creation_time(body(code="x")) == T0


def test_parse_decodes_code_b64_and_refuses_what_is_not_utf8() -> None:
    ex = parse(body(codeB64="ZGVmIG1haW4oKTogcmV0dXJuIDE="))
    assert ex.code == "def main(): return 1"
    with pytest.raises(Invalid, match="not UTF-8"):
        parse(body(codeB64="//79"))
