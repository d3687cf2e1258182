"""`codeexec mcp`: a Model Context Protocol server whose tools run code as CodeExecutions.

Tools `run_python` and `run_nodejs` take code, arguments, input files and a timeout; each call
creates one CodeExecution (so RBAC, pools, limits and audit are Kubernetes'), waits for it,
reads its artifacts and deletes it. The result carries the classified reason, the return
value, stdout/stderr, and the artifacts: images as MCP image content, other files as embedded
resources. Needs the `mcp` extra (the official MCP Python SDK); stdio or streamable HTTP.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import sys
from typing import Any

from codeexec.api.models import CodeExecution, Language
from codeexec.client import Artifact, Client, input_file

log = logging.getLogger(__name__)

# What one call waits for beyond the code's own timeout (a warm pod, the status writes).
WAIT_MARGIN_SECONDS = 120
# Left on each CodeExecution in case the server dies before it deletes it.
TTL_SECONDS = 600
MAX_TIMEOUT_SECONDS = 300
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

RUN_DESCRIPTION = """Run {lang} code in a single-use Kubernetes sandbox (no network, a time and
memory limit) and return main's value, stdout/stderr and the files it wrote.

The code must define {entry}. `arguments` are passed to main ({call}). `files` are input files
placed in the working directory before main runs: a list of {{"path": "data.csv", "content":
"text"}} or {{"path": "x.bin", "content_b64": "..."}}; open them by relative path. Files the
code writes under ./artifacts/ come back (at most 10; images as image content)."""


def summary(done: CodeExecution, artifacts: list[Artifact]) -> dict[str, Any]:
    """The text part of a tool result: what an agent needs to reason about the run."""
    res = done.status.result
    out: dict[str, Any] = {
        "phase": done.status.phase.value if done.status.phase else None,
        "reason": done.status.reason,
        "message": done.status.message,
    }
    if res is not None:
        out.update(
            status=res.status,
            return_value=res.return_value,
            stdout=res.stdout,
            stderr=res.stderr,
            exit_code=res.exit_code,
        )
        if res.error is not None:
            out["error"] = {"type": res.error.type, "message": res.error.message}
        if res.artifacts_skipped:
            out["artifacts_skipped"] = res.artifacts_skipped
    out["artifacts"] = [
        {"name": a.name, "size": a.size, "content_type": a.content_type, "sha256": a.sha256}
        for a in artifacts
    ]
    return out


async def run_code(
    cx: Client,
    language: Language,
    code: str,
    arguments: dict[str, Any] | None,
    files: list[dict[str, str]] | None,
    timeout_seconds: int,
    pool: str | None = None,
) -> tuple[CodeExecution, list[tuple[Artifact, bytes]]]:
    """One CodeExecution: created, awaited, its artifacts read, deleted."""
    spec_files = []
    for f in files or []:
        path = str(f.get("path") or "")
        if "content_b64" in f:
            spec_files.append(input_file(path, base64.b64decode(f["content_b64"], validate=True)))
        else:
            spec_files.append(input_file(path, str(f.get("content") or "")))
    timeout = max(1, min(int(timeout_seconds), MAX_TIMEOUT_SECONDS))
    created = await cx.submit(
        code,
        language=language,
        arguments=arguments or {},
        timeout_seconds=timeout,
        pool=pool,
        files=spec_files,
        ttl_seconds_after_finished=TTL_SECONDS,
        labels={"app.kubernetes.io/created-by": "codeexec-mcp"},
    )
    try:
        done = await cx.wait(created.name, timeout=timeout + WAIT_MARGIN_SECONDS)
        read = [(a, await a.read()) for a in cx.artifacts(done)]
        return done, read
    finally:
        with contextlib.suppress(Exception):
            await cx.delete(created.name)


def tool_result(done: CodeExecution, read: list[tuple[Artifact, bytes]]) -> Any:
    """A CallToolResult: the summary as text, then each artifact."""
    from mcp_types import (
        BlobResourceContents,
        CallToolResult,
        EmbeddedResource,
        ImageContent,
        TextContent,
    )

    text = json.dumps(summary(done, [a for a, _ in read]), ensure_ascii=False, indent=2)
    content: list[Any] = [TextContent(type="text", text=text)]
    for artifact, data in read:
        b64 = base64.b64encode(data).decode("ascii")
        if artifact.content_type in IMAGE_TYPES:
            content.append(ImageContent(type="image", data=b64, mime_type=artifact.content_type))
        else:
            uri = f"codeexec://{done.namespace}/{done.name}/artifacts/{artifact.name}"
            blob = BlobResourceContents(uri=uri, mime_type=artifact.content_type, blob=b64)
            content.append(EmbeddedResource(type="resource", resource=blob))
    failed = done.status.reason not in ("Succeeded", None)
    return CallToolResult(content=content, is_error=failed)


def build_server(cx: Client, pools: dict[str, str | None]) -> Any:
    from mcp.server.mcpserver import MCPServer

    server: Any = MCPServer(
        name="codeexec",
        instructions="Run Python or Node.js code in Kubernetes sandboxes (CodeExecutions).",
    )

    async def run_python(
        code: str,
        arguments: dict[str, Any] | None = None,
        files: list[dict[str, str]] | None = None,
        timeout_seconds: int = 30,
    ) -> Any:
        done, read = await run_code(
            cx, "python", code, arguments, files, timeout_seconds, pools.get("python")
        )
        return tool_result(done, read)

    async def run_nodejs(
        code: str,
        arguments: dict[str, Any] | None = None,
        files: list[dict[str, str]] | None = None,
        timeout_seconds: int = 30,
    ) -> Any:
        done, read = await run_code(
            cx, "nodejs", code, arguments, files, timeout_seconds, pools.get("nodejs")
        )
        return tool_result(done, read)

    server.tool(
        name="run_python",
        description=RUN_DESCRIPTION.format(
            lang="Python", entry="def main(...)", call="main(**arguments)"
        ),
    )(run_python)
    server.tool(
        name="run_nodejs",
        description=RUN_DESCRIPTION.format(
            lang="Node.js",
            entry="main exported (module.exports = { main })",
            call="main(arguments)",
        ),
    )(run_nodejs)
    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=["stdio", "streamable-http"],
        default="stdio",
        help="stdio (an MCP client starts this command) or streamable HTTP",
    )
    parser.add_argument("--host", default="127.0.0.1", help="streamable HTTP: listen address")
    parser.add_argument("--port", type=int, default=8000, help="streamable HTTP: port")
    parser.add_argument("--pool-python", default=None, help="SandboxPool for run_python")
    parser.add_argument("--pool-nodejs", default=None, help="SandboxPool for run_nodejs")


def main(args: argparse.Namespace) -> int:
    try:
        import mcp  # noqa: F401
    except ImportError:
        # Never on stdout: with the stdio transport that is the protocol's channel.
        print(
            "codeexec mcp: needs the MCP SDK: pip install 'codeexec-operator[mcp]'",
            file=sys.stderr,
        )
        return 2
    import anyio

    logging.basicConfig(level=logging.WARNING)

    async def serve() -> None:
        cx = Client(
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            context=args.context,
            component="mcp",
        )
        try:
            server = build_server(cx, {"python": args.pool_python, "nodejs": args.pool_nodejs})
            if args.transport == "stdio":
                await server.run_stdio_async()
            else:
                await server.run_streamable_http_async(host=args.host, port=args.port)
        finally:
            await cx.kube.close()

    anyio.run(serve)
    return 0
