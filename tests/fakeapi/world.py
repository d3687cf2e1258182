"""A small cluster on the fake API server: namespaces, a pool, a kubelet, executions."""

from __future__ import annotations

from typing import Any

from codeexec.api.models import GROUP, VERSION

from . import vtime
from .kubelet import Kubelet, Program, default_program
from .operator import SANDBOX, TENANT
from .server import JSON, FakeApi

TERMINAL = ("Succeeded", "Failed")


class World:
    def __init__(
        self,
        *,
        pool_size: int = 2,
        pool_spec: dict[str, Any] | None = None,
        program: Program = default_program,
        **kubelet: Any,
    ) -> None:
        self.api = FakeApi()
        self.kubelet = Kubelet(self.api, SANDBOX, program=program, **kubelet)
        for ns in (SANDBOX, TENANT, "codeexec-system"):
            self.api.create("namespaces", "", {"metadata": {"name": ns}})
        self.pool("python", size=pool_size, **(pool_spec or {}))
        self._n = 0

    def pool(self, name: str, *, size: int, **spec: Any) -> JSON:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SandboxPool",
            "metadata": {"name": name},
            "spec": {
                "language": "python",
                "image": "runner:test",
                "size": size,
                "default": True,
                **spec,
            },
        }
        return self.api.create("sandboxpools", "", body)

    def submit(
        self,
        n: int = 1,
        *,
        sleep: float = 0.05,
        name: str | None = None,
        namespace: str = TENANT,
        **spec: Any,
    ) -> JSON:
        self._n += 1
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CodeExecution",
            "metadata": {"name": name or f"ex-{self._n}"},
            "spec": {
                "language": "python",
                "code": "def main(n): return n",
                "arguments": {"n": n, "sleep": sleep},
                "timeoutSeconds": 30,
                **spec,
            },
        }
        return self.api.create("codeexecutions", namespace, body)

    def execution(self, name: str, namespace: str = TENANT) -> JSON | None:
        return self.api.read("codeexecutions", namespace, name)

    def phase(self, name: str, namespace: str = TENANT) -> str | None:
        ex = self.execution(name, namespace)
        return ((ex or {}).get("status") or {}).get("phase")

    def finished(self, *names: str) -> bool:
        return all(self.phase(n) in TERMINAL for n in names)

    async def wait_finished(self, *names: str, limit: float = 600.0) -> None:
        await vtime.until(lambda: self.finished(*names), limit=limit, what=f"{names} terminal")

    def pods(self) -> list[JSON]:
        return self.api.of("pods", SANDBOX)

    def warm_ready(self) -> int:
        return sum(
            1
            for p in self.pods()
            if p["metadata"]["labels"].get("codeexec.io/state") == "warm"
            and not p["metadata"].get("deletionTimestamp")
            and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        )

    def claimed_live(self, uid: str | None = None) -> list[JSON]:
        return [
            p
            for p in self.pods()
            if p["metadata"]["labels"].get("codeexec.io/claimed-by")
            and (uid is None or p["metadata"]["labels"]["codeexec.io/claimed-by"] == uid)
        ]
