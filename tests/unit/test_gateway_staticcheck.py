"""gateway.staticcheck: refuses what the original's static check refused, in its words."""

from __future__ import annotations

import pytest

from codeexec.gateway import compat
from codeexec.gateway.staticcheck import DANGEROUS_IMPORTS, Issue, check


def pairs(code: str) -> list[tuple[str, int]]:
    return [i.pair() for i in check(code)]


def test_the_originals_usage_example_passes() -> None:
    assert check("def main(x): return x * 2") == []


def test_ordinary_code_passes() -> None:
    code = (
        "import json, math, re\n"
        "from collections import Counter\n"
        "def main(text: str) -> dict:\n"
        "    words = re.findall(r'\\w+', text)\n"
        "    return {'top': Counter(words).most_common(3), 'pi': math.pi, 'j': json.dumps(words)}\n"
    )
    assert check(code) == []


# The original's list, stated here independently of the implementation (a test that took its
# cases from DANGEROUS_IMPORTS passed with modules removed from it).
ORIGINAL_DANGEROUS_MODULES = [
    "os", "subprocess", "sys", "shutil", "socket", "ctypes", "pickle", "threading",
    "multiprocessing", "asyncio", "ftplib", "telnetlib",
]  # fmt: skip


def test_the_dangerous_module_list_is_the_originals() -> None:
    """Caught: removing three modules from DANGEROUS_IMPORTS made this (and three cases of the
    test below) fail."""
    assert {"http.client", *ORIGINAL_DANGEROUS_MODULES} == DANGEROUS_IMPORTS


@pytest.mark.parametrize("module", ORIGINAL_DANGEROUS_MODULES)
def test_dangerous_import_is_refused(module: str) -> None:
    assert pairs(f"import {module}\ndef main(): pass\n") == [(f"Import: {module}", 1)]


def test_submodule_import_is_refused_by_its_package() -> None:
    assert pairs("import os.path") == [("Import: os.path", 1)]


def test_from_import_is_refused() -> None:
    assert pairs("x = 1\nfrom subprocess import run") == [("From Import: subprocess", 2)]


@pytest.mark.parametrize(
    "name", ["eval", "exec", "compile", "__import__", "open", "getattr", "input"]
)
def test_dangerous_call_is_refused(name: str) -> None:
    assert pairs(f"def main():\n    return {name}('x')\n") == [(f"Call: {name}", 2)]


def test_attribute_of_a_dangerous_module_is_refused() -> None:
    assert pairs("import os\nos.system('id')") == [
        ("Import: os", 1),
        ("Attribute Access: os.system", 2),
    ]


def test_defining_or_rebinding_a_dangerous_name_is_refused() -> None:
    assert pairs("def open(p):\n    return p\neval = print\n") == [
        ("Function Definition: open", 1),
        ("Assignment to dangerous variable: eval", 3),
    ]


def test_each_finding_is_listed_once() -> None:
    # The original listed calls inside comprehensions twice; one line per finding here.
    assert pairs("def main(xs):\n    return [eval(x) for x in xs]\n") == [("Call: eval", 2)]


def test_code_that_does_not_parse_is_refused_as_the_original_did() -> None:
    issues = check("def main(:\n    pass\n")
    assert len(issues) == 1 and issues[0].line == -1
    assert issues[0].what.startswith("Parsing Error: ")


def test_operations_on_two_constants_pass() -> None:
    # The original refused `60 * 60` ("Possible unsafe string concatenation"); we do not.
    assert check("def main():\n    return 60 * 60, 'a' + 'b'\n") == []


def test_dotted_import_the_original_listed_but_never_matched_passes() -> None:
    # `http.client` was in the original's list, but it compared only the first dotted part.
    assert check("import http.client\n") == []


def test_not_a_security_boundary() -> None:
    # Documented: the check is a compatibility aid. Obfuscated access passes; the sandbox
    # pod is what contains the code.
    code = "import importlib\ndef main():\n    return importlib.import_module('o' 's').getcwd()\n"
    assert check(code) == []


def test_refusal_answers_as_the_original() -> None:
    got = compat.unsafe_code([i.pair() for i in check("import os\nimport sys\n")]).to_json()
    assert got["status"] == "program_runner_error"
    assert got["detail"] == "Code is unsafe" and got["exit_code"] == -999
    assert got["stderr"] == "Line 1: Import: os\nLine 2: Import: sys"


def test_issue_pair_is_description_then_line() -> None:
    assert Issue("Call: eval", 4).pair() == ("Call: eval", 4)
