"""Registry imports as operations (validation up front, the pull in worker threads), and
exports to OCI archives and registries.

The pull itself (``registry.Puller``) is synchronous; here it runs off the event loop, reports
progress as ``progress`` events, honours the import's timeout and a cancel, and maps the
result onto the operation (``{"image", "tag"}``).

Registry transfers run in their own bounded thread pool, never in the default executor that
runs, inspection and diffs use: a stalled registry can hold only registry threads, and only
until its transfer's deadline (or a cancel) shuts its sockets down. One namespace has at most
``registry_jobs_per_namespace`` transfers in flight; its others wait without a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, BinaryIO, TypeVar

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
from sandtree.engine.registry._network import DestinationPolicy
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import ImageRecord
from sandtree.errors import InvalidRequestError, RegistryError

__all__ = ["ImportRequest", "RegistryImports"]

_T = TypeVar("_T")

#: How long a stopped transfer may take to wind down before its operation ends anyway. Every
#: socket it has open is shut down at once, so its thread returns at its next read.
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
    """Builds import jobs for the operation queue, and runs pushes."""

    def __init__(
        self, settings: Settings, store: MetadataStore, layers: LayerStore, puller: Puller
    ) -> None:
        self._settings = settings
        self._store = store
        self._layers = layers
        self._puller = puller
        self._policy = DestinationPolicy(
            insecure=settings.insecure_registries, allowed=settings.allowed_registries
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            settings.registry_threads, thread_name_prefix="sandtree-registry"
        )
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._running: set[Stop] = set()

    def close(self) -> None:
        """Stop every transfer (their sockets are shut down) and let the pool's threads go."""
        for stop in list(self._running):
            stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

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

    @asynccontextmanager
    async def _transfer(self, namespace: str, stop: Stop) -> AsyncIterator[None]:
        """A place among ``namespace``'s transfers (waited for without a thread)."""
        slot = self._slots.setdefault(
            namespace, asyncio.Semaphore(self._settings.registry_jobs_per_namespace)
        )
        async with slot:
            self._running.add(stop)
            try:
                yield
            finally:
                self._running.discard(stop)

    def _start(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """``fn(*args)`` in the registry pool (never the default executor)."""
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _settle(self, work: asyncio.Future[Any]) -> None:
        """Wait, briefly, for a stopped transfer's thread: its sockets are shut down, so it
        ends at once; whatever it returns is discarded."""
        await asyncio.wait({work}, timeout=_STOP_GRACE)
        work.add_done_callback(_discard)

    def job(self, op_id: str, request: ImportRequest, namespace: str) -> Job:
        async def job(log: EventLog, cancel: asyncio.Event) -> JobOutcome:
            loop = asyncio.get_running_loop()
            # Past the import's own timeout, so that one fires first and names the cause.
            stop = Stop(deadline=time.monotonic() + request.timeout + _STOP_GRACE)

            def report(progress: Progress) -> None:
                emit = functools.partial(log.emit, "progress", progress.snapshot(), spid=None)
                loop.call_soon_threadsafe(emit)

            async def run() -> tuple[ImageRecord, bool]:
                async with self._transfer(namespace, stop):
                    if stop.is_set():
                        raise ImportCancelled()
                    pulled = self._start(self._import, op_id, request, namespace, stop, report)
                    try:
                        return await asyncio.shield(pulled)
                    except asyncio.CancelledError:
                        stop.set()
                        await self._settle(pulled)  # the namespace's place is kept till then
                        raise

            work = asyncio.ensure_future(run())
            cancelled = asyncio.ensure_future(cancel.wait())
            try:
                done, _ = await asyncio.wait(
                    {work, cancelled}, timeout=request.timeout, return_when="FIRST_COMPLETED"
                )
            except asyncio.CancelledError:
                stop.set()  # server shutdown: the sockets are shut down, the threads end
                work.cancel()
                raise
            finally:
                cancelled.cancel()
            if work not in done:
                stop.set()
                await self._settle(work)
                if not work.done() or work.cancelled() or work.exception() is not None:
                    work.cancel()
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

    async def push(self, image: ImageRecord, request: ImportRequest, namespace: str) -> str:
        """Push ``image`` to ``request``'s registry reference; returns its manifest digest.

        Bounded by ``max_timeout`` seconds; cancelling the call (the client went away) stops
        the transfer too."""
        seconds = float(self._settings.max_timeout)
        stop = Stop(deadline=time.monotonic() + seconds)
        async with self._transfer(namespace, stop):
            work = self._start(self._push, image, request, stop)
            try:
                return await asyncio.wait_for(asyncio.shield(work), seconds)
            except TimeoutError:
                stop.set()
                await self._settle(work)
                raise RegistryError(
                    f"the push to {request.reference} took longer than {seconds:.0f} s and was "
                    "stopped; the registry is too slow or stalled"
                ) from None
            except asyncio.CancelledError:
                stop.set()
                await self._settle(work)
                raise
            except ImportCancelled:
                raise RegistryError(f"the push to {request.reference} was stopped") from None

    def _push(self, image: ImageRecord, request: ImportRequest, stop: Stop) -> str:
        with scratch_dir(self._layers.tmp_dir) as scratch:
            oci = build_oci_image(self._layers, image, scratch)
            if stop.is_set():
                raise ImportCancelled()
            with self.client(request, stop=stop, timeout=60.0) as client:
                return push_oci_image(oci, client)

    def client(self, request: ImportRequest, *, stop: Stop, timeout: float) -> RegistryClient:
        """A client for ``request``'s registry: plain HTTP where listed, connecting only where
        the destination policy allows, stopped and bounded by ``stop``."""
        return RegistryClient(
            request.reference,
            credentials=request.credentials,
            policy=self._policy,
            stop=stop,
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
        with self.client(request, stop=stop, timeout=min(60.0, request.timeout + 1.0)) as client:
            manifest = self._puller.resolve(client, request.platform)
            tags = (request.tag,) if request.tag else ()
            # Only the namespace's own images count: having imported this manifest is what
            # proves it may have the layers without fetching them again.
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
