"""grep's patterns: compiled with RE2, searched in bounded steps.

RE2 matches in time linear in the text (no backtracking, so no ReDoS) and releases the GIL
while it matches. Linear is not yet bounded: when a pattern's DFA outgrows its memory RE2
falls back to an NFA that costs up to ~6 ns per byte and program instruction, and a
16k-instruction program over a 10 MiB line would run for minutes. So every search call covers
at most ``window`` bytes, chosen from the largest pattern's program size so that one call
stays well under a second, and the caller checks its deadline between calls:

- a run of whole lines up to ``window`` bytes is searched as one *block* first (a pre-check
  that skips the block when no pattern can match in it), then line by line if one can;
- a line longer than ``window`` is searched in windows overlapping by ``window // 4``: a match
  up to that long is always found, a longer one only when it fits in one window.

Patterns that can be searched inside the whole file's bytes (``in_context``) are compiled in
multi-line mode and searched with ``pos``/``endpos`` around the line, so ``^``, ``$`` and
``\\b`` see the line's real neighbours and no line is copied. Patterns using ``\\A``, ``\\z``
or turning multi-line mode off are matched against each line as its own text instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import re2

from sandtree.errors import InvalidRequestError

__all__ = [
    "CASES",
    "MAX_PATTERNS",
    "MAX_PATTERN_CHARS",
    "MAX_PROGRAM_SIZE",
    "Pattern",
    "Patterns",
    "compile_patterns",
]

CASES = ("sensitive", "insensitive", "smart")
MAX_PATTERNS = 16
MAX_PATTERN_CHARS = 1024
#: RE2 program instructions per pattern: bounds one search call's worst case (with the
#: smallest window) and the memory a search holds.
MAX_PROGRAM_SIZE = 16_384
#: Bytes x instructions one search call may cover: ~0.4 s in RE2's slowest (NFA) mode.
_WORK_PER_CALL = 1 << 26
_MIN_WINDOW = 16 * 1024
_MAX_WINDOW = 1 << 20
#: Per compiled pattern (its program and DFA cache); RE2's default is 8 MiB.
_MAX_MEM = 4 << 20
_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)
# Assertions on the text's ends (\A, \z) and multi-line mode turned off make a pattern mean
# something else inside the whole file than on the line alone. Anything resembling them counts.
_NEEDS_OWN_TEXT = re.compile(rb"\\[Az]|\(\?[A-Za-z]*-[A-Za-z]*m")
_HELP = (
    "grep uses RE2 syntax (like ripgrep's Rust regex; https://github.com/google/re2/wiki/Syntax), "
    "which matches in linear time and so has no backreferences, lookahead or lookbehind, "
    "atomic groups or possessive quantifiers; rewrite the pattern without them, or send "
    "fixed_strings=true to search for the text literally"
)
_HINTS = (
    (re.compile(r"invalid escape sequence: \\[1-9]"), "backreferences like \\1 are not supported"),
    (re.compile(r"invalid perl operator: \(\?<?[=!]"), "lookaround is not supported"),
    (re.compile(r"invalid perl operator: \(\?>"), "atomic groups (?>...) are not supported"),
    (re.compile(r"bad repetition operator: [*+?}]\+"), "possessive quantifiers are not supported"),
    (re.compile(r"invalid escape sequence: \\Z"), "write \\z (or $) for the end of the line"),
    (re.compile(r"invalid repetition size"), "a repetition count is at most 1000"),
    (re.compile(r"pattern too large"), "the pattern is too complex; shorten its repetitions"),
)


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One compiled pattern; ``in_context`` if it may be searched inside the file's bytes."""

    source: str
    in_context: bool
    regex: Any
    program_size: int

    def search(self, text: bytes, pos: int, endpos: int) -> tuple[int, int] | None:
        """The first match lying within ``text[pos:endpos]`` (the rest of ``text`` is context)."""
        span: tuple[int, int] = self.regex.Match(_UNANCHORED, text, pos, endpos)[0]
        return None if span == _NO_MATCH else span


@dataclasses.dataclass(frozen=True)
class Patterns:
    """The compiled patterns of one search and the size of its search steps."""

    each: tuple[Pattern, ...]
    #: Bytes one search call covers at most.
    window: int

    @property
    def overlap(self) -> int:
        """How far the windows of a long line overlap: a match this long is always found."""
        return self.window // 4

    @property
    def prefilter(self) -> bool:
        """Whether a block of lines may be searched at once (every pattern is ``in_context``)."""
        return all(p.in_context for p in self.each)

    def candidates(
        self, data: bytes, start: int, end: int, check: Callable[[], None]
    ) -> list[Pattern]:
        """The patterns that match somewhere in the block ``data[start:end]`` of whole lines
        (at most ``window`` bytes); a line in it can only match one of these. ``check`` runs
        before each search call."""
        found = []
        for pattern in self.each:
            check()
            if pattern.search(data, start, end) is not None:
                found.append(pattern)
        return found

    def line_matches(
        self,
        patterns: Sequence[Pattern],
        data: bytes,
        start: int,
        end: int,
        check: Callable[[], None],
    ) -> bool:
        """Whether one of ``patterns`` matches the line ``data[start:end]`` (no terminator).

        ``check`` runs between search calls (it raises to stop the search)."""
        own: bytes | None = None
        for pattern in patterns:
            if pattern.in_context:
                text, pos, endpos = data, start, end
            else:
                own = data[start:end] if own is None else own
                text, pos, endpos = own, 0, end - start
            if self._search_windows(pattern, text, pos, endpos, check):
                return True
        return False

    def _search_windows(
        self, pattern: Pattern, text: bytes, pos: int, endpos: int, check: Callable[[], None]
    ) -> bool:
        step = self.window - self.overlap
        while True:
            check()
            if pattern.search(text, pos, min(endpos, pos + self.window)) is not None:
                return True
            if pos + self.window >= endpos:
                return False
            pos += step

    def spans(self, data: bytes, start: int, end: int, limit: int) -> list[tuple[int, int]]:
        """Non-empty matches of every pattern starting before ``limit`` bytes into the line
        ``data[start:end]``, as offsets into the line; only its first window is searched."""
        spans: list[tuple[int, int]] = []
        stop = min(end, start + self.window)
        own: bytes | None = None
        for pattern in self.each:
            if pattern.in_context:
                text, base = data, start
            else:
                own = data[start:end] if own is None else own
                text, base = own, 0
            pos, endpos = base, base + (stop - start)
            while pos <= endpos:
                span = pattern.search(text, pos, endpos)
                if span is None or span[0] - base >= limit:
                    break
                if span[1] > span[0]:
                    spans.append((span[0] - base, span[1] - base))
                pos = span[1] if span[1] > pos else pos + 1
        return spans


def compile_patterns(patterns: Sequence[str], *, case: str, fixed: bool) -> Patterns:
    """Check and compile ``patterns`` (RE2 syntax, or literals with ``fixed``).

    Raises ``InvalidRequestError`` naming the pattern and what to write instead."""
    if not patterns:
        raise InvalidRequestError("grep needs at least one pattern")
    if len(patterns) > MAX_PATTERNS or any(len(p) > MAX_PATTERN_CHARS for p in patterns):
        raise InvalidRequestError(
            f"send at most {MAX_PATTERNS} patterns of at most {MAX_PATTERN_CHARS} characters"
        )
    if case not in CASES:
        raise InvalidRequestError(f"case must be one of {', '.join(CASES)}, not {case!r}")
    insensitive = case == "insensitive" or (
        case == "smart" and not any(_has_uppercase(p, fixed=fixed) for p in patterns)
    )
    each = tuple(_compile(p, insensitive=insensitive, fixed=fixed) for p in patterns)
    largest = max(p.program_size for p in each)
    window = max(_MIN_WINDOW, min(_MAX_WINDOW, _WORK_PER_CALL // max(largest, 1)))
    return Patterns(each, window)


def _compile(pattern: str, *, insensitive: bool, fixed: bool) -> Pattern:
    raw = pattern.encode("utf-8", "surrogateescape")
    source = re2.escape(raw) if fixed else raw
    in_context = fixed or not _NEEDS_OWN_TEXT.search(source)
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True  # only where the whole match is, which is cheaper to find
    options.case_sensitive = not insensitive
    options.max_mem = _MAX_MEM
    # Compiled directly, not through re2.compile: its module-wide cache would keep up to 128
    # patterns (and their DFA memory) of past requests alive.
    regex = re2._re2.RE2((b"(?m)" if in_context else b"") + source, options)
    if not regex.ok():
        raise InvalidRequestError(_explain(pattern, regex.error().decode("utf-8", "replace")))
    size = int(regex.ProgramSize())
    if size > MAX_PROGRAM_SIZE:
        raise InvalidRequestError(
            f"regex {pattern!r} is too complex: it compiles to {size} instructions, more than "
            f"{MAX_PROGRAM_SIZE}; shorten its repetitions (like {{1000}}) and large Unicode "
            "classes (like \\p{L}), or search for a shorter pattern"
        )
    return Pattern(pattern, in_context, regex, size)


def _explain(pattern: str, error: str) -> str:
    hint = next((text for rule, text in _HINTS if rule.search(error)), None)
    detail = f"{error} ({hint})" if hint else error
    return f"invalid regex {pattern!r}: {detail}. {_HELP}"


def _has_uppercase(pattern: str, *, fixed: bool) -> bool:
    text = pattern if fixed else re.sub(r"\\.", "", pattern)
    return any(ch.isupper() for ch in text)
