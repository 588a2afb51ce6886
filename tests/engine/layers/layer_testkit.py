"""Builders for layer tarballs, OCI layouts and docker-save archives, and tree comparison.

A plain module (not a conftest) shared by the unpack, sources, merge and export tests.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sandtree.engine.layers._unpack import unpack_layer
from sandtree.engine.layers._writer import UnpackStats

UID_SHIFT = 100000
MTIME = 1_700_000_000
Member = tuple[tarfile.TarInfo, bytes | None]


def _info(
    name: str, kind: bytes, *, mode: int, uid: int, gid: int, mtime: float
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    return info


def file(
    name: str,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: float = MTIME,
    pax: dict[str, str] | None = None,
) -> Member:
    info = _info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime)
    info.size = len(data)
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def directory(
    name: str,
    *,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: float = MTIME,
    pax: dict[str, str] | None = None,
) -> Member:
    info = _info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime)
    if pax:
        info.pax_headers = dict(pax)
    return info, None


def symlink(name: str, target: str, *, uid: int = 0) -> Member:
    info = _info(name, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=uid, mtime=MTIME)
    info.linkname = target
    return info, None


def hardlink(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE, mode=0o644, uid=0, gid=0, mtime=MTIME)
    info.linkname = target
    return info, None


def device(name: str, major: int, minor: int, *, block: bool = False) -> Member:
    kind = tarfile.BLKTYPE if block else tarfile.CHRTYPE
    info = _info(name, kind, mode=0o666, uid=0, gid=0, mtime=MTIME)
    info.devmajor, info.devminor = major, minor
    return info, None


def fifo(name: str) -> Member:
    return _info(name, tarfile.FIFOTYPE, mode=0o640, uid=0, gid=0, mtime=MTIME), None


def whiteout(path: str) -> Member:
    head, _, base = path.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dirpath: str) -> Member:
    return file(f"{dirpath}/.wh..wh..opq")


def zstd_compress(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


def build_tar(*members: Member, compression: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "zstd":
        return zstd_compress(raw)
    return raw


def make_layer(parent: Path, name: str, *members: Member) -> Path:
    """Unpack ``members`` into a new layer directory ``parent/name``."""
    dest = parent / name
    dest.mkdir(parents=True)
    unpack(build_tar(*members), dest)
    return dest


def unpack(data: bytes, dest: Path, *, max_bytes: int = 1 << 30) -> UnpackStats:
    return unpack_layer(io.BytesIO(data), dest, uid_shift=UID_SHIFT, max_bytes=max_bytes)


def tar_directory(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buf.getvalue()


# -- OCI image layouts and docker-save archives ------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(root: Path, data: bytes) -> dict[str, Any]:
    digest = sha256(data)
    path = root / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def image_config(
    *, arch: str = "amd64", env: list[str] | None = None, cwd: str = "", user: str = ""
) -> dict[str, Any]:
    return {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": env or [], "WorkingDir": cwd, "User": user},
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def add_oci_image(root: Path, layers: list[bytes], config: dict[str, Any]) -> dict[str, Any]:
    """Write an image's blobs; return its manifest descriptor (for index.json)."""
    config = dict(config, rootfs={"type": "layers", "diff_ids": [sha256(x) for x in layers]})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **put_blob(root, json.dumps(config).encode()),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", **put_blob(root, layer)}
            for layer in layers
        ],
    }
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put_blob(root, json.dumps(manifest).encode()),
    }


def write_oci_layout(root: Path, manifests: list[dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}', encoding="utf-8")
    index = {"schemaVersion": 2, "manifests": manifests}
    (root / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return root


def write_docker_save(root: Path, layers: list[bytes], config: dict[str, Any]) -> Path:
    """A classic ``docker save`` tree: ``<id>/layer.tar``, ``<hex>.json``, manifest.json.

    A repeated layer is stored once and linked with a symlink, as docker does.
    """
    root.mkdir(parents=True)
    config = dict(config, rootfs={"type": "layers", "diff_ids": [sha256(x) for x in layers]})
    config_bytes = json.dumps(config).encode()
    config_name = sha256(config_bytes).split(":")[1] + ".json"
    (root / config_name).write_bytes(config_bytes)
    names: list[str] = []
    seen: dict[bytes, str] = {}
    for i, layer in enumerate(layers):
        layer_id = hashlib.sha256(f"v1-{i}".encode()).hexdigest()
        (root / layer_id).mkdir()
        if layer in seen:
            os.symlink(f"../{seen[layer]}/layer.tar", root / layer_id / "layer.tar")
        else:
            (root / layer_id / "layer.tar").write_bytes(layer)
            seen[layer] = layer_id
        names.append(f"{layer_id}/layer.tar")
    manifest = [{"Config": config_name, "RepoTags": ["demo:latest"], "Layers": names}]
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


# -- comparing trees ----------------------------------------------------------------------

_XATTRS = ("user.", "security.capability", "trusted.overlay.opaque")


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything observable about a tree, by relative path (inode numbers aside)."""
    out: dict[str, tuple[Any, ...]] = {}
    first_path: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]) + ([""] if dirpath == str(root) else []):
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = (st.st_size, hashlib.sha256(f.read()).hexdigest())
                extra = (*extra, first_path.setdefault((st.st_dev, st.st_ino), rel))
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for attr in os.listxattr(path, follow_symlinks=False):
                    if attr.startswith(_XATTRS):
                        xattrs[attr] = os.getxattr(path, attr, follow_symlinks=False)
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns,
                extra,
                tuple(sorted(xattrs.items())),
            )
    return out


@contextlib.contextmanager
def overlay_view(layers: Iterable[Path], target: Path) -> Iterator[Path]:
    """Mount ``layers`` (bottom first) read-only as overlay lower dirs at ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    lowerdir = ":".join(str(p) for p in reversed(list(layers)))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(target)],
        check=True,
        capture_output=True,
    )
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
