#!/usr/bin/env python3
"""Print a content hash of what a Dockerfile build reads: the Dockerfile itself plus every
file its COPY/ADD instructions take from the build context.

images.sh tags each image with this hash and skips the build when it has not changed, so
the hash must cover everything that can change the image's content, and nothing else (a
change under tests/ must not rebuild the operator image, whose context is the repo root).

Only the standard library: this runs before any virtualenv exists.

Usage: inputs.py DOCKERFILE CONTEXT [IGNORE_FILE...]
  IGNORE_FILE: .dockerignore-style files; their patterns are left out of the hash, as
  buildah (given the same patterns with --ignorefile) leaves them out of the image.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import shlex
import stat
import sys
from collections.abc import Iterator


def logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with backslash continuations joined and comments dropped."""
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        yield current
        current = ""
    if current:
        yield current


def copy_sources(dockerfile_text: str) -> list[str]:
    """Context paths named by COPY/ADD, skipping copies from other stages (--from=)."""
    sources: list[str] = []
    for line in logical_lines(dockerfile_text):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() not in ("COPY", "ADD"):
            continue
        rest = rest.strip()
        from_stage = False
        while rest.startswith("--"):  # flags first: --chown=, --chmod=, --from=, --link
            flag, _, rest = rest.partition(" ")
            rest = rest.strip()
            from_stage = from_stage or flag.startswith("--from=")
        if from_stage or not rest:
            continue
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        # The last word is the destination; a URL source of ADD is not in the context.
        sources.extend(w for w in words[:-1] if "://" not in w)
    return sources


def read_patterns(paths: list[str]) -> list[str]:
    patterns: list[str] = []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and not line.startswith("!"):
                    patterns.append(line.strip("/"))
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    """Approximate .dockerignore matching: a pattern matches the path or any parent, and
    a `**/` prefix matches at any depth. Over-including only costs a spare rebuild."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern[3:] if pattern.startswith("**/") else None
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if bare is not None and any(fnmatch.fnmatchcase(p, bare) for p in prefix.split("/")):
                return True
    return False


def walk(context: str, source: str, patterns: list[str]) -> Iterator[str]:
    """Context-relative paths of the files a COPY source expands to, sorted."""
    matches = sorted(glob.glob(os.path.join(context, source.lstrip("/")))) or [
        os.path.join(context, source.lstrip("/"))  # missing: hashed as "missing"
    ]
    for match in matches:
        rel = os.path.relpath(match, context)
        if rel != "." and ignored(rel, patterns):
            continue
        if os.path.isdir(match) and not os.path.islink(match):
            for root, dirs, files in os.walk(match):
                dirs.sort()
                keep = []
                for d in dirs:
                    drel = os.path.relpath(os.path.join(root, d), context)
                    if not ignored(drel, patterns):
                        keep.append(d)
                dirs[:] = keep
                for name in sorted(files):
                    frel = os.path.relpath(os.path.join(root, name), context)
                    if not ignored(frel, patterns):
                        yield frel
        else:
            yield rel


def file_digest(path: str) -> str:
    """Type, exec bit and content (or link target) of one file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{'x' if st.st_mode & 0o111 else '-'}:{h.hexdigest()}"


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    dockerfile, context, *ignore_files = sys.argv[1:]
    with open(dockerfile, encoding="utf-8") as f:
        text = f.read()
    patterns = read_patterns(ignore_files)
    h = hashlib.sha256()
    h.update(b"dockerfile\0" + text.encode() + b"\0")
    seen: set[str] = set()
    for source in copy_sources(text):
        for rel in walk(context, source, patterns):
            if rel in seen:
                continue
            seen.add(rel)
            h.update(f"{rel}\0{file_digest(os.path.join(context, rel))}\0".encode())
    if os.environ.get("INPUTS_VERBOSE"):
        for rel in sorted(seen):
            print(rel, file=sys.stderr)
    print(h.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
