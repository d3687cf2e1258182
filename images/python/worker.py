"""Warm Python worker of a codeexec sandbox (stdlib only; started by the supervisor).

Imports the common libraries, reports ready on the result pipe, then blocks for one request on
fd 0: compiles the user's code as ``main.py``, runs it as module ``main``, calls
``main(**arguments)`` and writes one result record (docs/runner-protocol.md) before exiting.
The user's stdout/stderr are the supervisor's pipes; this file never writes to them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib
import inspect
import json
import linecache
import os
import re
import resource
import signal
import socket
import sys
import traceback
import types
from typing import Any, NoReturn

USER_FILENAME = "main.py"
# As the seed's runner did (`from main import main`): a `__main__` guard in the code stays off.
USER_MODULE = "main"
MAX_RECORD_BYTES = 60 * 1024
# The operator keeps a return value at most this deep (jsonbounds.MAX_RETURN_VALUE_DEPTH) and
# sends its limit as maxResultDepth; a deeper value is reported as omitted, not as an error.
DEFAULT_MAX_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")

_write = os.write
_exit = os._exit
_result_fd: int | None = None
_worker_pid = os.getpid()
_EAI_NAMES = {
    value: name
    for name, value in vars(socket).items()
    if name.startswith("EAI_") and isinstance(value, int)
}
# Prepared up front: after a MemoryError there may be no memory to build it.
_MEMORY_ERROR_RECORD = (
    b'{"kind":"error","phase":"run","type":"MemoryError","message":"","traceback":null,'
    b'"causes":[]}\n'
)


def _hide_result_fd() -> int | None:
    """Moves fd 3 out of the way of the user's own files and out of their subprocesses."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        floor = max(10, min(soft - 16, 1000)) if soft != resource.RLIM_INFINITY else 1000
        fd = fcntl.fcntl(3, fcntl.F_DUPFD_CLOEXEC, floor)
        os.close(3)
        return fd
    except OSError:
        return None


def _after_fork_in_child() -> None:
    # A fork()ed copy of the worker must not speak for it: only the worker writes records.
    global _result_fd
    if _result_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_result_fd)
        _result_fd = None


def _send(data: bytes) -> bool:
    if _result_fd is None or os.getpid() != _worker_pid:
        return False
    view = memoryview(data)
    try:
        while view:
            view = view[_write(_result_fd, view) :]
    except OSError:
        return False
    return True


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass


def _finish(record: dict[str, Any] | bytes | None, code: int) -> NoReturn:
    _flush_stdio()
    if os.getpid() == _worker_pid and record is not None:
        try:
            line = record if isinstance(record, bytes) else _encode_record(record)
        except MemoryError:
            line = _MEMORY_ERROR_RECORD
        except Exception:  # never leave without a record because describing the error failed
            phase = record.get("phase") if isinstance(record, dict) else None
            line = _encode_record(
                {
                    "kind": "error",
                    "phase": phase if phase in ("compile", "entrypoint", "serialize") else "run",
                    "type": "Error",
                    "message": "the error could not be described",
                    "causes": [],
                }
            )
        _send(line)
    _exit(code)


# -------------------------------------------------------------------------------------------
# error records


def type_name(cls: type) -> str:
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?")
    if module in (None, "builtins", USER_MODULE, "__main__"):
        return str(name)
    return f"{module}.{name}"


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<unprintable {type(exc).__name__}>"


def _os_fields(exc: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if not isinstance(exc, OSError):
        return fields
    num = exc.errno if isinstance(exc.errno, int) else None
    fields["errno"] = num
    if num is not None:
        if isinstance(exc, socket.gaierror):
            fields["code"] = _EAI_NAMES.get(num)
        else:
            fields["code"] = errno.errorcode.get(num)
    if isinstance(exc.filename, bytes | str):
        fields["filename"] = os.fsdecode(exc.filename)
    elif exc.filename is not None:
        fields["filename"] = str(exc.filename)
    return fields


def _next_in_chain(exc: BaseException) -> BaseException | None:
    if exc.__cause__ is not None:
        return exc.__cause__
    if exc.__suppress_context__:
        return None
    return exc.__context__


def _causes(exc: BaseException, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen = {id(exc)}
    cur = _next_in_chain(exc)
    while cur is not None and id(cur) not in seen and len(out) < 8:
        seen.add(id(cur))
        entry = {"type": type_name(type(cur)), "message": _text(cur)[:limit]}
        entry.update({k: v for k, v in _os_fields(cur).items() if k in ("errno", "code")})
        out.append(entry)
        cur = _next_in_chain(cur)
    return out


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [frame for frame in te.stack if frame.filename == USER_FILENAME]
    )
    for sub in (te.__cause__, te.__context__):
        if sub is not None:
            _trim(sub, seen)
    for sub in getattr(te, "exceptions", None) or []:  # ExceptionGroup members
        _trim(sub, seen)


def _user_traceback(exc: BaseException) -> str | None:
    try:
        te = traceback.TracebackException.from_exception(exc)
        _trim(te, set())
        return "".join(te.format())
    except Exception:
        return None


def _shorten(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    head = limit // 8
    return text[:head] + "\n... (cut) ...\n" + text[len(text) - (limit - head) :]


def error_record(phase: str, exc: BaseException, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": "error",
        "phase": phase,
        "type": type_name(type(exc)),
        "message": _text(exc),
        "traceback": _user_traceback(exc),
    }
    record.update(_os_fields(exc))
    record.update(extra)
    record["causes"] = _causes(exc, 1024)
    return record


def _encode_record(record: dict[str, Any]) -> bytes:
    """One JSON line below MAX_RECORD_BYTES: long texts are cut until it fits."""
    limit = 32 * 1024
    while True:
        rec = dict(record)
        if rec.get("kind") == "error":
            rec["message"] = _shorten(rec.get("message"), limit // 4)
            rec["traceback"] = _shorten(rec.get("traceback"), limit)
            if limit < 1024:
                rec["causes"] = []
        line = json.dumps(rec, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"
        if len(line) <= MAX_RECORD_BYTES or limit < 64:
            return line
        limit //= 2


# -------------------------------------------------------------------------------------------
# JSON check


def _describe(value: Any) -> str | None:
    """The name of what JSON cannot hold, or None if `value` itself is fine as a leaf."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return None
    if isinstance(value, list | tuple | dict):
        return None
    return type(value).__name__


def find_unserializable(value: Any, max_depth: int) -> tuple[str, str] | None:
    """(type name, path) of the first thing json.dumps(allow_nan=False) rejects, or None;
    ("NestingTooDeep", path) for a container below `max_depth` levels."""
    # Iterative, with the ancestors on the path: a shared (non-cyclic) reference is fine.
    stack: list[tuple[Any, str, int, bool]] = [(value, "$", 0, False)]
    ancestors: list[int] = []
    while stack:
        item, path, depth, leaving = stack.pop()
        if leaving:
            ancestors.pop()
            continue
        problem = _describe(item)
        if problem is not None:
            return problem, path
        if not isinstance(item, list | tuple | dict):
            continue
        if id(item) in ancestors:
            return "cycle", path
        if depth >= max_depth:
            return "NestingTooDeep", path
        ancestors.append(id(item))
        stack.append((item, path, depth, True))
        if isinstance(item, dict):
            children = []
            for key, child in item.items():
                if not (key is None or isinstance(key, str | int | float | bool)):
                    return type(key).__name__, f"{path} (a key)"
                if isinstance(key, float) and _describe(key) is not None:
                    return str(_describe(key)), f"{path} (a key)"
                children.append((child, f"{path}[{key!r}]", depth + 1, False))
            stack.extend(reversed(children))
        else:
            stack.extend(
                (child, f"{path}[{i}]", depth + 1, False)
                for i, child in reversed(list(enumerate(item)))
            )
    return None


def text_depth(text: str) -> int:
    """Deepest nesting of a JSON text, counted outside strings ({} is 1)."""
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text))
    deepest = level = 0
    for char in brackets:
        level += 1 if char in "[{" else -1
        deepest = max(deepest, level)
    return deepest


def omitted(why: str, size: int | None) -> bytes:
    """The record for a value main returned that is not sent back: the run still succeeded."""
    record = {"kind": "returned", "value": None, "omitted": why, "bytes": size}
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def serialize(
    value: Any, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH
) -> tuple[str | None, dict[str, Any] | bytes | None]:
    """(compact JSON text, None), or (None, an omitted-value record (bytes) or a
    serialize-phase error record)."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except Exception as exc:  # also RecursionError; a broken user __iter__/__eq__ lands here too
        # Only now walk the value: the encoder's own message does not say where the problem is.
        try:
            found = find_unserializable(value, max_depth)
        except Exception:
            found = None
        if found is None:
            record = error_record("serialize", exc)
            record["traceback"] = None
            return None, record
        kind, where = found
        if kind == "NestingTooDeep":
            return None, omitted("TooDeep", None)
        return None, _serialize_error(
            kind, f"the return value at {where} is {_article(kind)}, which JSON cannot represent"
        )
    if len(text) > max_bytes:
        return None, omitted("TooLarge", len(text))
    if len(text) > 2 * max_depth and text_depth(text) > max_depth:
        return None, omitted("TooDeep", len(text))
    return text, None


def _serialize_error(kind: str, message: str) -> dict[str, Any]:
    return {
        "kind": "error",
        "phase": "serialize",
        "type": kind,
        "message": message,
        "traceback": None,
        "causes": [],
    }


def _article(kind: str) -> str:
    if kind == "cycle":
        return "a reference cycle"
    if kind in ("NaN", "Infinity", "-Infinity"):
        return kind
    return f"an {kind}" if kind[:1].lower() in "aeiou" else f"a {kind}"


# -------------------------------------------------------------------------------------------
# the run


def _exit_code_of(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return int(code) & 0xFF  # what the kernel keeps of exit(n) anyway
    with contextlib.suppress(BaseException):
        print(code, file=sys.stderr)
    return 1


def _preload() -> None:
    for name in os.environ.get("CODEEXEC_PRELOAD", "numpy,pandas").split(","):
        name = name.strip()
        if name:
            # A missing library only costs its users an import later.
            with contextlib.suppress(BaseException):
                importlib.import_module(name)


def _read_request() -> dict[str, Any] | None:
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(0, 65536)
        except InterruptedError:
            continue
        if not data:
            return None
        nl = data.find(b"\n")
        if nl >= 0:
            chunks.append(data[:nl])
            break
        chunks.append(data)
    obj = json.loads(b"".join(chunks).decode("utf-8"))
    return obj if isinstance(obj, dict) else None


def _await(awaitable: Any) -> Any:
    if inspect.iscoroutine(awaitable):
        return asyncio.run(awaitable)

    async def runner() -> Any:
        return await awaitable

    return asyncio.run(runner())


def run_request(request: dict[str, Any]) -> NoReturn:
    code = request.get("code", "")
    arguments = request.get("arguments") or {}
    max_result = int(request.get("maxResultBytes") or 1024 * 1024)
    max_depth = int(request.get("maxResultDepth") or DEFAULT_MAX_DEPTH)

    try:
        compiled = compile(code, USER_FILENAME, "exec", dont_inherit=True)
    except SyntaxError as exc:
        record = error_record("compile", exc, line=exc.lineno, column=exc.offset)
        record["message"] = exc.msg if isinstance(exc.msg, str) else _text(exc)
        record["traceback"] = "".join(traceback.format_exception_only(type(exc), exc))
        _finish(record, 1)
    except BaseException as exc:  # e.g. ValueError for NUL bytes on 3.11, MemoryError
        _finish(error_record("compile", exc), 1)

    # Tracebacks show the user's source lines; mtime None keeps checkcache from evicting it.
    linecache.cache[USER_FILENAME] = (len(code), None, code.splitlines(True), USER_FILENAME)
    module = types.ModuleType(USER_MODULE)
    module.__file__ = USER_FILENAME
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules[USER_MODULE] = module

    try:
        exec(compiled, module.__dict__)
        main = module.__dict__.get("main")
        if not callable(main):
            what = "defines no `main`" if main is None else "defines `main`, but not as a function"
            _finish(
                {
                    "kind": "error",
                    "phase": "entrypoint",
                    "type": "MainNotFound",
                    "message": f"the code {what}; expected `def main(...)`",
                    "traceback": None,
                    "causes": [],
                },
                1,
            )
        try:
            signature = inspect.signature(main)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            try:
                signature.bind(**arguments)
            except TypeError as exc:
                record = error_record("entrypoint", exc)
                record["traceback"] = None
                record["message"] = f"the arguments do not fit main{signature}: {_text(exc)}"
                _finish(record, 1)
        value = main(**arguments)
        if inspect.isawaitable(value):
            value = _await(value)
    except SystemExit as exc:
        _finish(None, _exit_code_of(exc))
    except BaseException as exc:
        if os.getpid() != _worker_pid:
            _run_in_forked_child_exit(exc)
        try:
            record: dict[str, Any] | bytes = error_record("run", exc)
        except MemoryError:
            record = _MEMORY_ERROR_RECORD
        _finish(record, 1)

    text, problem = serialize(value, max_result, max_depth)
    if isinstance(problem, bytes):
        _finish(problem, 0)  # main returned; the value is only not sent back
    if problem is not None:
        _finish(problem, 1)
    assert text is not None
    _finish(b'{"kind":"returned","value":' + text.encode("ascii") + b"}\n", 0)


def _run_in_forked_child_exit(exc: BaseException) -> NoReturn:
    if isinstance(exc, SystemExit):
        _flush_stdio()
        _exit(_exit_code_of(exc))
    with contextlib.suppress(BaseException):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    _flush_stdio()
    _exit(1)


def main() -> NoReturn:
    global _result_fd
    _result_fd = _hide_result_fd()
    os.register_at_fork(after_in_child=_after_fork_in_child)
    _preload()
    # -I left the script directory off sys.path; the seed's runner had the code's directory.
    sys.path.insert(0, os.getcwd())
    sys.argv = [USER_FILENAME]
    # Python ignores SIGXFSZ; the kernel's signal at RLIMIT_FSIZE is the supervisor's evidence
    # that a file hit the size limit (a program that ignores it again gets EFBIG instead).
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ms = round((usage.ru_utime + usage.ru_stime) * 1000.0, 3)
    _send(json.dumps({"kind": "ready", "cpuMs": cpu_ms}).encode() + b"\n")
    try:
        request = _read_request()
    except (ValueError, OSError):
        request = None
    if request is None:
        _exit(70)  # the supervisor sends valid JSON; this only happens if it went away
    try:
        run_request(request)
    except BaseException as exc:
        # Only reachable in a fork()ed child of the user's code that unwound into us, or if
        # the harness itself broke.
        if os.getpid() != _worker_pid:
            _run_in_forked_child_exit(exc)
        _finish(error_record("run", exc), 1)


if __name__ == "__main__":
    main()
