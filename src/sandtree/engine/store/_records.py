"""Records and queries that only the metadata store deals in."""

from __future__ import annotations

import dataclasses

from sandtree.engine.types import OperationKind, OperationStatus

__all__ = ["FileRecord", "ImageQuery", "OperationQuery"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileRecord:
    """An uploaded file: content lives once per sha256 in the file store."""

    uuid: str
    sha256: str
    size: int
    created_at: str
    namespace: str = "default"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageQuery:
    namespaces: tuple[str, ...] = ("default",)
    include_public: bool = True
    limit: int = 100
    offset: int = 0
    tagged: bool | None = None
    tag_prefix: str | None = None
    uuid: str | None = None
    since: str | None = None
    until: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperationQuery:
    namespaces: tuple[str, ...] = ("default",)
    limit: int = 100
    offset: int = 0
    status: OperationStatus | None = None
    kind: OperationKind | None = None
    since: str | None = None
    until: str | None = None
