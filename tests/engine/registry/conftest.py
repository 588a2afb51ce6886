"""Registries for the import tests: a real one on loopback with test images pushed by skopeo,
and a scripted one (``ScriptedRegistry``) that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandtree.testing_registry import (
    LAYER_MEDIA_TYPES,
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    Entry,
    LocalRegistry,
    TestImage,
    compress,
    layer_tar,
)

BASE = layer_tar(
    [
        Entry(path="etc", kind="dir"),
        Entry(path="etc/hello", data=b"hello\n"),
        Entry(path="etc/os-release", data=b"ID=test\n"),
        Entry(path="bin", kind="dir"),
        Entry(path="bin/tool", data=b"#!/bin/sh\n", mode=0o755),
    ]
)
#: On top of BASE: a deleted file, a replaced (opaque) directory, an owner and a setuid bit.
CHANGES = layer_tar(
    [
        Entry(path="etc/os-release", kind="whiteout"),
        Entry(path="etc", kind="opaque"),
        Entry(path="etc/hello", data=b"replaced\n"),
        Entry(path="home/user", kind="dir", uid=1000, gid=1000, mode=0o750),
        Entry(path="home/user/notes", data=b"mine\n", uid=1000, gid=1000, mode=0o600),
        Entry(path="bin/su", data=b"\x7fELF", mode=0o4755),
    ]
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An anonymous registry holding test/one, test/multi, test/index, test/zstd, test/plain."""
    tmp = tmp_path_factory.mktemp("registry")
    with LocalRegistry(tmp / "registry") as reg:
        reg.push_image("test/one:latest", [TestImage(layers=[BASE])], tmp)
        reg.push_image(
            "test/multi:v1",
            [
                TestImage(
                    layers=[BASE, CHANGES],
                    env=["A=1", "PATH=/bin"],
                    workdir="/home/user",
                    user="1000:1000",
                )
            ],
            tmp,
        )
        arm = layer_tar([Entry(path="arch", data=b"arm64\n")])
        amd = layer_tar([Entry(path="arch", data=b"amd64\n")])
        reg.push_image(
            "test/index:latest",
            [
                TestImage(layers=[arm], platform="linux/arm64/v8"),
                TestImage(layers=[amd], platform="linux/amd64"),
            ],
            tmp,
        )
        reg.push_image(
            "test/zstd:latest", [TestImage(layers=[BASE, CHANGES], compression="zstd")], tmp
        )
        reg.push_image("test/plain:latest", [TestImage(layers=[BASE], compression="none")], tmp)
        yield reg


Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class ScriptedRegistry:
    """A registry API served from a dict of paths, where a blob can stall or be corrupt.

    ``stall_after`` bytes of the stalling blob are sent, then the connection hangs until the
    test ends (or the client gives up).
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.stalling: set[str] = set()
        self.stall_after = 1024
        self.released = threading.Event()
        self.requests: list[str] = []
        scripted = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                scripted.requests.append(self.path)
                status, media, data = scripted.routes.get(self.path, (404, "text/plain", b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                if self.path in scripted.stalling:
                    self.wfile.write(data[: scripted.stall_after])
                    self.wfile.flush()
                    scripted.released.wait(30)
                    return
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add_image(self, name: str, layers: list[bytes], *, corrupt: bool = False) -> list[str]:
        """Serve ``name:latest`` with gzip ``layers``; returns the layer blob paths."""
        blobs = []
        descriptors = []
        for tar in layers:
            data = compress(tar, "gzip")
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            served = data[:-4] + b"XXXX" if corrupt else data
            path = f"/v2/{name}/blobs/{digest}"
            self.routes[path] = (200, "application/octet-stream", served)
            blobs.append(path)
            descriptors.append(
                {"mediaType": LAYER_MEDIA_TYPES["gzip"], "digest": digest, "size": len(data)}
            )
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {}}).encode()
        cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
        self.routes[f"/v2/{name}/blobs/{cdigest}"] = (200, "application/json", config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": cdigest, "size": len(config)},
                "layers": descriptors,
            }
        ).encode()
        self.routes[f"/v2/{name}/manifests/latest"] = (200, MEDIA_MANIFEST, manifest)
        return blobs

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def scripted() -> Iterator[ScriptedRegistry]:
    reg = ScriptedRegistry()
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
