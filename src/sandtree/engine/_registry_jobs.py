"""Registry imports as operations (validation up front, the pull in worker threads), and
exports to OCI archives and registries.

The pull itself (``registry.Puller``) is synchronous; here it runs off the event loop, reports
progress as ``progress`` events, honours the import's timeout and a cancel, and maps the
result onto the operation (``{"image", "tag"}``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, BinaryIO

from sandtree.config import Settings
from sandtree.engine._events import EventLog
from sandtree.engine._operations import Job, JobFailed, JobOutcome
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.registry import (
    Credentials,
    ImageReference,
    ImportCancelled,
    Progress,
    Puller,
    RegistryClient,
    Stop,
    parse_reference,
)
from sandtree.engine.registry._export import (
    build_oci_image,
    push_oci_image,
    scratch_dir,
    write_oci_archive,
)
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import ImageRecord
from sandtree.errors import InvalidRequestError

__all__ = ["ImportRequest", "RegistryImports"]

#: How long a stopped import may take to wind down before its operation ends anyway. Layer
#: downloads stop at once (their sockets are shut down); a request stalled elsewhere ends at
#: its socket timeout, in the background, and commits nothing (the stop is checked first).
_STOP_GRACE = 2.0
_PLATFORM_HINT = "write it as os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm64/v8"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportRequest:
    """A validated registry import: what to pull, as whom, and where to put it."""

    reference: ImageReference
    credentials: Credentials | None = None
    tag: str | None = None
    timeout: int = 300
    platform: str = "linux/amd64"


class RegistryImports:
    """Builds import jobs for the operation queue."""

    def __init__(
        self, settings: Settings, store: MetadataStore, layers: LayerStore, puller: Puller
    ) -> None:
        self._settings = settings
        self._store = store
        self._layers = layers
        self._puller = puller
        self._insecure = [h.strip() for h in settings.insecure_registries.split(",") if h.strip()]

    def request(
        self,
        url: str,
        *,
        credentials: Mapping[str, Any] | None = None,
        tag: str | None = None,
        timeout: int | None = None,
        platform: str | None = None,
    ) -> ImportRequest:
        """Check an import request before it is queued (bad input fails the call, not the op)."""
        ref = parse_reference(url)
        creds = None
        if credentials:
            username, password = credentials.get("username"), credentials.get("password")
            if not isinstance(username, str) or not isinstance(password, str) or not username:
                raise InvalidRequestError(
                    "registry.credentials needs both a username and a password (strings)"
                )
            creds = Credentials(username=username, password=password)
        timeout = 300 if timeout is None else timeout
        if not 1 <= timeout <= self._settings.max_timeout:
            raise InvalidRequestError(
                f"timeout must be between 1 and {self._settings.max_timeout} seconds, not {timeout}"
            )
        platform = platform or self._settings.import_platform
        parts = platform.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise InvalidRequestError(f"platform {platform!r} is malformed; {_PLATFORM_HINT}")
        return ImportRequest(
            reference=ref, credentials=creds, tag=tag, timeout=timeout, platform=platform
        )

    def job(self, op_id: str, request: ImportRequest, namespace: str) -> Job:
        async def job(log: EventLog, cancel: asyncio.Event) -> JobOutcome:
            loop = asyncio.get_running_loop()
            stop = Stop()

            def report(progress: Progress) -> None:
                emit = functools.partial(log.emit, "progress", progress.snapshot(), spid=None)
                loop.call_soon_threadsafe(emit)

            work = asyncio.ensure_future(
                asyncio.to_thread(self._import, op_id, request, namespace, stop, report)
            )
            cancelled = asyncio.ensure_future(cancel.wait())
            try:
                done, _ = await asyncio.wait(
                    {work, cancelled}, timeout=request.timeout, return_when="FIRST_COMPLETED"
                )
            except asyncio.CancelledError:
                stop.set()  # server shutdown: let the threads end at their next chunk
                raise
            finally:
                cancelled.cancel()
            if work not in done:
                stop.set()
                # Streaming layers stop at their next chunk; a registry that stalls mid-read
                # is left to its socket timeout, and whatever it returns is discarded.
                await asyncio.wait({work}, timeout=_STOP_GRACE)
                work.add_done_callback(_discard)
                if not work.done() or work.exception() is not None:
                    if cancel.is_set():
                        raise JobFailed("the import was cancelled", cancelled=True)
                    raise JobFailed(
                        f"the import of {request.reference} timed out after {request.timeout} s;"
                        " nothing was imported; retry with a larger timeout"
                    )
            image, reused = work.result()
            return JobOutcome(
                result={"image": image.uuid, "tag": request.tag},
                result_image=image.uuid,
                image_size=0 if reused else image.size,
            )

        return job

    def export(self, image: ImageRecord, out: BinaryIO) -> None:
        """``image`` as an OCI archive on ``out`` (blocking)."""
        with scratch_dir(self._layers.tmp_dir) as scratch:
            oci = build_oci_image(self._layers, image, scratch)
            write_oci_archive(oci, out, ref_name=_ref_name(image))

    def push(self, image: ImageRecord, request: ImportRequest) -> str:
        """Push ``image`` to ``request``'s registry reference (blocking); returns its digest."""
        with scratch_dir(self._layers.tmp_dir) as scratch:
            oci = build_oci_image(self._layers, image, scratch)
            with self.client(request, timeout=300.0) as client:
                return push_oci_image(oci, client)

    def client(self, request: ImportRequest, *, timeout: float) -> RegistryClient:
        """A client for ``request``'s registry, plain HTTP where that is allowed."""
        ref = request.reference
        return RegistryClient(
            ref,
            credentials=request.credentials,
            insecure=ref.is_insecure(self._insecure),
            timeout=timeout,
        )

    def _import(
        self,
        op_id: str,
        request: ImportRequest,
        namespace: str,
        stop: Stop,
        report: Any,
    ) -> tuple[ImageRecord, bool]:
        # Just past the import's own timeout, so that one fires first and names the cause.
        with self.client(request, timeout=min(60.0, request.timeout + 1.0)) as client:
            manifest = self._puller.resolve(client, request.platform)
            tags = (request.tag,) if request.tag else ()
            existing = self._puller.find_existing(namespace, manifest)
            if existing is not None:
                # The same image is here already: finish at once, moving the tag to it
                # (unless the import was stopped meanwhile: then it changes nothing).
                if stop.is_set():
                    raise ImportCancelled()
                if request.tag:
                    self._store.set_tag(namespace, request.tag, existing.uuid)
                n = len(existing.layers)
                report(Progress(phase="done", layers_total=n, layers_done=n, layers_reused=n))
                return existing, True
            image = self._puller.pull(
                client,
                manifest,
                namespace=namespace,
                tags=tags,
                operation=op_id,
                cancelled=stop,
                report=report,
            )
            return image, False


def _ref_name(image: ImageRecord) -> str:
    """The OCI ref name an export carries: the tag's version part (``busybox:1.36`` → 1.36)."""
    if not image.tags:
        return "latest"
    _, _, version = image.tags[0].rpartition(":")
    return version if version and "/" not in version else "latest"


def _discard(future: asyncio.Future[Any]) -> None:
    """Retrieve a late import's outcome so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()
