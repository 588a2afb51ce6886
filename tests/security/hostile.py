"""The hostile-tenant kit: a real ``sandtree serve`` with two tenants, and a probe that checks
the other tenant is still served while an attack runs.

Tenants: ``alice`` (every permission, namespace ``alice``), ``bob`` (every permission,
namespace ``bob``) and ``alice_list`` (only ``list``, namespace ``alice``). ``busybox:latest``
is published in the ``public`` namespace, so every tenant can run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx

from sandtree.api._tokens import PERMISSIONS, TokenStore
from sandtree.config import Settings
from sandtree.engine import Engine, default_runtimes
from sandtree.testing import ServerProcess

__all__ = ["HostileServer", "LatencyProbe", "Tenant", "start_hostile_server", "wait_until"]

#: How long another tenant's request may take while an attack runs. A frozen server misses it
#: by far (the findings froze it for 28 s or for ever); a loaded CI machine stays well under.
PROBE_DEADLINE = 5.0


def wait_until(ready: Callable[[], bool], what: str, deadline: float = 30.0) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` once ``deadline`` seconds pass.

    A real server's state is read over HTTP, so polling with a deadline is the wait here.
    """
    end = time.monotonic() + deadline
    while not ready():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline}s")
        time.sleep(0.05)


@dataclasses.dataclass(frozen=True)
class Tenant:
    """One token of one namespace, and an HTTP client that sends it."""

    name: str
    namespace: str
    secret: str
    base_url: str

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.secret}"},
            **kwargs,
        )

    def spawn(self, command: str, **fields: Any) -> dict[str, Any]:
        """Spawn a shell command from public busybox and wait for its operation to end."""
        body: dict[str, Any] = {
            "command": command,
            "image": "tag:busybox:latest",
            "shell": True,
            "disposable": True,
            "timeout": 20,
        }
        body.update(fields)
        with self.client() as http:
            answer = http.post("/v1/instances", json=body)
            assert answer.status_code == 201, answer.text
            return self.wait(answer.json()["uuid"])

    def wait(self, op_id: str, deadline: float = 90.0) -> dict[str, Any]:
        """The operation once it is terminal (polled with a deadline)."""
        end = time.monotonic() + deadline
        with self.client() as http:
            while True:
                op: dict[str, Any] = http.get(f"/v1/operations/{op_id}").json()
                if op["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                    return op
                if time.monotonic() > end:
                    raise AssertionError(
                        f"operation {op_id} still {op['status']} after {deadline}s"
                    )
                time.sleep(0.1)


@dataclasses.dataclass
class HostileServer:
    """A started server and its tenants."""

    server: ServerProcess
    alice: Tenant
    bob: Tenant
    alice_list: Tenant

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def tenant(
        self, name: str, namespace: str, permissions: tuple[str, ...] = PERMISSIONS
    ) -> Tenant:
        """A further token, made in the running server's token database."""
        return _make_tenant(self.data_dir, self.url, name, namespace, permissions)


def _make_tenant(
    data_dir: Path, url: str, name: str, namespace: str, permissions: tuple[str, ...]
) -> Tenant:
    store = TokenStore(data_dir / "tokens.db")
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    _, secret = store.create(
        name=name, namespace=namespace, permissions=permissions, created_at=now
    )
    return Tenant(name=name, namespace=namespace, secret=secret, base_url=url)


@contextlib.contextmanager
def start_hostile_server(
    base: Path, busybox_rootfs: Path, env: Mapping[str, str] | None = None
) -> Iterator[HostileServer]:
    """Start ``sandtree serve`` on ``base/data`` with public busybox and three tenants.

    ``env`` adds ``SANDTREE_*`` settings for this server only.
    """
    data_dir = base / "data"
    settings = Settings(data_dir=data_dir)

    async def import_busybox() -> None:
        async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
            await engine.import_local(busybox_rootfs, tag="busybox:latest", namespace="public")

    anyio.run(import_busybox)
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        server = ServerProcess(data_dir, base / "config")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    with server:
        url = server.url
        yield HostileServer(
            server=server,
            alice=_make_tenant(data_dir, url, "alice", "alice", PERMISSIONS),
            bob=_make_tenant(data_dir, url, "bob", "bob", PERMISSIONS),
            alice_list=_make_tenant(data_dir, url, "alice-list", "alice", ("list",)),
        )


class LatencyProbe:
    """Another tenant's cheap requests, sent in a loop while an attack runs.

    Use as a context manager around the attack; on exit it asserts the server answered every
    probe, each within ``PROBE_DEADLINE`` seconds, and at least one probe was sent.
    """

    def __init__(self, tenant: Tenant, path: str = "/v1/images?limit=5") -> None:
        self._tenant = tenant
        self._path = path
        self._stop = threading.Event()
        #: Set by the first answer: an attack shorter than one round trip still gets one probe.
        self._answered = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with self._tenant.client(timeout=PROBE_DEADLINE * 4) as http:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    answer = http.get(self._path)
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    self.latencies.append(time.monotonic() - start)
                    self._answered.set()
                    continue
                self.latencies.append(time.monotonic() - start)
                self._answered.set()
                if answer.status_code != 200:
                    self.errors.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
                self._stop.wait(0.05)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._answered.wait(PROBE_DEADLINE * 2)
        self._stop.set()
        self._thread.join(timeout=PROBE_DEADLINE * 5)
        if exc[0] is not None:
            return
        assert not self._thread.is_alive(), "a probe request never came back: the server froze"
        assert self.latencies, "no probe request was sent"
        assert not self.errors, f"the other tenant's requests failed: {self.errors[:3]}"
        slowest = max(self.latencies)
        assert slowest < PROBE_DEADLINE, (
            f"the other tenant waited {slowest:.1f}s for a listing while the attack ran"
        )
