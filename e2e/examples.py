"""The CodeExecutions in examples/, the outcome each one is there to show, and the results
table of `make demo`.

    python -m e2e.examples -n codeexec-demo     # table; exits 1 if an example is off

Used by e2e/demo.sh and e2e/test_chart.py, so the demo and the test agree on what "every
example in its expected outcome" means.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml

from codeexec.api.models import CodeExecution
from codeexec.cli import shorten, summary_row, table
from codeexec.client import Client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# name -> the reason the example demonstrates. An example missing here is shown as "new" and
# only has to finish.
EXPECTED_REASON = {
    "python-double": "Succeeded",
    "python-pandas": "Succeeded",
    "python-exception": "UserException",
    "python-timeout": "WallTimeout",
    "nodejs-async": "Succeeded",
    "nodejs-b64": "Succeeded",
}
EXPECTED_RETURN: dict[str, Any] = {
    "python-double": 10,
    "python-pandas": {"mean_score": 4.0},
    "nodejs-async": {"greeting": "hello, world"},
    "nodejs-b64": 5,
}


def manifests() -> list[dict[str, Any]]:
    """Every CodeExecution in examples/*.yaml (not examples/pools/: the chart makes pools)."""
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "CodeExecution":
                found.append(doc)
    return found


def verdict(execution: CodeExecution) -> str:
    """'ok', or what is off about this example's outcome."""
    name = execution.name
    if not execution.finished:
        return f"not finished ({execution.status.phase or 'Pending'})"
    if name not in EXPECTED_REASON:
        return "ok (new example)"
    if execution.status.reason != EXPECTED_REASON[name]:
        return f"expected {EXPECTED_REASON[name]}"
    result = execution.status.result
    if name in EXPECTED_RETURN and (result is None or result.return_value != EXPECTED_RETURN[name]):
        return f"expected return value {EXPECTED_RETURN[name]!r}"
    return "ok"


def render(executions: list[CodeExecution]) -> tuple[str, bool]:
    rows = [["NAME", "LANGUAGE", "OUTCOME", "RETURN VALUE / ERROR", "DURATION", "CHECK"]]
    all_ok = True
    for execution in sorted(executions, key=lambda e: e.name):
        name, language, _phase, reason, value, duration = summary_row(execution)
        check = verdict(execution)
        all_ok = all_ok and check.startswith("ok")
        rows.append([name, language, reason, shorten(value, 40), duration, check])
    return table(rows), all_ok


async def fetch(namespace: str) -> list[CodeExecution]:
    names = {m["metadata"]["name"] for m in manifests()}
    async with Client(namespace=namespace) as cx:
        return [e for e in await cx.list() if e.name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.examples", description=__doc__)
    parser.add_argument("-n", "--namespace", required=True)
    args = parser.parse_args(argv)
    executions = asyncio.run(fetch(args.namespace))
    if not executions:
        print(f"no examples found in namespace {args.namespace}", file=sys.stderr)
        return 1
    text, all_ok = render(executions)
    print(text)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
