"""Test kit for sandtree and for code built on it: a fake runtime, an in-memory metadata
store, engines wired to them, and small root filesystems to import.

Example::

    async with make_engine(tmp_path) as engine:
        image = await engine.import_local(build_busybox_rootfs(tmp_path / "rootfs"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio

from sandtree.config import Settings
from sandtree.engine import Engine, ImageRecord, OperationRecord, RunSpec
from sandtree.engine.runtime import FakeRuntime, Runtime
from sandtree.engine.store import SqliteStore

__all__ = [
    "FakeClock",
    "FakeRuntime",
    "ServerProcess",
    "SimulatedInternet",
    "build_busybox_rootfs",
    "build_mini_rootfs",
    "make_child",
    "make_engine",
    "memory_store",
    "read_file",
    "real_runtime_missing",
    "run_command",
    "simulated_internet",
    "tree_listing",
]

_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


class FakeClock:
    """A clock that stands still until a test moves it; call it for the time (UTC).

    Example::

        clock = FakeClock()
        tokens = TokenStore(path, clock=clock)
        clock.advance(datetime.timedelta(hours=2))
    """

    def __init__(self, start: str = "2026-01-01T00:00:00+00:00") -> None:
        self.now = datetime.datetime.fromisoformat(start).astimezone(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, delta: datetime.timedelta) -> None:
        """Move the time forward by ``delta``."""
        self.now += delta


def memory_store() -> SqliteStore:
    """A metadata store that lives only in memory."""
    return SqliteStore(":memory:")


def make_engine(
    data_dir: Path,
    *,
    runtime: Runtime | None = None,
    runtimes: Mapping[str, Callable[[], Runtime]] | None = None,
    in_memory: bool = True,
    **settings: object,
) -> Engine:
    """An engine on ``data_dir``: the fake runtime and an in-memory store unless told otherwise.

    Pass ``runtimes=default_runtimes(settings)`` (or ``runtime=`` a real one) for real sandboxes.
    """
    config = Settings(data_dir=data_dir, **settings)  # type: ignore[arg-type]
    if runtimes is None:
        fake = runtime if runtime is not None else FakeRuntime()
        runtimes = {"container": lambda: fake, "gvisor": lambda: fake}
    return Engine(config, store=memory_store() if in_memory else None, runtimes=runtimes)


def real_runtime_missing(suite: str) -> str | None:
    """Why ``suite`` (e.g. "the isolation tests") cannot run on the real runtime here, or None.

    The real-runtime suites skip with this reason rather than fail on a machine without root
    or crun.
    """
    if os.geteuid() != 0:
        return f"{suite} need root (user namespaces, cgroups, overlay mounts)"
    if shutil.which("crun") is None:
        return f"{suite} need crun (apt-get install crun)"
    return None


def build_busybox_rootfs(dest: Path) -> Path:
    """A ~2 MB root filesystem: static busybox with its applets, /etc/passwd, /tmp, /root."""
    busybox = next((p for p in _BUSYBOX_CANDIDATES if os.path.exists(p)), None)
    if busybox is None:
        raise RuntimeError("busybox is not installed; apt-get install busybox-static")
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "tmp",
        "root",
        "proc",
        "sys",
        "dev",
        "home",
        "var/tmp",
    ):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "root", 0o700)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    for applet in _applets(dest / "bin" / "busybox"):
        link = dest / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        "user:x:1000:1000:user:/home/user:/bin/sh\n",
        encoding="utf-8",
    )
    (dest / "etc" / "group").write_text(
        "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n", encoding="utf-8"
    )
    (dest / "etc" / "hostname").write_text("sandbox\n", encoding="utf-8")
    return dest


def build_mini_rootfs(dest: Path) -> Path:
    """A root filesystem with no real binaries: enough for the fake runtime, and fast to
    import (a few entries instead of busybox's 400 applet links)."""
    for d in ("bin", "etc", "tmp", "root", "home/user", "var/tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "root", 0o700)
    (dest / "bin" / "busybox").write_bytes(b"\x7fELF not really\n")
    (dest / "bin" / "sh").symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        encoding="utf-8",
    )
    (dest / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\n", encoding="utf-8")
    (dest / "etc" / "hostname").write_text("sandbox\n", encoding="utf-8")
    return dest


async def run_command(
    engine: Engine,
    command: str,
    image: ImageRecord | str,
    *,
    wait: float = 10,
    **spec: Any,
) -> OperationRecord:
    """Run ``command`` (through the shell unless ``shell=False``) and return the ended op.

    Raises:
        TimeoutError: the operation did not end within ``wait`` seconds.
    """
    ref = image if isinstance(image, str) else image.uuid
    spec.setdefault("shell", True)
    op = await engine.spawn(RunSpec(image=ref, command=command, **spec))
    with anyio.fail_after(wait):
        return await engine.wait_operation(op)


async def make_child(engine: Engine, parent: ImageRecord, command: str, **spec: Any) -> ImageRecord:
    """Run ``command`` on ``parent`` and return the child image it made."""
    done = await run_command(engine, command, parent, **spec)
    assert done.result_image is not None, done.error
    assert done.result_image != parent.uuid, "the run changed nothing"
    return engine.resolve_image(done.result_image)


def read_file(engine: Engine, image: ImageRecord, path: str) -> bytes:
    """The content of ``path`` in ``image``, read without a sandbox."""
    with engine.open_file(image, path) as f:
        return f.read()


def tree_listing(engine: Engine, image: ImageRecord) -> set[tuple[Any, ...]]:
    """Every path of ``image`` with its type, mode, owner, link target and content hash:
    two images with equal listings hold the same files, modes and owners."""
    buf = io.BytesIO()
    engine.write_tar(image, "/", buf)
    buf.seek(0)
    out: set[tuple[Any, ...]] = set()
    with tarfile.open(fileobj=buf) as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isfile() else None
            digest = hashlib.sha256(data.read()).hexdigest() if data else ""
            row = (member.name, member.type, member.mode, member.uid, member.gid)
            out.add((*row, member.linkname, digest))
    return out


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return [a for a in out.stdout.split() if a and "/" not in a]


@dataclasses.dataclass(frozen=True)
class SimulatedInternet:
    netns: str
    #: The host's address on the link: what NAT rewrites a sandbox's source address to.
    host_side: str
    #: A "public" address (198.18.0.0/15, reserved for benchmarks) inside the namespace.
    server: str
    #: An RFC 1918 address inside the namespace, routed by the host (must stay unreachable).
    private: str


@contextlib.contextmanager
def simulated_internet(*, private_net: str = "10.214") -> Iterator[SimulatedInternet]:
    """A network namespace standing in for the internet, routed by the host over its own
    veth, so networking tests never send a packet beyond this machine. Needs root."""
    tag = secrets.token_hex(3)
    n, r = random.randrange(128), random.randrange(256)
    net = SimulatedInternet(
        f"inet-{tag}", f"198.18.{n}.1", f"198.18.{n}.2", f"{private_net}.{r}.53"
    )
    host = (
        f"netns add {net.netns}\n"
        f"link add ti{tag} type veth peer name eth0 netns {net.netns}\n"
        f"link set ti{tag} addrgenmode none\n"
        f"addr add {net.host_side}/30 dev ti{tag}\n"
        f"link set ti{tag} up\n"
        f"route add {net.private}/32 via {net.server}\n"
    )
    inside = (
        "link set lo up\n"
        "link set eth0 addrgenmode none\n"
        f"addr add {net.server}/30 dev eth0\n"
        f"addr add {net.private}/32 dev eth0\n"
        "link set eth0 up\n"
    )
    try:
        for argv, text in (
            (["ip", "-batch", "-"], host),
            (["ip", "-n", net.netns, "-batch", "-"], inside),
        ):
            subprocess.run(argv, input=text, check=True, capture_output=True, text=True)
        yield net
    finally:
        for cmd in (["ip", "link", "del", f"ti{tag}"], ["ip", "netns", "del", net.netns]):
            subprocess.run(cmd, capture_output=True, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: Seconds ``ServerProcess.wait_until_ready`` waits for ``sandtree serve`` to listen.
SERVER_READY_DEADLINE = 60.0


class ServerProcess:
    """A real ``sandtree serve`` in a child process, for end-to-end tests and benchmarks.

    Its output is kept in ``output``; ``stop()`` sends SIGTERM and says whether the server
    shut down cleanly.
    """

    def __init__(self, data_dir: Path, config_home: Path) -> None:
        self.data_dir = data_dir
        self.config_home = config_home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandtree", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )  # fmt: skip
        self.output: list[str] = []
        self._ready = False
        #: Set once uvicorn says it is listening, or once the output ends (the server died).
        self._settled = threading.Event()
        # Read all along: a full pipe would block the server on its next log line.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def wait_until_ready(self, timeout: float = SERVER_READY_DEADLINE) -> None:
        """Wait until uvicorn says startup is complete; fail if the server dies or hangs."""
        if not self._settled.wait(timeout):
            raise TimeoutError(
                f"sandtree serve not ready after {timeout}s:\n" + "".join(self.output)
            )
        if not self._ready:
            raise AssertionError(
                "sandtree serve exited before it was ready:\n" + "".join(self.output)
            )

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()

    @property
    def admin_token(self) -> str:
        """The admin token the server saved on its first start."""
        return (self.data_dir / "admin-token").read_text(encoding="utf-8").strip()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if not self._ready and "Uvicorn running on" in line:  # printed once bound
                self._ready = True
                self._settled.set()
        self._settled.set()

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down cleanly (uvicorn re-raises the signal
        after its shutdown, so the status is -15 either way). SIGKILL if it hangs."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # do not leak a hung server; the timeout still fails the caller
            self.process.wait()
            raise
        if self._drainer.is_alive():
            self._drainer.join(timeout=10)  # the pipe reaches EOF once the process is gone
        if self.process.stdout is not None:
            self.process.stdout.close()
        return any("Application shutdown complete" in line for line in self.output)
