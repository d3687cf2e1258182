"""The `codeexec` command (also `kubectl codeexec`): `operator` runs the controller; the
other subcommands serve users, with kubectl's conventions.

    codeexec run FILE|- [--arg k=v ...] [--args-json JSON] [--language L] [--timeout S]
                        [--pool P] [--keep] [--quiet] [-o json|yaml|wide|name]
    codeexec get [NAME ...] [-A] [-l SELECTOR] [-o json|yaml|wide|name]
    codeexec list [-A] [-l SELECTOR] [-o json|yaml|wide|name]
    codeexec wait [NAME ...] [--timeout S]
    codeexec completion bash|zsh|fish
  every user subcommand takes --kubeconfig PATH, --context NAME and -n NAMESPACE.

Only the `operator` subcommand imports Kopf: the user-facing ones start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from codeexec.cliinput import LANGUAGE_BY_SUFFIX as LANGUAGE_BY_SUFFIX
from codeexec.cliinput import UsageError as UsageError
from codeexec.cliinput import infer_language as infer_language
from codeexec.cliinput import parse_arguments as parse_arguments
from codeexec.cliinput import parse_value as parse_value
from codeexec.cliinput import read_code, read_input_files
from codeexec.printers import LIST_HEADER as LIST_HEADER  # re-exported for scripts and tests
from codeexec.printers import OUTPUTS, failure_summary, render, render_value
from codeexec.printers import shorten as shorten
from codeexec.printers import summary_row as summary_row
from codeexec.printers import table as table

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
EXIT_CODES_HELP = (
    "exit codes: 0 succeeded, 1 the execution ran (or was refused) and failed, 2 usage error, "
    "3 the API server refused or could not be reached (or the kubeconfig is unusable), "
    "4 gave up waiting (is the operator running?), 130 interrupted"
)

# Beyond the execution's own timeout: the queue (a pool's queueTimeoutSeconds, 120 s by
# default) and the operator's grace. Past this the operator is most likely not running.
WAIT_MARGIN_SECONDS = 300


# --- the operator (unchanged) ---------------------------------------------------------------


def run_operator(args: argparse.Namespace) -> int:
    try:
        import kopf
    except ImportError:
        print(
            "codeexec: the operator needs its server dependencies: "
            "pip install 'codeexec-operator[operator]'",
            file=sys.stderr,
        )
        return EXIT_USAGE

    from codeexec import handlers  # registers the handlers
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
            stop_flag=handlers.STOP,
        )
    )
    # Stopped by the watchdog: a non-zero exit, so that whoever runs us starts a fresh process.
    return handlers.EXIT_WATCHDOG if handlers.died() else 0


# --- pure helpers (unit-tested) -------------------------------------------------------------


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
                f"codeexec: the return value was not stored ({result.why_not_stored()})", file=err
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


def _client(args: argparse.Namespace) -> Client:
    from codeexec.client import Client

    return Client(
        namespace=args.namespace,
        kubeconfig=args.kubeconfig,
        context=args.context,
        component="cli",
    )


async def save_artifacts(cx: Client, done: CodeExecution, directory: str, err: TextIO) -> None:
    """Writes each artifact of `done` into directory, checked against its SHA-256."""
    for artifact in cx.artifacts(done):
        path = await artifact.save(directory)
        print(f"codeexec: saved {path} ({artifact.size} bytes)", file=err, flush=True)


async def run_file(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from codeexec.client import WaitTimeout
    from codeexec.kube.client import CODE_EXECUTIONS

    language = infer_language(args.file, args.language)
    arguments = parse_arguments(args.arg or [], args.args_json)
    files = read_input_files(args.input_files or [])
    code = await asyncio.to_thread(read_code, args.file)
    if not code.strip():
        raise UsageError(f"{'stdin' if args.file == '-' else args.file} holds no code")
    progress = Progress(err, quiet=args.quiet)
    async with _client(args) as cx:
        created = await cx.submit(
            code,
            language=language,
            arguments=arguments,
            timeout_seconds=args.timeout,
            pool=args.pool,
            labels={"app.kubernetes.io/created-by": "codeexec-cli"},
            files=files,
        )
        if not args.quiet:
            print(f"codeexec: created {cx.namespace}/{created.name}", file=err, flush=True)
        wait_limit = (args.timeout or created.spec.timeout_seconds) + WAIT_MARGIN_SECONDS
        try:
            done = await cx.wait(created.name, timeout=wait_limit, on_update=progress)
            if args.artifacts_dir:
                # Before the resource (and with it the default store's Secret) is deleted.
                await save_artifacts(cx, done, args.artifacts_dir, err)
            if args.output:
                body = await cx.kube.get(CODE_EXECUTIONS, created.name, cx.namespace)
                print(render([body], args.output, single=True), file=out, flush=True)
                return exit_code(done)
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


def _details(body: dict[str, Any]) -> str:
    """What `get NAME` adds under the row of a finished execution: its output and error."""
    from codeexec.api.models import CodeExecution

    execution = CodeExecution.from_body(body)
    lines: list[str] = []
    result = execution.status.result
    if execution.finished:
        if result is not None and result.stdout:
            lines.append(f"\nstdout:\n{result.stdout.rstrip()}")
        if result is not None and result.stderr:
            lines.append(f"\nstderr:\n{result.stderr.rstrip()}")
        if exit_code(execution) != EXIT_OK:
            lines.append(f"\nfailed: {failure_summary(execution)}")
    return "\n".join(lines)


async def get_some(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`get NAME...` shows those; `get` and `list` show all (in the namespace, or with -A
    in every namespace), as kubectl does."""
    from codeexec.kube.client import CODE_EXECUTIONS

    names = list(getattr(args, "names", None) or [])
    if names and args.all_namespaces:
        raise UsageError("a name cannot be combined with -A (names are per namespace)")
    if names and args.selector:
        raise UsageError("a name cannot be combined with -l")
    artifacts_dir = getattr(args, "artifacts_dir", None)
    if artifacts_dir and len(names) != 1:
        raise UsageError("--artifacts-dir needs exactly one NAME")
    async with _client(args) as cx:
        if names:
            bodies = [await cx.kube.get(CODE_EXECUTIONS, n, cx.namespace) for n in names]
            if artifacts_dir:
                from codeexec.api.models import CodeExecution as Execution

                await save_artifacts(cx, Execution.from_body(bodies[0]), artifacts_dir, err)
        else:
            listing = await cx.kube.list(
                CODE_EXECUTIONS,
                None if args.all_namespaces else cx.namespace,
                label_selector=args.selector,
            )
            bodies = sorted(
                listing.get("items", []),
                key=lambda b: (b["metadata"].get("namespace", ""), b["metadata"]["name"]),
            )
    if not bodies and args.output not in ("json", "yaml"):
        where = "any namespace" if args.all_namespaces else f"namespace {cx.namespace}"
        print(f"No CodeExecutions found in {where}.", file=err)
        return EXIT_OK
    text = render(bodies, args.output, single=len(names) == 1, all_namespaces=args.all_namespaces)
    print(text, file=out)
    if len(names) == 1 and args.output in (None, "wide"):
        details = _details(bodies[0])
        if details:
            print(details, file=out)
    return EXIT_OK


async def wait_all(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Waits until the named executions (default: all in the namespace) are finished,
    whatever their outcome; `run` is the command whose exit code tells success."""
    from codeexec.client import WaitTimeout

    async with _client(args) as cx:
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
        from codeexec.kube.config import ConfigError

        try:
            code: int = asyncio.run(func(args, sys.stdout, sys.stderr))
            return code
        except UsageError as error:
            print(f"codeexec: {error}", file=sys.stderr)
            return EXIT_USAGE
        except ApiError as error:
            print(f"codeexec: the API server said: {error}", file=sys.stderr)
            return EXIT_API
        except ConfigError as error:
            print(f"codeexec: {error}", file=sys.stderr)
            return EXIT_API
        except (OSError, RuntimeError, ValueError) as error:
            # No kubeconfig, unreachable server, broken TLS: say what and stop.
            print(f"codeexec: cannot reach Kubernetes: {error}", file=sys.stderr)
            return EXIT_API
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


def _cluster_options() -> argparse.ArgumentParser:
    """kubectl's connection options, shared by every user subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file(s), joined by ':' (default: $KUBECONFIG, in-cluster, ~/.kube/config)",
    )
    common.add_argument("--context", help="the kubeconfig context to use (default: current)")
    common.add_argument(
        "-n",
        "--namespace",
        help="namespace (default: the kubeconfig context's, else default)",
    )
    return common


def _output_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUTS, help=what)


def build_parser(command: str | None = None, prog: str = "codeexec") -> argparse.ArgumentParser:
    """The whole command line; `command` (the subcommand about to be parsed) lets the
    gateway's arguments be loaded only for `codeexec gateway`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=EXIT_CODES_HELP,
    )
    common = _cluster_options()
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
    mcp = sub.add_parser(
        "mcp",
        parents=[common],
        help="serve the run_python / run_nodejs tools over the Model Context Protocol",
        description="An MCP server (stdio, or streamable HTTP) whose tools run code as "
        "CodeExecutions in the namespace; see docs/mcp.md. Needs the `mcp` extra.",
    )
    if command == "mcp":
        # Only when asked for, like the gateway: it pulls in the client and the MCP SDK.
        from codeexec import mcpserver

        mcpserver.add_arguments(mcp)
        mcp.set_defaults(func=mcpserver.main)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a file (or stdin) in a sandbox and print its output and return value",
        description="Creates a CodeExecution from FILE ('-' reads the code from stdin), waits "
        "for it (progress on stderr), prints the program's stdout and stderr, then the return "
        "value of main as JSON; with -o, the finished CodeExecution instead. "
        "Exits 0 only if it succeeded.",
        epilog=EXIT_CODES_HELP,
    )
    run.add_argument("file", metavar="FILE", help="a .py or .js file defining main, or -")
    run.add_argument(
        "--language",
        choices=["python", "nodejs"],
        help="default: from FILE's suffix (python for stdin)",
    )
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
    run.add_argument(
        "--file",
        dest="input_files",
        action="append",
        metavar="LOCAL[:NAME]",
        help="put a local file in the code's working directory (as NAME, default its base "
        "name); repeatable; see docs/artifacts.md for the limits",
    )
    run.add_argument(
        "--artifacts-dir",
        metavar="DIR",
        help="save the files the code wrote to ./artifacts/ into DIR",
    )
    run.add_argument("--keep", action="store_true", help="keep the CodeExecution afterwards")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    _output_option(run, "print the finished CodeExecution in this format instead of its output")
    run.set_defaults(func=_user_command(run_file))

    def listing(name: str, help_text: str, with_names: bool) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, epilog=EXIT_CODES_HELP)
        if with_names:
            p.add_argument("names", nargs="*", metavar="NAME", help="default: all")
            p.add_argument(
                "--artifacts-dir", metavar="DIR", help="with one NAME: save its artifacts into DIR"
            )
        p.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
        p.add_argument("-l", "--selector", help="label selector")
        _output_option(p, "wide adds pool, pod, node and age; name prints kind/name")
        p.set_defaults(func=_user_command(get_some))
        return p

    listing("get", "show CodeExecutions (all, or the NAMEs given)", with_names=True)
    listing("list", "list CodeExecutions with their outcomes", with_names=False)

    wait = sub.add_parser(
        "wait", parents=[common], help="wait until CodeExecutions are finished (any outcome)"
    )
    wait.add_argument("names", nargs="*", metavar="NAME", help="default: all in the namespace")
    wait.add_argument("--timeout", type=float, default=600, metavar="SECONDS")
    wait.set_defaults(func=_user_command(wait_all))

    comp = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Add to your shell's start-up file, e.g. for bash: "
        "source <(codeexec completion bash); zsh: source <(codeexec completion zsh); "
        "fish: codeexec completion fish | source",
    )
    comp.add_argument("shell", choices=["bash", "zsh", "fish"])
    comp.set_defaults(func=_completion_script)
    hidden = sub.add_parser("__complete")  # the scripts call it; not in --help
    hidden.add_argument("words", nargs=argparse.REMAINDER)
    hidden.set_defaults(func=_complete_words)
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != "__complete"]
    return parser


def _completion_script(args: argparse.Namespace) -> int:
    from codeexec import completion

    print(completion.script(args.shell))
    return EXIT_OK


def _complete_words(args: argparse.Namespace) -> int:
    from codeexec import completion

    for word in completion.candidates(build_parser(), list(args.words)):
        print(word)
    return EXIT_OK


def main(argv: list[str] | None = None, prog: str = "codeexec") -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command, prog).parse_args(argv)
    sys.exit(args.func(args))


def kubectl_main() -> None:
    """`kubectl-codeexec` on PATH makes this `kubectl codeexec ...` (a kubectl plugin)."""
    main(prog="kubectl codeexec")


def kubectl_complete() -> None:
    """`kubectl_complete-codeexec`: kubectl (1.26+) asks it to complete `kubectl codeexec`
    and expects cobra's format: one candidate per line, then a `:directive` line."""
    from codeexec import completion

    words = completion.candidates(build_parser(), sys.argv[1:])
    # 0: the shell may add file names (FILE of run); 4: it should not.
    directive = 0 if not words else 4
    print("\n".join([*words, f":{directive}"]))
