"""Run latency of the sandtree engine against the bare OCI runtime on the same bundle.

For each isolation tier (``container`` = crun, ``gvisor`` = runsc) this measures:

1. a disposable ``/bin/true`` run, spawn → wait through the engine, against ``<runtime> run``
   of the same ``config.json`` over an overlay of the same layers (the overhead goal is
   ≤ 15 ms at p50);
2. the extra cost of a non-disposable run that writes one small file over the same run made
   disposable (goal: ≤ 10 ms plus one flush, i.e. fsync of a small file and its directory);
3. a disposable ``/bin/true`` from a depth-1 image against one from the end of a chain of
   ``--depth`` non-disposable runs (goal: within 1.2x), after background compaction settled;
4. 32 concurrent disposable ``/bin/true`` runs: wall time and runs/s, engine against 32
   concurrent runtime processes;
5. a fork/exec-heavy shell loop and a file walk (``find / -xdev -type f``; on the Debian
   minbase rootfs when ``/var/cache/sandtree-test/debian-minbase`` exists), engine vs bare.

Engine and bare samples alternate (A/B, B/A, …) in one process because the machine is noisy.
The bare baseline times only the runtime process; the mount, cgroup and bundle work it needs
is timed separately (``bare_setup``/``bare_teardown``) so the engine's overhead can be split
into unavoidable host work and engine bookkeeping. Nothing is asserted: this is a report.

A chain step that fails is recorded, and the chain goes on once the background compactions
have drained.

Usage (as root)::

    python bench/run_latency.py [--samples N] [--tiers container,gvisor] [--depth 1000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
from _common import Row, Stats, log
from _drivers import BareRunner, ms
from _latency_chain import Chain
from _latency_core import COMMIT_GOAL_MS, CONCURRENT, DEPTH_GOAL_RATIO, OVERHEAD_GOAL_MS, Config
from _latency_workloads import Workloads

_common.ensure_importable()

from sandtree.config import Settings  # noqa: E402
from sandtree.engine import Engine, default_runtimes  # noqa: E402
from sandtree.engine.layers._overlay import unmount  # noqa: E402
from sandtree.engine.runtime import enter_private_mount_namespace, host_cgroups  # noqa: E402
from sandtree.testing import build_busybox_rootfs  # noqa: E402

DEBIAN_MINBASE = Path("/var/cache/sandtree-test/debian-minbase")


class Bench(Workloads, Chain):
    """All measurements for one engine: the single-run workloads and the depth chain."""


def measure_flush(directory: Path, n: int = 30) -> Stats:
    """What one flush costs on the layer store's filesystem: write+fsync a file and its dir."""
    probe = directory / f".flush-probe-{secrets.token_hex(4)}"
    probe.mkdir()
    times: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            fd = os.open(probe / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, b"x\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            dfd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            times.append(ms(time.perf_counter() - t0))
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return Stats.of(times)


async def bench(config: Config, work: Path) -> tuple[list[Row], dict[str, Any]]:
    settings = Settings(data_dir=work / "data", max_concurrency=CONCURRENT)
    engine = Engine(settings, runtimes=default_runtimes(settings))
    bare: BareRunner | None = None
    try:
        await engine.start()
        bare = BareRunner(engine, work / "bare")
        b = Bench(engine, bare, config)
        debian = _debian_minbase()
        log("importing busybox" + (" and Debian minbase" if debian else ""))
        busybox = await engine.import_local(build_busybox_rootfs(work / "rootfs"), tag="busybox")
        walk_image, walk_name = busybox, "busybox"
        if debian:
            walk_image = await engine.import_local(DEBIAN_MINBASE, tag="debian-minbase")
            walk_name = "debian minbase"
        flush = measure_flush(settings.data_dir)
        b.doc["flush_ms"] = flush.to_json()
        for tier in config.tiers:
            await b.true_overhead(tier, busybox)
            await b.commit_cost(tier, busybox, flush)
            await b.throughput(tier, busybox)
            await b.heavy(tier, busybox, walk_image, walk_name)
        shallow, deep = await b.build_chain(busybox)
        for tier in config.tiers:
            await b.depth_cost(tier, shallow, deep)
        b.doc["images"] = {"busybox": busybox.uuid, "walk": walk_image.uuid}
        return b.rows, b.doc
    finally:
        try:
            await engine.close()
        finally:
            if bare is not None:
                bare.close()
            _remove_tree_with_mounts(engine.layers.mounts_dir)


def _debian_minbase() -> bool:
    return (DEBIAN_MINBASE / "usr" / "bin").is_dir()


def _remove_tree_with_mounts(path: Path) -> None:
    """Lazily unmount whatever is mounted below ``path``, then delete it."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
        prefix = str(path).rstrip("/") + "/"
        for target in sorted(targets, key=len, reverse=True):
            if target.startswith(prefix) or target == str(path):
                with contextlib.suppress(OSError):
                    unmount(Path(target), lazy=True)
    shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description="Run latency of the sandtree engine vs the bare OCI runtime (needs root).",
    )
    parser.add_argument(
        "--samples", type=int, default=None,
        help="samples per side for the container tier (default 40, 5 with --quick); "
        "gVisor and the heavy workloads take fewer",
    )  # fmt: skip
    parser.add_argument(
        "--tiers", default=None,
        help="comma-separated tiers (default container,gvisor)",
    )  # fmt: skip
    parser.add_argument(
        "--depth", type=int, default=None,
        help="length of the lineage chain for the depth test (default 1000, 40 with --quick)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run that takes < 60 s")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="do not delete the data dir (debugging)"
    )
    ns = parser.parse_args(argv)
    tiers = [t.strip() for t in (ns.tiers or "container,gvisor").split(",") if t.strip()]
    unknown = [t for t in tiers if t not in ("container", "gvisor")]
    if unknown or not tiers:
        parser.error(f"unknown tier(s) {unknown}; use container and/or gvisor")
    samples = ns.samples or (5 if ns.quick else 40)
    if samples < 2:
        parser.error("--samples must be at least 2")
    depth = ns.depth or (40 if ns.quick else 1000)
    if depth < 2:
        parser.error("--depth must be at least 2")
    per_tier = {"container": samples, "gvisor": max(3, samples // 3)}
    heavy = {t: max(3, n // 4) for t, n in per_tier.items()}
    bursts = {"container": 5, "gvisor": 3}
    if ns.quick:
        # gVisor's fork loop alone takes ~4 s a run under ptrace: one of each is enough here.
        heavy = {"container": 3, "gvisor": 1}
        bursts = {"container": 2, "gvisor": 1}
    config = Config(
        tiers=tiers,
        samples={t: per_tier[t] for t in tiers},
        heavy_samples={t: heavy[t] for t in tiers},
        bursts={t: bursts[t] for t in tiers},
        depth=depth,
        warmup=1 if ns.quick else 3,
        heavy_warmup=0 if ns.quick else 1,
        burst_warmup=0 if ns.quick else 1,
        quick=ns.quick,
    )
    return config, ns


def main(argv: Sequence[str] | None = None) -> int:
    config, ns = parse_args(argv)
    _common.require_root("bench/run_latency.py")
    # Before anything can start a thread: our mounts then die with this process.
    if not enter_private_mount_namespace():
        sys.stderr.write("could not enter a private mount namespace (threads already running)\n")
        return 2
    if "gvisor" in config.tiers and shutil.which("runsc") is None:
        sys.stderr.write("runsc is not installed; pass --tiers container or install runsc\n")
        return 2
    work = Path(tempfile.mkdtemp(prefix="sandtree-bench-"))
    host = _common.host_info()
    cgroups = host_cgroups()
    # What a run's start costs depends on it: joining a v1 memory cgroup waits for an RCU
    # grace period; on v2 a sandbox starts inside its cgroup where the kernel allows.
    host["cgroup_mode"] = cgroups.mode
    host["cgroup"] = cgroups.describe()
    started = time.perf_counter()
    log(f"work dir {work}; tiers {','.join(config.tiers)}; depth {config.depth}")

    # SIGTERM cleans up like Ctrl-C: outside the loop by KeyboardInterrupt (run_guarded), inside
    # it by cancelling the main task (asyncio.run already does that for SIGINT).
    async def runner() -> tuple[list[Row], dict[str, Any]]:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await bench(config, work)

    def cleanup() -> None:
        if ns.keep_workdir:
            log(f"kept {work}")
        else:
            _remove_tree_with_mounts(work)

    outcome = _common.run_guarded(runner(), cleanup)
    if isinstance(outcome, int):
        return outcome
    rows, details = outcome
    elapsed = time.perf_counter() - started
    return _common.report(
        "run_latency",
        rows,
        details,
        title=(
            f"sandtree run latency — {host['kernel']}, {host['cgroup_mode']} cgroups, "
            f"{host['cpus']} CPUs, "
            f"{elapsed:.0f} s (p50 unless noted; baseline = bare runtime on the same bundle)"
        ),
        host=host,
        loadavg_after=os.getloadavg(),
        elapsed_s=round(elapsed, 1),
        config=dataclasses.asdict(config),
        goals={
            "true_overhead_ms": OVERHEAD_GOAL_MS,
            "commit_extra_ms": f"{COMMIT_GOAL_MS} + flush",
            "depth_ratio": DEPTH_GOAL_RATIO,
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
