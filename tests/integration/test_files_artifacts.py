"""Files in, artifacts out (issue 12), on the real cluster with the real operator and images.

One matplotlib chart is made once per store and checked byte for byte (SHA-256) through every
way out: the status listing, the store itself, the Python client and the CLI. The limits runs
share one namespace; each must end ArtifactLimit and keep what fits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from e2e.fixtures import Cluster

from codeexec.api.models import CodeExecution
from codeexec.client import Client, input_file
from codeexec.kube.client import CONFIG_MAPS, ApiError

pytestmark = pytest.mark.cluster

WAIT = 120.0  # a bound against hangs: a terminal status comes in seconds

CHART = """
import hashlib
import matplotlib.pyplot as plt

def main(title):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3, 4], [10, 20, 25, 30])
    ax.set_title(title)
    fig.savefig("artifacts/plot.png", dpi=50, metadata={"Software": None})
    plt.close(fig)
    with open("artifacts/plot.png", "rb") as f:
        return {"sha256": hashlib.sha256(f.read()).hexdigest()}
"""


async def _run(cx: Client, code: str, **kwargs: Any) -> CodeExecution:
    return await cx.run(code, wait_timeout=WAIT, **kwargs)


def _failed_before_running(done: CodeExecution) -> None:
    assert done.status.reason == "InvalidRequest", done.status
    assert done.status.result is not None and done.status.result.started is False
    assert done.status.sandbox is None or done.status.sandbox.pod is None


async def test_input_csv_and_configmap_file_are_computed_together(
    cx: Client, cluster: Cluster, namespace: str
) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "rates", "namespace": namespace},
            "data": {"rates.json": json.dumps({"a": 2, "b": 10})},
        }
    )
    code = (
        "import csv, json\n"
        "def main():\n"
        "    rates = json.load(open('conf/rates.json'))\n"
        "    rows = list(csv.DictReader(open('data.csv')))\n"
        "    return sum(int(r['n']) * rates[r['k']] for r in rows)\n"
    )
    files = [
        input_file("data.csv", "k,n\na,3\nb,4\n"),
        {"path": "conf/rates.json", "configMapKeyRef": {"name": "rates", "key": "rates.json"}},
    ]
    done = await _run(cx, code, files=files)
    assert done.status.reason == "Succeeded", done.status
    assert done.status.result is not None and done.status.result.return_value == 46


WORKBOOK = """
import hashlib
import pandas as pd

def main():
    df = pd.read_csv("data.csv")
    df["total"] = df["n"] * 2
    df.to_csv("artifacts/out.csv", index=False)
    df.to_excel("artifacts/out.xlsx", index=False, sheet_name="totals")
    back = pd.read_excel("artifacts/out.xlsx", sheet_name="totals")
    digests = {}
    for name in ("out.csv", "out.xlsx"):
        with open("artifacts/" + name, "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    return {"read_back": back["total"].tolist(), "sha256": digests}
"""


async def test_pandas_writes_csv_and_excel_artifacts(cx: Client, tmp_path: Path) -> None:
    """`to_csv` and `to_excel` work in the Python image and both files come back whole.
    Caught: without python3-openpyxl in images/python/Dockerfile, `to_excel` raised
    ModuleNotFoundError (UserException)."""
    done = await _run(cx, WORKBOOK, files=[input_file("data.csv", "k,n\na,3\nb,4\n")])
    assert done.status.reason == "Succeeded", done.status
    res = done.status.result
    assert res is not None
    assert res.return_value["read_back"] == [6, 8]
    made = res.return_value["sha256"]
    by_name = {a.name: a for a in res.artifacts}
    assert set(by_name) == {"out.csv", "out.xlsx"}
    for artifact in cx.artifacts(done):
        raw = await artifact.read()
        assert (
            hashlib.sha256(raw).hexdigest() == made[artifact.name] == by_name[artifact.name].sha256
        )
        if artifact.name == "out.csv":
            assert raw.decode() == "k,n,total\na,3,6\nb,4,8\n"
        else:  # an .xlsx is a zip holding the workbook and the named sheet
            saved = await artifact.save(tmp_path)
            with zipfile.ZipFile(saved) as book:
                assert "xl/workbook.xml" in book.namelist()
                assert b'name="totals"' in book.read("xl/workbook.xml")


async def test_an_escaping_path_is_refused_and_nothing_runs(
    cx: Client, cluster: Cluster, namespace: str
) -> None:
    """At admission (CEL) for the CRD, and by the operator for what admission cannot see."""
    code = "def main():\n    open('/tmp/ran', 'w')\n"
    for bad in ("../escape.txt", "/etc/passwd", "a/../../b"):
        with pytest.raises(ApiError) as refused:
            await cx.submit(code, files=[input_file(bad, "x")])
        assert refused.value.status == 422, bad
    # A path admission lets through but the operator refuses: artifacts/ is for output.
    done = await _run(cx, code, files=[input_file("artifacts/in.txt", "x")])
    _failed_before_running(done)


async def test_a_secret_of_another_namespace_is_refused_and_nothing_runs(
    cx: Client, cluster: Cluster, namespace: str
) -> None:
    """caught: without the namespace check in files.static_problem, this read the own
    namespace's Secret of that name and ran the code."""
    other = f"{namespace}-other"[:63]
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        for ns in (other, namespace):
            cluster.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": "token",
                        "namespace": ns,
                        "labels": {"codeexec.io/input-file": "true"},
                    },
                    "stringData": {"value": f"secret of {ns}"},
                }
            )
        code = "def main():\n    return open('token.txt').read()\n"
        ref = {"name": "token", "key": "value", "namespace": other}
        done = await _run(cx, code, files=[{"path": "token.txt", "secretKeyRef": ref}])
        _failed_before_running(done)
        assert "only this execution's namespace" in (done.status.message or "")
        # Its own namespace's Secret (labelled as an input) is readable.
        own = {"name": "token", "key": "value"}
        done = await _run(cx, code, files=[{"path": "token.txt", "secretKeyRef": own}])
        assert done.status.result is not None
        assert done.status.result.return_value == f"secret of {namespace}"
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


async def test_a_chart_comes_back_byte_identical_from_the_default_store(
    cx: Client, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    done = await _run(cx, CHART, arguments={"title": "default store"})
    assert done.status.reason == "Succeeded", done.status
    res = done.status.result
    assert res is not None
    made_in_sandbox = res.return_value["sha256"]
    [info] = res.artifacts
    assert (info.name, info.content_type, info.store) == ("plot.png", "image/png", "configmap")
    assert info.sha256 == made_in_sandbox
    # The status names where the bytes are, never holds them.
    assert "b64" not in json.dumps(res.dump())
    # The store itself: an owned ConfigMap.
    stored = await cx.kube.get(CONFIG_MAPS, info.ref.config_map or "", namespace)
    owner = stored["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("CodeExecution", done.uid)
    raw = base64.b64decode(stored["binaryData"][info.ref.key])
    assert hashlib.sha256(raw).hexdigest() == made_in_sandbox
    assert raw.startswith(b"\x89PNG")
    # The Python client.
    [artifact] = cx.artifacts(done)
    assert hashlib.sha256(await artifact.read()).hexdigest() == made_in_sandbox
    saved = await artifact.save(tmp_path / "client")
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == made_in_sandbox
    # The CLI, on the finished execution.
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    out = tmp_path / "cli-get"
    await _cli(env, "get", done.name, "-n", namespace, "--artifacts-dir", str(out))
    assert hashlib.sha256((out / "plot.png").read_bytes()).hexdigest() == made_in_sandbox
    # `codeexec run` with an input file, saving what came back.
    script = tmp_path / "chart.py"
    script.write_text(
        CHART.replace("def main(title):", "def main():\n    title = open('t.txt').read()")
    )
    (tmp_path / "title.txt").write_text("from the CLI")
    out = tmp_path / "cli-run"
    printed = await _cli(
        env,
        "run",
        str(script),
        "-n",
        namespace,
        "-q",
        "--file",
        f"{tmp_path / 'title.txt'}:t.txt",
        "--artifacts-dir",
        str(out),
        "-o",
        "json",
    )
    returned = json.loads(printed)["status"]["result"]["returnValue"]
    assert hashlib.sha256((out / "plot.png").read_bytes()).hexdigest() == returned["sha256"]


async def _cli(env: dict[str, str], *argv: str) -> str:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codeexec",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, (argv, out, err)
    return out.decode()


async def _await(check: Any, what: str) -> None:
    import asyncio
    import time

    end = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


LIMITS_CODE = """
import os
def main(case):
    if case == "many":
        for i in range(12):
            open(f"artifacts/f{i:02d}.txt", "w").write(str(i))
    elif case == "big":
        open("artifacts/a-big.bin", "wb").write(os.urandom(800 * 1024))
        open("artifacts/b-small.txt", "w").write("fits")
    elif case == "total":
        open("artifacts/a.bin", "wb").write(os.urandom(500 * 1024))
        open("artifacts/b.bin", "wb").write(os.urandom(500 * 1024))
        open("artifacts/c.txt", "w").write("fits")
    return case
"""


async def test_each_artifact_limit_ends_artifactlimit_keeping_what_fits(
    cx: Client, namespace: str
) -> None:
    import asyncio

    runs = await asyncio.gather(
        *(_run(cx, LIMITS_CODE, arguments={"case": c}) for c in ("many", "big", "total"))
    )
    expected = {
        "many": ([f"f{i:02d}.txt" for i in range(10)], ["f10.txt", "f11.txt"]),
        "big": (["b-small.txt"], ["a-big.bin"]),
        "total": (["a.bin", "c.txt"], ["b.bin"]),
    }
    for done in runs:
        res = done.status.result
        assert res is not None
        kept, skipped = expected[res.return_value]
        assert done.status.reason == "ArtifactLimit", done.status
        assert res.status == "resource_limit_exceeded" and res.resource_limit_type == "artifacts"
        assert [a.name for a in res.artifacts] == kept
        assert res.artifacts_skipped == skipped
        for artifact in cx.artifacts(done):
            assert len(await artifact.read()) == artifact.size
    # The next execution is unharmed.
    after = await _run(cx, "def main():\n    return 'fine'\n")
    assert after.status.reason == "Succeeded"


async def test_deleting_the_execution_or_its_ttl_deletes_its_artifacts(
    cx: Client, namespace: str
) -> None:
    import asyncio

    kept, ttl = await asyncio.gather(
        _run(cx, CHART, arguments={"title": "deleted"}),
        _run(cx, CHART, arguments={"title": "ttl"}, ttl_seconds_after_finished=3),
    )
    await cx.delete(kept.name)
    for done in (kept, ttl):
        [info] = done.status.result.artifacts if done.status.result else []
        name = info.ref.config_map or ""

        async def gone(name: str = name) -> bool:
            try:
                await cx.kube.get(CONFIG_MAPS, name, namespace)
            except ApiError as err:
                return err.not_found
            return False

        await _await(gone, f"the artifact ConfigMap {name} to be garbage-collected")


# ---- the S3 store, against a real S3-compatible server (versitygw, posix backend) ----------

VERSITYGW = Path.home() / ".cache" / "codeexec" / "bin" / "versitygw-v1.8.0" / "versitygw"
S3_BUCKET = "codeexec-artifacts"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """versitygw on 127.0.0.1 only, storing objects as files in a temporary directory."""
    import time

    if not VERSITYGW.exists():
        pytest.fail(f"{VERSITYGW} is missing: run `make tools` (e2e/tools.sh builds it)")
    root = tmp_path_factory.mktemp("s3")
    port = _free_port()
    from .conftest import S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY

    access, secret = S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY
    proc = subprocess.Popen(
        [
            str(VERSITYGW),
            "--access",
            access,
            "--secret",
            secret,
            "--quiet",
            "--port",
            f"127.0.0.1:{port}",
            "posix",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        end = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise RuntimeError("versitygw did not start") from None
                time.sleep(0.1)
        yield {"endpoint": f"http://127.0.0.1:{port}", "access": access, "secret": secret}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_pool(s3_server: dict[str, str], installed: Cluster, operator: Any) -> Any:
    """A one-pod Python pool whose artifacts go to the bucket (the operator has the
    credentials in its environment)."""
    import asyncio as _asyncio

    from codeexec.artifacts.s3 import S3, Credentials

    from .conftest import pool_manifest, wait_pool_full

    client = S3(
        s3_server["endpoint"], S3_BUCKET, Credentials(s3_server["access"], s3_server["secret"])
    )
    _asyncio.run(client.create_bucket())
    name = "python-s3"
    installed.apply(
        pool_manifest(
            name,
            "python",
            size=1,
            artifacts={
                "s3": {
                    "endpoint": s3_server["endpoint"],
                    "bucket": S3_BUCKET,
                }
            },
        )
    )
    wait_pool_full(installed, name, 1)
    yield name, client
    installed.kubectl("delete", "sandboxpool", name, "--wait=false", check=False)


async def test_a_chart_comes_back_byte_identical_from_the_s3_store_and_goes_with_its_execution(
    cx: Client,
    s3_pool: Any,
    s3_server: dict[str, str],
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One chart with a TTL and one deleted by hand: both leave nothing in the bucket."""

    pool, s3 = s3_pool

    async def stored(done: Any) -> None:
        assert done.status.reason == "Succeeded", done.status
        res = done.status.result
        assert res is not None
        [info] = res.artifacts
        assert (info.store, info.ref.bucket, info.name) == ("s3", S3_BUCKET, "plot.png")
        data = await s3.get(info.ref.object or "")
        assert hashlib.sha256(data).hexdigest() == info.sha256 == res.return_value["sha256"]

    # One after the other, the TTL one read as soon as it ends. Caught: run side by side, the
    # TTL one (then 3 s) had been collected before the slower one ended and it was read.
    ttl = await _run(
        cx, CHART, arguments={"title": "s3 ttl"}, pool=pool, ttl_seconds_after_finished=10
    )
    await stored(ttl)
    kept = await _run(cx, CHART, arguments={"title": "s3"}, pool=pool)
    await stored(kept)
    # The Python client reads S3 artifacts with the reader's own credentials.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    [artifact] = cx.artifacts(kept)
    assert hashlib.sha256(await artifact.read()).hexdigest() == artifact.sha256
    await cx.delete(kept.name)
    for done in (kept, ttl):
        folder = f"codeexec/{namespace}/{done.uid}/"

        async def emptied(folder: str = folder) -> bool:
            return await s3.list(folder) == []

        await _await(emptied, f"the objects under {folder} to be deleted")
