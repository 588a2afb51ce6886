"""Test layers and OCI image layouts, built in memory and written byte for byte."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import posixpath
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
_MTIME = 946684800  # 2000-01-01T00:00:00Z: every member gets it, so tars are reproducible
_KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "whiteout": tarfile.REGTYPE,
    "opaque": tarfile.REGTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chardev": tarfile.CHRTYPE,
}
_DEFAULT_MODES = {"dir": 0o755, "symlink": 0o777}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Entry:
    """One tar member of a test layer.

    ``kind="whiteout"`` writes ``<parent>/.wh.<name>`` for ``path``; ``kind="opaque"`` writes
    ``<path>/.wh..wh..opq`` (``path`` is the directory made opaque). ``mode=None`` means 0o755
    for directories, 0o777 for symlinks and 0o644 for everything else.
    """

    path: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    #: What a symlink points to, or the member path a hardlink names.
    target: str = ""
    #: Device numbers of a ``chardev`` (0:0 is overlayfs' own whiteout).
    major: int = 0
    minor: int = 0

    def member_name(self) -> str:
        """The name written into the tar, verbatim (``../x`` and ``/abs`` stay as they are)."""
        if self.kind == "whiteout":
            parent, base = posixpath.split(self.path.rstrip("/"))
            return posixpath.join(parent, ".wh." + base) if parent else ".wh." + base
        if self.kind == "opaque":
            return (
                self.path.rstrip("/") + "/.wh..wh..opq" if self.path.strip("/") else ".wh..wh..opq"
            )
        return self.path


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """An uncompressed layer tar of ``entries`` in order: the same bytes for the same entries."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if entry.kind not in _KINDS:
                raise ValueError(f"unknown entry kind {entry.kind!r}")
            info = tarfile.TarInfo(entry.member_name())
            info.type = _KINDS[entry.kind]
            info.mode = (
                entry.mode if entry.mode is not None else _DEFAULT_MODES.get(entry.kind, 0o644)
            )
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.mtime = _MTIME
            info.linkname = entry.target
            info.devmajor, info.devminor = entry.major, entry.minor
            data = entry.data if entry.kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def compress(data: bytes, fmt: str) -> bytes:
    """``data`` compressed as ``fmt`` ("gzip", "zstd" or "none"), reproducibly.

    zstd goes through the ``zstd`` command (``apt-get install zstd``).
    """
    if fmt == "none":
        return data
    if fmt == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if fmt == "zstd":
        done = subprocess.run(
            ["zstd", "-q", "-c", "-3"], input=data, capture_output=True, check=True
        )
        return done.stdout
    raise ValueError(f"unknown compression {fmt!r}; expected gzip, zstd or none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TestImage:
    """One single-platform image: its layers (uncompressed tars, bottom first) and config."""

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name

    layers: Sequence[bytes]
    compression: str = "gzip"
    env: Sequence[str] = ()
    workdir: str = ""
    user: str = ""
    #: "os/arch" or "os/arch/variant".
    platform: str = "linux/amd64"

    def platform_dict(self) -> dict[str, str]:
        """The platform as an OCI descriptor's ``platform`` object."""
        parts = self.platform.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {self.platform!r} is not os/arch[/variant]")
        platform = {"architecture": parts[1], "os": parts[0]}
        if len(parts) == 3:
            platform["variant"] = parts[2]
        return platform


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Blobs:
    def __init__(self, layout: Path) -> None:
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = _sha256(data)
        (self.dir / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def put_json(self, obj: dict[str, Any], media_type: str) -> dict[str, Any]:
        return self.put(json.dumps(obj, indent=2).encode(), media_type)


def _write_image(blobs: _Blobs, image: TestImage) -> dict[str, Any]:
    if image.compression not in LAYER_MEDIA_TYPES:
        raise ValueError(f"unknown compression {image.compression!r}")
    platform = image.platform_dict()
    layers = [
        blobs.put(compress(tar, image.compression), LAYER_MEDIA_TYPES[image.compression])
        for tar in image.layers
    ]
    settings: dict[str, Any] = {}
    if image.env:
        settings["Env"] = list(image.env)
    if image.workdir:
        settings["WorkingDir"] = image.workdir
    if image.user:
        settings["User"] = image.user
    config = {
        **platform,
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": [_sha256(tar) for tar in image.layers]},
        "history": [{"created_by": "sandtree.testing_registry"} for _ in image.layers],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": blobs.put_json(config, MEDIA_CONFIG),
        "layers": layers,
    }
    return {**blobs.put_json(manifest, MEDIA_MANIFEST), "platform": platform}


def write_oci_layout(dest: Path, images: Sequence[TestImage], *, tag: str = "latest") -> str:
    """Write ``images`` into the OCI image layout ``dest`` under ``tag``; return the digest
    of the top manifest (one image) or image index (several, one per platform).

    Other tags already in ``dest`` stay; an earlier image with the same tag is replaced.
    """
    if not images:
        raise ValueError("an image layout needs at least one image")
    blobs = _Blobs(dest)
    descriptors = [_write_image(blobs, image) for image in images]
    if len(descriptors) == 1:
        top = {k: v for k, v in descriptors[0].items() if k != "platform"}
    else:
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": descriptors}
        top = blobs.put_json(index, MEDIA_INDEX)
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n', encoding="utf-8")
    index_path = dest / "index.json"
    manifests: list[dict[str, Any]] = []
    if index_path.exists():
        manifests = json.loads(index_path.read_text(encoding="utf-8"))["manifests"]
    manifests = [
        m
        for m in manifests
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    layout_index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [*manifests, top]}
    index_path.write_text(json.dumps(layout_index, indent=2) + "\n", encoding="utf-8")
    digest: str = top["digest"]
    return digest
