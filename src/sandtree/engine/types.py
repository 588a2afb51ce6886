"""Domain records of the engine: plain dataclasses, no I/O."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PUBLIC_NAMESPACE",
    "ImageRecord",
    "LayerRecord",
    "OperationEvent",
    "OperationKind",
    "OperationRecord",
    "OperationStatus",
    "PlacedFile",
    "ProcessState",
    "ResourceUsage",
    "RunResult",
    "RunSpec",
    "StreamOutput",
]


#: Images in this namespace are public: every namespace can list, inspect and run them.
PUBLIC_NAMESPACE = "public"


class OperationStatus(enum.StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    EXECUTING = "EXECUTING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({OperationStatus.SUCCESS, OperationStatus.FAILED, OperationStatus.CANCELLED})


class OperationKind(enum.StrEnum):
    INSTANCE = "instance"
    IMAGE_IMPORT = "image_import"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerRecord:
    """A directory of the layer store in overlayfs upper-dir format."""

    id: str
    size: int
    created_at: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """An immutable image: its layer stack, config and place in the lineage tree."""

    uuid: str
    created_at: str
    namespace: str = "default"
    parent: str | None = None
    #: The operation that made this image (None for local imports made without one).
    operation: str | None = None
    #: The command that made it (for lineage views), or a description of its source.
    command: str | None = None
    #: Logical depth in the lineage tree (a root image has depth 0).
    depth: int = 0
    #: Layer ids, bottom first; this is the *physical* stack, which compaction may shorten.
    layers: tuple[str, ...] = ()
    #: Image config: ``env`` (list of ``K=V``), ``cwd``, ``user``.
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    #: Bytes the image's own top layer adds (0 for an unchanged or imported-from-nothing image).
    size: int = 0
    tags: tuple[str, ...] = ()
    #: For registry imports: the digest of the image manifest it was made from.
    source_digest: str | None = None

    @property
    def public(self) -> bool:
        return self.namespace == PUBLIC_NAMESPACE

    @property
    def env_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlacedFile:
    """An uploaded file placed into a run at an absolute path."""

    uuid: str
    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DirectoryState:
    """A saved set of placed files (a synced project tree) that runs can name by ``id``."""

    id: int
    namespace: str
    created_at: str
    files: tuple[PlacedFile, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What to run, validated: the engine's form of ``InstanceSpawnRequest``."""

    image: str
    command: str
    args: tuple[str, ...] = ()
    shell: bool = False
    env: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    cwd: str = ""
    uid: int = 0
    gid: int = 0
    hostname: str = "linuxkit"
    stdin: bytes = b""
    #: Close stdin after ``stdin`` (else more can be written while the run runs).
    stdin_close: bool = True
    timeout: int = 30
    truncate_output_at: int = 1024 * 1024
    files: tuple[PlacedFile, ...] = ()
    #: A directory state (``Engine.create_directory_state``) whose files are placed first;
    #: ``files`` placed at the same paths win.
    directory_state: int | None = None
    #: Read-only layers mounted over the image (the engine sets this: a directory state's
    #: files, made into a layer once); a kept result carries them in its stack.
    lower_layers: tuple[str, ...] = ()
    disposable: bool = False
    preserve_env: bool = False
    preserve_cwd: bool = False
    max_layer_bytes: int | None = None
    network: bool = False
    isolation: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamOutput:
    data: bytes
    truncated: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResourceUsage:
    user_cpu_time: float = 0.0
    system_cpu_time: float = 0.0
    max_rss_kb: int = 0
    elapsed_time: float = 0.0

    @property
    def cpu_time(self) -> float:
        return self.user_cpu_time + self.system_cpu_time


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessState:
    exit_code: int
    signal: int = 0
    timed_out: bool = False
    pid: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """The outcome of a run."""

    state: ProcessState
    stdout: StreamOutput
    stderr: StreamOutput
    resources: ResourceUsage
    result_image: str | None
    filesystem_changed: bool
    image_size: int = 0
    #: Set when a sandbox limit ended the run (``memory``, ``pids``, ``disk``, ``timeout``).
    limit_hit: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperationRecord:
    uuid: str
    kind: OperationKind
    status: OperationStatus
    created_at: str
    namespace: str = "default"
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    image: str | None = None
    result_image: str | None = None
    #: The request as the caller sent it (normalised), for the API's ``metadata``.
    request: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The result document (``InstanceResult`` for runs; ``{"image", "tag"}`` for imports).
    result: Mapping[str, Any] | None = None
    duration: float | None = None
    image_size: int | None = None
    consumed_cpu: float | None = None
    consumed_memory: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperationEvent:
    """One entry of an operation's append-only event log (the spec's ``OperationEvent``)."""

    id: int
    ts: str
    type: str
    data: Mapping[str, Any]
    spid: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "ts": self.ts, "type": self.type}
        if self.spid is not None:
            out["spid"] = self.spid
        out["data"] = dict(self.data)
        return out
