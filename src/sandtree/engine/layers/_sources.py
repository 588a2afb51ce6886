"""Local import sources: a rootfs directory or tar, an OCI image layout, a ``docker save``.

``open_source`` only reads metadata; layer bytes are streamed later, one layer at a time,
and every blob whose digest is known is checked as it is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from sandtree.errors import InvalidRequestError

from ._compression import CHUNK, open_decompressed, sniff_compression
from ._unpack import split_path

__all__ = ["ImageConfig", "ImageSource", "config_from_json", "open_source"]

_JSON_LIMIT = 16 << 20  # index, manifests and configs are small; refuse to slurp a huge one
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
# Top-level names of OCI layouts and docker-save archives (skopeo writes <hex>.tar blobs).
_ARCHIVE_TOP = re.compile(
    r"oci-layout|index\.json|manifest\.json|repositories|blobs|[0-9a-f]{64}(\.json|\.tar)?"
)
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

LayerOpener = Callable[[], AbstractContextManager[BinaryIO]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """The parts of an image config a sandbox uses: ``KEY=value`` env, working dir, user."""

    env: list[str] = dataclasses.field(default_factory=list)
    cwd: str = "/"
    user: str = ""


class ImageSource:
    """An image found at a local path: its config and its layers, bottom first.

    A root filesystem directory has no layer tarballs: check ``is_directory`` and use
    :func:`~sandtree.engine.layers._copy.copy_rootfs_dir` instead of :meth:`layers`.
    """

    def __init__(
        self, *, kind: str, path: Path, config: ImageConfig, openers: list[LayerOpener]
    ) -> None:
        self.kind = kind
        self.path = path
        self.config = config
        self._openers = openers

    @property
    def description(self) -> str:
        """Where the image came from, e.g. ``oci-layout:/srv/img``."""
        return f"{self.kind}:{self.path}"

    @property
    def is_directory(self) -> bool:
        """True for a plain root filesystem directory (copy it, there are no layers)."""
        return self.kind == "rootfs-dir"

    def layers(self) -> Iterator[AbstractContextManager[BinaryIO]]:
        """Layer tar streams, bottom first; each checks its digest when its block exits.

        Raises:
            InvalidRequestError: on a digest or size mismatch (when a stream is closed),
                or if this source is a directory.
        """
        if self.is_directory:
            raise InvalidRequestError(f"{self.description} is a directory: copy it instead")
        for opener in self._openers:
            yield opener()

    def __repr__(self) -> str:
        return f"<ImageSource {self.description} layers={len(self._openers)}>"


class _Archive(Protocol):
    def open(self, name: str) -> AbstractContextManager[tuple[BinaryIO, int]]: ...
    def has(self, name: str) -> bool: ...


class _DirArchive:
    """Blobs in an unpacked OCI layout / docker save directory."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    def _path(self, name: str) -> Path | None:
        parts = split_path(name)
        if not parts:
            return None
        path = self._root.joinpath(*parts).resolve()
        return path if path.is_relative_to(self._root) and path.is_file() else None

    def has(self, name: str) -> bool:
        return self._path(name) is not None

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[BinaryIO, int]]:
        path = self._path(name)
        if path is None:
            raise InvalidRequestError(f"{self._root}: {name!r} is missing from the image")
        with path.open("rb") as f:
            yield f, os.fstat(f.fileno()).st_size


class _TarArchive:
    """Members of an OCI layout / docker save tar (plain or gzip), found by offset."""

    def __init__(self, path: Path, members: list[tarfile.TarInfo], *, gz: bool) -> None:
        self._path, self._gz = path, gz
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in members:
            parts = split_path(member.name)
            if parts:
                self._members["/".join(parts)] = member

    def _find(self, name: str) -> tarfile.TarInfo | None:
        for _ in range(16):  # docker save dedups layers with symlinks: follow a few
            parts = split_path(name)
            if not parts:
                return None
            member = self._members.get("/".join(parts))
            if member is None or member.isreg():
                return member
            if member.issym():
                base = "" if member.linkname.startswith("/") else "/".join(parts[:-1])
                name = f"{base}/{member.linkname}"
            elif member.islnk():
                name = member.linkname
            else:
                return None
        return None

    def has(self, name: str) -> bool:
        return self._find(name) is not None

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[BinaryIO, int]]:
        member = self._find(name)
        if member is None or member.issparse():
            raise InvalidRequestError(f"{self._path}: {name!r} is missing from the archive")
        with gzip.open(self._path, "rb") if self._gz else self._path.open("rb") as f:
            f.seek(member.offset_data)
            yield cast(BinaryIO, f), member.size


class _Blob(io.RawIOBase):
    """Reads exactly ``size`` bytes of a blob, hashing them for a later :meth:`verify`."""

    def __init__(self, f: BinaryIO, size: int, digest: str | None, what: str) -> None:
        self._f, self._left, self._digest, self._what = f, size, digest, what
        self._hash = hashlib.new(digest.split(":")[0]) if digest else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._f.read(min(len(view), self._left))
        if not data and self._left:
            raise InvalidRequestError(f"{self._what} is truncated; the image is corrupt")
        view[: len(data)] = data
        self._left -= len(data)
        if self._hash is not None:
            self._hash.update(data)
        return len(data)

    def verify(self) -> None:
        while self.read(CHUNK):
            pass
        if self._hash is not None and self._digest:
            actual = f"{self._hash.name}:{self._hash.hexdigest()}"
            if actual != self._digest:
                raise InvalidRequestError(
                    f"{self._what}: digest mismatch (expected {self._digest}, got {actual}); "
                    "the image is corrupt or was modified: export it again"
                )


@contextlib.contextmanager
def _open_blob(
    archive: _Archive, name: str, *, digest: str | None, size: int | None, what: str
) -> Iterator[BinaryIO]:
    with archive.open(name) as (f, actual):
        if size is not None and size != actual:
            raise InvalidRequestError(f"{what}: size {actual} differs from the recorded {size}")
        blob = _Blob(f, actual, digest, what)
        yield io.BufferedReader(blob, CHUNK)
        blob.verify()


def _read_json(archive: _Archive, name: str, *, digest: str | None = None, what: str) -> Any:
    with _open_blob(archive, name, digest=digest, size=None, what=what) as f:
        data = f.read(_JSON_LIMIT + 1)
        if len(data) > _JSON_LIMIT:
            raise InvalidRequestError(f"{what} is larger than {_JSON_LIMIT} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"{what} is not valid JSON: {exc}") from exc


def _blob_name(descriptor: Any, what: str) -> tuple[str, str, int | None]:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidRequestError(f"{what}: missing or unsupported digest {digest!r}")
    size = descriptor.get("size")
    return "blobs/" + digest.replace(":", "/"), digest, size if isinstance(size, int) else None


def config_from_json(raw: Any) -> tuple[ImageConfig, str]:
    """The sandbox config and ``os/architecture`` of an OCI/Docker image config."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("image config is not a JSON object")
    inner = raw.get("config")
    inner = inner if isinstance(inner, dict) else {}
    env = inner.get("Env") or []
    config = ImageConfig(
        env=[str(e) for e in env] if isinstance(env, list) else [],
        cwd=str(inner.get("WorkingDir") or "/"),
        user=str(inner.get("User") or ""),
    )
    return config, f"{raw.get('os', '')}/{raw.get('architecture', '')}"


def _pick(candidates: list[tuple[str, str, Any]], platform: str, where: str) -> Any:
    """Choose among (label, os/arch, payload): the only one, else the one for ``platform``."""
    wanted = [c for c in candidates if c[1] == platform]
    if len(candidates) == 1 and candidates[0][1] in (platform, "/"):
        return candidates[0][2]
    if len(wanted) == 1:
        return wanted[0][2]
    found = ", ".join(sorted(f"{label} ({plat})" for label, plat, _ in candidates)) or "none"
    if wanted:
        raise InvalidRequestError(f"{where} holds several {platform} images: {found}; keep one")
    raise InvalidRequestError(f"{where} has no {platform} image (found: {found})")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequestError(f"{what} is not a JSON list")
    return value


def _oci_layout(archive: _Archive, where: str, platform: str) -> tuple[ImageConfig, list[Any]]:
    index = _read_json(archive, "index.json", what=f"{where}: index.json")
    manifests: dict[str, dict[str, Any]] = {}
    pending, depth = [index], 0
    while pending and depth < 4:  # nested indexes (e.g. buildx attestations), bounded
        nested = []
        for idx in pending:
            for desc in _list(_dict(idx).get("manifests"), f"{where}: index manifests"):
                name, digest, _ = _blob_name(desc, f"{where}: index entry")
                if desc.get("mediaType") in _INDEX_TYPES:
                    nested.append(_read_json(archive, name, digest=digest, what=f"{where}: index"))
                else:
                    manifests.setdefault(digest, desc)
        pending, depth = nested, depth + 1
    candidates: list[tuple[str, str, Any]] = []
    for digest, desc in manifests.items():
        plat = _dict(desc.get("platform"))
        os_arch = f"{plat.get('os', '')}/{plat.get('architecture', '')}"
        if os_arch not in ("/", platform) and len(manifests) > 1:
            candidates.append((digest[:19], os_arch, None))  # skip loading foreign platforms
            continue
        what = f"{where}: manifest {digest}"
        manifest = _dict(
            _read_json(archive, f"blobs/{digest.replace(':', '/')}", digest=digest, what=what)
        )
        cname, cdigest, _ = _blob_name(manifest.get("config"), f"{what}: config")
        raw = _read_json(archive, cname, digest=cdigest, what=f"{where}: config {cdigest}")
        config, os_arch = config_from_json(raw)
        ref = _dict(desc.get("annotations")).get("org.opencontainers.image.ref.name")
        layers = [_blob_name(x, f"{what}: layer") for x in _list(manifest.get("layers"), what)]
        candidates.append((str(ref or digest[:19]), os_arch, (config, layers)))
    config, layers = _pick(candidates, platform, where)
    return config, layers


def _docker_save(archive: _Archive, where: str, platform: str) -> tuple[ImageConfig, list[Any]]:
    entries = _read_json(archive, "manifest.json", what=f"{where}: manifest.json")
    candidates: list[tuple[str, str, Any]] = []
    for entry in map(_dict, _list(entries, f"{where}: manifest.json")):
        cname = str(entry.get("Config", ""))
        hexname = re.search(r"([0-9a-f]{64})(\.json)?$", cname)
        cdigest = f"sha256:{hexname.group(1)}" if hexname else None
        raw = _read_json(archive, cname, digest=cdigest, what=f"{where}: config {cname}")
        config, os_arch = config_from_json(raw)
        diff_ids = _list(_dict(raw.get("rootfs")).get("diff_ids"), f"{where}: diff_ids")
        names = [str(n) for n in _list(entry.get("Layers"), f"{where}: Layers")]
        layers = []
        for i, lname in enumerate(names):
            # blobs/<alg>/<hex> names the blob; the older <id>/layer.tar and skopeo's
            # <hex>.tar are the uncompressed layer, whose digest is the config's diff_id.
            m = re.fullmatch(r"blobs/(sha256|sha512)/([0-9a-f]+)", lname)
            digest = f"{m.group(1)}:{m.group(2)}" if m else None
            if digest is None and len(diff_ids) == len(names):
                digest = str(diff_ids[i])
            if digest is not None and not _DIGEST.fullmatch(digest):
                raise InvalidRequestError(f"{where}: unsupported layer digest {digest!r}")
            layers.append((lname, digest, None))
        tags = entry.get("RepoTags")
        label = ",".join(map(str, tags)) if isinstance(tags, list) and tags else cname[:19]
        candidates.append((label, os_arch, (config, layers)))
    if not candidates:
        raise InvalidRequestError(f"{where}: manifest.json lists no images")
    config, layers = _pick(candidates, platform, where)
    return config, layers


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4)
    return sniff_compression(head)


def _scan_tar(path: Path, compression: str) -> list[tarfile.TarInfo] | None:
    """Member headers if ``path`` is an image archive; ``None`` for a rootfs tar.

    A rootfs has other top-level names, so we stop at the first such entry instead of
    reading the whole (possibly large, compressed) file.
    """
    members: list[tarfile.TarInfo] = []
    with contextlib.ExitStack() as stack:
        if compression == "zstd":  # no random access: stream it, only to classify
            raw = stack.enter_context(open_decompressed(stack.enter_context(path.open("rb"))))
            tar = stack.enter_context(tarfile.open(fileobj=raw, mode="r|"))
        else:
            tar = stack.enter_context(tarfile.open(path, "r:gz" if compression else "r:"))
        while (member := tar.next()) is not None:
            parts = split_path(member.name)
            if parts and not _ARCHIVE_TOP.fullmatch(parts[0]):
                return None
            members.append(member)
    names = {"/".join(split_path(m.name) or ()) for m in members}
    if "manifest.json" in names or {"oci-layout", "index.json"} <= names:
        if compression == "zstd":
            raise InvalidRequestError(
                f"{path}: zstd-compressed image archives are not supported; run `zstd -d` on "
                "it first or pass the uncompressed tar"
            )
        return members
    return None


def open_source(path: Path, *, platform: str = "linux/amd64") -> ImageSource:
    """Detect what kind of image ``path`` holds and read its config and layer list.

    Args:
        path: a rootfs directory, an OCI image layout (directory or tar), a
            ``docker save`` archive, or a rootfs tar (plain, gzip or zstd).
        platform: ``os/architecture`` to pick when the source holds several images.

    Raises:
        InvalidRequestError: unreadable or corrupt source, or no single image for
            ``platform``.
    """
    if not path.exists():
        raise InvalidRequestError(f"{path} does not exist")
    archive: _Archive
    if path.is_dir():
        archive = _DirArchive(path)
        names = os.listdir(path)
        # A rootfs may well hold a manifest.json, but never only image-archive names.
        saved = archive.has("manifest.json") and all(_ARCHIVE_TOP.fullmatch(n) for n in names)
        if not (saved or (archive.has("oci-layout") and archive.has("index.json"))):
            return ImageSource(kind="rootfs-dir", path=path, config=ImageConfig(), openers=[])
    else:
        compression = _sniff(path)
        try:
            members = _scan_tar(path, compression)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidRequestError(
                f"{path} is neither a directory nor a tar archive ({exc})"
            ) from exc
        if members is None:

            def whole_file() -> AbstractContextManager[BinaryIO]:
                return path.open("rb")

            return ImageSource(
                kind="rootfs-tar", path=path, config=ImageConfig(), openers=[whole_file]
            )
        archive = _TarArchive(path, members, gz=compression == "gzip")
    where = str(path)
    if archive.has("oci-layout") and archive.has("index.json"):
        kind = "oci-layout"
        config, layers = _oci_layout(archive, where, platform)
    elif archive.has("manifest.json"):
        kind = "docker-save"
        config, layers = _docker_save(archive, where, platform)
    else:
        raise InvalidRequestError(f"{where}: has oci-layout but no index.json")  # tars only
    openers: list[LayerOpener] = []
    for i, (name, digest, size) in enumerate(layers):
        what = f"{where}: layer {i} ({name})"
        openers.append(
            functools.partial(_open_blob, archive, name, digest=digest, size=size, what=what)
        )
    return ImageSource(kind=kind, path=path, config=config, openers=openers)
