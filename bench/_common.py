"""Helpers shared by the benchmarks in ``bench/``: root check, statistics, tables, results.

Nothing here times anything; each bench script owns its measurements. Every bench writes a
timestamped JSON document and a stable ``<name>-latest.json`` under ``bench/results/``
(gitignored), and prints a table (rich when installed, aligned text otherwise).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "BENCH_DIR",
    "REPO",
    "RESULTS_DIR",
    "BenchError",
    "Row",
    "Stats",
    "ensure_importable",
    "host_info",
    "log",
    "percentile",
    "print_table",
    "report",
    "require_root",
    "run_guarded",
    "source_digest",
    "write_results",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


class BenchError(RuntimeError):
    """A run or side did not do what the bench needs (failed, wrong exit code or contents)."""


def log(message: str) -> None:
    """A timestamped progress line on stderr (stdout carries the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_guarded(bench: Coroutine[Any, Any, T], cleanup: Callable[[], None]) -> T | int:
    """``asyncio.run(bench)`` with SIGTERM handled like Ctrl-C, then ``cleanup()`` whatever
    happened; the bench's result, or the exit status: 130 when interrupted, 1 on BenchError.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(bench)
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; cleaned up")
        return 130
    except BenchError as exc:
        log(f"bench failed: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short; it takes well under a second.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup()
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def ensure_importable() -> None:
    """Make ``import sandtree`` work from a checkout that was not ``pip install``-ed."""
    try:
        import sandtree  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))


def require_root(what: str) -> None:
    """Exit with a clear message unless running as root."""
    if os.geteuid() != 0:
        sys.stderr.write(
            f"{what} needs root: it mounts overlays, creates cgroups and starts OCI runtimes "
            f"with user namespaces. Run it as root, e.g. `sudo {sys.executable} "
            f"{' '.join(sys.argv)}`.\n"
        )
        raise SystemExit(2)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True)
class Stats:
    """Summary of one series of samples (milliseconds unless stated otherwise)."""

    n: int
    p50: float
    p90: float
    mean: float
    min: float
    max: float
    stdev: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            n=len(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            mean=statistics.fmean(values),
            min=min(values),
            max=max(values),
            stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
        )

    def to_json(self) -> dict[str, float | int]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a result table."""

    metric: str
    tier: str
    engine: str
    baseline: str
    diff: str
    goal: str = "—"
    #: True/False when the row has a goal, None for information only.
    met: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HEADERS = ("metric", "tier", "engine", "baseline", "diff/ratio", "goal", "met?")


def _cells(row: Row) -> tuple[str, ...]:
    met = "—" if row.met is None else ("yes" if row.met else "NO")
    return (row.metric, row.tier, row.engine, row.baseline, row.diff, row.goal, met)


def print_table(rows: Sequence[Row], *, title: str) -> None:
    """Print ``rows`` with rich when it is installed, else as aligned plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        cells = [_HEADERS, *(_cells(r) for r in rows)]
        widths = [max(len(c[i]) for c in cells) for i in range(len(_HEADERS))]
        print(title)
        for i, line in enumerate(cells):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        return
    table = Table(title=title, title_justify="left")
    for header in _HEADERS:
        justify = "right" if header in ("engine", "baseline", "diff/ratio") else "left"
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        cols = list(_cells(row))
        if row.met is False:
            cols[-1] = "[bold red]NO[/]"
        elif row.met is True:
            cols[-1] = "[green]yes[/]"
        table.add_row(*cols)
    Console(width=max(shutil.get_terminal_size((160, 40)).columns, 140)).print(table)


def _command_output(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def source_digest() -> str:
    """A short hash of ``src/sandtree/**/*.py``: which engine source the numbers are for."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "src" / "sandtree").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def host_info() -> dict[str, Any]:
    """What the numbers depend on: kernel, CPUs, load, runtime versions, source revision."""
    commit = _command_output(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "crun": _command_output(["crun", "--version"]),
        "runsc": _command_output(["runsc", "--version"]),
        "git_commit": commit,
        "git_dirty": bool(dirty),
        "src_sha256": source_digest(),
    }


def write_results(name: str, doc: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``doc`` to ``results/<name>-<timestamp>.json`` and ``results/<name>-latest.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(text, encoding="utf-8")
    latest = RESULTS_DIR / f"{name}-latest.json"
    tmp = latest.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, latest)
    return path, latest


def report(
    name: str, rows: Sequence[Row], details: dict[str, Any], *, title: str, **fields: Any
) -> int:
    """Write the results document (``fields`` between the timestamp and the rows), print the
    table and where the results went; the exit status 0."""
    doc = {
        "bench": name,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **fields,
        "rows": [r.to_json() for r in rows],
        **details,
    }
    path, latest = write_results(name, doc)
    print_table(rows, title=title)
    print(f"results: {path}\n         {latest}")
    return 0
