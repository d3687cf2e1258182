"""Bounded input: any nesting the API server (or a client) sends decodes without recursion,
and tenant values over the limits get a clear refusal that names the limit (issue 10, 1)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from codeexec import jsonbounds
from codeexec.execution import Invalid as InvalidSpec
from codeexec.execution import parse
from codeexec.gateway.app import GATEWAY, build_app
from codeexec.gateway.config import GatewayConfig
from codeexec.gateway.request import Invalid, parse_run_request
from codeexec.protocol import ReportReader

LEVELS = (500, 1_000, 5_000, 10_000)


def nested_text(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


def nested_value(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("levels", LEVELS)
def test_any_nesting_decodes_and_copies_without_recursion_errors(levels: int) -> None:
    """caught: with json.loads in place of jsonbounds.loads, 1,000 levels raised
    RecursionError, and deepcopy of 500 levels did."""
    doc = '{"spec": {"arguments": {"a": ' + nested_text(levels) + '}}, "s": "[[[{"}'
    value = jsonbounds.loads(doc)
    assert jsonbounds.depth(value) <= jsonbounds.MAX_DECODE_DEPTH
    copy.deepcopy(value)  # Kopf's diffbase and handlers._plain do this to every body
    json.dumps(value)
    assert value["s"] == "[[[{"  # brackets inside strings are text, not nesting


def test_only_what_is_too_deep_is_cut_and_the_cut_is_marked() -> None:
    doc = {"shallow": {"x": [1, {"y": None}]}, "deep": nested_value(200), "after": "kept"}
    value = jsonbounds.loads(json.dumps(doc))
    assert value["shallow"] == doc["shallow"] and value["after"] == "kept"
    leaf = value["deep"]
    while isinstance(leaf, list):
        leaf = leaf[0]
    assert leaf == jsonbounds.TOO_DEEP
    assert jsonbounds.depth(value) == jsonbounds.MAX_DECODE_DEPTH
    # A document within the limit decodes exactly as json.loads does.
    text = json.dumps({"a": nested_value(100), "b": '\\"[{', "c": [None, 2**64, -0.0]})
    assert jsonbounds.loads(text) == json.loads(text)


def test_depth_counts_containers_and_stops_early() -> None:
    assert jsonbounds.depth(1) == 0 and jsonbounds.depth({}) == 1
    assert jsonbounds.depth({"a": [[], {"b": []}]}) == 4
    assert jsonbounds.text_depth('{"a": [[], {"b": "]]]]["}]}') == 3
    assert jsonbounds.depth(nested_value(100_000), stop_above=64) == 65


# Pieces of strings that a scan of brackets outside strings can get wrong: brackets, quotes
# and backslashes in every combination JSON escapes them, empty strings, non-ASCII.
_NASTY = ["[", "]", "{", "}", '"', "\\", '\\"', '"["', '""', "a", "\u00e9", "\n", "\ud83d"]


def _nasty_document(rnd: random.Random, level: int = 0) -> Any:
    def text() -> str:
        return "".join(rnd.choice(_NASTY) for _ in range(rnd.randint(0, 6)))

    roll = rnd.random()
    if level > 40 or roll < 0.3:
        return rnd.choice([1, None, True, -2.5, "", text()])
    if roll < 0.65:
        return [_nasty_document(rnd, level + 1) for _ in range(rnd.randint(0, 3))]
    return {text(): _nasty_document(rnd, level + 1) for _ in range(rnd.randint(0, 3))}


@pytest.mark.parametrize("seed", range(4))
def test_the_depth_scan_agrees_with_the_decoded_depth_whatever_the_strings_hold(
    seed: int,
) -> None:
    """The scan decides whether a document is cut; it reads bytes at C speed and drops
    escapes and quote pairs before it looks for strings. Against the decoded value's depth
    on documents whose strings hold brackets, quotes and backslashes.

    caught: with the `\\\\` pairs removed after the escaped quotes (the wrong order),
    `"\\\\"` read as an unterminated string and 142 of seed 0's 800 texts disagreed."""
    rnd = random.Random(seed)
    checked = 0
    for _ in range(400):
        value = _nasty_document(rnd)
        for ensure_ascii in (True, False):
            text = json.dumps(value, ensure_ascii=ensure_ascii)
            want = jsonbounds.depth(value)
            assert jsonbounds.text_depth(text) == want, text
            data = text.encode("utf-8", "surrogatepass")
            assert jsonbounds.text_depth(data) == want, text
            assert (jsonbounds.text_depth(data, stop_above=3) > 3) == (want > 3), text
            checked += want > 3
    assert checked > 100  # enough documents deeper than the early answer


@pytest.mark.parametrize("levels", [65, *LEVELS])
def test_over_deep_arguments_are_an_invalid_request_naming_the_limit(levels: int) -> None:
    """Through the decoder a body comes cut at 128 levels; either way the road refuses it.

    caught: without the arguments check in execution.parse, these parsed as valid.
    """
    event = (
        '{"type": "ADDED", "object": {"metadata": {"name": "ex", "namespace": "ns", "uid": "u1"},'
        ' "spec": {"language": "python", "code": "x", "arguments": {"a": '
        + nested_text(levels)
        + "}}}}"
    )
    decoded = jsonbounds.loads(event)
    with pytest.raises(InvalidSpec, match="more than 64 levels deep"):
        parse(decoded["object"])


def test_arguments_at_the_limit_run_and_oversized_ones_are_refused() -> None:
    def body(arguments: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": "ex", "namespace": "ns", "uid": "u1"},
            "spec": {"language": "python", "code": "x", "arguments": arguments},
        }

    assert parse(body({"a": nested_value(63)})).spec.arguments["a"] == nested_value(63)
    with pytest.raises(InvalidSpec, match="262144 bytes"):
        parse(body({"a": "x" * jsonbounds.MAX_ARGUMENTS_BYTES}))


def test_a_report_nested_10000_deep_is_read_without_recursion() -> None:
    """caught: protocol.parse_report_line with json.loads raised RecursionError, which is no
    ValueError: the road crashed and retried forever."""
    reader = ReportReader("rid-0123456789abcdef")
    line = (
        b'CXR1 {"id":"rid-0123456789abcdef","started":true,"exit":{"code":0},'
        b'"result":{"kind":"returned","value":' + nested_text(10_000).encode() + b"}}\n"
    )
    report = reader.feed(line)
    assert report is not None and report.result is not None
    assert jsonbounds.depth(report.result["value"]) < jsonbounds.MAX_DECODE_DEPTH


def run_body(arguments_text: str) -> bytes:
    code = base64.b64encode(b"def main(**a): return 1").decode()
    return ('{"code_b64": "' + code + '", "arguments": ' + arguments_text + "}").encode()


@pytest.mark.parametrize("levels", [65, *LEVELS])
def test_the_gateway_refuses_over_deep_arguments_as_422_naming_the_limit(levels: int) -> None:
    """caught: with json.loads, 500 and 1,000 levels parsed and went on to the cluster."""
    with pytest.raises(Invalid) as caught:
        parse_run_request(run_body('{"a": ' + nested_text(levels) + "}"))
    (problem,) = caught.value.problems
    assert problem.loc == ("body", "arguments") and "64 levels" in problem.msg


class _HeldBackend:
    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def execute(self, request: Any, request_id: str) -> Any:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        raise RuntimeError("not reached in this test")

    async def health(self) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        pass


async def test_an_over_deep_gateway_request_is_answered_at_once_without_a_slot() -> None:
    """With the only slot held, the deep request still gets its 422 (not 'too many requests'),
    and nothing reaches the backend."""
    backend = _HeldBackend()
    app = build_app(GatewayConfig(max_concurrency=1), backend)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        held = asyncio.create_task(client.post("/run", data=run_body('{"x": 1}')))
        await backend.entered.wait()
        resp = await client.post("/run", data=run_body('{"a": ' + nested_text(10_000) + "}"))
        assert resp.status == 422
        assert "64 levels" in (await resp.json())["detail"][0]["msg"]
        assert backend.calls == 1 and client.app[GATEWAY].gate.in_flight == 1
        held.cancel()


def _exactly(value: Any) -> str:
    """A value's repr, which tells 1 from 1.0 and -0.0 from 0.0 (== does not)."""
    return repr(value)


@pytest.mark.parametrize("seed", range(2))
def test_a_pod_event_reads_the_same_through_the_fast_decoder(seed: int) -> None:
    """`typed=True` (pods, events: the core group's kinds) reads through orjson; whatever it
    reads must equal the standard decoder's value, types included, and whatever orjson refuses
    (a lone surrogate, NaN, a number past 64 bits) must still decode the standard way.
    caught: with the fallback removed, `"\\ud800"` raised instead of decoding."""
    used = 0
    fast = jsonbounds._fast
    assert fast is not None

    def counting(data: Any) -> Any:
        nonlocal used
        used += 1
        return fast(data)

    rnd = random.Random(seed)
    docs = [json.dumps(_nasty_document(rnd), ensure_ascii=rnd.random() < 0.5) for _ in range(300)]
    docs += [
        '{"a":"\\ud800","b":1}',  # a lone surrogate: orjson refuses it
        "[NaN, Infinity]",
        # int64's ends: every number of a core kind is an int32 or int64 (no float field);
        # past them orjson would read a float where json reads an int, hence `typed` only.
        "[9223372036854775807, -9223372036854775808, 0, 4294967295]",
        '{"exitCode": 137, "n": -0.0, "f": 1.0, "e": 1E2, "s": "\\u00e9\\"[{"}',
        '{"k":1,"k":2}',
    ]
    original = jsonbounds._fast
    jsonbounds._fast = counting
    try:
        for text in docs:
            want = _exactly(jsonbounds.loads(text))
            assert _exactly(jsonbounds.loads(text, typed=True)) == want, text
            data = text.encode("utf-8", "surrogatepass")
            if b"\xed\xa0" not in data:  # bytes with a surrogate are not UTF-8 at all
                assert _exactly(jsonbounds.loads(data, typed=True)) == want, text
    finally:
        jsonbounds._fast = original
    assert used >= len(docs)  # the fast decoder did read them


def test_a_too_deep_pod_event_is_cut_by_the_fast_decoder_too() -> None:
    """orjson's own bound is 1,024 levels; ours (MAX_DECODE_DEPTH) must hold on the fast way.
    caught: with the depth check skipped for typed documents, 200 levels decoded uncut."""
    assert jsonbounds._fast is not None  # installed with the operator extra
    text = json.dumps({"metadata": {"managedFields": nested_value(200)}})
    value = jsonbounds.loads(text, typed=True)
    assert jsonbounds.depth(value) == jsonbounds.MAX_DECODE_DEPTH
