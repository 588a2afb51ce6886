"""What a run's writable layer costs the disk, for ``max_layer_bytes`` and
``max_layer_entries``.

Counting only regular files' sizes let a run write 79 MB under a 1 MiB cap with 20,000 empty
directories, and would let sparse files and hard links slip by. So every entry is charged:

* its data: for a regular file the larger of its size and its allocated blocks (a sparse
  file costs what it will cost once exported or copied; a preallocated one what it takes
  now), for everything else its allocated blocks (a directory's 4 KiB and more);
* ``ENTRY_BYTES`` for its inode and name, whatever its kind (symlinks, FIFOs, whiteouts);
* a hard-linked inode's data once, each of its names as an entry.

The number of entries is capped on its own too: inodes run out before bytes on a filesystem
made for large files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import stat
from pathlib import Path

from sandtree.engine.layers._paths import walk_tree

__all__ = ["ENTRY_BYTES", "LayerUsage", "layer_usage"]

#: What one entry costs beyond its data blocks: an ext4/xfs inode (256-512 bytes) and its
#: directory entry.
ENTRY_BYTES = 512
_BLOCK = 512  # st_blocks counts 512-byte units whatever the filesystem's block size


@dataclasses.dataclass(frozen=True)
class LayerUsage:
    """Bytes charged to a layer and how many entries (names) it holds."""

    bytes: int
    entries: int

    def over(self, max_bytes: int, max_entries: int) -> bool:
        # At (not only past) the byte cap: RLIMIT_FSIZE stops a single file exactly there.
        return self.bytes >= max_bytes or self.entries > max_entries


def layer_usage(top: Path) -> LayerUsage:
    """The usage of the tree below ``top`` (walked without following any symlink)."""
    total = entries = 0
    linked: set[tuple[int, int]] = set()
    with contextlib.suppress(FileNotFoundError):
        for _, st in walk_tree(top):
            entries += 1
            total += ENTRY_BYTES
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in linked:
                    continue
                linked.add(key)
            blocks = st.st_blocks * _BLOCK
            total += max(st.st_size, blocks) if stat.S_ISREG(st.st_mode) else blocks
    return LayerUsage(bytes=total, entries=entries)
