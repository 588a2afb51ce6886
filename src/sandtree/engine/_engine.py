"""The engine facade: every sandbox capability behind one object, no HTTP, MCP or CLI.

Callers (the REST API, tests, benchmarks) hold one ``Engine``; its methods are the whole
command surface, and each states what it needs and raises from ``sandtree.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from sandtree._datadir import private_dir
from sandtree.config import Settings
from sandtree.engine._clock import now_iso
from sandtree.engine._compaction import Compactor
from sandtree.engine._events import EventHub, EventLog
from sandtree.engine._files import BlobStore
from sandtree.engine._grep_runner import GrepRunner
from sandtree.engine._imports import import_path
from sandtree.engine._lineage import Diff, Lineage, diff_images, lineage
from sandtree.engine._operations import JobFailed, JobOutcome, OperationQueue
from sandtree.engine._processes import process_result
from sandtree.engine._registry_jobs import RegistryImports
from sandtree.engine._results import run_outcome
from sandtree.engine._runs import RunExecutor, RunFailure
from sandtree.engine._states import (
    StateLayers,
    check_owners,
    create_directory_state,
    get_directory_state,
)
from sandtree.engine.layers import _grep, _inspect as _inspect_ops
from sandtree.engine.layers._ids import check_sandbox_id
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.registry import Puller
from sandtree.engine.runtime import CgroupHost, OciRuntime, Runtime, host_cgroups
from sandtree.engine.runtime._lock import DataDirLock
from sandtree.engine.store import FileRecord, ImageQuery, MetadataStore, OperationQuery, SqliteStore
from sandtree.engine.types import (
    PUBLIC_NAMESPACE,
    DirectoryState,
    ImageRecord,
    OperationEvent,
    OperationKind,
    OperationRecord,
    OperationStatus,
    PlacedFile,
    RunSpec,
)
from sandtree.errors import (
    FileNotFoundInStoreError,
    ForbiddenError,
    ImageNotFoundError,
    InvalidRequestError,
    NotFoundError,
    OperationNotFoundError,
)

__all__ = ["Engine", "default_runtimes"]

logger = logging.getLogger(__name__)

_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:[:/.][A-Za-z0-9_-]+)*$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
#: Beyond this many layers a run compacts the stack before mounting (the kernel stops at 500).
_HARD_STACK = 400


def _seen_from(namespaces: Sequence[str]) -> tuple[str, ...]:
    """The namespaces whose images and tags ``namespaces`` see: themselves, then public."""
    return tuple(dict.fromkeys([*namespaces, PUBLIC_NAMESPACE]))


def default_runtimes(settings: Settings) -> dict[str, Callable[[], Runtime]]:
    """The real tiers: ``container`` (crun, runc where crun is missing) and ``gvisor``."""
    state = settings.data_dir / "run"

    def container() -> Runtime:
        if shutil.which(settings.crun_path):
            return OciRuntime(
                kind="crun",
                binary=settings.crun_path,
                state_dir=state / "crun",
                uid_shift=settings.uid_shift,
            )
        return OciRuntime(
            kind="runc",
            binary=settings.runc_path,
            state_dir=state / "runc",
            uid_shift=settings.uid_shift,
        )

    def gvisor() -> Runtime:
        return OciRuntime(
            kind="runsc",
            binary=settings.runsc_path,
            state_dir=state / "runsc",
            uid_shift=settings.uid_shift,
        )

    return {"container": container, "gvisor": gvisor}


class Engine:
    """Images, runs, operations, files and inspection on one machine.

    Args:
        settings: server settings (data directory, limits, default tier…).
        store: metadata store; defaults to SQLite under ``settings.data_dir``.
        runtimes: isolation tier → runtime factory; defaults to ``default_runtimes``.
        network: a ``NetworkPool`` for runs with networking enabled, or None to refuse them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: MetadataStore | None = None,
        runtimes: Mapping[str, Callable[[], Runtime]] | None = None,
        network: Any | None = None,
    ) -> None:
        self.settings = settings
        # The data dir is the server's alone (databases, tokens, setuid files in layers): 0700,
        # also when an older sandtree made it with the umask's mode.
        private_dir(settings.data_dir)
        self.store = store if store is not None else SqliteStore(settings.data_dir / "sandtree.db")
        self.layers = LayerStore(settings.data_dir / "store", uid_shift=settings.uid_shift)
        self.blobs = BlobStore(settings.data_dir / "files")
        self.events = EventHub(self.store, cap_bytes=settings.event_log_cap_bytes)
        self._runtimes = dict(runtimes) if runtimes is not None else default_runtimes(settings)
        self._network = network
        self._data_lock = DataDirLock(settings.data_dir)
        self.runs = RunExecutor(
            settings=settings,
            store=self.store,
            layers=self.layers,
            blobs=self.blobs,
            runtimes=self._runtimes,
            network=network,
        )
        self._queue: OperationQueue | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # The deepest image stack a run may mount here, with room for a directory state's
        # layer on top: on kernels without lowerdir+ (Linux < 6.8) what fits in one page of
        # mount options, which compaction then keeps every stack within.
        self._stack_limit = min(_HARD_STACK, self.layers.max_lowers() - 1)
        self._compactor = Compactor(
            self.store, self.layers, max_stack=min(settings.max_stack_layers, self._stack_limit)
        )
        self.puller = Puller(
            self.layers,
            self.store,
            max_bytes=settings.max_import_bytes,
            workers=settings.import_workers,
        )
        self._state_layers = StateLayers(self.store, self.layers, self.blobs)
        self._imports = RegistryImports(settings, self.store, self.layers, self.puller)
        self._greps = GrepRunner(settings)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from a previous process: stale sandboxes, mounts, half-made layers, ops.

        Raises:
            ConflictError: another process is using the data dir (its sandboxes are not
                leftovers to remove).
        """
        self._data_lock.acquire()
        for factory in self._runtimes.values():
            with contextlib.suppress(Exception):
                factory().cleanup_stale()
        await asyncio.to_thread(self.layers.sweep, self.store.known_layers())
        if self._network is not None:
            await asyncio.to_thread(self._network.cleanup_stale)
            await asyncio.to_thread(self._network.setup)
        self._queue = OperationQueue(
            self.store,
            self.events,
            concurrency=self.settings.max_concurrency,
            namespace_share=self.settings.namespace_max_concurrency or None,
        )
        self._queue.recover()

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.close()
        await self.runs.settle()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._compactor.close()
        self._imports.close()
        self._greps.close()
        self.layers.close()
        if self._network is not None:
            await asyncio.to_thread(self._network.teardown)
        self.store.close()
        self._data_lock.release()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def queue(self) -> OperationQueue:
        if self._queue is None:
            raise RuntimeError("Engine.start() has not been awaited")
        return self._queue

    def cgroups(self) -> CgroupHost:
        """The host's cgroup mode (``v1``, ``hybrid`` or ``v2``), the controllers sandbox
        limits can use, and on v2 the subtree sandboxes live in. Found once per process."""
        return host_cgroups()

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Nobody awaits background work: its failures must at least reach the log.
            logger.error("background task failed", exc_info=task.exception())

    # -- images ---------------------------------------------------------------------------------

    def resolve_image(self, ref: str, *, namespaces: Sequence[str] = ("default",)) -> ImageRecord:
        """An image by UUID or ``tag:NAME``, visible from ``namespaces`` (or public)."""
        if ref.startswith("tag:"):
            tag = ref[4:]
            image_id = self.store.resolve_tag([*namespaces, PUBLIC_NAMESPACE], tag)
            if image_id is None:
                raise ImageNotFoundError(
                    f"no image is tagged {tag!r}; list_images(tag_prefix=...) shows the tags "
                    "that exist, or import the image and tag it"
                )
            ref = image_id
        if not _UUID_RE.fullmatch(ref):
            raise InvalidRequestError(
                f"{ref!r} is neither an image UUID nor 'tag:NAME'; pass a UUID from "
                "list_images or a tag such as 'tag:busybox:latest'"
            )
        image = self.store.get_image(str(uuid.UUID(ref)), tag_namespaces=_seen_from(namespaces))
        if image is None or not (image.namespace in namespaces or image.public):
            raise ImageNotFoundError(
                f"image {ref} does not exist; list_images shows the images you can use"
            )
        return image

    def list_images(self, query: ImageQuery) -> list[ImageRecord]:
        """Images of the query's namespaces and public ones, each with only the tags of
        those namespaces (another tenant's names for a public image stay theirs)."""
        return self.store.list_images(query)

    def tag_image(
        self, image: ImageRecord, tag: str, *, namespace: str | None = None
    ) -> ImageRecord:
        """Point ``namespace``'s ``tag`` at ``image`` (moving it if it pointed elsewhere).

        Tags belong to a namespace: a tenant tagging a public image names it for itself only,
        and only the public namespace's own token tags in ``public``. The record returned
        shows the tags ``namespace`` sees.
        """
        if not _TAG_RE.fullmatch(tag):
            raise InvalidRequestError(
                f"{tag!r} is not a valid tag; use letters, digits, '_' and '-', with ':', '/' "
                "or '.' between parts, e.g. 'python:3.11' or 'team/app:v2'"
            )
        owner = namespace or image.namespace
        self._reload(image)  # a deleted image is not found, not a foreign-key failure
        self.store.set_tag(owner, tag, image.uuid)
        return self._seen(image, owner)

    def untag_image(
        self, image: ImageRecord, tag: str | None = None, *, namespace: str | None = None
    ) -> ImageRecord:
        """Remove one of ``namespace``'s tags of ``image``, or all of them when ``tag`` is
        None. Other namespaces' tags of the same (public) image are never touched.

        Raises:
            ForbiddenError: ``tag`` is a public tag and ``namespace`` is not ``public``.
            InvalidRequestError: ``namespace`` has no such tag on the image.
        """
        owner = namespace or image.namespace
        if tag is None:
            self.store.remove_tags_of(image.uuid, namespace=owner)
            return self._seen(image, owner)
        # Re-read: the tag may have moved since the caller looked.
        own = self._reload(image, tag_namespaces=(owner,))
        if tag not in own.tags:
            seen = self._seen(image, owner)
            if tag in seen.tags:  # visible, so not ours: the public namespace's
                raise ForbiddenError(
                    f"{tag!r} is a tag of the public namespace; only its token can move or "
                    "remove it. Tag the image under a name of your own instead"
                )
            raise InvalidRequestError(
                f"image {image.uuid} is not tagged {tag!r}; its tags are "
                f"{list(seen.tags) or 'none'}"
            )
        self.store.remove_tag(owner, tag)
        return self._seen(image, owner)

    def _seen(self, image: ImageRecord, namespace: str) -> ImageRecord:
        """``image`` afresh, with the tags ``namespace`` sees (its own, then public ones)."""
        return self._reload(image, tag_namespaces=_seen_from((namespace,)))

    def _reload(
        self, image: ImageRecord, *, tag_namespaces: Sequence[str] | None = None
    ) -> ImageRecord:
        fresh = self.store.get_image(image.uuid, tag_namespaces=tag_namespaces)
        if fresh is None:
            raise ImageNotFoundError(f"image {image.uuid} no longer exists")
        return fresh

    async def import_local(
        self, path: Path, *, tag: str | None = None, namespace: str = "default"
    ) -> ImageRecord:
        """Create a root image from a rootfs directory, a tar, an OCI layout or ``docker save``."""
        if tag is not None and not _TAG_RE.fullmatch(tag):
            raise InvalidRequestError(f"{tag!r} is not a valid tag, e.g. 'busybox:latest'")
        image = await asyncio.to_thread(
            import_path,
            self.layers,
            self.store,
            path,
            namespace=namespace,
            tags=(tag,) if tag else (),
        )
        return image

    async def import_image(
        self,
        url: str,
        *,
        credentials: Mapping[str, Any] | None = None,
        tag: str | None = None,
        timeout: int | None = None,
        platform: str | None = None,
        namespace: str = "default",
        request: Mapping[str, Any] | None = None,
    ) -> OperationRecord:
        """Queue an import from an OCI registry (``docker://alpine:3.20``); returns its operation.

        Bad input (a malformed reference, tag, platform or timeout) raises at once; what the
        registry says (missing image, wrong credentials, unreachable) fails the operation.
        """
        if tag is not None and not _TAG_RE.fullmatch(tag):
            raise InvalidRequestError(f"{tag!r} is not a valid tag, e.g. 'busybox:latest'")
        wanted = self._imports.request(
            url, credentials=credentials, tag=tag, timeout=timeout, platform=platform
        )
        op = OperationRecord(
            uuid=str(uuid.uuid4()),
            kind=OperationKind.IMAGE_IMPORT,
            status=OperationStatus.PENDING,
            created_at=now_iso(),
            namespace=namespace,
            request=dict(request or {}),
        )
        self.store.add_operation(op)
        self.queue.submit(op, self._imports.job(op.uuid, wanted, namespace))
        return op

    def export_image(self, image: ImageRecord, out: BinaryIO) -> None:
        """Write ``image`` to ``out`` as an OCI archive (an OCI layout in a tar), layers and
        config included. Blocking and sequential: call it in a thread; ``out`` may be a pipe."""
        self._imports.export(image, out)

    async def push_image(
        self,
        image: ImageRecord,
        url: str,
        *,
        credentials: Mapping[str, Any] | None = None,
        namespace: str = "default",
    ) -> str:
        """Push ``image`` to a registry as ``url`` (``docker://host/name:tag``); returns the
        manifest digest. Blobs the registry already has are not sent again. It counts among
        ``namespace``'s registry transfers and runs in the registry pool."""
        wanted = self._imports.request(url, credentials=credentials)
        return await self._imports.push(image, wanted, namespace)

    def delete_image(self, image: ImageRecord) -> None:
        """Forget an image; its layers go once no other image uses them (``collect_garbage``)."""
        self.layers.forget_views(image.layers)
        self.store.delete_image(image.uuid)

    async def collect_garbage(self) -> list[str]:
        """Delete layers that no image references any more; returns their ids."""
        removed = []
        for layer_id in self.store.unreferenced_layers():
            if layer_id in self.puller.pinned:
                continue  # an import in progress is about to use it
            self.store.forget_layer(layer_id)
            await asyncio.to_thread(self.layers.delete, layer_id)
            removed.append(layer_id)
        return removed

    def lineage(
        self, image: ImageRecord, *, namespace: str | None = None, ancestor_limit: int | None = 100
    ) -> Lineage:
        """``image``'s place in the tree. With ``namespace``, only what it may see: its own
        and public images (another tenant's children of a public image are left out), each
        with the tags it sees."""
        seen = None if namespace is None else _seen_from((namespace,))
        return lineage(self.store, image, ancestor_limit=ancestor_limit, namespaces=seen)

    async def diff(self, image: ImageRecord, other: ImageRecord | None = None) -> Diff:
        """Paths added, changed and deleted in ``image`` relative to ``other`` (its parent)."""
        if other is None:
            if image.parent is None:
                raise InvalidRequestError(
                    f"image {image.uuid} has no parent; pass another image to compare with"
                )
            other = self.resolve_image(image.parent, namespaces=(image.namespace,))
        return await asyncio.to_thread(diff_images, self.layers, image.layers, other.layers)

    async def _compact(self, image: ImageRecord) -> None:
        """Compact ``image``'s stack now, whatever its length (tests and the hard limit)."""
        await self._compactor.compact(image, force=True)

    # -- runs and operations ---------------------------------------------------------------------

    async def spawn(
        self, spec: RunSpec, *, namespace: str = "default", request: Mapping[str, Any] | None = None
    ) -> OperationRecord:
        """Queue a run; returns its PENDING operation at once."""
        image = self.resolve_image(spec.image, namespaces=(namespace,))
        if spec.timeout > self.settings.max_timeout or spec.timeout < 1:
            raise InvalidRequestError(
                f"timeout must be between 1 and {self.settings.max_timeout} seconds, "
                f"not {spec.timeout}"
            )
        # The run's ids and its files' owners become host ids (shifted): only the sandbox's.
        check_sandbox_id(spec.uid, "uid")
        check_sandbox_id(spec.gid, "gid")
        check_owners(spec.files)
        tier = spec.isolation or self.settings.default_isolation
        runtime = self.runs.runtime(tier)  # fails fast on an unknown or unavailable tier
        if spec.network and self._network is None:
            raise InvalidRequestError(
                "networking is not available on this server; run with networking disabled"
            )
        if spec.network and not runtime.supports_network:
            raise InvalidRequestError(
                f"the {tier} tier cannot give sandboxes a network on this host (its {runtime.name}"
                " is too old); run with isolation='container' or with networking disabled"
            )
        for placed in spec.files:
            record = self.store.get_file(placed.uuid)
            if record is None or record.namespace != namespace:
                raise FileNotFoundInStoreError(
                    f"file {placed.uuid} for {placed.path} was not uploaded; upload it first"
                )
        if spec.directory_state is not None:  # it must be ours; its layer is made at start
            try:
                self.get_directory_state(spec.directory_state, namespace=namespace)
            except NotFoundError as exc:
                raise InvalidRequestError(exc.message) from None
        op = OperationRecord(
            uuid=str(uuid.uuid4()),
            kind=OperationKind.INSTANCE,
            status=OperationStatus.PENDING,
            created_at=now_iso(),
            namespace=namespace,
            image=image.uuid,
            request=dict(request or {}),
        )
        self.store.add_operation(op)
        self.queue.submit(op, self._run_job(op.uuid, image, spec, namespace))
        return op

    def _run_job(self, op_id: str, image: ImageRecord, spec: RunSpec, namespace: str) -> Any:
        async def job(log: EventLog, cancel: asyncio.Event) -> JobOutcome:
            nonlocal spec
            # Re-read: a compaction may have shortened (rebased) the stack since spawn.
            current = self._reload(image)
            if len(current.layers) > self._stack_limit:
                await self._compactor.compact(current, fit=self._stack_limit)
                current = self._reload(current)
            if spec.directory_state is not None:
                spec = await self._state_layers.place(spec, current, namespace)
            try:
                result, child = await self.runs.execute(
                    op_id, current, spec, log, cancel, namespace=namespace
                )
            except RunFailure as failure:
                outcome = run_outcome(failure.result) if failure.result else None
                raise JobFailed(failure.message, outcome, cancelled=failure.cancelled) from None
            if child is not None and len(child.layers) > self._compactor.max_stack:
                self._spawn_background(self._compactor.compact(child))
            return run_outcome(result)

        return job

    def get_operation(
        self, op_id: str, *, namespaces: Sequence[str] = ("default",)
    ) -> OperationRecord:
        op = self.store.get_operation(op_id) if _UUID_RE.fullmatch(op_id) else None
        if op is None or op.namespace not in namespaces:
            raise OperationNotFoundError(
                f"operation {op_id} does not exist; list_operations shows the ones you can see"
            )
        return op

    def list_operations(self, query: OperationQuery) -> list[OperationRecord]:
        return self.store.list_operations(query)

    async def cancel_operation(self, op: OperationRecord) -> OperationRecord:
        return await self.queue.cancel(op.uuid)

    async def wait_operation(
        self, op: OperationRecord, *, timeout: float | None = None
    ) -> OperationRecord:
        return await self.queue.wait(op.uuid, timeout=timeout)

    def follow_events(
        self, op: OperationRecord, *, after: int = 0, follow: bool = True
    ) -> AsyncIterator[OperationEvent]:
        return self.events.follow(op.uuid, after=after, follow=follow)

    # -- processes of running instances -------------------------------------------------------

    async def exec_process(
        self,
        op: OperationRecord,
        *,
        command: str,
        args: Sequence[str] = (),
        shell: bool = False,
        env: Mapping[str, str | None] | None = None,
        cwd: str = "",
        uid: int = 0,
        gid: int = 0,
        stdin: bytes = b"",
        stdin_close: bool = True,
        truncate_output_at: int | None = None,
    ) -> int:
        """Start another process in ``op``'s running sandbox; returns its spid (2, 3, …).

        Raises:
            NotReadyError: the operation has not ended but its sandbox is not up (yet); retry.
            ConflictError: the operation has ended, or is not a run.
        """
        check_sandbox_id(uid, "uid")
        check_sandbox_id(gid, "gid")
        argv = ["/bin/sh", "-c", command] if shell else [command, *args]
        return await self.runs.processes.exec(
            op.uuid, args=argv, env=env or {}, cwd=cwd, uid=uid, gid=gid, stdin=stdin,
            stdin_close=stdin_close, truncate=truncate_output_at,
        )  # fmt: skip

    async def write_stdin(
        self, op: OperationRecord, spid: int, data: bytes, *, close: bool
    ) -> None:
        """Feed a running process's stdin, closing it after ``data`` when ``close``."""
        await self.runs.processes.write_stdin(op.uuid, spid, data, close=close)

    async def signal_process(self, op: OperationRecord, spid: int, signum: int) -> None:
        """Signal a process; spid 1 (the main process) ends the whole run."""
        await self.runs.processes.signal(op.uuid, spid, signum)

    def process_result(self, op: OperationRecord, spid: int) -> dict[str, Any]:
        """The ``InstanceResult`` of one process, from the events so far."""
        log = self.events.live(op.uuid)
        if log is not None:
            log.flush()
        return process_result(self.store.events(op.uuid), spid)

    # -- files ----------------------------------------------------------------------------------

    async def upload_file(
        self, chunks: AsyncIterable[bytes], *, namespace: str = "default"
    ) -> FileRecord:
        """Store uploaded content once per sha256; returns its (possibly existing) record."""
        sha, size = await self.blobs.put_stream(chunks)
        return self._file_record(sha, size, namespace)

    def _file_record(self, sha: str, size: int, namespace: str) -> FileRecord:
        """The namespace's record of content ``sha`` (stored already), made if new."""
        existing = self.store.find_file(namespace, sha)
        if existing is not None:
            return existing
        record = FileRecord(
            uuid=str(uuid.uuid4()), sha256=sha, size=size, created_at=now_iso(), namespace=namespace
        )
        self.store.add_file(record)
        return record

    async def upload_files_tar(
        self, tar_stream: BinaryIO, *, namespace: str = "default"
    ) -> list[tuple[str, FileRecord]]:
        """Store each regular file of an uncompressed tar (many files in one request);
        returns ``(member name, record)`` pairs in order."""
        stored = await asyncio.to_thread(self.blobs.put_tar, tar_stream)
        return [(name, self._file_record(sha, size, namespace)) for name, sha, size in stored]

    def find_files(self, sha256s: Sequence[str], *, namespace: str = "default") -> list[FileRecord]:
        """The uploaded files of ``namespace`` with these contents (absent ones left out)."""
        found = (self.store.find_file(namespace, sha.lower()) for sha in sha256s)
        return [record for record in found if record is not None]

    def create_directory_state(
        self, files: Sequence[PlacedFile], *, namespace: str = "default"
    ) -> DirectoryState:
        """Save ``files`` (uploaded files at absolute paths) as a state runs can name by id,
        so a synced tree is described once rather than with every run."""
        return create_directory_state(self.store, files, namespace=namespace)

    def get_directory_state(self, state_id: int, *, namespace: str = "default") -> DirectoryState:
        return get_directory_state(self.store, state_id, namespace=namespace)

    def get_file(self, ref: str, *, namespace: str = "default") -> FileRecord:
        """A file by uuid or sha256."""
        record = (
            self.store.find_file(namespace, ref.lower())
            if len(ref) == 64
            else self.store.get_file(ref)
        )
        if record is None or record.namespace != namespace:
            raise FileNotFoundInStoreError(f"file {ref} was not uploaded; upload it first")
        return record

    def list_files(
        self,
        *,
        namespace: str = "default",
        limit: int = 100,
        offset: int = 0,
        since: str | None = None,
        until: str | None = None,
    ) -> list[FileRecord]:
        """Uploaded files of ``namespace``, newest first, created within [since, until]."""
        return self.store.list_files(namespace, limit=limit, offset=offset, since=since,
                                     until=until)  # fmt: skip

    def file_path(self, record: FileRecord) -> Path:
        return self.blobs.path(record.sha256)

    # -- inspection without a sandbox ------------------------------------------------------------

    @contextlib.contextmanager
    def mounted(self, image: ImageRecord) -> Iterator[Path]:
        """The image's root filesystem, read-only, for inspection."""
        with self.layers.view(image.layers) as root:
            yield root

    def list_dir(self, image: ImageRecord, path: str) -> list[_inspect_ops.FileItem]:
        with self.mounted(image) as root:
            return _inspect_ops.list_dir(root, path, uid_shift=self.settings.uid_shift)

    def open_file(self, image: ImageRecord, path: str) -> BinaryIO:
        with self.mounted(image) as root:
            return _inspect_ops.open_file(root, path)

    def stat_path(self, image: ImageRecord, path: str) -> _inspect_ops.FileItem:
        with self.mounted(image) as root:
            return _inspect_ops.stat_path(root, path, uid_shift=self.settings.uid_shift)

    def write_tar(self, image: ImageRecord, path: str, out: BinaryIO) -> None:
        with self.mounted(image) as root:
            _inspect_ops.write_tar(root, path, out, uid_shift=self.settings.uid_shift)

    async def grep(
        self,
        image: ImageRecord,
        patterns: list[str],
        *,
        namespace: str = "default",
        **options: Any,
    ) -> _grep.GrepResult:
        """Search ``image``'s files (``options`` as ``layers._grep.grep`` takes them).

        At most ``grep_concurrency`` greps run at once, ``grep_per_namespace`` of one
        namespace (``TooManyRequestsError`` past that), each in a grep thread, for at most
        ``grep_timeout`` seconds and ``grep_max_bytes`` bytes read; then it answers with what
        it found, ``truncated``."""
        settings = self.settings
        options.setdefault("max_bytes", settings.grep_max_bytes)

        def search(stop: threading.Event) -> _grep.GrepResult:
            # The deadline counts from when the search starts, in its thread.
            deadline = time.monotonic() + settings.grep_timeout
            with self.mounted(image) as root:
                return _grep.grep(
                    root,
                    patterns,
                    uid_shift=settings.uid_shift,
                    deadline=deadline,
                    stop=stop,
                    **options,
                )

        return await self._greps.run(namespace, search)
