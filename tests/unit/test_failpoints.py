"""failpoints: how CODEEXEC_FAILPOINTS is read."""

from __future__ import annotations

from codeexec.failpoints import _parse


def test_bare_names_kill_and_values_pause() -> None:
    assert _parse("after-claim, before-status=2.5,,") == {
        "after-claim": None,
        "before-status": 2.5,
    }
    assert _parse("") == {}
