"""The `codeexec` command: `operator` runs the controller; more subcommands serve users.

    codeexec run FILE [--arg k=v ...] [--args-json JSON] [--language L] [--timeout S]
                      [--pool P] [-n NAMESPACE] [--keep] [--quiet]
    codeexec get NAME [-n NAMESPACE] [-o json|yaml]
    codeexec list [-n NAMESPACE] [-l SELECTOR]
    codeexec wait [NAME ...] [-n NAMESPACE] [--timeout S]

Only the `operator` subcommand imports Kopf: the user-facing ones start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from codeexec.api.models import CodeExecution
    from codeexec.client import Client

# Exit codes of the user-facing subcommands (stable: scripts may test them).
EXIT_OK = 0
EXIT_FAILED = 1  # the execution ran (or was refused) and did not succeed
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_API = 3  # the API server refused or could not be reached
EXIT_WAIT = 4  # gave up waiting (is the operator running?)
EXIT_INTERRUPTED = 130

LANGUAGE_BY_SUFFIX = {".py": "python", ".js": "nodejs", ".cjs": "nodejs", ".mjs": "nodejs"}
# Beyond the execution's own timeout: the queue (a pool's queueTimeoutSeconds, 120 s by
# default) and the operator's grace. Past this the operator is most likely not running.
WAIT_MARGIN_SECONDS = 300


class UsageError(Exception):
    """A mistake in the command line that argparse cannot catch."""


# --- the operator (unchanged) ---------------------------------------------------------------


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    import codeexec.handlers  # noqa: F401  (registers the handlers)
    from codeexec.settings import Settings

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = Settings()
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not cfg.namespaces,
            namespaces=list(cfg.namespaces),
        )
    )
    return 0


# --- pure helpers (unit-tested) -------------------------------------------------------------


def infer_language(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    language = LANGUAGE_BY_SUFFIX.get(Path(path).suffix.lower())
    if language is None:
        known = ", ".join(sorted(LANGUAGE_BY_SUFFIX))
        raise UsageError(f"cannot tell the language of {path!r} (known: {known}); use --language")
    return language


def parse_value(text: str) -> Any:
    """`--arg` values are JSON when they parse as JSON (5, true, [1,2], {"a":1}, "quoted"),
    and plain strings otherwise (hello, 1.2.3): what a shell user means in either case."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_arguments(pairs: Sequence[str], args_json: str | None) -> dict[str, Any]:
    """`--args-json` first, then each `--arg k=v` on top of it (later wins)."""
    arguments: dict[str, Any] = {}
    if args_json is not None:
        try:
            loaded = json.loads(args_json)
        except ValueError as err:
            raise UsageError(f"--args-json is not valid JSON: {err}") from err
        if not isinstance(loaded, dict):
            raise UsageError("--args-json must be a JSON object (main receives keyword arguments)")
        arguments.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--arg {pair!r} is not of the form key=value")
        arguments[key] = parse_value(value)
    return arguments


def exit_code(execution: CodeExecution) -> int:
    from codeexec.api.models import Phase

    return EXIT_OK if execution.status.phase == Phase.SUCCEEDED else EXIT_FAILED


def stage(execution: CodeExecution) -> str:
    """The three stages a user cares about while waiting: queued, running, done."""
    from codeexec.api.models import Phase

    phase = execution.status.phase
    if phase is None or phase == Phase.PENDING:
        return "queued"
    if phase == Phase.RUNNING:
        return "running"
    return "done"


def failure_summary(execution: CodeExecution) -> str:
    """One line: why an execution did not succeed."""
    status = execution.status
    parts = [status.reason or str(status.phase or "Unknown")]
    error = status.result.error if status.result else None
    if error is not None:
        parts.append(f"{error.type}: {error.message}" if error.message else error.type)
    elif status.message:
        parts.append(status.message)
    return ": ".join(parts)


def render_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def summary_row(execution: CodeExecution) -> list[str]:
    status = execution.status
    result = status.result
    outcome = status.reason or str(status.phase or "Pending")
    if result is None or status.phase is None or not status.phase.terminal:
        value = ""
    elif result.return_value_truncated:
        value = f"<{result.return_value_bytes} bytes, not stored>"
    elif status.reason == "Succeeded":
        value = shorten(render_value(result.return_value), 40)
    elif result.error is not None:
        value = shorten(f"{result.error.type}: {result.error.message}", 40)
    else:
        value = ""
    return [
        execution.name,
        execution.spec.language,
        str(status.phase or "Pending"),
        outcome,
        value,
        status.duration or "",
    ]


LIST_HEADER = ["NAME", "LANGUAGE", "PHASE", "REASON", "RESULT", "DURATION"]


# --- progress -------------------------------------------------------------------------------


@dataclass
class Progress:
    """Prints one line on stderr each time the execution enters a new stage."""

    out: TextIO
    quiet: bool = False
    last: str = ""

    def __call__(self, execution: CodeExecution) -> None:
        current = stage(execution)
        if current == self.last or self.quiet:
            self.last = current
            return
        self.last = current
        status = execution.status
        if current == "queued":
            detail = status.message or "waiting for the operator"
        elif current == "running":
            pod = status.sandbox.pod if status.sandbox else None
            queued = f", queued {status.queued_ms} ms" if status.queued_ms is not None else ""
            detail = f"in sandbox pod {pod}{queued}" if pod else "started"
        else:
            detail = str(status.reason)
            if status.duration:
                detail += f" in {status.duration}"
        print(f"codeexec: {execution.name}: {current}: {detail}", file=self.out, flush=True)


def report(execution: CodeExecution, out: TextIO, err: TextIO) -> int:
    """The program's stdout and stderr, then its return value (JSON) or why it failed."""
    result = execution.status.result
    if result is not None:
        if result.stderr:
            err.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
        if result.stderr_truncated:
            print(f"codeexec: [stderr truncated; {result.stderr_bytes} bytes]", file=err)
        if result.stdout:
            out.write(result.stdout if result.stdout.endswith("\n") else result.stdout + "\n")
        if result.stdout_truncated:
            print(f"codeexec: [stdout truncated; {result.stdout_bytes} bytes]", file=err)
    code = exit_code(execution)
    if code == EXIT_OK:
        if result is not None and result.return_value_truncated:
            print(
                f"codeexec: the return value ({result.return_value_bytes} bytes) was too large "
                "to store",
                file=err,
            )
        else:
            print(render_value(result.return_value if result else None), file=out)
    else:
        print(f"codeexec: failed: {failure_summary(execution)}", file=err)
        if result is not None and result.error is not None and result.error.traceback:
            err.write(result.error.traceback.rstrip("\n") + "\n")
    out.flush()
    err.flush()
    return code


# --- subcommands ----------------------------------------------------------------------------


def _client(namespace: str | None) -> Client:
    from codeexec.client import Client

    return Client(namespace=namespace)


async def run_file(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from codeexec.client import WaitTimeout

    path = Path(args.file)
    language = infer_language(args.file, args.language)
    arguments = parse_arguments(args.arg or [], args.args_json)
    try:
        code = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from error
    progress = Progress(err, quiet=args.quiet)
    async with _client(args.namespace) as cx:
        created = await cx.submit(
            code,
            language=language,
            arguments=arguments,
            timeout_seconds=args.timeout,
            pool=args.pool,
            labels={"app.kubernetes.io/created-by": "codeexec-cli"},
        )
        if not args.quiet:
            print(f"codeexec: created {cx.namespace}/{created.name}", file=err, flush=True)
        wait_limit = (args.timeout or created.spec.timeout_seconds) + WAIT_MARGIN_SECONDS
        try:
            done = await cx.wait(created.name, timeout=wait_limit, on_update=progress)
        except WaitTimeout as error:
            print(f"codeexec: {error}; is the operator running?", file=err)
            return EXIT_WAIT
        finally:
            # Also on Ctrl-C (CancelledError): deleting the resource makes the operator stop
            # the code and free its pod.
            if not args.keep:
                await asyncio.shield(_delete_quietly(cx, created.name))
        return report(done, out, err)


async def _delete_quietly(cx: Client, name: str) -> None:
    from codeexec.kube.client import ApiError

    # Best effort: what could not be deleted stays for the user (or a TTL) to clean up.
    with contextlib.suppress(ApiError, OSError):
        await cx.delete(name)


async def get_one(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from codeexec.api.models import CodeExecution
    from codeexec.kube.client import CODE_EXECUTIONS

    async with _client(args.namespace) as cx:
        body = await cx.kube.get(CODE_EXECUTIONS, args.name, cx.namespace)
    if args.output == "json":
        print(json.dumps(body, indent=2, ensure_ascii=False), file=out)
        return EXIT_OK
    if args.output == "yaml":
        import yaml

        out.write(yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
        return EXIT_OK
    execution = CodeExecution.from_body(body)
    print(table([LIST_HEADER, summary_row(execution)]), file=out)
    if execution.finished:
        result = execution.status.result
        if result is not None and result.stdout:
            print(f"\nstdout:\n{result.stdout.rstrip()}", file=out)
        if result is not None and result.stderr:
            print(f"\nstderr:\n{result.stderr.rstrip()}", file=out)
        if exit_code(execution) != EXIT_OK:
            print(f"\nfailed: {failure_summary(execution)}", file=out)
    return EXIT_OK


async def list_all(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with _client(args.namespace) as cx:
        executions = await cx.list(label_selector=args.selector)
    if not executions:
        print(f"no CodeExecutions in namespace {cx.namespace}", file=err)
        return EXIT_OK
    rows = [LIST_HEADER, *(summary_row(e) for e in sorted(executions, key=lambda e: e.name))]
    print(table(rows), file=out)
    return EXIT_OK


async def wait_all(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Waits until the named executions (default: all in the namespace) are finished,
    whatever their outcome; `run` is the command whose exit code tells success."""
    from codeexec.client import WaitTimeout

    async with _client(args.namespace) as cx:
        names = list(args.names) or [e.name for e in await cx.list()]
        try:
            await asyncio.gather(*(cx.wait(n, timeout=args.timeout) for n in names))
        except WaitTimeout as error:
            print(f"codeexec: {error}; is the operator running?", file=err)
            return EXIT_WAIT
    return EXIT_OK


def _user_command(
    func: Callable[[argparse.Namespace, TextIO, TextIO], Any],
) -> Callable[[argparse.Namespace], int]:
    """Runs an async subcommand and turns the errors users can act on into exit codes."""

    def run(args: argparse.Namespace) -> int:
        from codeexec.kube.client import ApiError

        try:
            code: int = asyncio.run(func(args, sys.stdout, sys.stderr))
            return code
        except UsageError as error:
            print(f"codeexec: {error}", file=sys.stderr)
            return EXIT_USAGE
        except ApiError as error:
            print(f"codeexec: the API server said: {error}", file=sys.stderr)
            return EXIT_API
        except (OSError, RuntimeError, ValueError) as error:
            # No kubeconfig, unreachable server, broken TLS: say what and stop.
            print(f"codeexec: cannot reach Kubernetes: {error}", file=sys.stderr)
            return EXIT_API
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


def _namespace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        help="namespace (default: the kubeconfig context's, else default)",
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; `command` (the subcommand about to be parsed) lets the
    gateway's arguments be loaded only for `codeexec gateway`."""
    parser = argparse.ArgumentParser(
        prog="codeexec",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="exit codes of run: 0 succeeded, 1 the execution failed, 2 usage, "
        "3 API error, 4 gave up waiting",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    op = sub.add_parser("operator", help="run the operator")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=run_operator)
    gw = sub.add_parser("gateway", help="serve the original sandbox's HTTP API (POST /run)")
    if command == "gateway":
        # Only when asked for: the gateway's module pulls in its web stack, which would slow
        # down every other subcommand.
        from codeexec.gateway import app as gateway_app

        gateway_app.add_arguments(gw)
        gw.set_defaults(func=gateway_app.main)

    run = sub.add_parser(
        "run",
        help="run a file in a sandbox and print its output and return value",
        description="Creates a CodeExecution from FILE, waits for it (progress on stderr), "
        "prints the program's stdout and stderr, then the return value of main as JSON. "
        "Exits 0 only if it succeeded.",
    )
    run.add_argument("file", metavar="FILE", help="a .py or .js file defining main")
    run.add_argument("--language", choices=["python", "nodejs"], help="default: from FILE's suffix")
    run.add_argument(
        "--arg",
        action="append",
        metavar="KEY=VALUE",
        help='an argument of main; VALUE is JSON if it parses (5, true, [1], "s"), '
        "else a string; repeatable",
    )
    run.add_argument("--args-json", metavar="JSON", help="all arguments as one JSON object")
    run.add_argument("--timeout", type=int, metavar="SECONDS", help="spec.timeoutSeconds")
    run.add_argument("--pool", help="the SandboxPool (default: the language's default pool)")
    _namespace_option(run)
    run.add_argument("--keep", action="store_true", help="keep the CodeExecution afterwards")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    run.set_defaults(func=_user_command(run_file))

    get = sub.add_parser("get", help="show one CodeExecution")
    get.add_argument("name", metavar="NAME")
    _namespace_option(get)
    get.add_argument("-o", "--output", choices=["json", "yaml"], help="the whole resource")
    get.set_defaults(func=_user_command(get_one))

    ls = sub.add_parser("list", help="list CodeExecutions with their outcomes")
    _namespace_option(ls)
    ls.add_argument("-l", "--selector", help="label selector")
    ls.set_defaults(func=_user_command(list_all))

    wait = sub.add_parser("wait", help="wait until CodeExecutions are finished (any outcome)")
    wait.add_argument("names", nargs="*", metavar="NAME", help="default: all in the namespace")
    _namespace_option(wait)
    wait.add_argument("--timeout", type=float, default=600, metavar="SECONDS")
    wait.set_defaults(func=_user_command(wait_all))
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    sys.exit(args.func(args))
