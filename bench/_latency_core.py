"""What every measurement of ``run_latency.py`` shares: its configuration, workloads and
goals, and the A/B interleaving of engine and bare samples (``BenchCore``)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import _common
from _common import Row, log
from _drivers import SETTLE_S, BareRunner, BareSample, EngineDriver, EngineSample

_common.ensure_importable()

from sandtree.engine import Engine, ImageRecord  # noqa: E402

WRITE_ONE = "echo x > /tmp/f"
FORK_LOOP = "for i in $(seq 300); do cat /etc/passwd >/dev/null; done"
WALK = "find / -xdev -type f | wc -l"
CONCURRENT = 32
OVERHEAD_GOAL_MS = 15.0
COMMIT_GOAL_MS = 10.0
DEPTH_GOAL_RATIO = 1.2


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


class BenchCore:
    """All measurements for one engine; ``rows`` is the table, ``doc`` the JSON details.

    The measurements themselves are the methods of ``Workloads`` and ``Chain``.
    """

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
