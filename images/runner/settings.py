"""The supervisor's settings from its command line and environment; the worker's command line."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass

import confine

import evidence

LANGUAGES = {"python": ("python", "worker.py"), "nodejs": ("nodejs", "worker.js")}
DEFAULT_MAX_PROCESSES = 256
# RLIMIT_FSIZE of the worker when the pod does not say (podspec passes the scratch size).
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass
class Config:
    language: str
    argv: list[str]
    max_processes: int
    termination_log: str
    cgroup: evidence.CgroupMemory
    ready_file: str | None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    scratch: str = "/tmp"
    proc_net: str = "/proc/self/net"
    landlock: int | None = None  # the kernel's Landlock ABI, if the worker is landlocked

    @property
    def write_roots(self) -> list[str]:
        """Where a landlocked worker may create and write files (confine.py)."""
        return [self.scratch, "/dev/shm", "/proc", *confine.WRITABLE_FILES]


def _worker_path(language: str, explicit: str | None) -> str:
    lang_dir, name = LANGUAGES[language]
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [explicit, os.environ.get("CODEEXEC_WORKER")]
    candidates += [os.path.join(here, name), os.path.join(here, os.pardir, lang_dir, name)]
    for path in candidates:
        if path and os.path.isfile(path):
            return os.path.abspath(path)
    raise SystemExit(f"codeexec supervisor: no {name} found (use --worker)")


def _worker_argv(
    language: str, worker: str, interpreter: str | None, cg: evidence.CgroupMemory
) -> list[str]:
    if language == "python":
        exe = interpreter or sys.executable or shutil.which("python3") or "/usr/bin/python3"
        # -I: no user site, no PYTHON* variables, no script dir on sys.path (the worker adds
        # the working directory, as `python main.py` would); -B: the root fs is read-only.
        return [exe, "-u", "-I", "-B", worker]
    exe = interpreter or shutil.which("node") or "/usr/bin/node"
    argv = [exe]
    limit = cg.limit_bytes()
    if limit is not None:
        # V8's heap limit above the container's: exhausting memory then ends in a kernel OOM
        # kill (counted by the cgroup, unforgeable) rather than V8's abort (SIGABRT + text).
        argv.append(f"--max-old-space-size={2 * limit // (1024 * 1024)}")
    return [*argv, worker]


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def parse_args(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(description="In-pod supervisor of a codeexec sandbox")
    parser.add_argument(
        "--language", choices=sorted(LANGUAGES), default=os.environ.get("CODEEXEC_LANGUAGE")
    )
    parser.add_argument("--worker", help="path of worker.py / worker.js")
    parser.add_argument("--interpreter", help="python3 or node binary for the worker")
    args = parser.parse_args(argv)
    if args.language not in LANGUAGES:
        parser.error("--language (or CODEEXEC_LANGUAGE) must be python or nodejs")
    cg = evidence.CgroupMemory(os.environ.get("CODEEXEC_CGROUP_ROOT", "/sys/fs/cgroup"))
    max_processes = _env_int("CODEEXEC_MAX_PROCESSES", DEFAULT_MAX_PROCESSES)
    max_file_bytes = _env_int("CODEEXEC_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES)
    worker = _worker_path(args.language, args.worker)
    return Config(
        language=args.language,
        argv=_worker_argv(args.language, worker, args.interpreter, cg),
        max_processes=max(max_processes, 1),
        max_file_bytes=max(max_file_bytes, 4096),
        scratch=os.path.abspath(os.environ.get("CODEEXEC_SCRATCH_DIR", "/tmp")),
        proc_net=os.environ.get("CODEEXEC_PROC_NET", "/proc/self/net"),
        landlock=confine.landlock_abi(),
        termination_log=os.environ.get("CODEEXEC_TERMINATION_LOG", "/dev/termination-log"),
        cgroup=cg,
        ready_file=os.environ.get("CODEEXEC_READY_FILE") or None,
    )
