"""Registry import speed: ``Engine.import_image`` from a loopback registry against ``skopeo
copy`` + ``umoci raw unpack`` of the same image, side by side in one process.

The image is the Debian minbase rootfs (``/var/cache/sandtree-test/debian-minbase``; without
it, synthesised files of about the same shape), split by directory into four gzip layers
(``usr/lib``, ``usr/share``, the rest of ``usr``, the rest of ``/``), about 50 MB compressed.
The test kit (``sandtree.testing_registry``) writes it as an OCI layout and pushes it with
skopeo to Debian's docker-registry on 127.0.0.1, together with a second image, ``v2``, which
shares the three lower layers and has a different top layer (one extra file).

Each round, the order alternating (A/B, B/A, …):

* ours: a fresh data dir and engine (fake runtime, SQLite store, default settings);
  ``import_image`` of v1, timed from the call until ``wait_operation`` returns SUCCESS. Then on
  the same engine: a re-import of v1 (same manifest digest: nothing to download) and an import
  of v2 (one new layer, three reused by blob digest);
* baseline: fresh dirs; ``skopeo copy docker://…:v1 oci:<dir>:v1`` then ``umoci raw unpack
  --image <dir>:v1 <rootfs>``, each timed, then a ``sync`` (timed apart: ours makes each layer
  durable before it adopts it, umoci does not). Then ``skopeo copy`` of v1 again into the same
  layout (all blobs present), and of v2 (three blobs present) plus its unpack into a new rootfs.

skopeo keeps a blob-info cache (``/var/lib/containers/cache/blob-info-cache-v1.boltdb``): which
blobs a registry holds and their digests, never their content, so a copy into a fresh layout
downloads every blob. Between timed steps the bench calls ``sync`` untimed, so neither side
pays for the other's write-back. Every round checks both results cheaply: the same number of
entries as the source tree, and the same bytes for a few files. Nothing is asserted: this is a
report.

Usage (as root)::

    python bench/import.py [--reps 5] [--quick] [--synthetic] [--work-root DIR] [--keep-workdir]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import _common
from _common import Row, Stats, log
from _import_image import LAYER_PREFIXES, BenchImage, build_image
from _import_sides import BaseSample, OursSample, baseline, ours

_common.ensure_importable()

from sandtree.testing_registry import LocalRegistry  # noqa: E402

GOAL_RATIO = 1.0


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.1f} MB"


def _secs(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


# -- the bench -------------------------------------------------------------------------------------


async def interleave(
    reps: int, warmup: int, sides: Sequence[Callable[[], Awaitable[Any]]], names: Sequence[str]
) -> list[list[Any]]:
    """``reps`` samples of each side, the order rotating every round; warm-up rounds dropped."""
    out: list[list[Any]] = [[] for _ in sides]
    total = reps + warmup
    for i in range(total):
        order = list(range(len(sides)))
        order = order[i % len(sides) :] + order[: i % len(sides)]
        for k in order:
            value = await sides[k]()
            what = "warm-up" if i < warmup else f"{i - warmup + 1}/{reps}"
            log(f"  round {what}: {names[k]} {_summary(value)}")
            if i >= warmup:
                out[k].append(value)
    return out


def _summary(value: Any) -> str:
    if isinstance(value, OursSample):
        return (f"import {_secs(value.import_ms)}, re-import {_secs(value.reimport_ms)}, "
                f"v2 {_secs(value.second_ms)}")  # fmt: skip
    if isinstance(value, BaseSample):
        return (f"skopeo {_secs(value.skopeo_ms)} + umoci {_secs(value.umoci_ms)} "
                f"(+ sync {_secs(value.sync_ms)}), v2 {_secs(value.second_ms)}")  # fmt: skip
    return str(value)


def make_rows(image: BenchImage, o: list[OursSample], b: list[BaseSample]) -> list[Row]:
    imp = Stats.of([s.import_ms for s in o])
    pair = Stats.of([s.pair_ms for s in b])
    sk, um = Stats.of([s.skopeo_ms for s in b]), Stats.of([s.umoci_ms for s in b])
    synced = Stats.of([s.pair_ms + s.sync_ms for s in b])
    cpu_o, cpu_b = Stats.of([s.cpu_ms for s in o]), Stats.of([s.cpu_ms for s in b])
    again, recopy = Stats.of([s.reimport_ms for s in o]), Stats.of([s.recopy_ms for s in b])
    second, second_b = Stats.of([s.second_ms for s in o]), Stats.of([s.second_ms for s in b])
    phases = {k: Stats.of([s.phases_ms[k] for s in o]).p50 for k in o[0].phases_ms}
    disk_o, disk_b = o[0].disk_bytes, b[0].disk_bytes
    same = o[0].entries == b[0].entries == len(image.source.entries)
    goal = f"≤ x{GOAL_RATIO:.2f}"
    mbps = image.compressed / 1e6
    n = imp.n
    t = "—"
    return [
        Row(f"image: {image.layers} gzip layers of {image.source.name}", t,
            _mb(image.compressed), _mb(image.uncompressed), "compressed / tar"),
        Row(f"import v1 median (n={n})", t, _secs(imp.p50), _secs(pair.p50),
            f"x{imp.p50 / pair.p50:.2f}", goal, imp.p50 <= pair.p50 * GOAL_RATIO),
        Row("import v1 min", t, _secs(imp.min), _secs(pair.min), f"x{imp.min / pair.min:.2f}"),
        Row("  ↳ baseline: skopeo copy + umoci raw unpack", t, "—",
            f"{_secs(sk.p50)} + {_secs(um.p50)}", "medians"),
        Row("  ↳ baseline + sync (ours flushes, umoci not)", t, _secs(imp.p50),
            _secs(synced.p50), f"x{imp.p50 / synced.p50:.2f}"),
        Row("  ↳ compressed MB/s", t, f"{mbps / (imp.p50 / 1000):.1f}",
            f"{mbps / (pair.p50 / 1000):.1f}", "median"),
        Row("  ↳ CPU time (ours: this process; skopeo+umoci)", t, _secs(cpu_o.p50),
            _secs(cpu_b.p50), f"x{cpu_o.p50 / cpu_b.p50:.2f}"),
        Row("  ↳ our phases (median)", t, "—", "—",
            " · ".join(f"{k} {_secs(v)}" for k, v in phases.items())),
        Row("re-import v1 (same digest) median", t, _secs(again.p50), _secs(recopy.p50),
            "baseline: skopeo copy only"),
        Row(f"import v2 (1 of {image.layers} layers new, {_mb(image.v2_new_compressed)}) median",
            t, _secs(second.p50), _secs(second_b.p50), f"x{second.p50 / second_b.p50:.2f}"),
        Row("entries in the result (ours / umoci / source)", t, str(o[0].entries),
            str(b[0].entries), "same" if same else "DIFFERENT", "equal", same),
        Row("disk used after v1 (ours: layers; layout + rootfs)", t, _mb(disk_o), _mb(disk_b),
            f"x{disk_o / disk_b:.2f}"),
    ]  # fmt: skip


async def bench(
    work: Path, reps: int, warmup: int, synthetic: bool
) -> tuple[list[Row], dict[str, Any]]:
    with LocalRegistry(work / "registry") as registry:
        image = await asyncio.to_thread(build_image, registry, work, synthetic)
        log(f"image {_mb(image.compressed)} compressed, {_mb(image.uncompressed)} tar, "
            f"{len(image.source.entries)} entries; {reps} rounds + {warmup} warm-up")  # fmt: skip

        async def a() -> OursSample:
            return await ours(image, work)

        async def b() -> BaseSample:
            return await baseline(image, work)

        o, base = await interleave(reps, warmup, [a, b], ["ours", "skopeo+umoci"])
    rows = make_rows(image, o, base)
    details = {
        "image": {
            "source": image.source.name,
            "layers": image.layers,
            "layer_prefixes": list(LAYER_PREFIXES),
            "compressed_bytes": image.compressed,
            "uncompressed_bytes": image.uncompressed,
            "v2_new_compressed_bytes": image.v2_new_compressed,
            "entries": len(image.source.entries),
            "digests": image.digests,
            "spot_checked": sorted(image.source.spot),
        },
        "ours": {
            "import_ms": Stats.of([s.import_ms for s in o]).to_json(),
            "reimport_ms": Stats.of([s.reimport_ms for s in o]).to_json(),
            "second_ms": Stats.of([s.second_ms for s in o]).to_json(),
            "cpu_ms": Stats.of([s.cpu_ms for s in o]).to_json(),
            "phases_ms": {k: Stats.of([s.phases_ms[k] for s in o]).to_json()
                          for k in o[0].phases_ms},
            "second_layers_reused": [s.second_reused for s in o],
            "samples": [dataclasses.asdict(s) for s in o],
        },
        "baseline": {
            "pair_ms": Stats.of([s.pair_ms for s in base]).to_json(),
            "skopeo_ms": Stats.of([s.skopeo_ms for s in base]).to_json(),
            "umoci_ms": Stats.of([s.umoci_ms for s in base]).to_json(),
            "sync_ms": Stats.of([s.sync_ms for s in base]).to_json(),
            "recopy_ms": Stats.of([s.recopy_ms for s in base]).to_json(),
            "second_ms": Stats.of([s.second_ms for s in base]).to_json(),
            "cpu_ms": Stats.of([s.cpu_ms for s in base]).to_json(),
            "samples": [dataclasses.asdict(s) for s in base],
        },
    }  # fmt: skip
    return rows, details


def _version(argv: Sequence[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0] if text else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Registry import: the engine vs skopeo copy + umoci raw unpack (needs root).",
    )
    parser.add_argument("--reps", type=int, default=None,
                        help="measured rounds per side (default 5, 1 with --quick)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round, no warm-up")  # fmt: skip
    parser.add_argument("--synthetic", action="store_true",
                        help="synthesise the rootfs even if Debian minbase is cached")  # fmt: skip
    parser.add_argument("--work-root", type=Path, default=None,
                        help="where to make the work dir (default $TMPDIR or /tmp): both sides "
                        "write there, so this picks the filesystem measured")  # fmt: skip
    parser.add_argument("--keep-workdir", action="store_true",
                        help="do not delete the work dir (debugging)")  # fmt: skip
    ns = parser.parse_args(argv)
    reps = ns.reps or (1 if ns.quick else 5)
    if reps < 1:
        parser.error("--reps must be at least 1")
    warmup = 0 if ns.quick else 1
    _common.require_root("bench/import.py")
    missing = [t for t in ("skopeo", "umoci", "docker-registry") if shutil.which(t) is None]
    if missing:
        sys.stderr.write(f"{', '.join(missing)} not installed (apt-get install skopeo umoci "
                         "docker-registry)\n")  # fmt: skip
        return 2
    work = Path(tempfile.mkdtemp(prefix="sandtree-import-bench-", dir=ns.work_root))
    host = _common.host_info()
    fs = _filesystem(work)
    started = time.perf_counter()
    log(f"work dir {work}")

    def cleanup() -> None:
        if ns.keep_workdir:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    outcome = _common.run_guarded(bench(work, reps, warmup, ns.synthetic), cleanup)
    if isinstance(outcome, int):
        return outcome
    rows, details = outcome
    elapsed = time.perf_counter() - started
    host["skopeo"] = _version(["skopeo", "--version"])
    host["umoci"] = _version(["umoci", "--version"])
    host["docker_registry"] = _version(["docker-registry", "--version"])
    return _common.report(
        "import",
        rows,
        details,
        title=(
            f"sandtree registry import — {host['kernel']}, {host['cpus']} CPUs, "
            f"{fs.split(' (')[0]}, {elapsed:.0f} s (engine = Engine.import_image call→SUCCESS; "
            "baseline = skopeo copy + umoci raw unpack, same image, same loopback registry)"
        ),
        host=host,
        loadavg_after=os.getloadavg(),
        elapsed_s=round(elapsed, 1),
        config={
            "reps": reps,
            "warmup": warmup,
            "quick": ns.quick,
            "synthetic": ns.synthetic,
            "work_dir": str(work),
            "filesystem": fs,
        },
        goals={"import_ratio_vs_skopeo_umoci": GOAL_RATIO},
    )


def _filesystem(path: Path) -> str:
    """The type and options of the filesystem ``path`` is on (the longest mount prefix)."""
    best, found = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            mnt = fields[1]
            inside = str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, found = mnt, f"{fields[2]} on {mnt} ({fields[0]}, {fields[3]})"
    return found


if __name__ == "__main__":
    raise SystemExit(main())
