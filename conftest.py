# The cluster fixtures (cluster, namespace, kubectl) for every test suite of the repo.
from __future__ import annotations

import os

import pytest

pytest_plugins = ["e2e.fixtures"]

# A skipped test proves nothing: CI (`make test`) fails on any skip. Locally, a run may allow
# them explicitly (CODEEXEC_ALLOW_SKIPS=1), e.g. the runner tests on a machine without Node.js.
ALLOW_SKIPS = os.environ.get("CODEEXEC_ALLOW_SKIPS") == "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and not ALLOW_SKIPS and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(
            f"{len(skipped)} test(s) skipped: a skip fails the run "
            "(CODEEXEC_ALLOW_SKIPS=1 allows them)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
