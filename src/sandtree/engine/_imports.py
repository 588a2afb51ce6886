"""Creating root images from local sources: a rootfs directory, a tar, an OCI image layout
or a ``docker save`` archive. Registry imports reuse the same layer unpacking.

Each layer is unpacked into a staging directory and adopted into the layer store only when
whole; the image row is written last, in one transaction with its layers. A failure at any
point leaves nothing visible (staging dirs are swept at the next start).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from sandtree.engine._clock import now_iso
from sandtree.engine.layers._copy import copy_rootfs_dir
from sandtree.engine.layers._sources import open_source
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.layers._unpack import unpack_layer
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import ImageRecord
from sandtree.errors import InvalidRequestError

__all__ = ["IMPORTED_SPAN", "MAX_IMPORT_BYTES", "import_path"]

logger = logging.getLogger(__name__)

#: Imported layers are never merged by compaction: they may be shared by many images, and
#: merging into them would copy (link) a whole base image for one run's change.
IMPORTED_SPAN = 1 << 40
#: A single layer may not expand past this (decompression bombs stop here).
MAX_IMPORT_BYTES = 64 * 1024**3


def import_path(
    layers: LayerStore,
    store: MetadataStore,
    path: Path,
    *,
    namespace: str,
    tags: Sequence[str] = (),
    max_bytes: int = MAX_IMPORT_BYTES,
) -> ImageRecord:
    """Import ``path`` as a new root image (no parent); returns the committed record."""
    if not path.exists():
        raise InvalidRequestError(
            f"{path} does not exist; pass a root filesystem directory, a tar archive, an OCI "
            "image layout or a 'docker save' archive"
        )
    adopted: dict[str, int] = {}
    try:
        if path.is_dir() and not (path / "oci-layout").exists():
            staging = layers.new_staging_dir()
            try:
                copy_rootfs_dir(path, staging, uid_shift=layers.uid_shift)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            layer_id, size = layers.adopt(staging)
            adopted[layer_id] = size
            env: list[str] = []
            cwd, user, description = "/", "", f"import {path}"
        else:
            source = open_source(path)
            for opener in source.layers():
                staging = layers.new_staging_dir()
                try:
                    with opener as stream:
                        stats = unpack_layer(
                            stream, staging, uid_shift=layers.uid_shift, max_bytes=max_bytes
                        )
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                # Skipped entries, and owners made nobody: the operator who imports sees why.
                for warning in stats.warnings:
                    logger.warning("import %s: %s", path, warning)
                layer_id, size = layers.adopt(staging)
                adopted[layer_id] = size
            env = list(source.config.env)
            cwd, user = source.config.cwd or "/", source.config.user
            description = f"import {source.description}"
        if not adopted:
            raise InvalidRequestError(f"{path} holds no layers to import")
        image = ImageRecord(
            uuid=str(uuid.uuid4()),
            created_at=now_iso(),
            namespace=namespace,
            command=description,
            layers=tuple(adopted),
            env=tuple(env),
            cwd=cwd,
            user=user,
            size=sum(adopted.values()),
            tags=tuple(tags),
        )
        store.add_image(image, layer_sizes=adopted, layer_span=IMPORTED_SPAN)
        return image
    except BaseException:
        for layer_id in adopted:
            layers.delete(layer_id)
        raise
