"""Generate the API reference (docs/api.md) from the CRDs, so the two cannot drift.

    python -m codeexec.apidocs                      # crds/*.yaml -> docs/api.md
    python -m codeexec.apidocs --check              # exit 1 if docs/api.md is stale

Every field of every served version's openAPIV3Schema becomes a row: its path, type,
default, constraints (required, enum, bounds, lengths, pattern, list semantics) and
description; the CEL rules (`x-kubernetes-validations`) are listed with their messages.
The output is deterministic: same CRDs, same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HEADER = (
    "<!-- Generated from crds/*.yaml by `make docs` (python -m codeexec.apidocs). "
    "Do not edit by hand: tests/unit/test_api_docs.py fails when this file is stale. -->"
)

Schema = dict[str, Any]

# Metadata and type fields every object has; documented by Kubernetes itself.
_SKIPPED_TOP = {"apiVersion", "kind", "metadata"}


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    default: str
    constraints: str
    description: str


@dataclass(frozen=True)
class Rule:
    path: str
    rule: str
    message: str


def type_of(schema: Schema) -> str:
    """A short, Go-like rendering of a schema's type."""
    kind = schema.get("type")
    if kind == "array":
        return f"[]{type_of(schema.get('items') or {})}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{type_of(schema['additionalProperties'])}"
    if kind is None:
        return "any JSON" if schema.get("x-kubernetes-preserve-unknown-fields") else "any"
    if kind == "object" and schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def _literal(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _code(text: str) -> str:
    # A backtick inside inline code would end it early: use a double-backtick span then.
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def constraints_of(schema: Schema, required: bool) -> str:
    parts: list[str] = []
    if required:
        parts.append("**required**")
    if "enum" in schema:
        parts.append("one of " + ", ".join(_literal(v) for v in schema["enum"]))
    bounds = [
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ]
    for key, sign in bounds:
        if key in schema and not isinstance(schema[key], bool):
            parts.append(f"{sign} {schema[key]}")
    for key, label in (("minLength", "length ≥"), ("maxLength", "length ≤")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    for key, label in (("minItems", "items ≥"), ("maxItems", "items ≤")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern {_code(schema['pattern'])}")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(schema.get("x-kubernetes-list-map-keys") or [])
        parts.append(f"list keyed by {keys}")
    elif schema.get("x-kubernetes-list-type"):
        parts.append(f"list-type {schema['x-kubernetes-list-type']}")
    if schema.get("x-kubernetes-validations"):
        parts.append("CEL rules below")
    return "; ".join(parts)


def _cell(text: str) -> str:
    """Table cells are one line; a pipe would end the cell."""
    return " ".join(text.split()).replace("|", "\\|")


def walk(schema: Schema, path: str, required: bool = False) -> Iterator[Row | Rule]:
    """Rows for `schema` at `path` and everything below it, parents first."""
    default = _literal(schema["default"]) if "default" in schema else ""
    yield Row(
        path=path,
        type=type_of(schema),
        default=default,
        constraints=constraints_of(schema, required),
        description=schema.get("description", ""),
    )
    for validation in schema.get("x-kubernetes-validations") or []:
        yield Rule(path, validation["rule"], validation.get("message", ""))
    yield from _children(schema, path)


def _children(schema: Schema, path: str) -> Iterator[Row | Rule]:
    needed = set(schema.get("required") or [])
    for name in schema.get("properties") or {}:
        yield from walk(schema["properties"][name], f"{path}.{name}", name in needed)
    items = schema.get("items")
    if schema.get("type") == "array" and isinstance(items, dict):
        for validation in items.get("x-kubernetes-validations") or []:
            yield Rule(f"{path}[]", validation["rule"], validation.get("message", ""))
        yield from _children(items, f"{path}[]")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("properties"):
        yield from _children(extra, f"{path}.<key>")


def _anchor(text: str) -> str:
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def render_crd(crd: Schema) -> list[str]:
    spec = crd["spec"]
    names = spec["names"]
    kind = names["kind"]
    lines = [f"## {kind}", ""]
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        api_version = f"{spec['group']}/{version['name']}"
        schema = version["schema"]["openAPIV3Schema"]
        short = ", ".join(f"`{s}`" for s in names.get("shortNames") or [])
        has_status = "status" in (version.get("subresources") or {})
        lines += [
            schema.get("description", "").strip(),
            "",
            f"- API version: `{api_version}`",
            f"- Scope: {spec['scope']}",
            f"- Plural: `{names['plural']}`" + (f"; short names: {short}" if short else ""),
            f"- Status subresource: {'yes' if has_status else 'no'}",
            "",
        ]
        columns = version.get("additionalPrinterColumns") or []
        if columns:
            lines += [
                f"`kubectl get {names['plural']}` shows: "
                + ", ".join(f"{c['name']} (`{c['jsonPath']}`)" for c in columns)
                + ".",
                "",
            ]
        rows: list[Row] = []
        rules: list[Rule] = []
        needed = set(schema.get("required") or [])
        for name, sub in (schema.get("properties") or {}).items():
            if name in _SKIPPED_TOP:
                continue
            for item in walk(sub, name, name in needed):
                if isinstance(item, Row):
                    rows.append(item)
                else:
                    rules.append(item)
        for section in ("spec", "status"):
            section_rows = [r for r in rows if r.path == section or r.path.startswith(section)]
            if not section_rows:
                continue
            lines += [
                f"### {kind} `.{section}`",
                "",
                "| Field | Type | Default | Constraints | Description |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| `{r.path}` | {_cell(r.type)} | {_cell(r.default)} | "
                f"{_cell(r.constraints)} | {_cell(r.description)} |"
                for r in section_rows
            ]
            lines.append("")
        if rules:
            lines += [
                f"### {kind} validation rules (CEL)",
                "",
                "Checked by the API server at admission; a violation rejects the request with "
                "the message.",
                "",
                "| Field | Rule | Message |",
                "|---|---|---|",
            ]
            lines += [
                f"| `{r.path}` | {_cell(_code(r.rule))} | {_cell(r.message)} |" for r in rules
            ]
            lines.append("")
    return lines


def _order(crd: Schema) -> tuple[bool, str]:
    return (crd["spec"]["scope"] != "Namespaced", crd["spec"]["names"]["kind"])


def load_crds(paths: Sequence[Path]) -> list[Schema]:
    crds: list[Schema] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    # Namespaced resources (what users create) before cluster-scoped ones (the platform's).
    return sorted(
        crds, key=lambda c: (c["spec"]["scope"] != "Namespaced", c["spec"]["names"]["kind"])
    )


def render(crds: Sequence[Schema]) -> str:
    kinds = [c["spec"]["names"]["kind"] for c in crds]
    lines = [
        HEADER,
        "",
        "# API reference",
        "",
        "The custom resources of codeexec-operator, generated from their CRD schemas. Field "
        "paths are relative to the resource; `[]` marks list items and `<key>` map values. "
        "The API server enforces every type, default and constraint listed here.",
        "",
        *(f"- [{k}](#{_anchor(k)})" for k in kinds),
        "",
    ]
    for crd in crds:
        lines += render_crd(crd)
    return "\n".join(lines).rstrip("\n") + "\n"


def generate(crd_dir: Path) -> str:
    return render(load_crds(sorted(crd_dir.glob("*.yaml"))))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codeexec.apidocs", description=__doc__)
    parser.add_argument("--crds", type=Path, default=Path("crds"), help="directory of CRD YAML")
    parser.add_argument("--out", type=Path, default=Path("docs/api.md"))
    parser.add_argument("--check", action="store_true", help="fail if --out is not up to date")
    args = parser.parse_args(argv)
    text = generate(args.crds)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
