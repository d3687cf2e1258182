"""Input files (`spec.files`): their bounds, their paths, and resolving each to bytes.

A ConfigMap or Secret is read from the execution's own namespace only: the reference names no
other (a `namespace` that differs is refused, not ignored), and a Secret is read only when the
operator was given that right (`CODEEXEC_FILES_FROM_SECRETS`) and the Secret itself opts in with
the label `codeexec.io/input-file: "true"`, since the operator reads with its own rights, not
the tenant's.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from codeexec.api.models import InputFile, KeyRef
from codeexec.kube.client import CONFIG_MAPS, SECRETS, ApiError, Kube

# The request line carries the files as base64 beside code (128 KiB) and arguments
# (256 KiB); 512 KiB of files keep it near 1.1 MiB and the CodeExecution itself (inline
# sources) under etcd's 1.5 MiB request limit.
MAX_FILES = 20
MAX_FILE_BYTES = 256 * 1024
MAX_TOTAL_BYTES = 512 * 1024
MAX_PATH_DEPTH = 8
SECRET_OPT_IN_LABEL = "codeexec.io/input-file"
# Where the runner collects artifacts; an input file may not be placed there.
ARTIFACTS_DIR = "artifacts"


class FileProblem(Exception):
    """A file that cannot be given to the code; ends the execution with InvalidRequest."""


def path_problem(path: str) -> str | None:
    """Why `path` would leave the working directory (or is otherwise unusable), else None."""
    if not path or len(path) > 255:
        return "a file path must be 1-255 characters"
    if path.startswith("/"):
        return f"file path {path!r} is absolute; paths are relative to the working directory"
    if "\\" in path or "\x00" in path:
        return f"file path {path!r} must use '/' separators and no NUL"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"file path {path!r} must not contain '..', '.' or empty components"
    if len(parts) > MAX_PATH_DEPTH:
        return f"file path {path!r} is nested more than {MAX_PATH_DEPTH} levels"
    if parts[0] == ARTIFACTS_DIR:
        return f"file path {path!r} is inside {ARTIFACTS_DIR}/, which is for the code's output"
    return None


def static_problem(files: list[InputFile], namespace: str) -> str | None:
    """What is wrong with spec.files before anything is read (count, paths, sources)."""
    if len(files) > MAX_FILES:
        return f"spec.files has {len(files)} files; the limit is {MAX_FILES}"
    seen: set[str] = set()
    for f in files:
        problem = path_problem(f.path)
        if problem is not None:
            return problem
        if f.path in seen:
            return f"file path {f.path!r} is given twice"
        seen.add(f.path)
        sources = [f.content, f.content_b64, f.config_map_key_ref, f.secret_key_ref]
        if sum(s is not None for s in sources) != 1:
            return f"file {f.path!r} needs exactly one source"
        for ref in (f.config_map_key_ref, f.secret_key_ref):
            if ref is not None and ref.namespace not in (None, namespace):
                return (
                    f"file {f.path!r} refers to namespace {ref.namespace!r}; only this "
                    f"execution's namespace ({namespace}) can be read"
                )
    return None


@dataclass(frozen=True)
class Resolved:
    path: str
    data: bytes

    def wire(self) -> dict[str, str]:
        return {"path": self.path, "b64": base64.b64encode(self.data).decode("ascii")}


async def resolve(
    kube: Kube, files: list[InputFile], namespace: str, *, secrets_allowed: bool
) -> list[Resolved]:
    """Each file's bytes, within the bounds; FileProblem says why not."""
    problem = static_problem(files, namespace)
    if problem is not None:
        raise FileProblem(problem)
    out: list[Resolved] = []
    total = 0
    for f in files:
        if f.content is not None:
            data = f.content.encode("utf-8")
        elif f.content_b64 is not None:
            try:
                data = base64.b64decode(f.content_b64, validate=True)
            except (binascii.Error, ValueError) as err:
                raise FileProblem(f"file {f.path!r}: contentB64 is not valid base64") from err
        elif f.config_map_key_ref is not None:
            data = await _config_map_key(kube, f.path, f.config_map_key_ref, namespace)
        else:
            assert f.secret_key_ref is not None
            if not secrets_allowed:
                raise FileProblem(
                    f"file {f.path!r}: this operator does not read Secrets "
                    "(operator.filesFromSecrets is off)"
                )
            data = await _secret_key(kube, f.path, f.secret_key_ref, namespace)
        if len(data) > MAX_FILE_BYTES:
            raise FileProblem(
                f"file {f.path!r} is {len(data)} bytes; the limit is {MAX_FILE_BYTES} per file"
            )
        total += len(data)
        if total > MAX_TOTAL_BYTES:
            raise FileProblem(f"spec.files are over {MAX_TOTAL_BYTES} bytes in all")
        out.append(Resolved(f.path, data))
    return out


async def _read(kube: Kube, what: str, ref: KeyRef, namespace: str) -> dict[str, Any]:
    res = CONFIG_MAPS if what == "ConfigMap" else SECRETS
    try:
        return await kube.get(res, ref.name, namespace)
    except ApiError as err:
        if err.status in (403, 404):
            # The same words either way: whether it exists is not the tenant's to learn here.
            raise FileProblem(f"{what} {namespace}/{ref.name} cannot be read") from err
        raise


async def _config_map_key(kube: Kube, path: str, ref: KeyRef, namespace: str) -> bytes:
    body = await _read(kube, "ConfigMap", ref, namespace)
    text = (body.get("data") or {}).get(ref.key)
    if isinstance(text, str):
        return text.encode("utf-8")
    raw = (body.get("binaryData") or {}).get(ref.key)
    if isinstance(raw, str):
        return base64.b64decode(raw)
    raise FileProblem(f"file {path!r}: ConfigMap {ref.name} has no key {ref.key!r}")


async def _secret_key(kube: Kube, path: str, ref: KeyRef, namespace: str) -> bytes:
    body = await _read(kube, "Secret", ref, namespace)
    labels = (body.get("metadata") or {}).get("labels") or {}
    if labels.get(SECRET_OPT_IN_LABEL) != "true":
        raise FileProblem(
            f"file {path!r}: Secret {ref.name} is not labelled {SECRET_OPT_IN_LABEL}=true"
        )
    raw = (body.get("data") or {}).get(ref.key)
    if not isinstance(raw, str):
        raise FileProblem(f"file {path!r}: Secret {ref.name} has no key {ref.key!r}")
    return base64.b64decode(raw)
