"""Metadata store: images, tags, layers, operations, their event logs and uploaded files.

``MetadataStore`` is the seam: the embedded default is ``SqliteStore`` (WAL, one file under the
data directory; ``SqliteStore(":memory:")`` is the in-memory store for tests), and a bigger
deployment can provide another implementation (e.g. PostgreSQL) of the same Protocol.

Crash safety rests on one rule: an image row and its layer rows are written in one transaction,
after the layer bytes are durable on disk. So an image is either fully committed or absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sandtree.engine.store._records import FileRecord, ImageQuery, OperationQuery
from sandtree.engine.store._sqlite import SqliteStore
from sandtree.engine.types import (
    ImageRecord,
    OperationEvent,
    OperationRecord,
    OperationStatus,
    PlacedFile,
)

__all__ = ["FileRecord", "ImageQuery", "MetadataStore", "OperationQuery", "SqliteStore"]


class MetadataStore(Protocol):
    """Everything the engine persists about images, operations and files."""

    # images
    def add_image(
        self, image: ImageRecord, *, layer_sizes: dict[str, int], layer_span: int = 1
    ) -> None: ...
    def get_image(
        self, uuid: str, *, tag_namespaces: Sequence[str] | None = None
    ) -> ImageRecord | None:
        """The image, with the tags of ``tag_namespaces`` only (in that order) when given."""

    def list_images(self, query: ImageQuery) -> list[ImageRecord]:
        """Images of the query's namespaces (and public ones), each with the tags of those
        namespaces only; ``tagged`` and ``tag_prefix`` look only at those tags."""

    def children(
        self,
        uuid: str,
        *,
        namespaces: Sequence[str] | None = None,
        tag_namespaces: Sequence[str] | None = None,
    ) -> list[ImageRecord]:
        """Direct children, oldest first; only those of ``namespaces`` when given."""

    def add_layer(
        self, layer_id: str, *, size: int, span: int, source: str | None = None
    ) -> None: ...
    def layer_by_source(self, source: str) -> tuple[str, int] | None:
        """The layer unpacked from registry blob ``source`` (a digest), with its size."""

    def layer_used_in(self, layer_id: str, namespaces: Sequence[str]) -> bool:
        """Whether an image of one of ``namespaces`` has ``layer_id`` in its stack."""

    def find_image_by_source(self, namespace: str, source_digest: str) -> ImageRecord | None:
        """The newest image in ``namespace`` imported from manifest ``source_digest``."""

    def layer_spans(self, layer_ids: Sequence[str]) -> dict[str, int]: ...
    def replace_layers(self, uuid: str, layers: Sequence[str]) -> None: ...
    def delete_image(self, uuid: str) -> None: ...
    def unreferenced_layers(self) -> list[str]: ...
    def known_layers(self) -> set[str]: ...
    def forget_layer(self, layer_id: str) -> None: ...
    def images_with_stack_longer_than(self, n: int) -> list[str]: ...

    # tags
    def set_tag(self, namespace: str, tag: str, image: str) -> None: ...
    def remove_tag(self, namespace: str, tag: str) -> None: ...
    def remove_tags_of(self, image: str, *, namespace: str | None = None) -> list[str]:
        """Remove the image's tags (only those of ``namespace`` when given); returns them."""

    def resolve_tag(self, namespaces: Iterable[str], tag: str) -> str | None: ...

    # operations
    def add_operation(self, op: OperationRecord) -> None: ...
    def get_operation(self, uuid: str) -> OperationRecord | None: ...
    def update_operation(self, uuid: str, **fields: Any) -> None: ...
    def list_operations(self, query: OperationQuery) -> list[OperationRecord]: ...
    def operations_in(self, statuses: Iterable[OperationStatus]) -> list[OperationRecord]: ...

    # event logs
    def append_events(self, operation: str, events: Sequence[OperationEvent]) -> None: ...
    def events(self, operation: str, *, after: int = 0) -> list[OperationEvent]: ...

    # files
    def add_file(self, record: FileRecord) -> None: ...
    def get_file(self, uuid: str) -> FileRecord | None: ...
    def get_files(self, uuids: Iterable[str]) -> dict[str, FileRecord]:
        """The records of those of ``uuids`` that exist, by uuid (one query per batch)."""

    def find_file(self, namespace: str, sha256: str) -> FileRecord | None: ...
    def list_files(
        self,
        namespace: str,
        *,
        limit: int,
        offset: int,
        since: str | None = None,
        until: str | None = None,
    ) -> list[FileRecord]: ...

    # directory states (a snapshot of placed files, reusable by many runs)
    def add_directory_state(
        self, namespace: str, files: Sequence[PlacedFile], created_at: str
    ) -> int: ...
    def get_directory_state(self, state_id: int) -> tuple[str, str, list[PlacedFile]] | None:
        """``(namespace, created_at, files)`` of a directory state, or None."""

    def directory_state_layer(self, state_id: int) -> str | None:
        """The layer holding a directory state's files, once made (None before)."""

    def latest_state_layer(self, namespace: str, *, exclude: int) -> tuple[int, str] | None:
        """The newest other state of ``namespace`` that has a layer: ``(state id, layer)``."""

    def set_directory_state_layer(
        self, state_id: int, layer_id: str, *, size: int, span: int
    ) -> None:
        """Record the state's layer (and the layer) in one transaction."""

    def close(self) -> None: ...
