"""grep's scan of one file's bytes: lines found by jumping between pattern matches (or line
by line), with context lines, per-file and total match limits and a bounded answer.

Every search call covers at most one window (see ``_grep_patterns``), and ``check`` runs
between calls, so a deadline or a stop is seen within one bounded step.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Literal, TypedDict

from sandtree.engine.layers._grep_patterns import Patterns

__all__ = ["GrepMatch", "LineScanner", "SearchStopped", "Submatch", "TruncatedReason"]

_LINE_TEXT_CAP = 4096
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


class SearchStopped(Exception):
    """The search ended early, for ``reason``."""

    def __init__(self, reason: TruncatedReason) -> None:
        super().__init__(reason)
        self.reason: TruncatedReason = reason


@dataclasses.dataclass
class _File:
    """Where the scan of one file is: its lines so far, matches, and pending context."""

    shown: str
    data: bytes
    before: collections.deque[tuple[int, int, int]]
    lineno: int = 0
    found: int = 0
    after_left: int = 0


class LineScanner:
    """Scans files' bytes for ``patterns``, collecting ``matches`` until a limit stops it
    (``SearchStopped``, with the reason)."""

    def __init__(
        self,
        patterns: Patterns,
        *,
        before: int,
        after: int,
        max_count: int | None,
        max_total: int,
        deadline: float | None,
        stop: threading.Event | None,
    ) -> None:
        self.patterns = patterns
        self.before = before
        self.after = after
        self.max_count = max_count
        self.max_total = max_total
        self.deadline = deadline
        self.stop = stop
        self.matches: list[GrepMatch] = []
        self.total = 0
        self.output = 0

    def check(self) -> None:
        """Raise ``SearchStopped`` once the caller went away or the deadline passed."""
        if self.stop is not None and self.stop.is_set():
            raise SearchStopped("cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise SearchStopped("deadline")

    def scan(self, shown: str, data: bytes) -> None:
        """Scan the file shown as ``shown`` whose content is ``data``."""
        self._scan(_File(shown, data, collections.deque(maxlen=self.before)))

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
                raise SearchStopped("max_total")
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
            raise SearchStopped("max_output")
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
