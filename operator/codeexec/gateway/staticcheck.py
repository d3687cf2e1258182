"""The original's optional static check of Python sources, for compatibility only.

Pure. Refuses the imports, calls, attribute accesses and definitions the original refused,
with the original's descriptions ("Import: os", "Call: eval", ...). It is a compatibility
aid for clients that expect such code to be refused before it runs, NOT a security boundary:
`getattr(__builtins__, "ev" + "al")` and countless other spellings pass. The sandbox pod is
the boundary.

Differences, all of them toward accepting more: each finding is listed once (the original
listed some twice), and the original's rule against any operation on two constants
(`60 * 60`, `"a" + "b"`) is left out, since it refused ordinary code and proved nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

DANGEROUS_IMPORTS = frozenset(
    {
        "os",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "ctypes",
        "pickle",
        "threading",
        "multiprocessing",
        "asyncio",
        # Listed by the original but never matched: it compared only the first dotted part.
        "http.client",
        "ftplib",
        "telnetlib",
    }
)

DANGEROUS_CALLS = frozenset(
    {
        "eval",
        "exec",
        "open",
        "__import__",
        "compile",
        "input",
        "system",
        "popen",
        "remove",
        "rename",
        "rmdir",
        "chdir",
        "chmod",
        "chown",
        "getattr",
        "setattr",
        "globals",
        "locals",
        "shutil.rmtree",
        "subprocess.call",
        "subprocess.Popen",
        "ctypes",
        "pickle.load",
        "pickle.loads",
        "pickle.dump",
        "pickle.dumps",
    }
)


@dataclass(frozen=True)
class Issue:
    what: str
    line: int

    def pair(self) -> tuple[str, int]:
        return self.what, self.line


class _Analyzer(ast.NodeVisitor):
    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def _add(self, what: str, node: ast.stmt | ast.expr) -> None:
        self.issues.append(Issue(what, node.lineno))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in DANGEROUS_IMPORTS:
                self._add(f"Import: {alias.name}", node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.split(".")[0] in DANGEROUS_IMPORTS:
            self._add(f"From Import: {node.module}", node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in DANGEROUS_CALLS:
            self._add(f"Call: {node.func.id}", node)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in DANGEROUS_IMPORTS:
            self._add(f"Attribute Access: {node.value.id}.{node.attr}", node)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in DANGEROUS_CALLS:
            self._add(f"Function Definition: {node.name}", node)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id in DANGEROUS_CALLS:
                self._add(f"Assignment to dangerous variable: {target.id}", node)
        self.generic_visit(node)


def check(code: str) -> list[Issue]:
    """The reasons to refuse `code`, in source order; empty when it passes.

    Code that does not parse is refused, as the original refused it, with line -1.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        return [Issue(f"Parsing Error: {err}", -1)]
    analyzer = _Analyzer()
    try:
        analyzer.visit(tree)
    except RecursionError as err:
        return [Issue(f"Parsing Error: {err}", -1)]
    return analyzer.issues
