"""Server settings, read once at the edge.

Nothing below the entry points reads ``os.environ``: ``Settings.from_env()`` is called by
``sandtree serve`` (and the embedded modes of the CLI and MCP server), and the resulting object
is passed down.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandtree.errors import InvalidRequestError

__all__ = ["ISOLATION_TIERS", "Settings", "default_data_dir"]

#: The isolation tiers a run may ask for.
ISOLATION_TIERS = ("container", "gvisor")

_ENV_PREFIX = "SANDTREE_"
#: The host ids a sandbox's 65536 ids may start at (see ``Settings.uid_shift``).
_MIN_UID_SHIFT = 65536
_MAX_UID_SHIFT = 2**32 - 2 - 65535


def default_data_dir() -> Path:
    """Where the embedded server keeps its state unless told otherwise."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "sandtree"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the engine and server can be configured with.

    Each field can be set from the environment as ``SANDTREE_<FIELD>`` (upper case).
    """

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 9450
    #: Isolation tier used when a run does not ask for one: ``container`` (crun) or ``gvisor``.
    default_isolation: str = "container"
    #: How many operations execute at once; the rest wait as PENDING.
    max_concurrency: int = 8
    #: How many of those one namespace may hold; 0 = all but one (at least 1), so one
    #: tenant's flood always leaves a slot for another tenant's next run.
    namespace_max_concurrency: int = 0
    #: Per-sandbox limits applied to every run.
    memory_limit_bytes: int = 2 * 1024**3
    pids_limit: int = 512
    #: CPU share as a number of CPUs (0 = no quota).
    cpu_limit: float = 1.0
    #: Default and maximum wall-time of a run in seconds.
    default_timeout: int = 30
    max_timeout: int = 3600
    #: Default writable-layer cap (bytes) when a run does not set ``max_layer_bytes``.
    max_layer_bytes: int = 12 * 1024**3
    #: Most files, directories and other entries a run's writable layer may hold.
    max_layer_entries: int = 1_000_000
    #: Host uid/gid that root inside every sandbox maps to; 65536 ids are mapped from it.
    uid_shift: int = 100000
    #: An image's mounted stack is compacted when it grows past this many layers.
    max_stack_layers: int = 24
    #: OCI runtime binaries; ``container`` falls back to runc when crun cannot run.
    crun_path: str = "crun"
    runc_path: str = "runc"
    runsc_path: str = "runsc"
    #: Registry imports: the platform picked from multi-platform images (``os/arch[/variant]``),
    #: the bound on an image's unpacked size, layers fetched at once.
    import_platform: str = "linux/amd64"
    max_import_bytes: int = 32 * 1024**3
    import_workers: int = 4
    #: Registries (comma-separated ``host[:port]``; a host without a port covers all its
    #: ports) that imports and pushes may reach although they are on a loopback, private or
    #: link-local address: ``insecure_registries`` over plain HTTP, ``allowed_registries``
    #: over HTTPS. Every other destination (redirects, token realms and upload locations
    #: included) must resolve to public addresses only.
    insecure_registries: str = ""
    allowed_registries: str = ""
    #: Threads for registry transfers (their own pool, apart from everything else), and how
    #: many imports and pushes one namespace has in flight at once (the rest wait).
    registry_threads: int = 16
    registry_jobs_per_namespace: int = 4
    #: Cap on one operation's stored event log (stream events are dropped past it).
    event_log_cap_bytes: int = 64 * 1024**2
    #: Seconds a stop signal (SIGTERM, Ctrl-C) waits for requests and running work; past it
    #: the server exits anyway, whatever a worker thread is blocked in.
    shutdown_timeout: float = 25.0
    #: The server's edge. Request bodies: a JSON body (``max_json_bytes``; a directory
    #: state's may reach ``max_directory_state_bytes`` and ``max_directory_state_entries``
    #: files), one upload or one tar batch (``max_upload_bytes``, a batch at most
    #: ``max_upload_entries`` members). Larger ones get a 413 before they are read whole.
    max_json_bytes: int = 1024**2
    max_directory_state_bytes: int = 16 * 1024**2
    max_directory_state_entries: int = 100_000
    max_upload_bytes: int = 1024**3
    max_upload_entries: int = 20_000
    #: Seconds a client may take to send a request's headers, and to send its body (a body
    #: may take longer only while it keeps arriving at 64 KiB/s or more); slower ones are cut.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    #: Open connections at most (idle ones are closed first to make room), requests in flight
    #: per token (an event stream counts while it is open), and the size of a request's line
    #: and headers.
    max_connections: int = 1024
    max_requests_per_token: int = 256
    max_header_bytes: int = 64 * 1024
    #: grep (``/inspect/{uuid}/grep``): seconds one search may take (it then answers with what
    #: it found, ``truncated``), bytes it may read, how many run at once on the server (in
    #: their own threads) and per namespace (more get a 429).
    grep_timeout: float = 10.0
    grep_max_bytes: int = 1024**3
    grep_concurrency: int = 4
    grep_per_namespace: int = 2

    def __post_init__(self) -> None:
        if self.grep_timeout <= 0 or min(self.grep_concurrency, self.grep_per_namespace) < 1:
            raise InvalidRequestError(
                "grep_timeout must be positive seconds, grep_concurrency and grep_per_namespace"
                " at least 1"
            )
        if self.default_isolation not in ISOLATION_TIERS:
            raise InvalidRequestError(
                f"default_isolation must be one of {', '.join(ISOLATION_TIERS)}, "
                f"not {self.default_isolation!r}"
            )
        if self.max_concurrency < 1:
            raise InvalidRequestError("max_concurrency must be at least 1")
        if not _MIN_UID_SHIFT <= self.uid_shift <= _MAX_UID_SHIFT:
            # Sandbox root is host uid_shift: the mapped ids must miss host root and the host's
            # own accounts (0..65535, nobody included) and stay below the invalid id 2**32-1.
            raise InvalidRequestError(
                f"uid_shift must be from {_MIN_UID_SHIFT} to {_MAX_UID_SHIFT}, not "
                f"{self.uid_shift}: the 65536 host ids a sandbox maps must miss host root "
                "and the host's own accounts"
            )
        if self.namespace_max_concurrency < 0:
            raise InvalidRequestError("namespace_max_concurrency must be 0 (all but one) or more")
        if not 2 <= self.max_stack_layers <= 400:
            raise InvalidRequestError("max_stack_layers must be between 2 and 400")
        if self.shutdown_timeout <= 0:
            raise InvalidRequestError("shutdown_timeout must be a positive number of seconds")
        if min(self.header_timeout, self.body_timeout) <= 0:
            raise InvalidRequestError("header_timeout and body_timeout must be positive seconds")
        if min(self.registry_threads, self.registry_jobs_per_namespace) < 1:
            raise InvalidRequestError(
                "registry_threads and registry_jobs_per_namespace must be at least 1"
            )
        if min(self.max_connections, self.max_requests_per_token) < 1:
            raise InvalidRequestError("max_connections and max_requests_per_token must be >= 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``SANDTREE_*`` variables, then apply explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(_ENV_PREFIX + field.name.upper())
            if raw is None:
                continue
            values[field.name] = _cast(field.name, field.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"]).expanduser()
        return cls(**values)


def _cast(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError:
        raise InvalidRequestError(
            f"environment variable {_ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}"
        ) from None
    return raw
