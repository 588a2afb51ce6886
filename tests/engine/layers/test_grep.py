"""grep's bounds: RE2 patterns (linear time, refused syntax explained), searches in steps of
bounded work with the deadline checked inside a line, byte and answer budgets, and special
files never opened. The everyday semantics are in test_inspect.py."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from typing import TYPE_CHECKING

import pytest

from sandtree.engine.layers import _grep_lines, _grep_patterns
from sandtree.engine.layers._grep import GrepResult, grep
from sandtree.errors import InvalidRequestError, PathNotFoundError

if TYPE_CHECKING:
    from conftest import SampleImage


def _grep(sample: SampleImage, *patterns: str, **kwargs: object) -> GrepResult:
    return grep(sample.root, list(patterns), uid_shift=sample.uid_shift, **kwargs)  # type: ignore[arg-type]


def _write(sample: SampleImage, rel: str, data: bytes) -> str:
    path = sample.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return "/" + rel


class _StopAfter(threading.Event):
    """A stop event that reads as set from its ``calls``-th look on: counts the checks."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.calls


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> int:
    """Search in 64-byte steps (overlapping by 16), so short test data crosses windows."""
    monkeypatch.setattr(_grep_patterns, "_MIN_WINDOW", 64)
    monkeypatch.setattr(_grep_patterns, "_MAX_WINDOW", 64)
    return 64


# --- patterns ------------------------------------------------------------------------------


def test_a_nested_quantifier_that_backtracks_for_ever_answers_at_once(
    sample_rootfs: SampleImage,
) -> None:
    # ^(.+)+X$ took Python's re 28 s on 29 characters (and doubles per character).
    path = _write(sample_rootfs, "srv/redos.txt", b"a" * 29 + b"\n" + b"a" * 100_000 + b"X\n")
    result = _grep(sample_rootfs, "^(.+)+X$", paths=[path], deadline=time.monotonic() + 120)
    assert [m.line_number for m in result.matches] == [2]
    assert not result.truncated


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        (r"(a)\1", "backreferences"),
        (r"foo(?=bar)", "lookaround"),
        (r"(?<!x)foo", "lookaround"),
        (r"(?>a+)b", "atomic groups"),
        (r"a++b", "possessive"),
        (r"end\Z", r"\z"),
        (r"a{2000}", "at most 1000"),
    ],
)
def test_syntax_re2_lacks_is_refused_saying_what_to_write_instead(
    sample_rootfs: SampleImage, pattern: str, hint: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        _grep(sample_rootfs, pattern)
    message = str(refused.value)
    assert repr(pattern) in message
    assert hint in message
    assert "RE2" in message
    assert "fixed_strings=true" in message


def test_fixed_strings_finds_text_that_is_not_a_valid_re2_pattern(
    sample_rootfs: SampleImage,
) -> None:
    path = _write(sample_rootfs, "srv/literal.txt", b"x\nsee (a)\\1 and a++b\n")
    result = _grep(sample_rootfs, r"(a)\1", "a++b", paths=[path], fixed_strings=True)
    [match] = result.matches
    assert match.line_number == 2
    assert [s["text"] for s in match.submatches] == [r"(a)\1", "a++b"]


def test_a_pattern_compiling_to_too_large_a_program_is_refused_naming_the_limit(
    sample_rootfs: SampleImage,
) -> None:
    with pytest.raises(InvalidRequestError, match=r"too complex.*16384"):
        _grep(sample_rootfs, "[ab]{1000}" * 20)


def test_too_many_or_too_long_patterns_paths_and_globs_are_refused(
    sample_rootfs: SampleImage,
) -> None:
    with pytest.raises(InvalidRequestError, match="at most 16 patterns"):
        _grep(sample_rootfs, *["x"] * 17)
    with pytest.raises(InvalidRequestError, match="at most 16 patterns of at most 1024"):
        _grep(sample_rootfs, "x" * 1025)
    with pytest.raises(InvalidRequestError, match="at most 16 paths"):
        _grep(sample_rootfs, "x", paths=["/srv"] * 17)
    with pytest.raises(InvalidRequestError, match="at most 16 globs"):
        _grep(sample_rootfs, "x", glob=["*.py"] * 17)
    with pytest.raises(InvalidRequestError, match="globs of at most 1024"):
        _grep(sample_rootfs, "x", glob=["*" * 1025])


def test_case_insensitive_search_folds_non_ascii_letters(sample_rootfs: SampleImage) -> None:
    path = _write(sample_rootfs, "srv/cafe.txt", "CAFÉ\ncafé\n".encode())
    result = _grep(sample_rootfs, "café", paths=[path], case="insensitive")
    assert [m.line_number for m in result.matches] == [1, 2]


# --- bounded steps -------------------------------------------------------------------------


def test_lines_match_as_each_line_alone_would_across_block_boundaries(
    sample_rootfs: SampleImage, small_windows: int
) -> None:
    rng = random.Random(7)
    lines = [bytes(rng.choice(b"ab ") for _ in range(rng.randrange(0, 30))) for _ in range(400)]
    path = _write(sample_rootfs, "srv/random.txt", b"\n".join(lines) + b"\n")
    # Each RE2 pattern and Python's spelling of it, matched against each line on its own.
    patterns = [
        *((p, p) for p in (r"^ab", r"b a$", r"\bba\b", r"a{3}", r"^$", r"\Aa", r"a b|^b")),
        (r"b\z", r"b\Z"),
        (r"(?-m)^b", r"^b"),
    ]
    for pattern, spelled in patterns:
        result = _grep(sample_rootfs, pattern, paths=[path], before=1, after=1)
        found = [m.line_number for m in result.matches if m.type == "match"]
        python = re.compile(spelled.encode())
        expected = [n for n, line in enumerate(lines, 1) if python.search(line)]
        assert found == expected, pattern
        context = sorted(m.line_number for m in result.matches)
        near = {n + d for n in expected for d in (-1, 0, 1)} & set(range(1, len(lines) + 1))
        assert context == sorted(near), pattern


@pytest.mark.parametrize("offset", [0, 1, 47, 48, 63, 64, 100, 1000, 2031])
def test_a_match_inside_a_line_longer_than_a_window_is_found_wherever_it_is(
    sample_rootfs: SampleImage, small_windows: int, offset: int
) -> None:
    line = bytearray(b"x" * 2048)
    line[offset : offset + 16] = b"needle-16-bytes!"
    path = _write(sample_rootfs, "srv/long.txt", b"short\n" + bytes(line) + b"\nafter\n")
    # Any match up to a quarter window long (here 16 bytes) is found, at any offset.
    for pattern in ("needle-16-bytes!", r"e-1\d-b", r"x?needle.{0,3}16", r"-\b16\b-"):
        result = _grep(sample_rootfs, pattern, paths=[path])
        assert [m.line_number for m in result.matches] == [2], (pattern, offset)


def test_the_deadline_is_checked_between_windows_of_one_long_line(
    sample_rootfs: SampleImage, small_windows: int
) -> None:
    path = _write(sample_rootfs, "srv/one-line.txt", b"ab" * 4096)  # 128 windows, no match
    stop = _StopAfter(calls=20)
    result = _grep(sample_rootfs, "a[ab]{20}c", paths=[path], stop=stop)
    assert (result.truncated, result.truncated_reason) == (True, "cancelled")
    assert stop.looks == 20  # stopped inside the line, long before its last window


def test_a_passed_deadline_ends_the_search_saying_so(sample_rootfs: SampleImage) -> None:
    result = _grep(sample_rootfs, "TODO", deadline=time.monotonic() - 1)
    assert (result.matches, result.truncated_reason) == ([], "deadline")


def test_the_walk_checks_the_deadline_between_files_of_a_large_tree(
    sample_rootfs: SampleImage,
) -> None:
    for i in range(300):
        _write(sample_rootfs, f"srv/many/{i:03}.txt", b"TODO\n")
    stop = _StopAfter(calls=100)
    result = _grep(sample_rootfs, "TODO", paths=["/srv/many"], stop=stop)
    assert result.truncated_reason == "cancelled"
    assert 0 < len(result.matches) < 300


# --- budgets -------------------------------------------------------------------------------


def test_the_byte_budget_ends_the_search_saying_so(sample_rootfs: SampleImage) -> None:
    for i in range(10):
        _write(sample_rootfs, f"srv/budget/{i}.txt", b"TODO " + b"x" * 1000 + b"\n")
    result = _grep(sample_rootfs, "TODO", paths=["/srv/budget"], max_bytes=5000)
    assert result.truncated_reason == "max_bytes"
    assert len(result.matches) == 4


def test_a_huge_sparse_file_is_skipped_without_being_read(sample_rootfs: SampleImage) -> None:
    with open(sample_rootfs.root / "srv" / "a-sparse.bin", "wb") as f:
        f.truncate(64 * 1024**3)
    path = _write(sample_rootfs, "srv/z-after.txt", b"TODO after\n")
    result = _grep(sample_rootfs, "TODO", paths=["/srv"], max_bytes=1024**2)
    assert path in [m.path for m in result.matches]
    assert not result.truncated


def test_a_sparse_file_under_the_size_limit_counts_as_binary(sample_rootfs: SampleImage) -> None:
    with open(sample_rootfs.root / "srv" / "holes.txt", "wb") as f:
        f.write(b"TODO first\n")
        f.truncate(8 * 1024**2)
    assert _grep(sample_rootfs, "TODO", paths=["/srv/holes.txt"]).matches == []


def test_the_answer_size_is_bounded_and_says_so(
    sample_rootfs: SampleImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_grep_lines, "_MAX_OUTPUT_BYTES", 20_000)
    path = _write(sample_rootfs, "srv/wide.txt", (b"hit " + b"y" * 3000 + b"\n") * 50)
    result = _grep(sample_rootfs, "hit", paths=[path], max_total=10_000)
    assert result.truncated_reason == "max_output"
    assert 0 < len(result.matches) < 50


def test_submatches_cost_answer_budget_too(
    sample_rootfs: SampleImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_grep_lines, "_MAX_OUTPUT_BYTES", 50_000)
    path = _write(sample_rootfs, "srv/dots.txt", b"." * 4000 + b"\n")
    result = _grep(sample_rootfs, ".", paths=[path], fixed_strings=True)
    assert (result.matches, result.truncated_reason) == ([], "max_output")


# --- special files and links ---------------------------------------------------------------


def test_fifos_sockets_and_devices_are_skipped_without_being_opened(
    sample_rootfs: SampleImage,
) -> None:
    # Opening the FIFO would wait for a writer for ever; the walk and explicit paths skip it.
    _write(sample_rootfs, "tmp/notes.txt", b"TODO in tmp\n")
    walked = _grep(sample_rootfs, "TODO", paths=["/tmp"])
    assert [m.path for m in walked.matches] == ["/tmp/notes.txt"]
    for special in ("/tmp/fifo", "/tmp/null", "/tmp/app.sock"):
        assert _grep(sample_rootfs, "", paths=[special]).matches == []
    os.symlink("fifo", sample_rootfs.root / "tmp" / "to-fifo")
    assert _grep(sample_rootfs, "", paths=["/tmp/to-fifo"]).matches == []


def test_a_symlink_to_a_host_path_is_resolved_inside_the_image(
    sample_rootfs: SampleImage,
) -> None:
    # /etc/evil and /hostdir name the host secret and its directory by their absolute paths.
    for link in ("/etc/evil", "/hostdir"):
        with pytest.raises(PathNotFoundError):
            _grep(sample_rootfs, "secret", paths=[link])
    result = _grep(sample_rootfs, "secret", paths=["/", "/etc/up"])
    assert {m.line_text for m in result.matches} == {"image secret.txt\n"}


def test_a_file_over_max_filesize_is_skipped_and_one_of_that_size_is_searched(
    sample_rootfs: SampleImage,
) -> None:
    path = _write(sample_rootfs, "srv/grown.txt", b"TODO\n" * 10)
    assert _grep(sample_rootfs, "TODO", paths=[path], max_filesize=49).matches == []
    assert len(_grep(sample_rootfs, "TODO", paths=[path], max_filesize=50).matches) == 10
