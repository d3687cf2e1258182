"""What installing the project brings: the client and CLI without the operator's server
dependencies, and an operator image built from pinned versions that satisfy pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[2]
LOCK = ROOT / "images" / "operator" / "requirements.lock"
SERVER_ONLY = {"kopf", "prometheus-client"}


def project() -> dict[str, object]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_the_client_and_cli_install_without_kopf_or_server_dependencies() -> None:
    """caught: putting kopf back into [project] dependencies made this fail."""
    base = {canonicalize_name(Requirement(r).name) for r in project()["dependencies"]}  # type: ignore[attr-defined]
    assert not base & SERVER_ONLY
    extras = project()["optional-dependencies"]
    operator = {canonicalize_name(Requirement(r).name) for r in extras["operator"]}  # type: ignore[index]
    assert operator >= SERVER_ONLY
    # The installed distribution's metadata says the same (what pip resolves from).
    unconditional = {
        canonicalize_name(Requirement(r).name)
        for r in metadata.requires("codeexec-operator") or []
        if "extra ==" not in r
    }
    assert not unconditional & SERVER_ONLY


def test_the_cli_and_client_modules_import_no_server_dependency() -> None:
    code = (
        "import sys, codeexec.cli as c, codeexec.client, codeexec.completion, "
        "codeexec.printers; c.build_parser('run'); "
        "print(sorted(m for m in ('kopf', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_image_lock_pins_every_dependency_within_pyproject_bounds() -> None:
    """caught: a lock pinning kopf 1.44 (below pyproject's >=1.45) made this fail."""
    pins = lock()
    requirements = [*project()["dependencies"], *project()["optional-dependencies"]["operator"]]  # type: ignore[index]
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


def test_the_lock_is_what_this_environment_resolved() -> None:
    """The dev environment runs the tests with the versions the image ships (so a test run
    vouches for the image); `make lock` re-pins both at once."""
    pins = lock()
    differing = {
        name: (version, metadata.version(name))
        for name, version in pins.items()
        if _installed(name) and metadata.version(name) != version
    }
    assert not differing, f"installed versions differ from the lock: {differing}"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_the_operator_image_installs_from_the_lock_only() -> None:
    dockerfile = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --no-deps -r /src/requirements.lock" in dockerfile
    assert "pip check" in dockerfile
    # The package itself goes in without resolving anything beyond the lock.
    installs = [ln for ln in dockerfile.splitlines() if "pip install" in ln]
    assert all("--no-deps" in ln for ln in installs)
