"""The image tree: ancestors, children, root and depth, and what changed between images.

Lineage is logical: it survives compaction (which rewrites an image's physical layer stack)
and deletion of an ancestor (a child keeps its parent pointer; the walk stops where the
record is gone).

Seen from a tenant (``namespaces``: its own and the public one), the tree holds only what it
may see: another tenant's children of a shared public image are not there at all (not even
counted), and an ancestor it may not see ends the walk like a deleted one.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from sandtree.engine.layers._paths import (
    SpecialFileError,
    lstat_beneath,
    open_regular,
    open_root,
    walk_tree,
)
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import ImageRecord

__all__ = ["Diff", "Lineage", "ancestors", "diff_images", "diff_layer", "diff_trees", "lineage"]

_OPAQUE = "trusted.overlay.opaque"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lineage:
    image: ImageRecord
    parent: ImageRecord | None
    children: list[ImageRecord]
    #: Nearest first; stops at the root or at a deleted ancestor.
    ancestors: list[ImageRecord]
    root: ImageRecord
    depth: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Diff:
    added: list[str]
    changed: list[str]
    deleted: list[str]


def _parent(
    store: MetadataStore, image: ImageRecord, namespaces: Sequence[str] | None
) -> ImageRecord | None:
    """``image``'s parent, or None when it has none, is gone or is not in ``namespaces``."""
    if image.parent is None:
        return None
    parent = store.get_image(image.parent, tag_namespaces=namespaces)
    if parent is None or (namespaces is not None and parent.namespace not in namespaces):
        return None
    return parent


def ancestors(
    store: MetadataStore,
    image: ImageRecord,
    *,
    limit: int | None = None,
    namespaces: Sequence[str] | None = None,
) -> list[ImageRecord]:
    """Nearest first, up to ``limit``; only through images of ``namespaces`` when given."""
    out: list[ImageRecord] = []
    current: ImageRecord | None = image
    while current is not None and (limit is None or len(out) < limit):
        current = _parent(store, current, namespaces)
        if current is not None:
            out.append(current)
    return out


def lineage(
    store: MetadataStore,
    image: ImageRecord,
    *,
    ancestor_limit: int | None = None,
    namespaces: Sequence[str] | None = None,
) -> Lineage:
    """The tree around ``image``; with ``namespaces``, only images (and tags) of those."""
    chain = ancestors(store, image, limit=ancestor_limit, namespaces=namespaces)
    parent = chain[0] if chain else None
    root = chain[-1] if chain else image
    if ancestor_limit is not None and len(chain) == ancestor_limit:
        # The chain was cut short; find the true root without holding every record.
        while (above := _parent(store, root, namespaces)) is not None:
            root = above
    return Lineage(
        image=image,
        parent=parent,
        children=store.children(image.uuid, namespaces=namespaces, tag_namespaces=namespaces),
        ancestors=chain,
        root=root,
        depth=image.depth,
    )


def _entry(rootfd: int, rel: str) -> os.stat_result | None:
    """The entry ``rel`` of a tree as it is, or None when it is not there *as such*: missing,
    or under a file or a symlink (never followed: a symlink ``/a -> /root`` of an image must
    not make ``/a/x`` mean the host's ``/root/x``)."""
    try:
        return lstat_beneath(rootfd, rel)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def diff_layer(layer: Path, parent_view: Path) -> Diff:
    """What a single top layer changes relative to the view beneath it (fast: O(layer))."""
    added: list[str] = []
    changed: list[str] = []
    deleted: list[str] = []
    below_root = open_root(parent_view)
    layer_root = open_root(layer)
    try:
        for rel, st in walk_tree(layer):
            path = "/" + rel
            below = _entry(below_root, rel)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                if below is not None:
                    deleted.append(path)
                continue
            if below is None:
                added.append(path)
            elif stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(below.st_mode):
                opaque = _opaque(layer / rel)
                if opaque or _meta_differs(st, below):
                    changed.append(path)
                if opaque:
                    # A replaced directory hides everything beneath it that the layer lacks
                    # (``rel`` is a real directory of the view: no symlink on the way).
                    deleted.extend(
                        f"{path}/{sub}"
                        for sub, _ in walk_tree(parent_view / rel)
                        if _entry(layer_root, f"{rel}/{sub}") is None
                    )
            else:
                changed.append(path)
    finally:
        os.close(layer_root)
        os.close(below_root)
    return Diff(added=sorted(added), changed=sorted(changed), deleted=sorted(deleted))


def diff_images(layers: LayerStore, new: Sequence[str], old: Sequence[str]) -> Diff:
    """What the stack ``new`` adds, changes and deletes over the stack ``old`` (blocking).

    A child one layer above its parent is diffed from that layer alone; otherwise both
    stacks are mounted and walked.
    """
    if len(new) == len(old) + 1 and tuple(new[:-1]) == tuple(old):
        with layers.view(old) as base:
            return diff_layer(layers.path(new[-1]), base)
    if tuple(new) == tuple(old):
        return Diff(added=[], changed=[], deleted=[])
    with layers.view(old) as old_view, layers.view(new) as new_view:
        return diff_trees(old_view, new_view)


def diff_trees(old: Path, new: Path) -> Diff:
    """Compare two mounted image views entry by entry (any two images; O(size))."""
    old_entries = dict(walk_tree(old))
    new_entries = dict(walk_tree(new))
    added = sorted("/" + p for p in new_entries.keys() - old_entries.keys())
    deleted = sorted("/" + p for p in old_entries.keys() - new_entries.keys())
    changed = []
    for rel in sorted(new_entries.keys() & old_entries.keys()):
        a, b = old_entries[rel], new_entries[rel]
        if (
            stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode)
            or _meta_differs(a, b)
            or (
                stat.S_ISREG(a.st_mode)
                and (a.st_size != b.st_size or not _same_content(old / rel, new / rel, a, b))
            )
            or (stat.S_ISLNK(a.st_mode) and os.readlink(old / rel) != os.readlink(new / rel))
        ):
            changed.append("/" + rel)
    return Diff(added=added, changed=changed, deleted=deleted)


def _meta_differs(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid) or (
        not stat.S_ISDIR(a.st_mode) and a.st_size != b.st_size
    )


def _same_content(p: Path, q: Path, a: os.stat_result, b: os.stat_result) -> bool:
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) or a.st_mtime_ns == b.st_mtime_ns:
        return True
    try:
        with open(open_regular(p), "rb") as f, open(open_regular(q), "rb") as g:
            while True:
                x, y = f.read(1 << 20), g.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except SpecialFileError:
        return False  # not what the walk saw: count it as changed


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False
