"""The single-run workloads of ``run_latency.py``, engine against the bare runtime:
1. a disposable ``/bin/true``, 2. a kept run against a disposable one, 4. concurrent runs
(wall time and runs/s), 5. fork/exec-heavy and file-walk workloads."""

from __future__ import annotations

import asyncio
import time

import _common
from _common import BenchError, Row, Stats, log
from _drivers import TRUE, EngineSample, ms, parse_ts
from _latency_core import (
    COMMIT_GOAL_MS,
    CONCURRENT,
    FORK_LOOP,
    OVERHEAD_GOAL_MS,
    WALK,
    WRITE_ONE,
    BenchCore,
)

_common.ensure_importable()

from sandtree.engine import ImageRecord  # noqa: E402


class Workloads(BenchCore):
    """Measurements 1, 2, 4 and 5 (3, depth, is ``Chain``'s)."""

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
