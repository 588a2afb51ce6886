"""Searching an image's files with regular expressions, without starting a sandbox.

Semantics follow ripgrep where it matters to an agent reading the results: lines are matched
without their terminator, binary files (a NUL byte early on) are skipped, symlinks are not
followed while walking, and the walk is sorted so the same image always gives the same answer.
Every file is reached through dirfds and ``openat2`` so that nothing outside the image root is
ever read.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import os
import posixpath
import re
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

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

__all__ = ["GrepMatch", "GrepResult", "Submatch", "grep"]

_STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_BINARY_PROBE = 8192
_LINE_TEXT_CAP = 4096
_DEADLINE_EVERY_LINES = 1024
_CASES = ("sensitive", "insensitive", "smart")
# The whole-file pre-check must never miss a line match. Assertions that look past a line's
# ends (\A, \Z, lookarounds) and constructs that forbid backtracking (atomic groups,
# possessive quantifiers) can match a line yet fail on the whole file, so patterns using them
# (or anything resembling them) skip the pre-check.
_LINE_LOCAL_UNSAFE = re.compile(rb"\\[AZ]|\(\?<?[=!]|\(\?>|[*+?}]\+")


class Submatch(TypedDict):
    """One match within a line; ``start``/``end`` are byte offsets into the line."""

    text: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class GrepMatch:
    """A matching line, or a context line around one."""

    path: str
    line_number: int
    absolute_offset: int
    line_text: str
    line_bytes: int
    submatches: list[Submatch]
    type: Literal["match", "context"]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GrepResult:
    """All lines found by one search; ``truncated`` means more matches exist than were kept."""

    path: str
    patterns: list[str]
    matches: list[GrepMatch]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "path": self.path,
            "patterns": list(self.patterns),
            "matches": [m.to_json() for m in self.matches],
            "truncated": self.truncated,
        }


class _Stop(Exception):
    """The search ended early: ``max_total`` reached or deadline passed."""


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
    deadline: float | None = None,
) -> GrepResult:
    """Search the files under ``paths`` of the image at ``root`` for lines matching ``patterns``.

    Patterns are Python regular expressions on bytes (or literals with ``fixed_strings``); a
    line matches if any pattern does. ``case="smart"`` is insensitive unless a pattern contains
    an uppercase letter (escapes such as ``\\S`` do not count). ``glob`` entries match a file's
    basename or its path relative to the search path; ``!glob`` excludes files and prunes
    directories. Explicitly named files are searched regardless of ``glob``, and a search path
    that is a symlink is followed (inside the image). ``max_count`` limits matching lines per
    file, ``max_total`` over the whole search; ``truncated`` is set when a further match was
    found after ``max_total``, or when ``deadline`` (a ``time.monotonic()`` value) passed.
    ``uid_shift`` is accepted for symmetry with the other inspection calls; matches carry no
    ownership.
    """
    del uid_shift
    if not patterns:
        raise InvalidRequestError("grep needs at least one pattern")
    if case not in _CASES:
        raise InvalidRequestError(f"case must be one of {', '.join(_CASES)}, not {case!r}")
    for name, value in (("before", before), ("after", after), ("max_total", max_total)):
        if value < 0:
            raise InvalidRequestError(f"{name} must not be negative (got {value})")
    if max_count is not None and max_count < 0:
        raise InvalidRequestError(f"max_count must not be negative (got {max_count})")
    search = _Search(
        _compile(patterns, case=case, fixed=fixed_strings),
        _Globs(glob or ()),
        before=before,
        after=after,
        max_count=max_count,
        max_total=max_total,
        max_filesize=max_filesize,
        deadline=deadline,
    )
    shown = [normalise_path(p) for p in paths] or ["/"]
    rootfd = open_root(root)
    try:
        for path in shown:
            search.search_root(rootfd, path)
    except _Stop:
        search.truncated = True
    finally:
        os.close(rootfd)
    return GrepResult(", ".join(shown), list(patterns), search.matches, search.truncated)


@dataclasses.dataclass(frozen=True)
class _Compiled:
    lines: list[re.Pattern[bytes]]
    # Per-pattern whole-file pre-checks, or None when one of them could miss a line match.
    prefilters: list[re.Pattern[bytes]] | None


def _compile(patterns: Sequence[str], *, case: str, fixed: bool) -> _Compiled:
    insensitive = case == "insensitive" or (
        case == "smart" and not any(_has_uppercase(p, fixed=fixed) for p in patterns)
    )
    flags = re.IGNORECASE if insensitive else 0
    lines: list[re.Pattern[bytes]] = []
    prefilters: list[re.Pattern[bytes]] | None = []
    for pattern in patterns:
        raw = pattern.encode("utf-8", "surrogateescape")
        source = re.escape(raw) if fixed else raw
        try:
            lines.append(re.compile(source, flags))
        except re.error as exc:
            raise InvalidRequestError(f"invalid regex {pattern!r}: {exc}") from None
        if prefilters is not None and (fixed or not _LINE_LOCAL_UNSAFE.search(source)):
            prefilters.append(re.compile(source, flags | re.MULTILINE))
        else:
            prefilters = None
    return _Compiled(lines, prefilters)


def _has_uppercase(pattern: str, *, fixed: bool) -> bool:
    text = pattern if fixed else re.sub(r"\\.", "", pattern)
    return any(ch.isupper() for ch in text)


class _Globs:
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
    def __init__(
        self,
        compiled: _Compiled,
        globs: _Globs,
        *,
        before: int,
        after: int,
        max_count: int | None,
        max_total: int,
        max_filesize: int,
        deadline: float | None,
    ) -> None:
        self.compiled = compiled
        self.globs = globs
        self.before = before
        self.after = after
        self.max_count = max_count
        self.max_total = max_total
        self.max_filesize = max_filesize
        self.deadline = deadline
        self.matches: list[GrepMatch] = []
        self.total = 0
        self.truncated = False

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _Stop

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
                self.check_deadline()
                rel = f"{rel_dir}/{name}" if rel_dir else name
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
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
        self.check_deadline()
        if st.st_size > self.max_filesize or self.max_count == 0:
            return
        try:
            fd = reopen_regular(pathfd)
        except (OSError, SandtreeError):
            return
        with open(fd, "rb") as f:
            data = f.read(self.max_filesize + 1)
        if len(data) > self.max_filesize or b"\x00" in data[:_BINARY_PROBE]:
            return
        prefilters = self.compiled.prefilters
        if prefilters is not None and not any(p.search(data) for p in prefilters):
            return
        self._scan(data, shown)

    def _scan(self, data: bytes, shown: str) -> None:
        pending: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=self.before)
        after_left = 0
        found = 0
        lineno = 0
        pos = 0
        while pos < len(data):
            if self.max_count is not None and found >= self.max_count and after_left == 0:
                return
            lineno += 1
            if lineno % _DEADLINE_EVERY_LINES == 0:
                self.check_deadline()
            newline = data.find(b"\n", pos)
            end = len(data) if newline < 0 else newline + 1
            content = data[pos : end if newline < 0 else newline]
            if any(p.search(content) for p in self.compiled.lines):
                if self.max_count is not None and found >= self.max_count:
                    return
                if self.total >= self.max_total:
                    raise _Stop
                for ctx in pending:
                    self._emit(data, shown, ctx, None)
                pending.clear()
                self._emit(data, shown, (lineno, pos, end), content)
                found += 1
                self.total += 1
                after_left = self.after
            elif after_left > 0:
                self._emit(data, shown, (lineno, pos, end), None)
                after_left -= 1
            elif self.before:
                pending.append((lineno, pos, end))
            pos = end

    def _emit(
        self, data: bytes, shown: str, line: tuple[int, int, int], content: bytes | None
    ) -> None:
        lineno, start, end = line
        self.matches.append(
            GrepMatch(
                path=shown,
                line_number=lineno,
                absolute_offset=start,
                line_text=data[start : min(end, start + _LINE_TEXT_CAP)].decode("utf-8", "replace"),
                line_bytes=end - start,
                submatches=[] if content is None else self._submatches(content),
                type="context" if content is None else "match",
            )
        )

    def _submatches(self, content: bytes) -> list[Submatch]:
        spans: list[tuple[int, int]] = []
        for pattern in self.compiled.lines:
            for m in pattern.finditer(content):
                # Only matches that line_text shows are reported; empty matches carry nothing.
                if m.start() >= _LINE_TEXT_CAP:
                    break
                if m.end() > m.start():
                    spans.append((m.start(), m.end()))
        # Patterns may overlap each other; keep the leftmost, longest, non-overlapping spans.
        spans.sort(key=lambda s: (s[0], -s[1]))
        result: list[Submatch] = []
        last_end = 0
        for start, end in spans:
            if start >= last_end:
                text = content[start:end].decode("utf-8", "replace")
                result.append(Submatch(text=text, start=start, end=end))
                last_end = end
        return result


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
