"""Pulling an image from a registry into the layer store.

Layers download and unpack in parallel, each straight from the network into its own staging
directory (no temporary tarball), checked against its digest and declared size as it streams.
A layer is adopted only when whole and verified, and recorded under its blob digest. A later
import reuses it without downloading only for a namespace that already has it (an image of
its own or a public one uses it): naming a digest is no proof of holding the blob, so any
other namespace downloads the blob and checks its digest first, and only then shares the
stored layer. The image row is written last, so a failed or cancelled import leaves no image
behind (only reusable layers, which garbage collection removes once nothing uses them).

Manifests are bounded: at most ``MAX_IMAGE_LAYERS`` layers (docker's limit; a deeper stack
could not be mounted) and ``MAX_INDEX_ENTRIES`` entries in an index.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from sandtree.engine._clock import now_iso
from sandtree.engine._imports import IMPORTED_SPAN
from sandtree.engine.layers._compression import CHUNK
from sandtree.engine.layers._merge import merge_layers
from sandtree.engine.layers._sources import ImageConfig, config_from_json
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.layers._unpack import unpack_layer
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import PUBLIC_NAMESPACE, ImageRecord
from sandtree.errors import LimitExceededError, RegistryError, SandtreeError

from ._client import INDEX_TYPES, Manifest, RegistryClient
from ._network import ImportCancelled, Stop

__all__ = ["MAX_IMAGE_LAYERS", "MAX_INDEX_ENTRIES", "Progress", "Puller"]

#: An image config is read whole: bounded, and it must be exactly its declared size.
CONFIG_LIMIT = 8 << 20
#: Docker refuses images deeper than this; overlayfs could not stack many more anyway.
MAX_IMAGE_LAYERS = 127
MAX_INDEX_ENTRIES = 256
_LABEL = re.compile(r"[^A-Za-z0-9._-]")
_MAX_WARNINGS = 20
_digest_locks: dict[str, threading.Lock] = {}
_digest_locks_guard = threading.Lock()


@dataclasses.dataclass(kw_only=True)
class Progress:
    """How far an import is: layers and (compressed) bytes done out of the total."""

    phase: str = "resolving"
    layers_total: int = 0
    layers_done: int = 0
    layers_reused: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    #: Entries skipped as unsafe (path traversal, device nodes, …), first few only.
    warnings: list[str] = dataclasses.field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["warnings"] = list(self.warnings)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Layer:
    digest: str
    size: int
    media_type: str


def _digest_lock(digest: str) -> threading.Lock:
    with _digest_locks_guard:
        return _digest_locks.setdefault(digest, threading.Lock())


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _platform_matches(entry: dict[str, Any], platform: str) -> bool:
    wanted = platform.split("/")
    plat = _obj(entry.get("platform"))
    have = [str(plat.get("os", "")), str(plat.get("architecture", ""))]
    if len(wanted) > 2:
        have.append(str(plat.get("variant", "")))
    return have == wanted


def _platform_label(entry: dict[str, Any]) -> str:
    plat = _obj(entry.get("platform"))
    parts = [plat.get("os", "?"), plat.get("architecture", "?"), plat.get("variant")]
    return "/".join(_LABEL.sub("?", str(p))[:32] for p in parts if p)


class _Stream(io.RawIOBase):
    """A blob's bytes as a file, checked for size and digest, stoppable by ``cancelled``."""

    def __init__(
        self,
        chunks: Iterator[bytes],
        layer: _Layer,
        cancelled: Stop,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._chunks, self._layer, self._cancelled, self._on_bytes = (
            chunks,
            layer,
            cancelled,
            on_bytes,
        )
        self._hash = hashlib.new(layer.digest.split(":")[0])
        self._pending = b""
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._cancelled.is_set():
            raise ImportCancelled()
        if not self._pending:
            try:
                self._pending = next(self._chunks, b"")
            except httpx.TransportError as exc:
                if self._cancelled.is_set():
                    raise ImportCancelled() from exc
                raise RegistryError(
                    f"the download of layer {self._layer.digest} broke off ({exc}); "
                    "retry the import"
                ) from exc
            if not self._pending:
                return 0
            self._read += len(self._pending)
            if self._read > self._layer.size:
                raise RegistryError(
                    f"layer {self._layer.digest} is larger than the {self._layer.size} bytes its "
                    "manifest declares; the registry or image is corrupt"
                )
            self._hash.update(self._pending)
            self._on_bytes(len(self._pending))
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def finish(self) -> None:
        """Read what the tar reader left (padding) and check the digest."""
        while self.read(CHUNK):
            pass
        actual = f"{self._hash.name}:{self._hash.hexdigest()}"
        if self._read != self._layer.size or actual != self._layer.digest:
            raise RegistryError(
                f"layer {self._layer.digest} arrived as {self._read} bytes with digest {actual}; "
                "the download was corrupted or the registry is broken"
            )


class Puller:
    """Imports images from registries into ``layers`` and ``store``.

    Args:
        max_bytes: bound on the unpacked size of one image (decompression bombs stop here).
        workers: layers downloaded and unpacked at once.
    """

    def __init__(
        self, layers: LayerStore, store: MetadataStore, *, max_bytes: int, workers: int = 4
    ) -> None:
        self._layers = layers
        self._store = store
        self._max_bytes = max_bytes
        self._workers = workers
        #: Layers an import in progress relies on; garbage collection leaves them alone.
        self.pinned: set[str] = set()

    def resolve(self, client: RegistryClient, platform: str) -> Manifest:
        """The image manifest for ``platform`` (following an index if the tag names one)."""
        manifest = client.get_manifest(client.ref.reference)
        for _ in range(2):  # an index may nest once (attestation indexes)
            if manifest.media_type not in INDEX_TYPES:
                return manifest
            listed = manifest.json().get("manifests") or []
            if not isinstance(listed, list) or len(listed) > MAX_INDEX_ENTRIES:
                raise RegistryError(
                    f"the index of {client.ref} lists more than {MAX_INDEX_ENTRIES} images (or "
                    "no list); sandtree refuses it"
                )
            entries = [e for e in listed if isinstance(e, dict)]
            chosen = [e for e in entries if _platform_matches(e, platform)]
            if not chosen:
                found = sorted({_platform_label(e) for e in entries})[:20] or ["none"]
                raise RegistryError(
                    f"{client.ref} has no {platform} image (it has: {', '.join(found)}); "
                    "pass one of those as the platform"
                )
            digest = chosen[0].get("digest")
            if not isinstance(digest, str):
                raise RegistryError(f"the index of {client.ref} has an entry without a digest")
            manifest = client.get_manifest(digest)
        raise RegistryError(f"{client.ref}: indexes nest too deeply")

    def find_existing(self, namespace: str, manifest: Manifest) -> ImageRecord | None:
        return self._store.find_image_by_source(namespace, manifest.digest)

    def pull(
        self,
        client: RegistryClient,
        manifest: Manifest,
        *,
        namespace: str,
        tags: Sequence[str],
        operation: str | None,
        cancelled: Stop,
        report: Callable[[Progress], None],
    ) -> ImageRecord:
        """Download, verify and unpack every layer, then commit the image; returns it."""
        body = manifest.json()
        listed = body.get("layers") or []
        if not isinstance(listed, list) or not listed:
            raise RegistryError(f"{client.ref} has no layers")
        if len(listed) > MAX_IMAGE_LAYERS:
            raise RegistryError(
                f"{client.ref} has {len(listed)} layers; sandtree imports images of at most "
                f"{MAX_IMAGE_LAYERS} layers (as docker does), since a deeper stack cannot be "
                "mounted; squash the image into fewer layers and push it again"
            )
        layers = [self._layer_of(d) for d in listed]
        config = self._config(client, _obj(body.get("config")))
        progress = Progress(phase="downloading", layers_total=len(layers))
        ids: list[str | None] = [None] * len(layers)
        sizes: dict[str, int] = {}
        todo: list[int] = []
        for i, layer in enumerate(layers):
            existing = self._existing_layer(layer.digest, namespace)
            if existing is None:
                todo.append(i)
                progress.bytes_total += layer.size
            else:
                ids[i], sizes[existing[0]] = existing
                progress.layers_done += 1
                progress.layers_reused += 1
        report(progress)
        lock = threading.Lock()
        last = [0.0]

        def on_bytes(n: int) -> None:
            with lock:
                progress.bytes_done += n
                now = time.monotonic()
                if now - last[0] < 0.2:
                    return
                last[0] = now
            report(progress)

        def on_warnings(digest: str, warnings: list[str]) -> None:
            with lock:
                room = _MAX_WARNINGS - len(progress.warnings)
                progress.warnings.extend(f"{digest[:19]}: {w}" for w in warnings[:room])

        budget = _Budget(self._max_bytes)
        try:
            with concurrent.futures.ThreadPoolExecutor(self._workers, "sandtree-pull") as pool:
                futures = {
                    pool.submit(
                        self._fetch,
                        client,
                        layers[i],
                        namespace,
                        budget,
                        cancelled,
                        on_bytes,
                        on_warnings,
                    ): i
                    for i in todo
                }
                try:
                    for future in concurrent.futures.as_completed(futures):
                        layer_id, size = future.result()
                        ids[futures[future]], sizes[layer_id] = layer_id, size
                        with lock:
                            progress.layers_done += 1
                        report(progress)
                except BaseException:
                    cancelled.set()  # stop the other layers at their next chunk
                    raise
            if cancelled.is_set():  # a timeout or cancel won the race: commit nothing
                raise ImportCancelled()
            progress.phase = "committing"
            report(progress)
            stack = self._distinct(tuple(i for i in ids if i is not None), sizes)
            image = ImageRecord(
                uuid=str(uuid.uuid4()),
                created_at=now_iso(),
                namespace=namespace,
                operation=operation,
                command=f"import docker://{client.ref}",
                layers=stack,
                env=tuple(config.env),
                cwd=config.cwd or "/",
                user=config.user,
                size=sum(sizes[i] for i in set(stack)),
                tags=tuple(tags),
                source_digest=manifest.digest,
            )
            self._store.add_image(image, layer_sizes=sizes, layer_span=IMPORTED_SPAN)
            progress.phase = "done"
            report(progress)
            return image
        finally:
            self.pinned.difference_update(i for i in ids if i is not None)

    def _distinct(self, stack: tuple[str, ...], sizes: dict[str, int]) -> tuple[str, ...]:
        """The stack with each repeated layer replaced by a hard-linked clone: images may
        list one blob twice (empty layers, repeated steps), and overlayfs refuses a
        directory twice in one stack."""
        seen: set[str] = set()
        out = []
        for layer_id in stack:
            if layer_id in seen:
                staging = self._layers.new_staging_dir()
                try:
                    merge_layers([self._layers.path(layer_id)], staging)
                    clone, size = self._layers.adopt(staging, linked=True)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                self._store.add_layer(clone, size=size, span=IMPORTED_SPAN)
                sizes[clone] = size
                layer_id = clone
            seen.add(layer_id)
            out.append(layer_id)
        return tuple(out)

    def _config(self, client: RegistryClient, desc: dict[str, Any]) -> ImageConfig:
        digest, size = desc.get("digest"), desc.get("size")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise RegistryError(f"the manifest of {client.ref} has no usable config descriptor")
        if not isinstance(size, int) or not 0 < size <= CONFIG_LIMIT:
            raise RegistryError(
                f"the config of {client.ref} declares {size!r} bytes; a config must declare "
                f"its size, at most {CONFIG_LIMIT} bytes"
            )
        data = client.read_blob(digest, size, f"the config blob of {client.ref}")
        try:
            config, _ = config_from_json(json.loads(data))
        except ValueError as exc:
            raise RegistryError(f"the config of {client.ref} is not valid JSON: {exc}") from exc
        except SandtreeError as exc:
            raise RegistryError(f"the config of {client.ref}: {exc.message}") from exc
        return config

    @staticmethod
    def _layer_of(desc: Any) -> _Layer:
        if not isinstance(desc, dict):
            raise RegistryError("a layer descriptor in the manifest is not an object")
        digest, size, media = desc.get("digest"), desc.get("size"), str(desc.get("mediaType", ""))
        if not isinstance(digest, str) or not digest.startswith(("sha256:", "sha512:")):
            raise RegistryError(f"a layer has an unsupported digest {digest!r}")
        if not isinstance(size, int) or size < 0:
            raise RegistryError(f"layer {digest} has no valid size")
        if "foreign" in media or "nondistributable" in media:
            raise RegistryError(
                f"layer {digest} is a foreign (non-distributable) layer ({media}); those are "
                "not supported"
            )
        return _Layer(digest=digest, size=size, media_type=media)

    def _stored_layer(self, digest: str) -> tuple[str, int] | None:
        """The layer unpacked from blob ``digest``, if it is still on disk (pinned)."""
        return self._pin(self._store.layer_by_source(digest))

    def _pin(self, found: tuple[str, int] | None) -> tuple[str, int] | None:
        """``found`` pinned, if it is still on disk."""
        if found is None or not self._layers.path(found[0]).is_dir():
            return None
        self.pinned.add(found[0])
        return found

    def _existing_layer(self, digest: str, namespace: str) -> tuple[str, int] | None:
        """The stored layer of blob ``digest`` if ``namespace`` may reuse it unseen: an image
        of its own or a public one uses it already."""
        found = self._store.layer_by_source(digest)
        if found is None or not self._store.layer_used_in(found[0], (namespace, PUBLIC_NAMESPACE)):
            return None
        return self._pin(found)

    def _fetch(
        self,
        client: RegistryClient,
        layer: _Layer,
        namespace: str,
        budget: _Budget,
        cancelled: Stop,
        on_bytes: Callable[[int], None],
        on_warnings: Callable[[str, list[str]], None],
    ) -> tuple[str, int]:
        # One download per blob at a time, across imports: the second one reuses the first.
        with _digest_lock(layer.digest):
            existing = self._existing_layer(layer.digest, namespace)
            if existing is not None:
                on_bytes(layer.size)
                return existing
            stored = self._stored_layer(layer.digest)
            if stored is not None:
                # Stored for another namespace: this one proves it can get the blob (every
                # byte, digest checked) before it shares the layer; nothing is unpacked.
                try:
                    with client.open_blob(layer.digest) as response:
                        _Stream(response.iter_raw(), layer, cancelled, on_bytes).finish()
                except BaseException:
                    self.pinned.discard(stored[0])
                    raise
                return stored
            staging = self._layers.new_staging_dir()
            try:
                with client.open_blob(layer.digest) as response:
                    stream = _Stream(response.iter_raw(), layer, cancelled, on_bytes)
                    stats = unpack_layer(
                        io.BufferedReader(stream, CHUNK),
                        staging,
                        uid_shift=self._layers.uid_shift,
                        max_bytes=budget.remaining,
                    )
                    stream.finish()
                budget.charge(stats.bytes)
                if stats.warnings:
                    on_warnings(layer.digest, stats.warnings)
                layer_id, size = self._layers.adopt(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self.pinned.add(layer_id)
            self._store.add_layer(layer_id, size=size, span=IMPORTED_SPAN, source=layer.digest)
            return layer_id, size


class _Budget:
    """The unpacked bytes an image may still take (shared by its parallel layers)."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._used = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        with self._lock:
            return max(self._total - self._used, 0)

    def charge(self, n: int) -> None:
        with self._lock:
            self._used += n
            if self._used > self._total:
                raise LimitExceededError(
                    f"the image unpacks to more than {self._total} bytes (the import limit); "
                    "import a smaller image or raise max_import_bytes"
                )
