"""Searching an image's files with regular expressions, without starting a sandbox.

Semantics follow ripgrep where it matters to an agent reading the results: lines are matched
without their terminator, binary files (a NUL byte early on) are skipped, symlinks are not
followed while walking, and the walk is sorted so the same image always gives the same answer.
Every file is reached through dirfds and ``openat2`` so that nothing outside the image root is
ever read, and only regular files are opened (a FIFO or device node in an image is skipped,
never opened).

A search is bounded whatever the image and the patterns: patterns are RE2 (linear time, see
``_grep_patterns``), searched in steps of bounded work with the deadline checked between them,
between files and between directory entries; the bytes read, the size of the answer and the
number of paths, patterns and globs are capped too. Reaching a bound ends the search early
with ``truncated`` set and ``truncated_reason`` saying which bound it was.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import posixpath
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sandtree.engine.layers._grep_lines import (
    GrepMatch,
    LineScanner,
    SearchStopped,
    Submatch,
    TruncatedReason,
)
from sandtree.engine.layers._grep_patterns import compile_patterns
from sandtree.engine.layers._paths import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    normalise_path,
    open_root,
    openat2,
    reopen_regular,
    user_error,
)
from sandtree.errors import InvalidRequestError, SandtreeError

__all__ = ["GrepMatch", "GrepResult", "Submatch", "TruncatedReason", "grep"]

_STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_BINARY_PROBE = 8192
_MAX_PATHS = 16
_MAX_GLOBS = 16
_MAX_GLOB_CHARS = 1024


@dataclasses.dataclass(frozen=True)
class GrepResult:
    """All lines found by one search; ``truncated`` means the search ended early, for the
    ``truncated_reason`` given (see ``TruncatedReason``)."""

    path: str
    patterns: list[str]
    matches: list[GrepMatch]
    truncated: bool
    truncated_reason: TruncatedReason | None = None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "path": self.path,
            "patterns": list(self.patterns),
            "matches": [m.to_json() for m in self.matches],
            "truncated": self.truncated,
            "truncated_reason": self.truncated_reason,
        }


def grep(
    root: Path,
    patterns: Sequence[str],
    *,
    uid_shift: int,
    paths: Sequence[str] = ("/",),
    glob: Sequence[str] | None = None,
    case: str = "sensitive",
    fixed_strings: bool = False,
    before: int = 0,
    after: int = 0,
    max_count: int | None = None,
    max_total: int = 1000,
    max_filesize: int = 10 * 1024 * 1024,
    max_bytes: int = 1024**3,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> GrepResult:
    """Search the files under ``paths`` of the image at ``root`` for lines matching ``patterns``.

    Patterns are RE2 regular expressions (or literals with ``fixed_strings``); a line matches
    if any pattern does. ``case="smart"`` is insensitive unless a pattern contains an uppercase
    letter (escapes such as ``\\S`` do not count). ``glob`` entries match a file's basename or
    its path relative to the search path; ``!glob`` excludes files and prunes directories.
    Explicitly named files are searched regardless of ``glob``, and a search path that is a
    symlink is followed (inside the image). ``max_count`` limits matching lines per file,
    ``max_total`` over the whole search; files over ``max_filesize`` bytes are skipped, and the
    search reads at most ``max_bytes`` bytes in all. It ends early, with ``truncated`` set,
    when a further match is found after ``max_total``, when ``deadline`` (a
    ``time.monotonic()`` value) passes, when ``stop`` is set, or at the bounds above.
    ``uid_shift`` is accepted for symmetry with the other inspection calls; matches carry no
    ownership.
    """
    del uid_shift
    for name, value in (("before", before), ("after", after), ("max_total", max_total)):
        if value < 0:
            raise InvalidRequestError(f"{name} must not be negative (got {value})")
    if max_count is not None and max_count < 0:
        raise InvalidRequestError(f"max_count must not be negative (got {max_count})")
    shown = [normalise_path(p) for p in paths] or ["/"]
    if len(shown) > _MAX_PATHS:
        raise InvalidRequestError(f"send at most {_MAX_PATHS} paths to search")
    globs = list(glob or ())
    if len(globs) > _MAX_GLOBS or any(len(g) > _MAX_GLOB_CHARS for g in globs):
        raise InvalidRequestError(
            f"send at most {_MAX_GLOBS} globs of at most {_MAX_GLOB_CHARS} characters"
        )
    lines = LineScanner(
        compile_patterns(patterns, case=case, fixed=fixed_strings),
        before=before,
        after=after,
        max_count=max_count,
        max_total=max_total,
        deadline=deadline,
        stop=stop,
    )
    search = _Search(lines, _Globs(globs), max_filesize=max_filesize, max_bytes=max_bytes)
    reason: TruncatedReason | None = None
    rootfd = open_root(root)
    try:
        for path in shown:
            search.search_root(rootfd, path)
    except SearchStopped as stopped:
        reason = stopped.reason
    finally:
        os.close(rootfd)
    return GrepResult(", ".join(shown), list(patterns), lines.matches, reason is not None, reason)


class _Globs:
    # fnmatch translates globs into Python regexes with atomic groups (Python >= 3.9), so a
    # hostile glob costs at most a few milliseconds per name; the walk checks the deadline
    # between entries.
    def __init__(self, globs: Sequence[str]) -> None:
        self.include = [g for g in globs if g and not g.startswith("!")]
        self.exclude = [g[1:] for g in globs if g.startswith("!") and len(g) > 1]

    def wants_file(self, name: str, rel: str) -> bool:
        if any(_glob_matches(g, name, rel) for g in self.exclude):
            return False
        return not self.include or any(_glob_matches(g, name, rel) for g in self.include)

    def wants_dir(self, name: str, rel: str) -> bool:
        return not any(_glob_matches(g, name, rel) for g in self.exclude)


def _glob_matches(glob: str, name: str, rel: str) -> bool:
    candidates = [glob]
    # "**/x" should also match x at the top of the search path, as in gitignore-style globs.
    if glob.startswith("**/"):
        candidates.append(glob[3:])
    return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(rel, g) for g in candidates)


class _Search:
    """One search: walks the search paths, reads the files it wants, scans them with ``lines``."""

    def __init__(
        self, lines: LineScanner, globs: _Globs, *, max_filesize: int, max_bytes: int
    ) -> None:
        self.lines = lines
        self.globs = globs
        self.max_filesize = max_filesize
        self.max_bytes = max_bytes
        self.bytes_read = 0

    def search_root(self, rootfd: int, path: str) -> None:
        try:
            top = openat2(rootfd, path, os.O_PATH)
        except OSError as exc:
            raise user_error(path, exc) from exc
        try:
            st = os.fstat(top)
            shown = "/" + posixpath.normpath(path).lstrip("/")
            if stat.S_ISDIR(st.st_mode):
                self._walk(top, shown.rstrip("/"))
            elif stat.S_ISREG(st.st_mode):
                self._search_file(top, st, shown)
        finally:
            os.close(top)

    def _walk(self, top: int, shown: str) -> None:
        # One dirfd per level of depth, so the walk never resolves a path longer than a name.
        stack: list[tuple[int, Iterator[str], str]] = []
        first = _open_dir(top, ".", "")
        if first is not None:
            stack.append(first)
        try:
            while stack:
                dirfd, names, rel_dir = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    os.close(dirfd)
                    continue
                self.lines.check()
                rel = f"{rel_dir}/{name}" if rel_dir else name
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                # Only directories and regular files: symlinks, FIFOs, sockets and device
                # nodes are never opened.
                if stat.S_ISDIR(st.st_mode):
                    child = _open_dir(dirfd, name, rel) if self.globs.wants_dir(name, rel) else None
                    if child is not None:
                        stack.append(child)
                elif stat.S_ISREG(st.st_mode) and self.globs.wants_file(name, rel):
                    self._search_entry(dirfd, name, st, f"{shown}/{rel}")
        finally:
            for dirfd, _, _ in stack:
                os.close(dirfd)

    def _search_entry(self, dirfd: int, name: str, st: os.stat_result, shown: str) -> None:
        if st.st_size > self.max_filesize:
            return
        try:
            pathfd = openat2(dirfd, name, os.O_PATH | os.O_NOFOLLOW, resolve=_STRICT)
        except OSError:
            return
        try:
            self._search_file(pathfd, st, shown)
        finally:
            os.close(pathfd)

    def _search_file(self, pathfd: int, st: os.stat_result, shown: str) -> None:
        self.lines.check()
        if st.st_size > self.max_filesize or self.lines.max_count == 0:
            return
        data = self._read(pathfd, st)
        if data is not None:
            self.lines.scan(shown, data)

    def _read(self, pathfd: int, st: os.stat_result) -> bytes | None:
        """The file's content, or None when it is binary, too large, or not a regular file."""
        if self.bytes_read + st.st_size > self.max_bytes:
            raise SearchStopped("max_bytes")
        try:
            fd = reopen_regular(pathfd)
        except (OSError, SandtreeError):
            return None
        with open(fd, "rb") as f:
            head = f.read(_BINARY_PROBE)
            if b"\x00" in head:
                self.bytes_read += len(head)
                return None
            data = head + f.read(self.max_filesize + 1 - len(head))
        self.bytes_read += len(data)
        return None if len(data) > self.max_filesize else data


def _open_dir(dirfd: int, name: str, rel: str) -> tuple[int, Iterator[str], str] | None:
    """Open a directory entry without following symlinks and list it; None if that fails."""
    try:
        fd = openat2(dirfd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, resolve=_STRICT)
    except OSError:
        return None
    try:
        return fd, iter(sorted(os.listdir(fd))), rel
    except OSError:
        os.close(fd)
        return None
