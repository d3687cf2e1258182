"""The run's task peak in the report: the cgroup's peak counts only when the run raised it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

RUNNER = Path(__file__).resolve().parents[2] / "images" / "runner"


def _evidence() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runner_evidence", RUNNER / "evidence.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _watch(root: Path, current: int, peak: int) -> object:
    ev = _evidence()
    (root / "pids.current").write_text(f"{current}\n")
    (root / "pids.peak").write_text(f"{peak}\n")
    return ev.Watch(ev.Kernel(str(root)), process_limit=16, scratch=str(root), cwd=str(root))


def test_a_warm_up_peak_is_not_the_runs(tmp_path: Path) -> None:
    """numpy's threads and the start-up probe set the container's peak before the run (9 of
    16 here): a program that forks nothing must not carry it (it would make a forged EAGAIN
    look like the process limit). Caught: the report carried the lifetime peak, and a CI run's
    forged EAGAIN ended ProcessLimit."""
    w = _watch(tmp_path, current=3, peak=9)
    w.begin()  # type: ignore[attr-defined]
    seen = w.end(None)  # type: ignore[attr-defined]
    assert seen["tasksPeak"] == 3


def test_a_peak_the_run_raised_is_the_runs(tmp_path: Path) -> None:
    """A fork bomb raises the cgroup's peak between two samples: the kernel's reading counts."""
    w = _watch(tmp_path, current=3, peak=9)
    w.begin()  # type: ignore[attr-defined]
    (tmp_path / "pids.peak").write_text("15\n")
    (tmp_path / "pids.current").write_text("2\n")
    seen = w.end(None)  # type: ignore[attr-defined]
    assert seen["tasksPeak"] == 15
