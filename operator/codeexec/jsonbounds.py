"""Bounded JSON: the depth and size limits on tenant-controlled values, and a decoder that
survives any nesting.

Pure. The API server accepts JSON nested 10,000 levels deep in free-form fields
(`spec.arguments`); Python's `json.loads` gives up near 1,000 levels on 3.11 (RecursionError)
and `copy.deepcopy` near 500, so one such object used to kill Kopf's watcher for every tenant.
Everything the operator decodes from the API server or a runner goes through `loads` here:
a cheap scan of the bracket depth outside strings, and only for the rare over-deep document a
rewrite that replaces each subtree below `MAX_DECODE_DEPTH` by the string `TOO_DEEP`. The
resulting value is at most MAX_DECODE_DEPTH deep, so every recursive walker after it (Kopf's
diffbase, deepcopy, pydantic, json.dumps) stays far from Python's recursion limit.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

_fast: Callable[[str | bytes | bytearray], Any] | None
try:  # a speed-up only (the operator's image has it; the CLI may not): see `loads(typed=True)`
    import orjson

    _fast = orjson.loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _fast = None

# Where decoding cuts. Python's recursion limit is 1,000 frames; deepcopy takes ~2 per level and
# Kopf runs a handler ~100 frames deep, so 128 leaves a wide margin. It is above every
# tenant-facing limit plus the envelope (list -> items -> item -> spec -> arguments is 4 levels),
# so a cut value always fails the tenant-facing check below and is never mistaken for data.
MAX_DECODE_DEPTH = 128
# What a tenant may nest in spec.arguments and what a program may return (counting the
# outermost object or array as level 1). Deep enough for any real document.
MAX_ARGUMENTS_DEPTH = 64
MAX_RETURN_VALUE_DEPTH = 64
# spec.arguments as compact JSON. The object (code 128 KiB, arguments, metadata, a status of
# up to ~600 KiB) must stay under etcd's 1.5 MiB.
MAX_ARGUMENTS_BYTES = 256 * 1024
# A return value as compact ASCII JSON; the runner omits a larger one (flagged, never an error).
MAX_RETURN_VALUE_BYTES = 256 * 1024

TOO_DEEP = f"<codeexec: nested deeper than {MAX_DECODE_DEPTH} levels, cut>"

# A JSON string (escapes included) or one bracket. The unrolled loop keeps `re` linear.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_TOKENS = re.compile(_STRING + r"|[\[\]{}]")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# The depth scan works on UTF-8 bytes, at C speed: escapes out first (`\\` pairs from the left,
# as JSON reads them, then `\"`), then every byte but `"[]{}` deleted, then what is left
# between quotes: the brackets outside strings. On a 6.9 KB pod watch event (its managedFields
# keys hold escaped braces) the scan took 152-160 us as two regexes over the text and takes
# 71-77 us this way; the whole decode 227 -> 123 us, json.loads alone 69 us (this VM, busy).
_SKELETON = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTED = re.compile(rb'"[^"]*"')


def _outside_strings(data: bytes) -> bytes:
    """The brackets of a JSON text outside its strings, in order (for valid JSON exactly)."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Quotes alternate open/close; two adjacent ones (an empty string, or one string's end
    # and the next one's start) move no bracket in or out of a string. Most strings hold no
    # bracket, so this leaves the regex a few dozen quotes instead of ~900 (a pod event).
    skeleton = data.translate(None, _SKELETON).replace(b'""', b"")
    return _QUOTED.sub(b"", skeleton).replace(b'"', b"")


def text_depth(text: str | bytes | bytearray, *, stop_above: int | None = None) -> int:
    """The deepest nesting of a JSON text (`{}` is 1, a scalar 0), counted outside strings.

    With `stop_above`, any answer above it may be returned as soon as it is known.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if stop_above is not None and data.count(b"[") + data.count(b"{") <= stop_above:
        return stop_above  # not even that many opening brackets, strings included
    brackets = _outside_strings(data)
    if stop_above is not None and len(brackets) // 2 <= stop_above:
        # Fewer bracket pairs than the limit: cannot be deeper (the common case, C speed).
        return min(len(brackets) // 2, stop_above)
    if not brackets:
        return 0
    return max(0, max(itertools.accumulate(_STEP[c] for c in brackets)))


def _cut(text: str, max_depth: int) -> str:
    """`text` with every container below `max_depth` replaced by the TOO_DEEP string."""
    marker = json.dumps(TOO_DEEP)
    pieces: list[str] = []
    depth = 0
    kept_until = 0
    cut_from: int | None = None
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth == max_depth + 1 and cut_from is None:
                cut_from = match.start()
        else:
            if depth == max_depth + 1 and cut_from is not None:
                pieces.append(text[kept_until:cut_from])
                pieces.append(marker)
                kept_until = match.end()
                cut_from = None
            depth -= 1
    if cut_from is not None:  # unbalanced (invalid JSON): let json.loads say so
        return text
    pieces.append(text[kept_until:])
    return "".join(pieces)


def loads(
    data: str | bytes | bytearray,
    *,
    max_depth: int = MAX_DECODE_DEPTH,
    typed: bool = False,
    **options: Any,
) -> Any:
    """`json.loads` that never recurses past `max_depth`: deeper subtrees become TOO_DEEP.

    Raises ValueError (json.JSONDecodeError) for text that is not JSON, like json.loads;
    `options` go to json.loads (e.g. parse_constant).

    `typed`: an object of one of Kubernetes' own kinds (a pod), whose numbers are int32/int64
    and whose text is UTF-8 (the API server refuses anything else). Such a document is read by
    orjson, ~3x faster (a 3.6 KB pod event: 8.6 against 25.5 us), into the same values; anything
    orjson refuses goes the standard way. Never for a custom resource: Go writes a float64
    below 1e21 without exponent (`100000000000000000000`), which json reads as an int and
    orjson as a float, and `spec.arguments` must come back exactly. The depth bound holds
    either way (orjson's own is 1,024 levels).
    """
    too_deep = text_depth(data, stop_above=max_depth) > max_depth
    if typed and not too_deep and not options and _fast is not None:
        try:
            return _fast(data)
        except ValueError:  # orjson.JSONDecodeError: let the standard decoder read it or say why
            pass
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    if too_deep:
        text = _cut(text, max_depth)
    try:
        return json.loads(text, **options)
    except RecursionError as err:  # unreachable after the cut; never let it escape as such
        raise ValueError(f"JSON nested too deeply: {err}") from None


def depth(value: Any, *, stop_above: int | None = None) -> int:
    """Nesting of a decoded value (`{}` is 1, a scalar 0); iterative, so any depth is fine.

    With `stop_above`, returns stop_above + 1 as soon as the value is known to be deeper.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        if level > deepest:
            deepest = level
            if stop_above is not None and deepest > stop_above:
                return deepest
        stack.extend((child, level) for child in children)
    return deepest


def compact_size(value: Any) -> int:
    """UTF-8 bytes of `value` as compact JSON (what the status and the runner count)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", errors="surrogatepass"))


# Go's encoder (the API server's) writes a float64 without exponent and without ".0" below
# 1e21, so such an integral float comes back as an int.
_GO_PLAIN_FLOAT_LIMIT = 1e21
_INT64 = (-(2**63), 2**63 - 1)


def _exact_string(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the API server stores U+FFFD instead
        return False
    return True


def storable_exactly(value: Any) -> bool:
    """Whether the API server (int64/float64 numbers, UTF-8 text) keeps `value` unchanged.

    False for integers outside int64 (2**64 would become a float, 10**400 is refused),
    integral floats below 1e21 and -0.0 (they come back as ints), non-finite floats and
    strings with lone surrogates. Iterative: any depth.
    """
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not _INT64[0] <= item <= _INT64[1]:
                return False
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return False
            if item.is_integer() and abs(item) < _GO_PLAIN_FLOAT_LIMIT:
                return False
        elif isinstance(item, str):
            if not _exact_string(item):
                return False
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) or not _exact_string(key):
                    return False
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            return False
    return True


def arguments_problem(arguments: Any) -> str | None:
    """Why `spec.arguments` cannot be run, or None. Names the limit it breaks."""
    if depth(arguments, stop_above=MAX_ARGUMENTS_DEPTH) > MAX_ARGUMENTS_DEPTH:
        return f"spec.arguments is nested more than {MAX_ARGUMENTS_DEPTH} levels deep (the limit)"
    size = compact_size(arguments)
    if size > MAX_ARGUMENTS_BYTES:
        return f"spec.arguments is {size} bytes as JSON; the limit is {MAX_ARGUMENTS_BYTES} bytes"
    return None
