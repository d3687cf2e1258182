"""The chart README's values table, generated from values.yaml's `# --` comments.

A comment block that starts with `# --` right above a key documents that key (continued by the
`#` lines after it), as helm-docs reads them. `make docs` rewrites the table between the
README's markers; tests/unit/test_chart_docs.py fails when the README and values.yaml drift.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

BEGIN = "<!-- values:begin (generated from values.yaml by `make docs`; do not edit) -->"
END = "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.\-]+):(?:\s|$)")


def documented(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key with a `# --` comment, in file order."""
    rows: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    doc: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            doc = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if doc is not None:
                doc.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not stripped or stripped.startswith("-") or match is None:
            doc = None if not stripped else doc
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if doc is not None:
            rows.append((".".join(k for _, k in stack), " ".join(d for d in doc if d)))
            doc = None
    return rows


def _lookup(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(default: str) -> str:
    return default if default.startswith("(") else f"`{_cell(default)}`"


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    rows = documented(values_text)
    keys = [key for key, _ in rows]
    for key, description in rows:
        value = _lookup(values, key)
        default = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if any(k.startswith(key + ".") for k in keys):
            default = "(see the keys below)"
        lines.append(f"| `{key}` | {_type(value)} | {_code(default)} | {_cell(description)} |")
    return "\n".join(lines)


def with_table(readme: str, values_text: str) -> str:
    """The README with its values table replaced (markers kept)."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"the README has no values table markers ({BEGIN} ... {END})")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(values_text)}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--values", type=Path, required=True)
    parser.add_argument("--readme", type=Path, required=True)
    args = parser.parse_args()
    readme = args.readme.read_text()
    args.readme.write_text(with_table(readme, args.values.read_text()))
    print(f"wrote the values table of {args.readme}")


if __name__ == "__main__":
    main()
