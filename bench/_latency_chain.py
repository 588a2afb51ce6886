"""Measurement 3 of ``run_latency.py``: a lineage chain of kept runs (with the compactions
it sets off), the bare runtime over the deepest stack a chain run mounted, and ``/bin/true``
at the end of the chain against one at depth 1."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import _common
from _common import BenchError, Row, Stats, log
from _drivers import TRUE, BareSample, EngineSample, ms
from _latency_core import DEPTH_GOAL_RATIO, BenchCore

_common.ensure_importable()

from sandtree.engine import ImageRecord, RunSpec  # noqa: E402


class Chain(BenchCore):
    """Measurement 3: run cost against lineage depth."""

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

        async def timed_merge(uuid: str, *, force: bool, fit: int | None) -> None:
            # Observation only: how many compactions merged, over how many layers, how long,
            # and how many found nothing to do (a compaction before them had rebased them).
            before = self.engine.resolve_image(uuid).layers
            c0 = time.perf_counter()
            await engine_merge(uuid, force=force, fit=fit)
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


def _count_entries(top: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(top))
