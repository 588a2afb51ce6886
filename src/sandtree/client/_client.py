"""``SandtreeClient``: the REST API v1 over httpx, for the MCP server, the CLI and tests.

Every method maps one call of the API and raises the ``sandtree.errors`` class that owns the
status the server answered, with the server's message (which says what to do next). Waiting
follows the operation's event stream, reconnecting with ``since`` where it broke, rather
than polling.
"""

from __future__ import annotations

import asyncio
import json
import tarfile
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from sandtree.errors import (
    InvalidRequestError,
    SandtreeError,
    ServerUnavailableError,
    error_for_status,
)

from ._sse import Event, parse_frames

__all__ = ["TERMINAL_STATUSES", "SandtreeClient"]

#: The statuses an operation ends in (it never leaves them).
TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILED", "CANCELLED"})
_UPLOAD_CHUNK = 1 << 20


class SandtreeClient:
    """An async client of one sandtree (or ConTree) server.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:9450`` (``/v1`` is added).
        token: the bearer token.
        transport: an httpx transport, e.g. ``httpx.ASGITransport(app)`` to call an app in
            process.
        timeout: connect/read timeout of ordinary calls in seconds (streams have none).

    Example::

        async with SandtreeClient("http://127.0.0.1:9450", token) as client:
            op = await client.spawn({"command": "echo hi", "image": "tag:busybox"})
            print(await client.wait_operation(op["uuid"]))
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=f"{self.url}/v1",
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            # Each wait holds an event stream open: no cap on how many run at once.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> SandtreeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing -------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _unreachable(self, exc: Exception) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"cannot reach the sandtree server at {self.url} ({type(exc).__name__}: {exc}); "
            "start it with `sandtree serve`, or point --url / SANDTREE_URL at a running one"
        )

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        return response.json() if response.content else None

    # -- images ---------------------------------------------------------------------------------

    async def list_images(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        tagged: bool | None = None,
        tag_prefix: str | None = None,
        uuid: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if tagged is not None:
            params["tagged"] = "1" if tagged else "0"
        for key, value in (("tag", tag_prefix), ("uuid", uuid), ("since", since), ("until", until)):
            if value:
                params[key] = value
        body = await self._json("GET", "/images", params=params)
        return list(body.get("images", []))

    async def get_image(self, image: str) -> dict[str, Any]:
        """An image by UUID or ``tag:NAME`` (a bare tag works too)."""
        ref = image.removeprefix("tag:")
        if ref == image and _canonical_uuid(image) is not None:
            return dict(await self._json("GET", f"/inspect/{image}/"))
        return dict(await self._json("GET", "/inspect/", params={"tag": ref}))

    async def resolve_image(self, image: str) -> str:
        """The UUID ``image`` (a UUID or ``tag:NAME``) names; a UUID is taken as given (the
        call that uses it says if no such image exists), a tag costs one request."""
        canonical = _canonical_uuid(image)
        if canonical is not None:
            return canonical
        return str((await self.get_image(image))["uuid"])

    async def set_tag(self, uuid: str, tag: str) -> dict[str, Any]:
        return dict(await self._json("PATCH", f"/images/{uuid}/tag", json={"tag": tag}))

    async def remove_tag(self, uuid: str, tag: str | None = None) -> None:
        await self._request("DELETE", f"/images/{uuid}/tag", params={"tag": tag} if tag else None)

    async def import_image(
        self,
        url: str,
        *,
        tag: str | None = None,
        credentials: Mapping[str, str] | None = None,
        timeout: int = 300,
        platform: str | None = None,
    ) -> str:
        """Start a registry import; returns its operation id."""
        body: dict[str, Any] = {
            "registry": _registry(url, credentials),
            "tag": tag,
            "timeout": timeout,
        }
        if platform:
            body["platform"] = platform
        return str((await self._json("POST", "/images/import", json=body))["uuid"])

    async def lineage(self, uuid: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/images/{uuid}/lineage"))

    async def diff(self, uuid: str, against: str | None = None) -> dict[str, Any]:
        params = {"against": against} if against else None
        return dict(await self._json("GET", f"/images/{uuid}/diff", params=params))

    async def push_image(
        self, uuid: str, url: str, *, credentials: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        body = {"registry": _registry(url, credentials)}
        return dict(await self._json("POST", f"/images/{uuid}/push", json=body))

    async def export_image(self, uuid: str) -> AsyncIterator[bytes]:
        """The image as an OCI archive, in chunks."""
        async for chunk in self._stream_bytes(f"/images/{uuid}/export"):
            yield chunk

    # -- runs and operations --------------------------------------------------------------------

    async def spawn(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /instances`` with an ``InstanceSpawnRequest``; returns the answer (``uuid``)."""
        return dict(await self._json("POST", "/instances", json=dict(request)))

    async def get_operation(self, operation_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/operations/{operation_id}"))

    async def list_operations(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        status: str | None = None,
        kind: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        for key, value in (("status", status), ("kind", kind), ("since", since), ("until", until)):
            if value:
                params[key] = value
        body = await self._json("GET", "/operations", params=params)
        return list(body)  # the contract answers a bare array of OperationSummary

    async def cancel_operation(self, operation_id: str) -> dict[str, Any]:
        return dict(await self._json("DELETE", f"/operations/{operation_id}") or {})

    async def events(
        self, operation_id: str, *, follow: bool = True, since: int = 0
    ) -> AsyncIterator[Event]:
        """The operation's events from ``since`` on; with ``follow`` until ``completion``.

        A stream that breaks (``sse_error``, a dropped connection) is resumed from the last
        event received; a 425 (not streamable yet) is retried after its ``Retry-After``.
        """
        last, failures = since, 0
        while True:
            params = {"since": last, "follow": "1" if follow else "0"}
            try:
                async with self._http.stream(
                    "GET", f"/operations/{operation_id}/events", params=params, timeout=None
                ) as response:
                    if response.status_code in (410, 425):
                        await asyncio.sleep(_retry_after(response))
                        continue
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error(response)
                    async for frame in parse_frames(response.aiter_lines()):
                        if frame.event == "sse_error":
                            break
                        event = Event.from_frame(frame)
                        last, failures = event.id, 0
                        yield event
                        if event.type == "completion":
                            return
                    else:
                        if not follow:
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > 5:
                    raise self._unreachable(exc) from exc
            await asyncio.sleep(min(0.1 * 2**failures, 2.0))

    async def wait_operation(
        self, operation_id: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Follow the operation's events until it ends; returns the operation then.

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds (it keeps running).
        """

        async def follow() -> None:
            async for _ in self.events(operation_id, follow=True):
                pass

        op = await self.get_operation(operation_id)
        if op.get("status") in TERMINAL_STATUSES:
            return op
        await asyncio.wait_for(follow(), timeout)
        return await self.get_operation(operation_id)

    # -- files ----------------------------------------------------------------------------------

    async def upload_file(self, source: Path | bytes) -> dict[str, Any]:
        """Upload a local file (streamed) or bytes; returns ``{uuid, sha256}``."""
        if isinstance(source, bytes):
            content: Any = source
        else:
            content = _file_chunks(source)
        return dict(
            await self._json(
                "POST",
                "/files",
                content=content,
                headers={"Content-Type": "application/octet-stream"},
            )
        )

    async def lookup_files(self, sha256s: list[str]) -> dict[str, dict[str, Any]]:
        """Which of these contents are uploaded already (our extension): sha256 → File."""
        body = await self._json("POST", "/files/lookup", json={"sha256": sha256s})
        return dict(body.get("files", {}))

    async def upload_files(self, paths: list[Path]) -> list[dict[str, Any]]:
        """Upload many local files in one request, as a tar (our extension); returns a File
        for each, in order."""
        spool = await asyncio.to_thread(_tar_of, paths)
        with spool:
            body = await self._json(
                "POST",
                "/files/batch",
                content=_spool_chunks(spool),
                headers={"Content-Type": "application/x-tar"},
            )
        return list(body.get("files", []))

    async def list_files(self, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        body = await self._json("GET", "/files", params={"limit": limit, "offset": offset})
        return list(body.get("files", []))

    async def find_file(self, sha256: str) -> dict[str, Any] | None:
        """The uploaded file with this sha256 in the caller's namespace, if any."""
        try:
            return dict(await self._json("GET", f"/files/{sha256}"))
        except SandtreeError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_directory_state(self, files: Mapping[str, Any]) -> dict[str, Any]:
        """Save ``{path: {"uuid", "mode"}}`` as a directory state (our extension); ``{"id"}``."""
        return dict(await self._json("POST", "/directory_states", json={"files": dict(files)}))

    async def get_directory_state(self, state_id: int) -> dict[str, Any]:
        return dict(await self._json("GET", f"/directory_states/{state_id}"))

    # -- inspection -----------------------------------------------------------------------------

    async def list_dir(self, uuid: str, path: str = "/") -> dict[str, Any]:
        return dict(await self._json("GET", f"/inspect/{uuid}/list", params={"path": path}))

    async def list_dir_text(self, uuid: str, path: str = "/") -> str:
        response = await self._request(
            "GET", f"/inspect/{uuid}/list", params={"path": path, "text": "1"}
        )
        return response.text

    async def read_file(self, uuid: str, path: str, *, limit: int | None = None) -> bytes:
        """A file's bytes (at most ``limit``, when given)."""
        out = bytearray()
        async for chunk in self._stream_bytes(f"/inspect/{uuid}/download", {"path": path}):
            out += chunk
            if limit is not None and len(out) >= limit:
                break
        return bytes(out if limit is None else out[:limit])

    async def download(self, uuid: str, path: str) -> AsyncIterator[bytes]:
        async for chunk in self._stream_bytes(f"/inspect/{uuid}/download", {"path": path}):
            yield chunk

    async def archive(self, uuid: str, path: str) -> AsyncIterator[bytes]:
        async for chunk in self._stream_bytes(f"/inspect/{uuid}/archive", {"path": path}):
            yield chunk

    async def grep(self, uuid: str, **params: Any) -> dict[str, Any]:
        query = {k: v for k, v in params.items() if v is not None}
        return dict(await self._json("GET", f"/inspect/{uuid}/grep", params=query))

    async def whoami(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/whoami"))

    async def _stream_bytes(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc


def _error(response: httpx.Response) -> SandtreeError:
    try:
        body = response.json()
        message = body.get("error") if isinstance(body, dict) else None
    except (ValueError, json.JSONDecodeError):
        message = None
    if not isinstance(message, str):
        message = (response.text or response.reason_phrase)[:500]
    return error_for_status(response.status_code, message)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "0.2")), 0.05), 5.0)
    except ValueError:
        return 0.2


def _registry(url: str, credentials: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``registry`` object of an import or push request."""
    registry: dict[str, Any] = {"url": url}
    if credentials:
        registry["credentials"] = dict(credentials)
    return registry


def _canonical_uuid(value: str) -> str | None:
    """``value`` as a canonical UUID string, or None if it is not a UUID."""
    try:
        return str(UUID(value))
    except ValueError:
        return None


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    try:
        f = path.open("rb")
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror}") from exc
    with f:
        while chunk := await asyncio.to_thread(f.read, _UPLOAD_CHUNK):
            yield chunk


def _tar_of(paths: list[Path]) -> Any:
    """An uncompressed tar of ``paths`` (named by their index), spooled to disk past 64 MiB."""
    # Returned open: the caller streams it, then closes it.
    spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, path in enumerate(paths):
            try:
                with path.open("rb") as f:  # follows a symlink: its content is what counts
                    info = tar.gettarinfo(fileobj=f, arcname=str(i))
                    tar.addfile(info, f)
            except OSError as exc:
                spool.close()
                raise InvalidRequestError(f"cannot read {path}: {exc.strerror}") from exc
    spool.seek(0)
    return spool


async def _spool_chunks(spool: Any) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(spool.read, _UPLOAD_CHUNK):
        yield chunk
