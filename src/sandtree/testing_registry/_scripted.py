"""A registry API served from a dict of paths, for the failures a real registry won't stage:
stalled, dripping, corrupt or oversized bodies, error bodies, redirects, token realms and
upload locations pointing anywhere (the attacks of a hostile registry)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from sandtree.testing_registry._layout import (
    LAYER_MEDIA_TYPES,
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    compress,
)

__all__ = ["ScriptedRegistry"]

#: How long a stalled or dripping answer holds its connection when nobody releases it (s).
_STALL_LIMIT = 30.0
_FILLER = b"\0" * (1 << 20)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ScriptedRegistry:
    """A registry API on ``127.0.0.1:<free port>`` answering from ``routes``. Unknown paths
    get 404.

    ``routes`` maps ``"METHOD /path"`` or ``"/path"`` (any method; a path with its query, or
    without it to match any query) to ``(status, content type, body)``; ``headers`` adds
    response headers per such key. A key in ``stalling`` sends its first ``stall_after``
    bytes, then hangs until ``close()`` (or ``hold_limit``, 30 s); one in ``dripping`` sends its
    whole answer, status line and headers included, one byte per ``drip_interval`` seconds
    (for ``hold_limit`` at most); one in ``huge``
    answers 200 with that many bytes and no Content-Length (the body ends when the
    connection closes). Every request path is appended to ``requests``, and ``(method,
    path)`` to ``calls``; the bytes of request bodies received per path add up in
    ``received``. Use it as a context manager::

        with ScriptedRegistry() as registry:
            (blob,) = registry.add_image("slow/app", [layer_tar([...])])
            registry.stalling.add(blob)
            # import docker://{registry.host}/slow/app: the download stops after 1 KiB
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.stalling: set[str] = set()
        self.stall_after = 1024
        self.dripping: set[str] = set()
        self.drip_interval = 1.0
        #: How long a stalled or dripping answer holds its connection at most (seconds).
        self.hold_limit = _STALL_LIMIT
        self.huge: dict[str, int] = {}
        #: When set, every /v2/ request without an Authorization header gets a 401 with this
        #: ``WWW-Authenticate`` value (see ``require_bearer``).
        self.challenge: str | None = None
        self.released = threading.Event()
        self.requests: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.received: dict[str, int] = {}
        #: Bytes of ``huge`` answers written per path (what the client read, give or take
        #: the sockets' buffers).
        self.sent: dict[str, int] = {}
        scripted = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _key(self, table: dict[str, Any]) -> str | None:
                bare = urllib.parse.urlsplit(self.path).path
                for key in (f"{self.command} {self.path}", f"{self.command} {bare}", self.path):
                    if key in table:
                        return key
                return bare if bare in table else None

            def _drain(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                bare = urllib.parse.urlsplit(self.path).path
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 20))
                    if not chunk:
                        break
                    length -= len(chunk)
                    scripted.received[bare] = scripted.received.get(bare, 0) + len(chunk)

            def _answer(self) -> None:
                scripted.requests.append(self.path)
                scripted.calls.append((self.command, self.path))
                self._drain()
                if (
                    scripted.challenge is not None
                    and self.path.startswith("/v2/")
                    and "Authorization" not in self.headers
                ):
                    self._send(401, "application/json", b"{}", {
                        "WWW-Authenticate": scripted.challenge
                    })  # fmt: skip
                    return
                huge = self._key(scripted.huge)
                if huge is not None:
                    self._send_huge(huge, scripted.huge[huge])
                    return
                key = self._key(scripted.routes)
                status, media, data = (
                    scripted.routes[key] if key is not None else (404, "text/plain", b"{}")
                )
                extra = scripted.headers.get(key, {}) if key is not None else {}
                if key is not None and key in scripted.dripping:
                    self._drip(status, media, data, extra)
                    return
                self._send(status, media, data, extra, stall=key in scripted.stalling)

            def _send(
                self,
                status: int,
                media: str,
                data: bytes,
                extra: dict[str, str],
                *,
                stall: bool = False,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                try:
                    if stall:
                        self.wfile.write(data[: scripted.stall_after])
                        self.wfile.flush()
                        scripted.released.wait(scripted.hold_limit)
                        return
                    self.wfile.write(data)
                except OSError:
                    pass  # the client hung up (refused what it read): nothing more to send

            def _send_huge(self, key: str, size: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                while size > 0 and not scripted.released.is_set():
                    chunk = _FILLER[: min(size, len(_FILLER))]
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        return  # the client hung up: the point of the attack
                    size -= len(chunk)
                    scripted.sent[key] = scripted.sent.get(key, 0) + len(chunk)

            def _drip(self, status: int, media: str, data: bytes, extra: dict[str, str]) -> None:
                lines = [f"HTTP/1.0 {status} Scripted", f"Content-Type: {media}"]
                lines += [f"Content-Length: {len(data)}"]
                lines += [f"{name}: {value}" for name, value in extra.items()]
                raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + data
                end = time.monotonic() + scripted.hold_limit
                for i in range(len(raw)):
                    if scripted.released.is_set() or time.monotonic() > end:
                        return
                    try:
                        self.wfile.write(raw[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return  # the client hung up
                    scripted.released.wait(scripted.drip_interval)

            def do_GET(self) -> None:
                self._answer()

            def do_HEAD(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def do_PUT(self) -> None:
                self._answer()

            def do_PATCH(self) -> None:
                self._answer()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        #: "127.0.0.1:<port>".
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- content -------------------------------------------------------------------------------

    def add_blob(self, name: str, data: bytes, *, media_type: str = MEDIA_CONFIG) -> dict[str, Any]:
        """Serve ``data`` as a blob of ``name``; returns its descriptor."""
        digest = _digest(data)
        self.routes[f"/v2/{name}/blobs/{digest}"] = (200, "application/octet-stream", data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_manifest(self, name: str, manifest: dict[str, Any], *, tag: str = "latest") -> str:
        """Serve ``manifest`` (any JSON, however hostile) as ``name:tag``; returns its path."""
        path = f"/v2/{name}/manifests/{tag}"
        media = str(manifest.get("mediaType", MEDIA_MANIFEST))
        self.routes[path] = (200, media, json.dumps(manifest).encode())
        return path

    def add_image(
        self,
        name: str,
        layers: Sequence[bytes],
        *,
        corrupt: bool = False,
        config: bytes | None = None,
    ) -> list[str]:
        """Serve ``name:latest`` with ``layers`` (uncompressed tars, gzipped here); returns
        the layer blob paths. ``corrupt=True`` serves layers that fail their digest check;
        ``config`` replaces the image config's bytes."""
        blobs = []
        descriptors = []
        for tar in layers:
            data = compress(tar, "gzip")
            digest = _digest(data)
            served = data[:-4] + b"XXXX" if corrupt else data
            path = f"/v2/{name}/blobs/{digest}"
            self.routes[path] = (200, "application/octet-stream", served)
            blobs.append(path)
            descriptors.append(
                {"mediaType": LAYER_MEDIA_TYPES["gzip"], "digest": digest, "size": len(data)}
            )
        if config is None:
            config = json.dumps({"architecture": "amd64", "os": "linux", "config": {}}).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": self.add_blob(name, config),
            "layers": descriptors,
        }
        self.add_manifest(name, manifest)
        return blobs

    # -- hostile answers -----------------------------------------------------------------------

    def redirect(self, path: str, location: str, *, status: int = 307) -> None:
        """Answer ``path`` with a redirect to ``location``."""
        self.routes[path] = (status, "text/plain", b"")
        self.headers[path] = {"Location": location}

    def require_bearer(self, realm: str, *, service: str = "scripted") -> None:
        """Ask for a bearer token from ``realm`` on every /v2/ request without credentials."""
        self.challenge = f'Bearer realm="{realm}",service="{service}"'

    def accept_uploads(self, name: str, location: str) -> None:
        """Start blob uploads of ``name`` (``POST``) by naming ``location`` as where to
        ``PUT`` the bytes, and take manifests; every blob is missing (``HEAD`` is 404)."""
        key = f"POST /v2/{name}/blobs/uploads/"
        self.routes[key] = (202, "text/plain", b"")
        self.headers[key] = {"Location": location}

    def close(self) -> None:
        """Release stalled blobs and stop serving; idempotent."""
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ScriptedRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
