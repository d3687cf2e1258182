#!/usr/bin/env python3
"""A client-go exec credential plugin for tests: prints the next credential of a list.

    exec_plugin.py STATE_DIR

STATE_DIR/credentials holds one credential per line, `TOKEN [EXPIRY]` (EXPIRY in RFC 3339;
none: no expirationTimestamp). Run N prints line N (the last line once the list runs out), as
an ExecCredential on stdout, and appends the KUBERNETES_EXEC_INFO it was given to
STATE_DIR/calls, one line per run, so a test can count the runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    state = Path(sys.argv[1])
    lines = [ln.split() for ln in (state / "credentials").read_text().splitlines() if ln.strip()]
    calls = state / "calls"
    done = len(calls.read_text().splitlines()) if calls.exists() else 0
    with calls.open("a") as log:
        log.write(os.environ.get("KUBERNETES_EXEC_INFO", "{}").replace("\n", " ") + "\n")
    token, *expiry = lines[min(done, len(lines) - 1)]
    status: dict[str, str] = {"token": token}
    if expiry:
        status["expirationTimestamp"] = expiry[0]
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": status,
    }
    print(json.dumps(credential))
    return 0


if __name__ == "__main__":
    sys.exit(main())
