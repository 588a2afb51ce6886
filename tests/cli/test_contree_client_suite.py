"""contree-client's own live integration suite, from its 0.4.4 sdist, run against a real
``sandtree serve`` over every HTTP adapter the suite tests (http, urllib3, requests, httpx,
httpx_async, aiohttp).

``./scripts/install`` fetches the sdist, checks its pinned sha256 and unpacks it under
``/var/cache/sandtree-test/``. The whole set, server included, is one command::

    python3 -m pytest tests/cli/test_contree_client_suite.py

Against a server of your own (as root): the suite picks an image whose tag contains
``busybox`` and reads the events of a finished run, and skips those cases without them;
``sandtree demo`` leaves both behind in the data directory it is given. Stop the server first
(one process per data directory), then::

    sandtree demo --data-dir ~/.local/share/sandtree    # then `sandtree serve` in another shell
    cd /var/cache/sandtree-test/contree_client-0.4.4 && \
    CONTREE_URL=http://127.0.0.1:9450 \
    CONTREE_TOKEN="$(cat ~/.local/share/sandtree/admin-token)" \
    python3 -m pytest -p no:cacheprovider tests/test_integration.py \
        --deselect tests/test_integration.py::test_import_image_idempotent

The one case left out, ``test_import_image_idempotent``, imports
``docker://docker.io/library/busybox:latest`` from the public internet, which no test here may
reach; sandtree's registry import is proved offline by its own tests against a local registry.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest
from contree_client.httpx import ContreeClient

from sandtree.testing import ServerProcess, real_runtime_missing

SDIST = Path("/var/cache/sandtree-test/contree_client-0.4.4.tar.gz")
SDIST_SHA256 = "4a6a0feeceabba77f35ffeaa226a15b9cf42fb2f701b49888d226cd8843a48e4"
SUITE = "tests/test_integration.py"
#: The suite's conftest BACKENDS: it parametrizes its read-only cases over each of them.
ADAPTERS = frozenset({"http", "urllib3", "requests", "httpx", "httpx_async", "aiohttp"})
#: Imports busybox from docker.io: the public internet, which tests must never need.
NEEDS_THE_INTERNET = f"{SUITE}::test_import_image_idempotent"
#: The suite takes about 10 s here; this only bounds a hung case, it asserts no speed.
SUITE_DEADLINE = 600

_NO_RUNTIME = real_runtime_missing("contree-client's suite")

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(_NO_RUNTIME is not None, reason=_NO_RUNTIME or ""),
    pytest.mark.skipif(
        not SDIST.is_file(), reason=f"{SDIST} is missing: run ./scripts/install to fetch it"
    ),
]


@dataclass(frozen=True)
class Case:
    """One test case as the suite's junit XML reports it."""

    name: str
    #: "passed", "failure", "error" or "skipped".
    outcome: str
    message: str

    @property
    def adapter(self) -> str | None:
        """The adapter a parametrized case ran over (``test_whoami[aiohttp]``), else None."""
        return self.name.partition("[")[2].rstrip("]") or None


def _unpack_verified_sdist(dest: Path) -> Path:
    """Unpack the sdist into ``dest`` only if it is the exact file pinned here."""
    digest = hashlib.sha256(SDIST.read_bytes()).hexdigest()
    assert digest == SDIST_SHA256, f"{SDIST} is not the pinned sdist (sha256 {digest})"
    with tarfile.open(SDIST) as archive:
        archive.extractall(dest, filter="data")
    return dest / "contree_client-0.4.4"


def _seed_a_finished_instance_operation(server: ServerProcess) -> None:
    """The suite reads the event log of a finished run it did not start, and skips on a
    namespace without one; a live namespace always has one, a fresh server does not."""
    with ContreeClient(server.admin_token, base_url=server.url) as client:
        spawned = client.spawn_instance(
            "echo seed", "tag:busybox:latest", shell=True, disposable=True
        )
        assert isinstance(spawned.uuid, str), spawned
        done = client.wait_operation(spawned.uuid, timeout=60)
    assert done.status == "SUCCESS", done.error


def _run_suite(root: Path, server: ServerProcess, junit: Path) -> subprocess.CompletedProcess[str]:
    """The suite in a pytest of its own (its rootdir, its config), pointed at ``server``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTREE_", "NEBIUS_"))}
    # CONTREE_HOME keeps a saved profile of whoever runs this from being read.
    env |= {
        "CONTREE_URL": server.url,
        "CONTREE_TOKEN": server.admin_token,
        "CONTREE_HOME": str(root.parent / "contree-home"),
    }
    argv = [
        sys.executable, "-m", "pytest", SUITE, "-p", "no:cacheprovider", "-q",
        f"--junitxml={junit}", "--timeout=300", "--deselect", NEEDS_THE_INTERNET,
    ]  # fmt: skip
    return subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=SUITE_DEADLINE
    )


def _cases(junit: Path) -> list[Case]:
    cases = []
    for element in ElementTree.parse(junit).iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            child = element.find(kind)
            if child is not None:
                outcome = kind
                message = child.get("message", "") or (child.text or "")
        cases.append(Case(element.get("name", ""), outcome, message))
    return cases


@pytest.mark.timeout(SUITE_DEADLINE + 120)
def test_contree_clients_own_integration_suite_passes_over_every_adapter(
    busybox_server: ServerProcess, tmp_path: Path
) -> None:
    root = _unpack_verified_sdist(tmp_path / "sdist")
    _seed_a_finished_instance_operation(busybox_server)
    junit = tmp_path / "junit.xml"

    ran = _run_suite(root, busybox_server, junit)

    assert junit.is_file(), f"the suite wrote no report:\n{ran.stdout}\n{ran.stderr}"
    cases = _cases(junit)
    not_passed = [case for case in cases if case.outcome != "passed"]
    assert not_passed == [], (
        "\n".join(f"{c.name}: {c.outcome}: {c.message}" for c in not_passed)
        + "\n--- pytest ---\n"
        + ran.stdout[-20_000:]
        + "\n--- server log (tail) ---\n"
        + "".join(busybox_server.output[-200:])
    )
    assert ran.returncode == 0, ran.stdout
    names = {case.name for case in cases}
    assert "test_import_image_idempotent" not in names  # deselected: it needs the internet
    parametrized = {case.name.partition("[")[0] for case in cases if case.adapter}
    assert parametrized, "the suite ran no case per adapter"
    for test in sorted(parametrized):
        ran_over = {c.adapter for c in cases if c.name.partition("[")[0] == test}
        assert ran_over == ADAPTERS, f"{test} ran over {sorted(map(str, ran_over))} only"
