"""The two sides ``import.py`` compares, each on a fresh data dir: ``ours`` (the engine's
``import_image`` of v1, a re-import of it and an import of v2) and ``baseline`` (``skopeo
copy`` + ``umoci raw unpack`` of the same images)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import _common
from _common import BenchError
from _import_image import BenchImage, check_tree, disk_bytes, tree_entries

_common.ensure_importable()

from sandtree.engine import Engine, ImageRecord, OperationRecord  # noqa: E402
from sandtree.engine.types import OperationStatus  # noqa: E402
from sandtree.testing import make_engine  # noqa: E402
from sandtree.testing_registry import LOOPBACK_REGISTRIES  # noqa: E402

TIMEOUT_S = 600


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- the two sides ---------------------------------------------------------------------------------


def _layer_view(
    engine: Engine, image: ImageRecord
) -> tuple[set[str], Callable[[str], Path | None]]:
    """The image's entries (union of its layer dirs; the bench image has no whiteouts) and a
    lookup of a path in its top-most layer that has it."""
    dirs = [engine.layers.path(layer) for layer in image.layers]
    found: set[str] = set()
    for d in dirs:
        found |= tree_entries(d)

    def locate(rel: str) -> Path | None:
        for d in reversed(dirs):
            if os.path.lexists(d / rel):
                return d / rel
        return None

    return found, locate


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
        # The bench registry listens on 127.0.0.1: list it, as an operator would.
        async with make_engine(
            data, in_memory=False, insecure_registries=LOOPBACK_REGISTRIES
        ) as engine:
            _settle()
            c0 = time.process_time()
            ms1, op1 = await _timed_import(engine, f"docker://{image.ref('v1')}", "bench:v1")
            cpu = _ms(time.process_time() - c0)
            assert op1.result_image is not None
            first = engine.resolve_image(op1.result_image)
            found, locate = _layer_view(engine, first)
            entries = check_tree("ours", found, locate, image.source)
            disk = disk_bytes(engine.layers.layers_dir)
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

        entries = check_tree("skopeo+umoci", tree_entries(rootfs), locate, src)
        disk = disk_bytes(layout, rootfs)
        _settle()
        recopy_ms = _skopeo(image, "v1", layout)
        _settle()
        second_skopeo = _skopeo(image, "v2", layout)
        second_umoci = _umoci(layout, "v2", rootfs2)

        def locate2(rel: str) -> Path | None:
            return rootfs2 / rel if os.path.lexists(rootfs2 / rel) else None

        check_tree("skopeo+umoci v2", tree_entries(rootfs2), locate2, src, variant=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        _settle()
    return BaseSample(skopeo_ms=skopeo_ms, umoci_ms=umoci_ms, sync_ms=sync_ms,
                      recopy_ms=recopy_ms, second_skopeo_ms=second_skopeo,
                      second_umoci_ms=second_umoci, cpu_ms=cpu, entries=entries,
                      disk_bytes=disk)  # fmt: skip
