"""The sandbox engine: immutable images, isolated runs, operations and lineage.

Everything sandtree can do is a method of ``Engine``; this package imports nothing from the
HTTP, MCP or CLI layers.
"""

from sandtree.engine._engine import Engine, default_runtimes
from sandtree.engine._lineage import Diff, Lineage
from sandtree.engine.layers._grep import GrepMatch, GrepResult
from sandtree.engine.layers._ids import check_sandbox_id
from sandtree.engine.layers._inspect import FileItem, format_ls
from sandtree.engine.runtime._doctor import Finding, HostView, blocking, host_checks
from sandtree.engine.store import FileRecord, ImageQuery, OperationQuery
from sandtree.engine.types import (
    DirectoryState,
    ImageRecord,
    OperationEvent,
    OperationKind,
    OperationRecord,
    OperationStatus,
    PlacedFile,
    RunResult,
    RunSpec,
)

__all__ = [
    "Diff",
    "DirectoryState",
    "Engine",
    "FileItem",
    "FileRecord",
    "Finding",
    "GrepMatch",
    "GrepResult",
    "HostView",
    "ImageQuery",
    "ImageRecord",
    "Lineage",
    "OperationEvent",
    "OperationKind",
    "OperationQuery",
    "OperationRecord",
    "OperationStatus",
    "PlacedFile",
    "RunResult",
    "RunSpec",
    "blocking",
    "check_sandbox_id",
    "default_runtimes",
    "format_ls",
    "host_checks",
]
