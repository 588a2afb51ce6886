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
import datetime
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common
from _common import Row, Stats
from _drivers import (
    SETTLE_S,
    TRUE,
    BareRunner,
    BareSample,
    BenchError,
    EngineDriver,
    EngineSample,
    log,
    ms,
    parse_ts,
)

_common.ensure_importable()

from sandtree.config import Settings  # noqa: E402
from sandtree.engine import (  # noqa: E402
    Engine,
    ImageRecord,
    RunSpec,
    default_runtimes,
)
from sandtree.engine.layers._overlay import unmount  # noqa: E402
from sandtree.engine.runtime import (  # noqa: E402
    enter_private_mount_namespace,
)
from sandtree.testing import build_busybox_rootfs  # noqa: E402

DEBIAN_MINBASE = Path("/var/cache/sandtree-test/debian-minbase")

WRITE_ONE = "echo x > /tmp/f"
FORK_LOOP = "for i in $(seq 300); do cat /etc/passwd >/dev/null; done"
WALK = "find / -xdev -type f | wc -l"
CONCURRENT = 32
OVERHEAD_GOAL_MS = 15.0
COMMIT_GOAL_MS = 10.0
DEPTH_GOAL_RATIO = 1.2


# -- measurements ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    tiers: list[str]
    samples: dict[str, int]
    heavy_samples: dict[str, int]
    bursts: dict[str, int]
    depth: int
    #: Discarded rounds before the single-run series, the heavy workloads and the bursts.
    warmup: int
    heavy_warmup: int
    burst_warmup: int
    quick: bool


class Bench:
    """All measurements for one engine; ``rows`` is the table, ``doc`` the JSON details."""

    def __init__(self, engine: Engine, bare: BareRunner, config: Config) -> None:
        self.engine = engine
        self.driver = EngineDriver(engine)
        self.bare = bare
        self.config = config
        self.rows: list[Row] = []
        self.doc: dict[str, Any] = {"tiers": {t: {} for t in config.tiers}}

    # A/B interleaving ---------------------------------------------------------------------------

    def mark(self, section: str) -> None:
        """Note the load when a section starts: other work on the machine skews samples."""
        self.doc.setdefault("loadavg_at", {})[section] = [round(x, 2) for x in os.getloadavg()]

    async def interleave(
        self,
        n: int,
        fns: Sequence[Callable[[], Any]],
        *,
        label: str,
        warmup: int | None = None,
    ) -> list[list[Any]]:
        """``n`` samples of each function, the order rotating every round (A/B, B/A, …).

        The first ``warmup`` rounds are discarded. Returns one list of results per function.
        """
        out: list[list[Any]] = [[] for _ in fns]
        warmup = self.config.warmup if warmup is None else warmup
        total = n + warmup
        for i in range(total):
            order = list(range(len(fns)))
            order = order[i % len(fns) :] + order[: i % len(fns)]
            for k in order:
                value = await fns[k]()
                await asyncio.sleep(SETTLE_S)
                if i >= warmup:
                    out[k].append(value)
            if (i + 1) % 10 == 0 or i + 1 == total:
                log(f"  {label}: {i + 1}/{total}")
        return out

    async def ab(
        self,
        n: int,
        first: Callable[[], Any],
        second: Callable[[], Any],
        *,
        label: str,
        warmup: int | None = None,
    ) -> tuple[list[Any], list[Any]]:
        a, b = await self.interleave(n, [first, second], label=label, warmup=warmup)
        return a, b

    async def engine_vs_bare(
        self,
        tier: str,
        image: ImageRecord,
        command: str,
        n: int,
        *,
        label: str,
        unjoined: bool = False,
        warmup: int | None = None,
    ) -> tuple[list[EngineSample], list[BareSample], list[BareSample]]:
        """Engine and bare samples, interleaved; with ``unjoined`` also bare runs that skip
        the cgroup join (third list, else empty)."""
        spec = self.driver.spec(image, tier, command)
        expected: list[str] = []

        async def eng() -> EngineSample:
            return await self.driver.run(spec, expect_stdout=expected[0] if expected else None)

        async def bare() -> BareSample:
            sample = self.bare.sample(tier, image, spec)
            if not expected:
                expected.append(sample.stdout)
            return sample

        async def bare_unjoined() -> BareSample:
            return self.bare.sample(tier, image, spec, join=False)

        fns = [bare, eng, bare_unjoined] if unjoined else [bare, eng]
        got = await self.interleave(n, fns, label=f"{tier} {label}", warmup=warmup)
        return got[1], got[0], got[2] if unjoined else []

    # 1. /bin/true ----------------------------------------------------------------------------

    async def true_overhead(self, tier: str, image: ImageRecord) -> None:
        n = self.config.samples[tier]
        self.mark(f"{tier} true")
        log(f"[{tier}] 1. disposable {TRUE}: engine vs bare runtime, {n} samples each")
        eng, bare, unjoined = await self.engine_vs_bare(
            tier, image, TRUE, n, label="true", unjoined=True
        )
        e = Stats.of([s.ms for s in eng])
        b = Stats.of([s.run_ms for s in bare])
        nojoin = Stats.of([s.run_ms for s in unjoined])
        e_cpu = Stats.of([s.cpu_ms for s in eng])
        b_cpu = Stats.of([s.cpu_ms for s in bare])
        setup = Stats.of([s.setup_ms for s in bare])
        teardown = Stats.of([s.teardown_ms for s in bare])
        full = Stats.of([s.setup_ms + s.run_ms + s.teardown_ms for s in bare])
        phases = [self.driver.phases(s) for s in eng]
        breakdown = {k: Stats.of([p[k] for p in phases]).to_json() for k in phases[0]}
        self.doc["tiers"][tier]["true"] = {
            "engine_ms": e.to_json(),
            "bare_run_ms": b.to_json(),
            "bare_setup_ms": setup.to_json(),
            "bare_teardown_ms": teardown.to_json(),
            "bare_full_ms": full.to_json(),
            "bare_run_without_cgroup_join_ms": nojoin.to_json(),
            "engine_process_cpu_ms": e_cpu.to_json(),
            "bare_process_cpu_ms": b_cpu.to_json(),
            "engine_phases_ms": breakdown,
            "samples": {
                "engine_ms": [round(s.ms, 3) for s in eng],
                "bare_run_ms": [round(s.run_ms, 3) for s in bare],
            },
        }
        for q in ("p50", "p90"):
            ev, bv = getattr(e, q), getattr(b, q)
            self.rows.append(
                Row(
                    f"true {q} (spawn→wait)",
                    tier,
                    f"{ev:.1f} ms",
                    f"{bv:.1f} ms",
                    f"{ev - bv:+.1f} ms",
                    f"≤ +{OVERHEAD_GOAL_MS:.0f} ms",
                    ev - bv <= OVERHEAD_GOAL_MS,
                )
            )
        self.rows.append(
            Row(
                "  ↳ vs bare incl. mount+cgroups+bundle",
                tier,
                f"{e.p50:.1f} ms",
                f"{full.p50:.1f} ms",
                f"{e.p50 - full.p50:+.1f} ms",
            )
        )
        self.rows.append(
            Row(
                "  ↳ bare without the cgroup join",
                tier,
                "—",
                f"{nojoin.p50:.1f} ms",
                f"join costs {b.p50 - nojoin.p50:+.1f} ms",
            )
        )
        self.rows.append(
            Row(
                "  ↳ CPU in this process per run",
                tier,
                f"{e_cpu.p50:.1f} ms",
                f"{b_cpu.p50:.1f} ms",
                f"{e_cpu.p50 - b_cpu.p50:+.1f} ms",
            )
        )

    # 2. commit ---------------------------------------------------------------------------------

    async def commit_cost(self, tier: str, image: ImageRecord, flush: Stats) -> None:
        n = self.config.samples[tier]
        self.mark(f"{tier} commit")
        log(f"[{tier}] 2. `{WRITE_ONE}` kept vs disposable, {n} samples each")
        keep = self.driver.spec(image, tier, WRITE_ONE, disposable=False)
        drop = self.driver.spec(image, tier, WRITE_ONE, disposable=True)
        made: list[str] = []

        async def kept() -> EngineSample:
            sample = await self.driver.run(keep)
            if not sample.op.result_image or sample.op.result_image == image.uuid:
                raise BenchError("a non-disposable run that wrote a file made no new image")
            made.append(sample.op.result_image)
            return sample

        async def dropped() -> EngineSample:
            return await self.driver.run(drop)

        k, d = await self.ab(n, kept, dropped, label=f"{tier} commit")
        ks, ds = Stats.of([s.ms for s in k]), Stats.of([s.ms for s in d])
        finish_k = Stats.of([self.driver.phases(s)["finish"] for s in k])
        finish_d = Stats.of([self.driver.phases(s)["finish"] for s in d])
        goal = COMMIT_GOAL_MS + flush.p50
        self.doc["tiers"][tier]["commit"] = {
            "kept_ms": ks.to_json(),
            "disposable_ms": ds.to_json(),
            "finish_phase_kept_ms": finish_k.to_json(),
            "finish_phase_disposable_ms": finish_d.to_json(),
            "flush_ms": flush.to_json(),
            "goal_ms": round(goal, 3),
            "samples": {"kept_ms": [round(s.ms, 3) for s in k],
                        "disposable_ms": [round(s.ms, 3) for s in d]},
        }  # fmt: skip
        self.rows.append(
            Row(
                "write 1 file: kept vs disposable p50",
                tier,
                f"{ks.p50:.1f} ms",
                f"{ds.p50:.1f} ms",
                f"{ks.p50 - ds.p50:+.1f} ms",
                f"≤ +{goal:.1f} ms (10 + flush {flush.p50:.1f})",
                ks.p50 - ds.p50 <= goal,
            )
        )
        self.rows.append(
            Row(
                "  ↳ finish phase (unmount+commit) p50",
                tier,
                f"{finish_k.p50:.1f} ms",
                f"{finish_d.p50:.1f} ms",
                f"{finish_k.p50 - finish_d.p50:+.1f} ms",
            )
        )

    # 4. concurrency ------------------------------------------------------------------------------

    async def throughput(self, tier: str, image: ImageRecord) -> None:
        rounds = self.config.bursts[tier]
        self.mark(f"{tier} concurrent")
        log(f"[{tier}] 4. {CONCURRENT} concurrent {TRUE}, {rounds} rounds each")
        spec = self.driver.spec(image, tier, TRUE)
        latencies: list[float] = []

        async def eng() -> float:
            t0 = time.perf_counter()
            ops = [await self.engine.spawn(spec) for _ in range(CONCURRENT)]
            self.driver.op_ids.extend(op.uuid for op in ops)
            done = await asyncio.gather(
                *(self.engine.wait_operation(op, timeout=900) for op in ops)
            )
            wall = time.perf_counter() - t0
            for op in done:
                self.driver.check(op)
                if op.finished_at:
                    latencies.append(ms(parse_ts(op.finished_at) - parse_ts(op.created_at)))
            return wall

        async def bare() -> float:
            return self.bare.burst(tier, image, spec, CONCURRENT)

        e, b = await self.ab(
            rounds, eng, bare, label=f"{tier} x{CONCURRENT}", warmup=self.config.burst_warmup
        )
        es, bs = Stats.of([ms(x) for x in e]), Stats.of([ms(x) for x in b])
        self.doc["tiers"][tier]["concurrent"] = {
            "runs": CONCURRENT,
            "engine_wall_ms": es.to_json(),
            "bare_wall_ms": bs.to_json(),
            "engine_runs_per_s": round(CONCURRENT / (es.p50 / 1000), 2),
            "bare_runs_per_s": round(CONCURRENT / (bs.p50 / 1000), 2),
            "engine_op_latency_ms": Stats.of(latencies).to_json(),
        }
        self.rows.append(
            Row(
                f"{CONCURRENT} concurrent: wall p50",
                tier,
                f"{es.p50:.0f} ms",
                f"{bs.p50:.0f} ms",
                f"x{es.p50 / bs.p50:.2f}",
            )
        )
        self.rows.append(
            Row(
                f"{CONCURRENT} concurrent: runs/s",
                tier,
                f"{CONCURRENT / (es.p50 / 1000):.1f}",
                f"{CONCURRENT / (bs.p50 / 1000):.1f}",
                f"x{bs.p50 / es.p50:.2f}",
            )
        )

    # 5. syscall-heavy --------------------------------------------------------------------------

    async def heavy(
        self, tier: str, image: ImageRecord, walk_image: ImageRecord, walk_name: str
    ) -> None:
        n = self.config.heavy_samples[tier]
        for key, label, img, command in (
            ("fork_exec", "fork+exec x300 p50", image, FORK_LOOP),
            ("walk", f"find walk ({walk_name}) p50", walk_image, WALK),
        ):
            self.mark(f"{tier} heavy")
            log(f"[{tier}] 5. {label.removesuffix(' p50')}: {n} samples each")
            eng, bare, _ = await self.engine_vs_bare(
                tier, img, command, n, label=key, warmup=self.config.heavy_warmup
            )
            es, bs = Stats.of([s.ms for s in eng]), Stats.of([s.run_ms for s in bare])
            self.doc["tiers"][tier][key] = {
                "command": command,
                "image": img.uuid,
                "stdout": bare[0].stdout if bare else None,
                "engine_ms": es.to_json(),
                "bare_run_ms": bs.to_json(),
                "bare_full_ms": Stats.of(
                    [s.setup_ms + s.run_ms + s.teardown_ms for s in bare]
                ).to_json(),
            }
            self.rows.append(
                Row(
                    label,
                    tier,
                    f"{es.p50:.0f} ms",
                    f"{bs.p50:.0f} ms",
                    f"{es.p50 - bs.p50:+.0f} ms (x{es.p50 / bs.p50:.2f})",
                )
            )

    # 3. depth ----------------------------------------------------------------------------------

    async def build_chain(self, base: ImageRecord) -> tuple[ImageRecord, ImageRecord]:
        depth = self.config.depth
        self.mark("chain")
        log(f"3. building a chain of {depth} non-disposable runs (one file each) on container")
        image = base
        first: ImageRecord | None = None
        deepest = base
        step_ms: list[float] = []
        phases: list[dict[str, float]] = []
        stack: list[int] = []
        compactions: list[tuple[int, float]] = []
        skipped: list[int] = []
        failures: list[dict[str, Any]] = []
        compactor = self.engine._compactor
        engine_merge = compactor._merge

        async def timed_merge(uuid: str, *, force: bool) -> None:
            # Observation only: how many compactions merged, over how many layers, how long,
            # and how many found nothing to do (a compaction before them had rebased them).
            before = self.engine.resolve_image(uuid).layers
            c0 = time.perf_counter()
            await engine_merge(uuid, force=force)
            if self.engine.resolve_image(uuid).layers == before:
                skipped.append(len(before))
            else:
                compactions.append((len(before), time.perf_counter() - c0))

        compactor._merge = timed_merge  # type: ignore[method-assign]
        t0 = time.perf_counter()
        for i in range(depth):
            spec = RunSpec(
                image=image.uuid,
                command=f"echo {i} > /tmp/chain-{i}",
                shell=True,
                disposable=False,
                isolation="container",
                timeout=600,
            )
            try:
                sample = await self.driver.run(spec)
            except BenchError as exc:
                # A failed step (once: a stack past the kernel's 500 layers) is recorded;
                # let the compactions land and go on from the compacted image.
                failures.append(
                    {"step": i, "stack_layers": len(image.layers), "error": str(exc)[:300]}
                )
                log(f"  chain step {i} FAILED on a {len(image.layers)}-layer stack: {exc}")
                if len(failures) > 5:
                    raise
                await self.driver.drain_background()
                image = self.engine.resolve_image(image.uuid)
                log(f"  ... compactions drained; retrying from {len(image.layers)} layers")
                sample = await self.driver.run(dataclasses.replace(spec, image=image.uuid))
            step_ms.append(sample.ms)
            phases.append(self.driver.phases(sample))
            if not sample.op.result_image:
                raise BenchError(f"chain step {i} made no image")
            if len(image.layers) > len(deepest.layers):
                deepest = image  # the deepest stack a run actually mounted
            image = self.engine.resolve_image(sample.op.result_image)
            stack.append(len(image.layers))
            if first is None:
                first = image
            if (i + 1) % 100 == 0 or i + 1 == depth:
                log(
                    f"  chain {i + 1}/{depth}: last step {sample.ms:.0f} ms, "
                    f"stack {len(image.layers)} layers, "
                    f"{len(self.engine._background)} compactions running"
                )
        build_s = time.perf_counter() - t0
        try:
            drain_s = await self.driver.drain_background()
        finally:
            compactor._merge = engine_merge  # type: ignore[method-assign]
        assert first is not None
        first = self.engine.resolve_image(first.uuid)
        last = self.engine.resolve_image(image.uuid)
        per_100 = [Stats.of(step_ms[i : i + 100]).p50 for i in range(0, len(step_ms), 100)]
        phases_per_100 = {
            name: [
                round(Stats.of([p[name] for p in phases[i : i + 100]]).p50, 2)
                for i in range(0, len(phases), 100)
            ]
            for name in phases[0]
        }
        self.doc["chain"] = {
            "depth": depth,
            "build_s": round(build_s, 3),
            "compaction_drain_s": round(drain_s, 3),
            "step_ms": Stats.of(step_ms).to_json(),
            "step_p50_per_100_ms": [round(x, 2) for x in per_100],
            "step_phases_p50_per_100_ms": phases_per_100,
            "failed_steps": failures,
            "compactions": len(compactions),
            "compaction_s_total": round(sum(c[1] for c in compactions), 2),
            "compaction_ms": Stats.of([ms(c[1]) for c in compactions]).to_json(),
            "compaction_input_layers": Stats.of([float(c[0]) for c in compactions]).to_json(),
            "compaction_calls_skipped": len(skipped),
            "compaction_skipped_layers": Stats.of([float(x) for x in skipped]).to_json(),
            "child_stack_layers_max": max(stack),
            "child_stack_layers_per_step": stack,
            "depth1_layers": len(first.layers),
            "depthN_layers": len(last.layers),
            "layer_dirs": sum(1 for _ in self.engine.layers.layers_dir.iterdir()),
            "layer_store_links": _count_entries(self.engine.layers.layers_dir),
        }
        log(
            f"  chain built in {build_s:.1f} s (+{drain_s:.1f} s compaction drain); "
            f"depth-1 image has {len(first.layers)} layers, depth-{depth} has {len(last.layers)}"
        )
        self.rows.append(
            Row(
                f"chain step (kept run) p50, {depth} steps",
                "container",
                f"{Stats.of(step_ms).p50:.1f} ms",
                "—",
                f"p90 {Stats.of(step_ms).p90:.1f} ms, max stack {max(stack)}",
            )
        )
        if failures:
            first_fail = failures[0]
            self.rows.append(
                Row(
                    f"  ↳ chain steps that FAILED ({len(failures)})",
                    "container",
                    f"step {first_fail['step']}",
                    "—",
                    f"{first_fail['stack_layers']}-layer stack: "
                    + ("> 500 layers" if "exceed" in first_fail["error"] else "see JSON"),
                    "no failures",
                    False,
                )
            )
        if len(per_100) > 1:
            self.rows.append(
                Row(
                    "  ↳ last vs first 100 steps p50",
                    "container",
                    f"{per_100[-1]:.1f} ms",
                    f"{per_100[0]:.1f} ms",
                    f"x{per_100[-1] / per_100[0]:.2f}",
                )
            )
        self.rows.append(
            Row(
                "  ↳ compactions (thread time)",
                "container",
                f"{len(compactions)} runs",
                "—",
                f"{sum(c[1] for c in compactions):.0f} s; {len(skipped)} found nothing to merge",
            )
        )
        await self.uncompacted_stack(first, deepest)
        return first, last

    async def uncompacted_stack(self, shallow: ImageRecord, deepest: ImageRecord) -> None:
        """The bare runtime over the deepest stack a chain run mounted, as it was then.

        Compaction has replaced that image's stack by now, but the layers are still on disk:
        this shows what a deep overlay itself costs (mount + lookups), without the engine.
        """
        n = self.config.heavy_samples["container"] * 2
        spec = self.driver.spec(shallow, "container", TRUE)
        layers = len(deepest.layers)
        log(f"3. bare {TRUE} over the uncompacted {layers}-layer stack vs 2 layers, {n} each")

        async def deep() -> BareSample:
            return self.bare.sample("container", deepest, spec)

        async def flat() -> BareSample:
            return self.bare.sample("container", shallow, spec)

        d, f = await self.ab(n, deep, flat, label="uncompacted")
        dfull = Stats.of([x.setup_ms + x.run_ms + x.teardown_ms for x in d])
        ffull = Stats.of([x.setup_ms + x.run_ms + x.teardown_ms for x in f])
        self.doc["chain"]["bare_uncompacted"] = {
            "layers": layers,
            "deep_full_ms": dfull.to_json(),
            "flat_full_ms": ffull.to_json(),
            "deep_setup_ms": Stats.of([x.setup_ms for x in d]).to_json(),
            "flat_setup_ms": Stats.of([x.setup_ms for x in f]).to_json(),
            "deep_run_ms": Stats.of([x.run_ms for x in d]).to_json(),
            "flat_run_ms": Stats.of([x.run_ms for x in f]).to_json(),
        }
        self.rows.append(
            Row(
                f"  ↳ bare true, {layers} layers vs {len(shallow.layers)} (uncompacted)",
                "container",
                f"{dfull.p50:.1f} ms",
                f"{ffull.p50:.1f} ms",
                f"x{dfull.p50 / ffull.p50:.2f}",
            )
        )

    async def depth_cost(self, tier: str, shallow: ImageRecord, deep: ImageRecord) -> None:
        n = self.config.samples[tier]
        depth = self.config.depth
        self.mark(f"{tier} depth")
        log(f"[{tier}] 3. {TRUE} at depth 1 vs depth {depth}, {n} samples each")
        s_spec = self.driver.spec(shallow, tier, TRUE)
        d_spec = self.driver.spec(deep, tier, TRUE)

        async def s() -> EngineSample:
            return await self.driver.run(s_spec)

        async def d() -> EngineSample:
            return await self.driver.run(d_spec)

        ds, ss = await self.ab(n, d, s, label=f"{tier} depth")
        dst, sst = Stats.of([x.ms for x in ds]), Stats.of([x.ms for x in ss])
        ratio = dst.p50 / sst.p50
        self.doc["tiers"][tier]["depth"] = {
            "depth": depth,
            "deep_ms": dst.to_json(),
            "shallow_ms": sst.to_json(),
            "ratio_p50": round(ratio, 3),
            "deep_layers": len(deep.layers),
            "shallow_layers": len(shallow.layers),
        }
        self.rows.append(
            Row(
                f"true at depth {depth} vs 1 p50",
                tier,
                f"{dst.p50:.1f} ms",
                f"{sst.p50:.1f} ms",
                f"x{ratio:.2f}",
                f"≤ x{DEPTH_GOAL_RATIO}",
                ratio <= DEPTH_GOAL_RATIO,
            )
        )


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


def _count_entries(top: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(top))


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    config, ns = parse_args(argv)
    _common.require_root("bench/run_latency.py")
    # Before anything can start a thread: our mounts then die with this process.
    if not enter_private_mount_namespace():
        sys.stderr.write("could not enter a private mount namespace (threads already running)\n")
        return 2
    # SIGTERM cleans up like Ctrl-C: outside the loop by KeyboardInterrupt, inside it by
    # cancelling the main task (asyncio.run already does that for SIGINT).
    signal.signal(signal.SIGTERM, _interrupt)
    if "gvisor" in config.tiers and shutil.which("runsc") is None:
        sys.stderr.write("runsc is not installed; pass --tiers container or install runsc\n")
        return 2
    work = Path(tempfile.mkdtemp(prefix="sandtree-bench-"))
    host = _common.host_info()
    started = time.perf_counter()
    log(f"work dir {work}; tiers {','.join(config.tiers)}; depth {config.depth}")

    async def runner() -> tuple[list[Row], dict[str, Any]]:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await bench(config, work)

    try:
        rows, details = asyncio.run(runner())
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
            if ns.keep_workdir:
                log(f"kept {work}")
            else:
                _remove_tree_with_mounts(work)
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    elapsed = time.perf_counter() - started
    doc = {
        "bench": "run_latency",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": host,
        "loadavg_after": os.getloadavg(),
        "elapsed_s": round(elapsed, 1),
        "config": dataclasses.asdict(config),
        "goals": {
            "true_overhead_ms": OVERHEAD_GOAL_MS,
            "commit_extra_ms": f"{COMMIT_GOAL_MS} + flush",
            "depth_ratio": DEPTH_GOAL_RATIO,
        },
        "rows": [r.to_json() for r in rows],
        **details,
    }
    path, latest = _common.write_results("run_latency", doc)
    _common.print_table(
        rows,
        title=(
            f"sandtree run latency — {host['kernel']}, {host['cpus']} CPUs, "
            f"{elapsed:.0f} s (p50 unless noted; baseline = bare runtime on the same bundle)"
        ),
    )
    print(f"results: {path}\n         {latest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
