"""Images, layers and tags in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from sandtree.engine.store._records import ImageQuery
from sandtree.engine.store._sqlite_base import SqliteBase, namespace_clause
from sandtree.engine.types import PUBLIC_NAMESPACE, ImageRecord
from sandtree.errors import ImageNotFoundError

__all__ = ["ImageTables"]

#: Image ids per ``IN (...)`` query: well under SQLite's bound-parameter limit.
_IN_BATCH = 500


class ImageTables(SqliteBase):
    """Images (with their layer stacks), layers and tags."""

    # -- images -----------------------------------------------------------------------------

    def add_image(
        self, image: ImageRecord, *, layer_sizes: dict[str, int], layer_span: int = 1
    ) -> None:
        with self._tx() as db:
            for layer_id, size in layer_sizes.items():
                db.execute(
                    "INSERT OR IGNORE INTO layers(id, size, span) VALUES (?, ?, ?)",
                    (layer_id, size, layer_span),
                )
            db.execute(
                "INSERT INTO images(uuid, namespace, parent, operation, command, depth, env, cwd,"
                " user, size, public, created_at, source_digest)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    image.uuid,
                    image.namespace,
                    image.parent,
                    image.operation,
                    image.command,
                    image.depth,
                    json.dumps(list(image.env)),
                    image.cwd,
                    image.user,
                    image.size,
                    int(image.public),
                    image.created_at,
                    image.source_digest,
                ),
            )
            db.executemany(
                "INSERT INTO image_layers(image, position, layer) VALUES (?, ?, ?)",
                [(image.uuid, i, layer) for i, layer in enumerate(image.layers)],
            )
            for tag in image.tags:
                db.execute(
                    "INSERT OR REPLACE INTO tags(namespace, tag, image) VALUES (?, ?, ?)",
                    (image.namespace, tag, image.uuid),
                )

    def _images_from_rows(
        self, rows: Sequence[sqlite3.Row], tag_namespaces: Sequence[str] | None = None
    ) -> list[ImageRecord]:
        """Records for image rows, with their layers and tags read in one query each.

        With ``tag_namespaces``, a record carries only the tags of those namespaces, in that
        order (a caller's own tags before the public ones): a tenant never sees the names
        another tenant gave a shared image.
        """
        layers: dict[str, list[str]] = {}
        tags: dict[str, list[str]] = {}
        rank = {ns: i for i, ns in enumerate(tag_namespaces or ())}
        scope, scope_params = (
            namespace_clause(tag_namespaces, "namespace")
            if tag_namespaces is not None
            else ("1", [])
        )
        uuids = [r["uuid"] for r in rows]
        for i in range(0, len(uuids), _IN_BATCH):
            batch = uuids[i : i + _IN_BATCH]
            marks = ", ".join("?" for _ in batch)
            for r in self._query(
                f"SELECT image, layer FROM image_layers WHERE image IN ({marks})"
                " ORDER BY image, position",
                batch,
            ):
                layers.setdefault(r["image"], []).append(r["layer"])
            found = self._query(
                f"SELECT image, tag, namespace FROM tags WHERE image IN ({marks}) AND {scope}"
                " ORDER BY image, tag",
                [*batch, *scope_params],
            )
            for r in sorted(found, key=lambda r: (r["image"], rank.get(r["namespace"], 0))):
                tags.setdefault(r["image"], []).append(r["tag"])
        return [
            ImageRecord(
                uuid=row["uuid"],
                namespace=row["namespace"],
                parent=row["parent"],
                operation=row["operation"],
                command=row["command"],
                depth=row["depth"],
                layers=tuple(layers.get(row["uuid"], ())),
                env=tuple(json.loads(row["env"])),
                cwd=row["cwd"],
                user=row["user"],
                size=row["size"],
                tags=tuple(tags.get(row["uuid"], ())),
                created_at=row["created_at"],
                source_digest=row["source_digest"],
            )
            for row in rows
        ]

    def _image_from_rows(
        self, rows: Sequence[sqlite3.Row], tag_namespaces: Sequence[str] | None = None
    ) -> ImageRecord | None:
        return self._images_from_rows(rows[:1], tag_namespaces)[0] if rows else None

    def get_image(
        self, uuid: str, *, tag_namespaces: Sequence[str] | None = None
    ) -> ImageRecord | None:
        rows = self._query("SELECT * FROM images WHERE uuid=?", (uuid,))
        return self._image_from_rows(rows, tag_namespaces)

    def list_images(self, query: ImageQuery) -> list[ImageRecord]:
        where, params = namespace_clause(query.namespaces, "i.namespace")
        if query.include_public:
            where = f"({where} OR i.public=1)"
        clauses = [where]
        # Only the tags the caller can see count, for filtering as for showing: another
        # namespace's tag on a public image neither matches ?tag= nor makes it "tagged".
        tag_scope = [*query.namespaces, *((PUBLIC_NAMESPACE,) if query.include_public else ())]
        in_scope, scope_params = namespace_clause(tag_scope, "t.namespace")
        if query.uuid:
            clauses.append("i.uuid=?")
            params.append(query.uuid)
        if query.tagged is not None:
            negation = "" if query.tagged else "NOT "
            clauses.append(
                f"{negation}EXISTS (SELECT 1 FROM tags t WHERE t.image=i.uuid AND {in_scope})"
            )
            params += scope_params
        if query.tag_prefix:
            clauses.append(
                # Tags are case-sensitive, and LIKE is not: compare the prefix exactly.
                f"EXISTS (SELECT 1 FROM tags t WHERE t.image=i.uuid AND {in_scope}"
                " AND substr(t.tag, 1, length(?)) = ?)"
            )
            params += [*scope_params, query.tag_prefix, query.tag_prefix]
        if query.since:
            clauses.append("i.created_at >= ?")
            params.append(query.since)
        if query.until:
            clauses.append("i.created_at <= ?")
            params.append(query.until)
        sql = (
            f"SELECT * FROM images i WHERE {' AND '.join(clauses)}"
            " ORDER BY i.created_at DESC, i.uuid LIMIT ? OFFSET ?"
        )
        rows = self._query(sql, [*params, query.limit, query.offset])
        return self._images_from_rows(rows, tag_scope)

    def children(
        self,
        uuid: str,
        *,
        namespaces: Sequence[str] | None = None,
        tag_namespaces: Sequence[str] | None = None,
    ) -> list[ImageRecord]:
        where, params = (
            ("1", []) if namespaces is None else namespace_clause(namespaces, "namespace")
        )
        rows = self._query(
            f"SELECT * FROM images WHERE parent=? AND {where} ORDER BY created_at",
            [uuid, *params],
        )
        return self._images_from_rows(rows, tag_namespaces)

    def add_layer(self, layer_id: str, *, size: int, span: int, source: str | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO layers(id, size, span, source) VALUES (?, ?, ?, ?)",
                (layer_id, size, span, source),
            )

    def layer_by_source(self, source: str) -> tuple[str, int] | None:
        rows = self._query("SELECT id, size FROM layers WHERE source=?", (source,))
        return (rows[0]["id"], rows[0]["size"]) if rows else None

    def layer_used_in(self, layer_id: str, namespaces: Sequence[str]) -> bool:
        in_scope, params = namespace_clause(namespaces, "i.namespace")
        rows = self._query(
            "SELECT 1 FROM image_layers il JOIN images i ON i.uuid = il.image"
            f" WHERE il.layer = ? AND {in_scope} LIMIT 1",
            [layer_id, *params],
        )
        return bool(rows)

    def find_image_by_source(self, namespace: str, source_digest: str) -> ImageRecord | None:
        rows = self._query(
            "SELECT * FROM images WHERE namespace=? AND source_digest=?"
            " ORDER BY created_at DESC LIMIT 1",
            (namespace, source_digest),
        )
        return self._image_from_rows(rows)

    def layer_spans(self, layer_ids: Sequence[str]) -> dict[str, int]:
        rows = self._query(
            f"SELECT id, span FROM layers WHERE id IN ({', '.join('?' for _ in layer_ids)})",
            list(layer_ids),
        )
        return {r["id"]: r["span"] for r in rows}

    def replace_layers(self, uuid: str, layers: Sequence[str]) -> None:
        """Swap an image's physical stack for an equivalent one (after compaction)."""
        with self._tx() as db:
            db.execute("DELETE FROM image_layers WHERE image=?", (uuid,))
            db.executemany(
                "INSERT INTO image_layers(image, position, layer) VALUES (?, ?, ?)",
                [(uuid, i, layer) for i, layer in enumerate(layers)],
            )

    def delete_image(self, uuid: str) -> None:
        with self._tx() as db:
            cur = db.execute("DELETE FROM images WHERE uuid=?", (uuid,))
            if cur.rowcount == 0:
                raise ImageNotFoundError(f"image {uuid} does not exist")
            # Children keep their lineage pointer; they become roots of the visible tree.

    def unreferenced_layers(self) -> list[str]:
        rows = self._query(
            "SELECT id FROM layers l WHERE NOT EXISTS"
            " (SELECT 1 FROM image_layers il WHERE il.layer = l.id)"
            " AND NOT EXISTS (SELECT 1 FROM directory_states d WHERE d.layer = l.id)"
        )
        return [r["id"] for r in rows]

    def forget_layer(self, layer_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM layers WHERE id=?", (layer_id,))

    def images_with_stack_longer_than(self, n: int) -> list[str]:
        rows = self._query(
            "SELECT image FROM image_layers GROUP BY image HAVING COUNT(*) > ?", (n,)
        )
        return [r["image"] for r in rows]

    def known_layers(self) -> set[str]:
        return {r["id"] for r in self._query("SELECT id FROM layers")}

    # -- tags ---------------------------------------------------------------------------------

    def set_tag(self, namespace: str, tag: str, image: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tags(namespace, tag, image) VALUES (?, ?, ?)",
                (namespace, tag, image),
            )

    def remove_tag(self, namespace: str, tag: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM tags WHERE namespace=? AND tag=?", (namespace, tag))

    def remove_tags_of(self, image: str, *, namespace: str | None = None) -> list[str]:
        where, params = ("namespace=?", [namespace]) if namespace is not None else ("1", [])
        with self._tx() as db:
            rows = db.execute(
                f"SELECT tag FROM tags WHERE image=? AND {where}", [image, *params]
            ).fetchall()
            db.execute(f"DELETE FROM tags WHERE image=? AND {where}", [image, *params])
        return [r["tag"] for r in rows]

    def resolve_tag(self, namespaces: Iterable[str], tag: str) -> str | None:
        ns = list(namespaces)
        where, params = namespace_clause(ns, "t.namespace")
        rows = self._query(
            f"SELECT t.image, t.namespace FROM tags t WHERE t.tag=? AND {where}", [tag, *params]
        )
        # The caller's own namespace wins over a public one with the same tag.
        by_ns = {r["namespace"]: r["image"] for r in rows}
        for name in ns:
            if name in by_ns:
                return str(by_ns[name])
        return None
