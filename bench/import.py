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
import datetime
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import _common
from _common import Row, Stats

_common.ensure_importable()

from sandtree.engine import Engine, ImageRecord, OperationRecord  # noqa: E402
from sandtree.engine.types import OperationStatus  # noqa: E402
from sandtree.testing import make_engine  # noqa: E402
from sandtree.testing_registry import LocalRegistry, TestImage, write_oci_layout  # noqa: E402

DEBIAN_MINBASE = Path("/var/cache/sandtree-test/debian-minbase")
REPO_NAME = "bench/debian"
#: Layers bottom first: a path goes to the first prefix it is under; "" takes the rest.
LAYER_PREFIXES = ("usr/lib", "usr/share", "usr", "")
VARIANT_FILE = "etc/sandtree-bench-variant"
SPOT_CHECKS = 6
GOAL_RATIO = 1.0
TIMEOUT_S = 600


class BenchError(RuntimeError):
    """A side did not produce the image the bench expects (failed, or wrong contents)."""


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.1f} MB"


def _secs(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- the image -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Source:
    """The rootfs the image is made of, and what the bench expects an unpack to produce."""

    root: Path
    name: str
    #: Relative paths of every entry the layers carry (device nodes are left out).
    entries: set[str]
    #: Regular files whose bytes are compared after each unpack, with their sha256.
    spot: dict[str, str]


@dataclasses.dataclass
class BenchImage:
    source: Source
    host: str
    layers: int
    compressed: int
    uncompressed: int
    #: Compressed bytes of the one layer v2 does not share with v1.
    v2_new_compressed: int
    digests: dict[str, str]

    def ref(self, tag: str) -> str:
        return f"{self.host}/{REPO_NAME}:{tag}"


def _synthesise(dest: Path) -> Path:
    """A rootfs-shaped tree of ~6,000 files, ~120 MB, that gzips to roughly 50 MB."""
    rng = random.Random(1234)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_", k=rng.randint(3, 12)))
             for _ in range(800)]  # fmt: skip
    plan = {"usr/lib": 1900, "usr/share": 2600, "usr/bin": 500, "usr/sbin": 150,
            "etc": 350, "var/lib": 300}  # fmt: skip
    for top, count in plan.items():
        for i in range(count):
            d = dest / top / f"d{i % 40:02d}"
            d.mkdir(parents=True, exist_ok=True)
            size = int(min(rng.lognormvariate(8.9, 1.4), 4 << 20))
            # The text gzips ~4:1, random bytes not at all: a fifth random gives ~2.4:1.
            noise = rng.randbytes(size // 5)
            text = b" ".join(rng.choices(words, k=size // 7 + 1))[: size - len(noise)]
            (d / f"f{i:05d}").write_bytes(text + noise)
    for name in ("bin", "sbin", "lib"):
        (dest / name).symlink_to(f"usr/{name}")
    (dest / "tmp").mkdir()
    return dest


def _walk_entries(root: Path) -> list[str]:
    """Every entry under ``root`` as a relative path, parents before children, sorted."""
    out: list[str] = []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(top, root)
        base = "" if rel == "." else rel + "/"
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue  # the engine skips device nodes; images do not ship them
            out.append(base + name)
    return out


def _group(path: str) -> int:
    for i, prefix in enumerate(LAYER_PREFIXES):
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return i
    raise AssertionError(path)


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)  # whole seconds, as most image builders write them
    return info


def _layer_tar(root: Path, paths: Sequence[str], extra: tuple[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            tar.add(root / rel, arcname=rel, recursive=False, filter=_clean)
        if extra is not None:
            info = tarfile.TarInfo(extra[0])
            info.size, info.mode, info.mtime = len(extra[1]), 0o644, 946684800
            tar.addfile(info, io.BytesIO(extra[1]))
    return out.getvalue()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_image(registry: LocalRegistry, work: Path, synthetic: bool) -> BenchImage:
    """Split the rootfs into layers, write v1 and v2 as one OCI layout, push both."""
    if not synthetic and (DEBIAN_MINBASE / "usr" / "bin").is_dir():
        root, name = DEBIAN_MINBASE, "debian minbase"
    else:
        root, name = _synthesise(work / "synthetic"), "synthetic files"
    entries = _walk_entries(root)
    groups: list[list[str]] = [[] for _ in LAYER_PREFIXES]
    for rel in entries:
        groups[_group(rel)].append(rel)
    for i, prefix in enumerate(LAYER_PREFIXES):
        # Each layer carries the directories above its own, as image builders write them.
        parts = prefix.split("/")[:-1] if prefix else []
        parents = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        groups[i] = [p for p in parents if p not in groups[i]] + groups[i]
    log(f"building {len(groups)} layers of {name} ({len(entries)} entries)")
    tars = [_layer_tar(root, paths) for paths in groups]
    top_v2 = _layer_tar(root, groups[-1], extra=(VARIANT_FILE, b"v2\n"))
    layout = work / "layout"
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    write_oci_layout(layout, [TestImage(layers=tars, env=env)], tag="v1")
    write_oci_layout(layout, [TestImage(layers=[*tars[:-1], top_v2], env=env)], tag="v2")
    digests: dict[str, str] = {}
    for tag in ("v1", "v2"):
        registry.push(layout, f"{REPO_NAME}:{tag}")
        digests[tag] = _tagged_digest(layout, tag)
    sizes = _layer_sizes(layout)
    v1, v2 = sizes["v1"], sizes["v2"]
    regular = [e for e in entries if stat.S_ISREG(os.lstat(root / e).st_mode)]
    largest = max(regular, key=lambda e: os.lstat(root / e).st_size)
    picks = {largest, *random.Random(7).sample(regular, SPOT_CHECKS - 1)}
    spot = {rel: _sha256_file(root / rel) for rel in sorted(picks)}
    shutil.rmtree(layout)
    return BenchImage(
        source=Source(root=root, name=name, entries=set(entries), spot=spot),
        host=registry.host,
        layers=len(tars),
        compressed=sum(v1),
        uncompressed=sum(len(t) for t in tars),
        v2_new_compressed=sum(s for s in v2 if s not in v1),
        digests=digests,
    )


def _tagged_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(m["digest"])
    raise BenchError(f"tag {tag} is not in the layout")


def _layer_sizes(layout: Path) -> dict[str, list[int]]:
    blobs = layout / "blobs" / "sha256"
    out: dict[str, list[int]] = {}
    for tag in ("v1", "v2"):
        digest = _tagged_digest(layout, tag).removeprefix("sha256:")
        manifest = json.loads((blobs / digest).read_text(encoding="utf-8"))
        out[tag] = [int(layer["size"]) for layer in manifest["layers"]]
    return out


# -- checks ----------------------------------------------------------------------------------------


def _tree_entries(root: Path) -> set[str]:
    found: set[str] = set()
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        base = "" if rel == "." else rel + "/"
        found.update(base + n for n in dirs + files)
    return found


def _disk_bytes(*roots: Path) -> int:
    total, seen = 0, set()
    for root in roots:
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                st = os.lstat(os.path.join(top, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def check_tree(side: str, found: set[str], locate: Callable[[str], Path | None],
               source: Source, *, variant: bool = False) -> int:  # fmt: skip
    """Compare an unpacked image with the source tree; returns the entries found."""
    expected = source.entries | ({VARIANT_FILE} if variant else set())
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise BenchError(
            f"{side}: {len(found)} entries, expected {len(expected)}; missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for rel, digest in source.spot.items():
        path = locate(rel)
        if path is None or _sha256_file(path) != digest:
            raise BenchError(f"{side}: {rel} differs from the source")
    if variant:
        path = locate(VARIANT_FILE)
        if path is None or path.read_bytes() != b"v2\n":
            raise BenchError(f"{side}: {VARIANT_FILE} is missing or wrong")
    return len(found)


def _layer_view(
    engine: Engine, image: ImageRecord
) -> tuple[set[str], Callable[[str], Path | None]]:
    """The image's entries (union of its layer dirs; the bench image has no whiteouts) and a
    lookup of a path in its top-most layer that has it."""
    dirs = [engine.layers.path(layer) for layer in image.layers]
    found: set[str] = set()
    for d in dirs:
        found |= _tree_entries(d)

    def locate(rel: str) -> Path | None:
        for d in reversed(dirs):
            if os.path.lexists(d / rel):
                return d / rel
        return None

    return found, locate


# -- the two sides ---------------------------------------------------------------------------------


@dataclasses.dataclass
class OursSample:
    import_ms: float
    reimport_ms: float
    second_ms: float
    cpu_ms: float
    entries: int
    disk_bytes: int
    phases_ms: dict[str, float]
    second_reused: int


@dataclasses.dataclass
class BaseSample:
    skopeo_ms: float
    umoci_ms: float
    sync_ms: float
    recopy_ms: float
    second_skopeo_ms: float
    second_umoci_ms: float
    cpu_ms: float
    entries: int
    disk_bytes: int

    @property
    def pair_ms(self) -> float:
        return self.skopeo_ms + self.umoci_ms

    @property
    def second_ms(self) -> float:
        return self.second_skopeo_ms + self.second_umoci_ms


def _settle() -> None:
    """Flush dirty pages (untimed) so the next timed step does not pay for them."""
    os.sync()


def _ts(value: str | None) -> float:
    if value is None:
        return float("nan")
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _phases(engine: Engine, op: OperationRecord) -> tuple[dict[str, float], int]:
    """queue/resolve/layers/commit/finish from the op's times and its progress events, and
    the layers the import reused."""
    marks: dict[str, float] = {}
    reused = 0
    for event in engine.store.events(op.uuid):
        if event.type == "progress":
            phase = str(event.data.get("phase"))
            marks.setdefault(phase, _ts(event.ts))
            reused = int(event.data.get("layers_reused", 0))
    created, started, finished = _ts(op.created_at), _ts(op.started_at), _ts(op.finished_at)
    downloading = marks.get("downloading", started)
    committing = marks.get("committing", downloading)
    done = marks.get("done", committing)
    phases = {
        "queue": started - created,
        "resolve": downloading - started,
        "layers": committing - downloading,
        "commit": done - committing,
        "finish": finished - done,
    }
    return {k: round(_ms(v), 3) for k, v in phases.items()}, reused


async def _timed_import(engine: Engine, url: str, tag: str) -> tuple[float, OperationRecord]:
    t0 = time.perf_counter()
    op = await engine.import_image(url, tag=tag, timeout=TIMEOUT_S)
    done = await engine.wait_operation(op, timeout=TIMEOUT_S + 30)
    elapsed = _ms(time.perf_counter() - t0)
    if done.status != OperationStatus.SUCCESS or done.result_image is None:
        raise BenchError(f"import of {url} ended {done.status}: {done.error}")
    return elapsed, done


async def ours(image: BenchImage, work: Path) -> OursSample:
    data = work / "ours"
    try:
        async with make_engine(data, in_memory=False) as engine:
            _settle()
            c0 = time.process_time()
            ms1, op1 = await _timed_import(engine, f"docker://{image.ref('v1')}", "bench:v1")
            cpu = _ms(time.process_time() - c0)
            assert op1.result_image is not None
            first = engine.resolve_image(op1.result_image)
            found, locate = _layer_view(engine, first)
            entries = check_tree("ours", found, locate, image.source)
            disk = _disk_bytes(engine.layers.layers_dir)
            phases, _ = _phases(engine, op1)
            _settle()
            ms_again, again = await _timed_import(
                engine, f"docker://{image.ref('v1')}", "bench:again"
            )
            if again.result_image != first.uuid:
                raise BenchError("the re-import of v1 made a new image")
            _settle()
            ms2, op2 = await _timed_import(engine, f"docker://{image.ref('v2')}", "bench:v2")
            assert op2.result_image is not None
            second = engine.resolve_image(op2.result_image)
            found, locate = _layer_view(engine, second)
            check_tree("ours v2", found, locate, image.source, variant=True)
            _, reused = _phases(engine, op2)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        _settle()
    return OursSample(import_ms=ms1, reimport_ms=ms_again, second_ms=ms2, cpu_ms=cpu,
                      entries=entries, disk_bytes=disk, phases_ms=phases,
                      second_reused=reused)  # fmt: skip


def _run(argv: Sequence[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=TIMEOUT_S)  # fmt: skip
    elapsed = _ms(time.perf_counter() - t0)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} … failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def _skopeo(image: BenchImage, tag: str, layout: Path) -> float:
    # --insecure-policy only skips reading /etc/containers/policy.json (insecureAcceptAnything
    # on Debian anyway); the registry is plain HTTP on loopback.
    return _run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                 f"docker://{image.ref(tag)}", f"oci:{layout}:{tag}"])  # fmt: skip


def _umoci(layout: Path, tag: str, rootfs: Path) -> float:
    return _run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(rootfs)])


def _sync_ms() -> float:
    t0 = time.perf_counter()
    os.sync()
    return _ms(time.perf_counter() - t0)


async def baseline(image: BenchImage, work: Path) -> BaseSample:
    top = work / "baseline"
    layout, rootfs, rootfs2 = top / "oci", top / "rootfs", top / "rootfs-v2"
    top.mkdir()
    try:
        _settle()
        c0 = _children_cpu()
        skopeo_ms = _skopeo(image, "v1", layout)
        umoci_ms = _umoci(layout, "v1", rootfs)
        cpu = _ms(_children_cpu() - c0)
        sync_ms = _sync_ms()
        src = image.source

        def locate(rel: str) -> Path | None:
            return rootfs / rel if os.path.lexists(rootfs / rel) else None

        entries = check_tree("skopeo+umoci", _tree_entries(rootfs), locate, src)
        disk = _disk_bytes(layout, rootfs)
        _settle()
        recopy_ms = _skopeo(image, "v1", layout)
        _settle()
        second_skopeo = _skopeo(image, "v2", layout)
        second_umoci = _umoci(layout, "v2", rootfs2)

        def locate2(rel: str) -> Path | None:
            return rootfs2 / rel if os.path.lexists(rootfs2 / rel) else None

        check_tree("skopeo+umoci v2", _tree_entries(rootfs2), locate2, src, variant=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        _settle()
    return BaseSample(skopeo_ms=skopeo_ms, umoci_ms=umoci_ms, sync_ms=sync_ms,
                      recopy_ms=recopy_ms, second_skopeo_ms=second_skopeo,
                      second_umoci_ms=second_umoci, cpu_ms=cpu, entries=entries,
                      disk_bytes=disk)  # fmt: skip


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
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="sandtree-import-bench-", dir=ns.work_root))
    host = _common.host_info()
    fs = _filesystem(work)
    started = time.perf_counter()
    log(f"work dir {work}")
    try:
        rows, details = asyncio.run(bench(work, reps, warmup, ns.synthetic))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; cleaned up")
        return 130
    except BenchError as exc:
        log(f"bench failed: {exc}")
        return 1
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if ns.keep_workdir:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    elapsed = time.perf_counter() - started
    host["skopeo"] = _version(["skopeo", "--version"])
    host["umoci"] = _version(["umoci", "--version"])
    host["docker_registry"] = _version(["docker-registry", "--version"])
    doc = {
        "bench": "import",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": host,
        "loadavg_after": os.getloadavg(),
        "elapsed_s": round(elapsed, 1),
        "config": {
            "reps": reps,
            "warmup": warmup,
            "quick": ns.quick,
            "synthetic": ns.synthetic,
            "work_dir": str(work),
            "filesystem": fs,
        },
        "goals": {"import_ratio_vs_skopeo_umoci": GOAL_RATIO},
        "rows": [r.to_json() for r in rows],
        **details,
    }
    path, latest = _common.write_results("import", doc)
    _common.print_table(
        rows,
        title=(
            f"sandtree registry import — {host['kernel']}, {host['cpus']} CPUs, "
            f"{fs.split(' (')[0]}, {elapsed:.0f} s (engine = Engine.import_image call→SUCCESS; "
            "baseline = skopeo copy + umoci raw unpack, same image, same loopback registry)"
        ),
    )
    print(f"results: {path}\n         {latest}")
    return 0


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    raise SystemExit(main())
