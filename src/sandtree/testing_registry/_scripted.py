"""A registry API served from a dict of paths, for the failures a real registry won't stage."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Sequence

from sandtree.testing_registry._layout import (
    LAYER_MEDIA_TYPES,
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    compress,
)

__all__ = ["ScriptedRegistry"]

#: How long a stalled blob holds its connection when nobody releases it (seconds).
_STALL_LIMIT = 30.0


class ScriptedRegistry:
    """A registry API on ``127.0.0.1:<free port>`` answering from ``routes``, where a blob
    can stall or be corrupt. Unknown paths get 404.

    ``routes`` maps a request path to ``(status, content type, body)``. A path in ``stalling``
    sends its first ``stall_after`` bytes, then hangs until ``close()`` (or 30 s). Every
    request path is appended to ``requests``. Use it as a context manager::

        with ScriptedRegistry() as registry:
            (blob,) = registry.add_image("slow/app", [layer_tar([...])])
            registry.stalling.add(blob)
            # import docker://{registry.host}/slow/app: the download stops after 1 KiB
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
                    scripted.released.wait(_STALL_LIMIT)
                    return
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        #: "127.0.0.1:<port>".
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add_image(self, name: str, layers: Sequence[bytes], *, corrupt: bool = False) -> list[str]:
        """Serve ``name:latest`` with ``layers`` (uncompressed tars, gzipped here); returns
        the layer blob paths. ``corrupt=True`` serves layers that fail their digest check."""
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
        """Release stalled blobs and stop serving; idempotent."""
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ScriptedRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
