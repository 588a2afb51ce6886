"""Test kit for sandtree and for code built on it: a fake runtime, an in-memory metadata
store, engines wired to them, and small root filesystems to import.

Example::

    async with make_engine(tmp_path) as engine:
        image = await engine.import_local(build_busybox_rootfs(tmp_path / "rootfs"))
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from sandtree.config import Settings
from sandtree.engine import Engine
from sandtree.engine.runtime import FakeRuntime, Runtime
from sandtree.engine.store import SqliteStore

__all__ = ["FakeRuntime", "build_busybox_rootfs", "make_engine", "memory_store"]

_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


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


def _applets(busybox: Path) -> list[str]:
    import subprocess

    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return [a for a in out.stdout.split() if a and "/" not in a]
