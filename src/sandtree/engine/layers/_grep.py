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

import collections
import dataclasses
import fnmatch
import os
import posixpath
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from sandtree.engine.layers._grep_patterns import Patterns, compile_patterns
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
_LINE_TEXT_CAP = 4096
_MAX_PATHS = 16
_MAX_GLOBS = 16
_MAX_GLOB_CHARS = 1024
#: The answer's size: line and submatch text plus a fixed cost per entry for the JSON around
#: it (10,000 matches with 50 lines of context each would otherwise be gigabytes).
_MAX_OUTPUT_BYTES = 16 * 1024**2
_ENTRY_COST = 160
_SUBMATCH_COST = 48

#: Why a search ended early: ``max_total`` more matches exist than were kept; ``deadline`` its
#: time ran out; ``max_bytes`` it read as many bytes as one search may; ``max_output`` its
#: answer reached the size one answer may have; ``cancelled`` its caller went away.
TruncatedReason = Literal["max_total", "deadline", "max_bytes", "max_output", "cancelled"]


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


class _Stop(Exception):
    """The search ended early, for ``reason``."""

    def __init__(self, reason: TruncatedReason) -> None:
        super().__init__(reason)
        self.reason: TruncatedReason = reason


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
    search = _Search(
        compile_patterns(patterns, case=case, fixed=fixed_strings),
        _Globs(globs),
        before=before,
        after=after,
        max_count=max_count,
        max_total=max_total,
        max_filesize=max_filesize,
        max_bytes=max_bytes,
        deadline=deadline,
        stop=stop,
    )
    reason: TruncatedReason | None = None
    rootfd = open_root(root)
    try:
        for path in shown:
            search.search_root(rootfd, path)
    except _Stop as stopped:
        reason = stopped.reason
    finally:
        os.close(rootfd)
    return GrepResult(", ".join(shown), list(patterns), search.matches, reason is not None, reason)


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


@dataclasses.dataclass
class _File:
    """Where the scan of one file is: its lines so far, matches, and pending context."""

    shown: str
    data: bytes
    before: collections.deque[tuple[int, int, int]]
    lineno: int = 0
    found: int = 0
    after_left: int = 0


class _Search:
    def __init__(
        self,
        patterns: Patterns,
        globs: _Globs,
        *,
        before: int,
        after: int,
        max_count: int | None,
        max_total: int,
        max_filesize: int,
        max_bytes: int,
        deadline: float | None,
        stop: threading.Event | None,
    ) -> None:
        self.patterns = patterns
        self.globs = globs
        self.before = before
        self.after = after
        self.max_count = max_count
        self.max_total = max_total
        self.max_filesize = max_filesize
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.stop = stop
        self.matches: list[GrepMatch] = []
        self.total = 0
        self.bytes_read = 0
        self.output = 0

    def check(self) -> None:
        """Raise ``_Stop`` once the caller went away or the deadline passed."""
        if self.stop is not None and self.stop.is_set():
            raise _Stop("cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _Stop("deadline")

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
                self.check()
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
        self.check()
        if st.st_size > self.max_filesize or self.max_count == 0:
            return
        data = self._read(pathfd, st)
        if data is not None:
            self._scan(_File(shown, data, collections.deque(maxlen=self.before)))

    def _read(self, pathfd: int, st: os.stat_result) -> bytes | None:
        """The file's content, or None when it is binary, too large, or not a regular file."""
        if self.bytes_read + st.st_size > self.max_bytes:
            raise _Stop("max_bytes")
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

    def _scan(self, file: _File) -> None:
        data, window, pos = file.data, self.patterns.window, 0
        while pos < len(data):
            if self._file_done(file):
                return
            self.check()
            # A block: the whole lines from pos that fit in one window, or the one line at pos
            # when it is longer (searched in windows).
            if pos + window >= len(data):
                end, whole_lines = len(data), True
            else:
                newline = data.rfind(b"\n", pos, pos + window)
                whole_lines = newline >= 0
                if whole_lines:
                    end = newline + 1
                else:
                    newline = data.find(b"\n", pos + window)
                    end = len(data) if newline < 0 else newline + 1
            if whole_lines and self.patterns.prefilter:
                self._scan_block(file, pos, end)
            else:
                self._scan_lines(file, pos, end)
            pos = end

    def _file_done(self, file: _File) -> bool:
        return self.max_count is not None and file.found >= self.max_count and not file.after_left

    def _scan_block(self, file: _File, pos: int, end: int) -> None:
        """Scan a block of whole lines by jumping from match to match of the patterns, which
        may all be searched inside the file's bytes: the lines before a pattern's first match
        in the block cannot match, and a match within one line makes that line match."""
        data = file.data
        patterns = self.patterns.candidates(data, pos, end, self.check)
        spans: list[tuple[int, int] | None] = [None] * len(patterns)
        while pos < end and patterns:
            if self._file_done(file):
                return
            # Each pattern's first match at or after pos (a match found earlier still is).
            for i, pattern in enumerate(patterns):
                span = spans[i]
                if span is None or span[0] < pos:
                    self.check()
                    spans[i] = pattern.search(data, pos, end)
            found = [(span, p) for span, p in zip(spans, patterns, strict=True) if span]
            patterns = [p for _, p in found]
            spans = [span for span, _ in found]
            if not found:
                break
            first = min(span[0] for span, _ in found)
            line_start = data.rfind(b"\n", pos, first) + 1 or pos
            self._pass(file, pos, line_start)
            line_end = _line_end(data, line_start, end)
            content_end = line_end - 1 if data[line_end - 1] == 0x0A else line_end
            within = any(s[0] == first and s[1] <= content_end for s, _ in found)
            self.check()
            matched = within or self.patterns.line_matches(
                patterns, data, line_start, content_end, self.check
            )
            if not self._line(file, line_start, line_end, content_end, matched):
                return
            pos = line_end
        self._pass(file, pos, end)

    def _scan_lines(self, file: _File, pos: int, end: int) -> None:
        """Scan the lines of ``data[pos:end]`` one by one, each against every pattern."""
        data = file.data
        while pos < end:
            if self._file_done(file):
                return
            line_end = _line_end(data, pos, end)
            content_end = line_end - 1 if data[line_end - 1] == 0x0A else line_end
            matched = self.patterns.line_matches(
                self.patterns.each, data, pos, content_end, self.check
            )
            if not self._line(file, pos, line_end, content_end, matched):
                return
            pos = line_end

    def _line(self, file: _File, start: int, end: int, content_end: int, matched: bool) -> bool:
        """Account for the next line of the file; False once the file needs no more lines."""
        file.lineno += 1
        line = (file.lineno, start, end)
        if matched:
            if self.max_count is not None and file.found >= self.max_count:
                return False
            if self.total >= self.max_total:
                raise _Stop("max_total")
            for ctx in file.before:
                self._emit(file, ctx, match_end=None)
            file.before.clear()
            self._emit(file, line, match_end=content_end)
            file.found += 1
            self.total += 1
            file.after_left = self.after
        elif file.after_left > 0:
            self._emit(file, line, match_end=None)
            file.after_left -= 1
        elif self.before:
            file.before.append(line)
        return True

    def _pass(self, file: _File, pos: int, end: int) -> None:
        """The lines of ``data[pos:end]`` match nothing: count them, emit them as context
        after a match, keep the last ones as context for the next match."""
        data = file.data
        while pos < end and file.after_left:
            line_end = _line_end(data, pos, end)
            self._line(file, pos, line_end, line_end, matched=False)
            pos = line_end
        if pos >= end:
            return
        count = data.count(b"\n", pos, end) + (data[end - 1] != 0x0A)
        if self.before:
            tail: list[tuple[int, int, int]] = []
            line_end, lineno = end, file.lineno + count
            while len(tail) < self.before and line_end > pos:
                line_start = data.rfind(b"\n", pos, line_end - 1) + 1 or pos
                tail.append((lineno, line_start, line_end))
                line_end, lineno = line_start, lineno - 1
            file.before.extend(reversed(tail))
        file.lineno += count

    def _emit(self, file: _File, line: tuple[int, int, int], match_end: int | None) -> None:
        lineno, start, end = line
        text = file.data[start : min(end, start + _LINE_TEXT_CAP)].decode("utf-8", "replace")
        submatches = [] if match_end is None else self._submatches(file.data, start, match_end)
        cost = _ENTRY_COST + len(text) + sum(_SUBMATCH_COST + len(s["text"]) for s in submatches)
        if self.output + cost > _MAX_OUTPUT_BYTES:
            raise _Stop("max_output")
        self.output += cost
        self.matches.append(
            GrepMatch(
                path=file.shown,
                line_number=lineno,
                absolute_offset=start,
                line_text=text,
                line_bytes=end - start,
                submatches=submatches,
                type="context" if match_end is None else "match",
            )
        )

    def _submatches(self, data: bytes, start: int, end: int) -> list[Submatch]:
        # Only matches that line_text shows are reported; empty matches carry nothing.
        spans = self.patterns.spans(data, start, end, _LINE_TEXT_CAP)
        # Patterns may overlap each other; keep the leftmost, longest, non-overlapping spans.
        spans.sort(key=lambda s: (s[0], -s[1]))
        result: list[Submatch] = []
        last_end = 0
        for first, last in spans:
            if first >= last_end:
                text = data[start + first : start + last].decode("utf-8", "replace")
                result.append(Submatch(text=text, start=first, end=last))
                last_end = last
        return result


def _line_end(data: bytes, pos: int, end: int) -> int:
    """Where the line at ``pos`` ends (after its newline), within ``data[:end]``."""
    newline = data.find(b"\n", pos, end)
    return end if newline < 0 else newline + 1


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
