"""Kit of the deepagents sandbox tests: the venv that holds deepagents, a small image with the
tools its file operations run in the sandbox, and the driver that calls the backend.

deepagents' ``BaseSandbox`` (which contree-sdk's ``ContreeSandbox`` extends) implements
``ls``, ``read``, ``write``, ``edit`` and ``glob`` as ``python3 -c`` scripts and ``grep`` as GNU
``grep -rHnFZ``, all run through ``execute``. Busybox has neither, and its shell runs its own
grep applet whatever PATH says, so these tests also build a busybox image with the host's own
Debian ``python3.11``, GNU ``grep`` and ``dash`` (as ``/bin/sh``) copied in, with the shared
libraries they load: no download, as every test here must run offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sandtree.testing import ServerProcess

#: The venv ``./scripts/install`` makes for ``contree-sdk[langchain]`` (deepagents and LangChain).
VENV_PYTHON = Path("/var/cache/sandtree-test/deepagents-venv/bin/python")
DRIVER = Path(__file__).with_name("deepagents_driver.py")
#: Bounds a hung driver (its agent run or a call that never answers), not its speed.
DRIVER_DEADLINE = 300

HOST_PYTHON = Path("/usr/bin/python3.11")
HOST_GREP = Path("/usr/bin/grep")
HOST_DASH = Path("/usr/bin/dash")
#: Parts of the standard library no deepagents script imports, left out to keep the image small.
_STDLIB_LEFT_OUT = (
    "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
    "distutils", "config-3.11-x86_64-linux-gnu", "__pycache__", "dist-packages",
    "site-packages",
)  # fmt: skip
_LDD_PATH = re.compile(r"(/\S+) \(0x[0-9a-f]+\)$")


def venv_missing() -> str | None:
    """Why the deepagents venv cannot run the driver here, or None."""
    if not VENV_PYTHON.is_file():
        return f"{VENV_PYTHON} is missing: run ./scripts/install"
    return None


def python_image_missing() -> str | None:
    """Why the python image cannot be built on this host, or None."""
    for tool in (HOST_PYTHON, HOST_GREP, HOST_DASH, Path("/usr/bin/ldd")):
        if not tool.is_file():
            return f"{tool} is missing (apt-get install python3.11 grep dash libc-bin)"
    return None


def _libraries(binary: Path) -> set[Path]:
    """The shared libraries ``binary`` loads, the dynamic loader included, as ldd resolves them."""
    done = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
    )
    found = set()
    for line in done.stdout.splitlines():
        match = _LDD_PATH.search(line.strip())
        if match is not None:
            found.add(Path(match.group(1)))
    return found


def _copy_in(rootfs: Path, host_file: Path) -> None:
    """Copy ``host_file`` to the same path inside ``rootfs`` (symlinks followed: a plain file)."""
    target = rootfs / host_file.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(host_file, target)


def build_python_rootfs(busybox_rootfs: Path, dest: Path) -> Path:
    """Busybox plus the host's python3.11 (its standard library, less the parts above), GNU
    grep and dash, each with its shared libraries: what deepagents' file operations need."""
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    stdlib = Path("/usr/lib/python3.11")
    shutil.copytree(
        stdlib,
        dest / "usr/lib/python3.11",
        symlinks=True,
        ignore=shutil.ignore_patterns(*_STDLIB_LEFT_OUT),
    )
    binaries = [HOST_PYTHON, HOST_GREP, HOST_DASH, *sorted((stdlib / "lib-dynload").glob("*.so"))]
    for binary in binaries:
        _copy_in(dest, binary)
        for library in _libraries(binary):
            _copy_in(dest, library)
    (dest / "usr/bin/python3").symlink_to("python3.11")
    # Busybox's grep applet lacks -Z, which deepagents' grep needs, and busybox's shell runs
    # its applets before anything on PATH: dash becomes /bin/sh, GNU grep takes the applet's
    # place whichever of /bin and /usr/bin comes first on PATH.
    for applet, host_tool in (("sh", HOST_DASH), ("grep", HOST_GREP)):
        (dest / "bin" / applet).unlink()
        (dest / "bin" / applet).symlink_to(host_tool)
    return dest


class Driver:
    """Runs ``deepagents_driver.py`` with the venv's Python against one sandtree server."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        request = {"url": self.server.url, "token": self.server.admin_token, **request}
        # The home the SDK reads auth.ini from is empty: only what the request names counts.
        env = {**os.environ, "CONTREE_HOME": str(self.server.config_home / "contree")}
        done = subprocess.run(
            [str(VENV_PYTHON), str(DRIVER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=DRIVER_DEADLINE,
            env=env,
            check=False,
        )
        assert done.returncode == 0, f"the driver failed:\n{done.stderr}"
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def calls(
        self, image: str, *calls: dict[str, Any], config: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Each call's ``{"value": ...}`` or ``{"raised": ...}``, made in order on one sandbox."""
        answer = self._ask({"image": image, "config": config or {}, "calls": list(calls)})
        results: list[dict[str, Any]] = answer["results"]
        return results

    def agent(self, image: str, prompt: str, *turns: dict[str, Any]) -> list[dict[str, Any]]:
        """The messages of a deepagents agent whose model answers ``turns`` in order."""
        answer = self._ask({"image": image, "agent": {"prompt": prompt, "turns": list(turns)}})
        messages: list[dict[str, Any]] = answer["messages"]
        return messages


def call(method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """One backend call for ``Driver.calls``."""
    return {"method": method, "args": list(args), "kwargs": kwargs}


def value(result: dict[str, Any]) -> Any:
    """The call's value; fails with what it raised instead."""
    assert "raised" not in result, result["raised"]
    return result["value"]
