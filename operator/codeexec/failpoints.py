"""Named crash points for resilience tests: `CODEEXEC_FAILPOINTS=after-claim,...`.

A hit failpoint SIGKILLs this process on the spot, as a node failure or an OOM kill would; the
tests then restart the operator and check that every execution still ends exactly once. Unset
(the default), `hit` is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

AFTER_CLAIM = "after-claim"  # pod claimed, claim not yet recorded in the status
AFTER_RECORD = "after-record"  # claim recorded, nothing sent yet
AFTER_DELIVERY = "after-delivery"  # request sent, the code is running
BEFORE_STATUS = "before-status"  # report in hand, terminal status not yet written

_ARMED = frozenset(p for p in os.environ.get("CODEEXEC_FAILPOINTS", "").split(",") if p)


def hit(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
