"""Exporting an image as an OCI image: to an archive (an OCI layout in a tar) or a registry.

Each layer of the image's stack becomes a gzip layer blob (whiteouts and opaque dirs as OCI
markers, owners unshifted). Layers are written reproducibly (sorted, fixed gzip header), so
exporting the same image twice gives the same digests and registries store its blobs once.
Layers compress in parallel; the blobs live in a scratch directory until written out.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import os
import platform
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

from sandtree.engine.layers._export import write_layer_tar
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.types import ImageRecord

from ._client import Manifest, RegistryClient, digest_of

__all__ = ["OciImage", "build_oci_image", "push_oci_image", "write_oci_archive"]

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
_GZIP_LEVEL = 1  # layers are rewritten on every export: favour speed, as pigz -1 would
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Blob:
    digest: str
    size: int
    path: Path


@dataclasses.dataclass(frozen=True, kw_only=True)
class OciImage:
    """An image ready to write: its layer blobs on disk, its config and manifest bytes."""

    layers: list[_Blob]
    config: bytes
    manifest: Manifest

    @property
    def config_digest(self) -> str:
        return digest_of(self.config)


class _Hashing:
    """A write-only file that hashes and counts what passes through to ``out``."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


def _layer_blob(layers: LayerStore, layer_id: str, scratch: Path) -> tuple[_Blob, str]:
    """Write one layer as a gzip blob in ``scratch``; returns it and its diff_id."""
    tmp = scratch / f"{layer_id}.tmp"
    with tmp.open("wb") as f:
        compressed = _Hashing(f)
        with gzip.GzipFile(
            fileobj=compressed,
            mode="wb",
            compresslevel=_GZIP_LEVEL,
            mtime=0,
        ) as gz:
            plain = _Hashing(gz)
            out = cast(BinaryIO, plain)  # write() is all the tar stream needs
            write_layer_tar(layers.path(layer_id), out, uid_shift=layers.uid_shift)
    path = scratch / compressed.hash.hexdigest()
    os.replace(tmp, path)
    return _Blob(digest=compressed.digest, size=compressed.size, path=path), plain.digest


def build_oci_image(
    layers: LayerStore, image: ImageRecord, scratch: Path, *, workers: int = 4
) -> OciImage:
    """Write ``image``'s layers as blobs into ``scratch`` and describe them (config, manifest)."""
    with concurrent.futures.ThreadPoolExecutor(workers, "sandtree-export") as pool:
        done = list(pool.map(lambda lid: _layer_blob(layers, lid, scratch), image.layers))
    blobs = [blob for blob, _ in done]
    created = image.created_at
    config_doc: dict[str, Any] = {
        "created": created,
        "architecture": _ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {
            "Env": list(image.env),
            "WorkingDir": image.cwd if image.cwd != "/" else "",
            "User": image.user,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in done]},
        "history": [
            {"created": created, "created_by": f"sandtree image {image.uuid}: {image.command}"}
        ]
        + [{"created": created, "empty_layer": False} for _ in blobs[1:]],
    }
    config = json.dumps(config_doc, sort_keys=True, separators=(",", ":")).encode()
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": b.digest, "size": b.size} for b in blobs],
        "annotations": {
            "org.opencontainers.image.created": created,
            "dev.sandtree.image.uuid": image.uuid,
        },
    }
    data = json.dumps(manifest_doc, sort_keys=True, separators=(",", ":")).encode()
    manifest = Manifest(media_type=MEDIA_MANIFEST, data=data, digest=digest_of(data))
    return OciImage(layers=blobs, config=config, manifest=manifest)


@contextmanager
def scratch_dir(root: Path) -> Iterator[Path]:
    """A private directory under ``root`` for one export's blobs, removed afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"export-{os.urandom(8).hex()}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_oci_archive(oci: OciImage, out: BinaryIO, *, ref_name: str = "latest") -> None:
    """Write ``oci`` to ``out`` as a tar of an OCI image layout, with a docker-save
    ``manifest.json`` too (``skopeo copy oci-archive:`` and sandtree's local import read it).
    Sequential: ``out`` may be a pipe."""
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": oci.manifest.digest,
                "size": len(oci.manifest.data),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }
        ],
    }
    hexes = [b.digest.removeprefix("sha256:") for b in oci.layers]
    # docker load before version 25 reads only this manifest.json, not the OCI index.
    docker = [
        {
            "Config": f"blobs/sha256/{oci.config_digest.removeprefix('sha256:')}",
            "RepoTags": [],
            "Layers": [f"blobs/sha256/{h}" for h in hexes],
        }
    ]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        written = set()
        for blob, hexname in zip(oci.layers, hexes, strict=True):
            if hexname in written:
                continue
            written.add(hexname)
            info = tarfile.TarInfo(f"blobs/sha256/{hexname}")
            info.size, info.mode, info.mtime = blob.size, 0o644, 0
            with blob.path.open("rb") as f:
                tar.addfile(info, f)
        _add_bytes(tar, f"blobs/sha256/{oci.config_digest.removeprefix('sha256:')}", oci.config)
        _add_bytes(
            tar, f"blobs/sha256/{oci.manifest.digest.removeprefix('sha256:')}", oci.manifest.data
        )
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        _add_bytes(tar, "manifest.json", json.dumps(docker).encode())


def push_oci_image(oci: OciImage, client: RegistryClient) -> str:
    """Upload ``oci``'s blobs (skipping those the registry has) and its manifest under the
    client's reference (its tag, or by digest); returns the manifest digest."""
    for blob in {b.digest: b for b in oci.layers}.values():
        client.upload_blob(blob.digest, blob.path)
    client.upload_bytes(oci.config_digest, oci.config)
    reference = client.ref.tag or oci.manifest.digest
    if client.ref.digest and client.ref.digest != oci.manifest.digest:
        from sandtree.errors import InvalidRequestError

        raise InvalidRequestError(
            f"the image's manifest digest is {oci.manifest.digest}, not {client.ref.digest}; "
            "push to a tag (or to no version) instead of a digest"
        )
    client.put_manifest(reference, oci.manifest)
    return oci.manifest.digest
