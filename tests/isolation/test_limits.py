"""Resource limits, for real: each ends only the run that hit it, with an error naming the
limit, and leaves the engine healthy (a normal run right after succeeds)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from .kit import TIERS, TIME_SCALE, MiB, SandboxesFactory, stdout, succeeded

pytestmark = [pytest.mark.isolation, pytest.mark.anyio]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


_BOMB_PIDS = {"container": 64, "gvisor": 64}


@pytest.mark.parametrize("tier", TIERS)
async def test_a_fork_bomb_ends_only_its_own_run_naming_the_pids_limit(
    make_sandboxes: SandboxesFactory, tier: str
) -> None:
    pids = _BOMB_PIDS[tier]
    async with make_sandboxes(pids_limit=pids) as sb:
        # A neighbour started first, in its own sandbox, must not notice the bomb.
        neighbour = await sb.engine.spawn(sb.spec("sleep 3; echo neighbour-ok", tier=tier))
        # The bomb needs a few seconds to reach the limit (many more under emulation).
        window = int(5 * TIME_SCALE)
        bomb = await sb.run(f"f(){{ f|f & }}; f; sleep {window}", tier=tier, timeout=6 * window)
        assert bomb.status == "FAILED"
        assert bomb.error is not None
        assert f"process limit ({pids} processes)" in bomb.error
        assert bomb.result is not None
        assert bomb.result["limit_hit"] == "pids"
        assert bomb.result["state"]["timed_out"] is False
        assert stdout(succeeded(await sb.finish(neighbour))) == "neighbour-ok\n"
        await sb.healthy(tier)


@pytest.mark.parametrize("tier", TIERS)
async def test_pids_limit_counts_the_sandbox_s_processes_not_the_runtime_s_threads(
    make_sandboxes: SandboxesFactory, tier: str
) -> None:
    async with make_sandboxes(pids_limit=64) as sb:
        # 1 shell + 10 sleeps: far below 64 processes.
        out = await sb.ok(
            "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait; echo ok", tier=tier
        )
        assert out == "ok\n"


@pytest.mark.parametrize("tier", TIERS)
async def test_a_memory_hog_is_killed_naming_the_memory_limit(
    make_sandboxes: SandboxesFactory, tier: str
) -> None:
    async with make_sandboxes(memory_limit_bytes=128 * MiB) as sb:
        hog = await sb.run("dd if=/dev/zero bs=400M count=1 of=/dev/null", tier=tier, timeout=30)
        assert hog.status == "FAILED"
        assert hog.error is not None
        assert f"out of memory (limit {128 * MiB} bytes)" in hog.error
        assert hog.result is not None
        assert hog.result["limit_hit"] == "memory"
        assert hog.result["state"]["signal"] == 9
        # The peak the cgroup saw is the limit, not the 400 MB asked for.
        assert hog.result["resources"]["max_rss"] <= 128 * 1024 + 64
        await sb.healthy(tier)
        # Memory under the limit is fine.
        assert (
            await sb.ok("dd if=/dev/zero bs=32M count=1 of=/dev/null 2>&1 | head -1", tier=tier)
            == "1+0 records in\n"
        )


@pytest.mark.parametrize("tier", TIERS)
async def test_a_disk_filler_is_stopped_naming_max_layer_bytes(
    make_sandboxes: SandboxesFactory, tier: str
) -> None:
    async with make_sandboxes() as sb:
        # Writes 200 MB at most, then would wait far past the limit being noticed.
        filler = await sb.run(
            "dd if=/dev/zero of=/fill bs=1M count=200 2>/dev/null; sleep 60",
            tier=tier,
            timeout=30,
            max_layer_bytes=10 * MiB,
            disposable=False,
        )
        assert filler.status == "FAILED"
        assert filler.error is not None
        assert f"max_layer_bytes={10 * MiB}" in filler.error
        assert filler.result is not None
        assert filler.result["state"]["timed_out"] is False
        assert filler.result["resources"]["elapsed_time"] < 20
        assert filler.result_image is None
        await sb.healthy(tier)


@pytest.mark.parametrize("tier", TIERS)
async def test_an_output_flood_is_truncated_and_does_not_grow_our_memory(
    make_sandboxes: SandboxesFactory, tier: str
) -> None:
    async with make_sandboxes() as sb:
        before = _rss_bytes()
        flood = await sb.run(
            "yes", tier=tier, timeout=int(3 * TIME_SCALE), truncate_output_at=64 * 1024
        )
        grown = _rss_bytes() - before
        assert flood.status == "SUCCESS"
        assert flood.result is not None
        assert flood.result["state"]["timed_out"] is True
        assert flood.result["stdout"]["truncated"] is True
        assert stdout(flood) == "y\n" * (32 * 1024)
        # Gigabytes went through the pipe; we kept 64 KiB of them (and a little slack).
        assert grown < 64 * MiB, f"our RSS grew by {grown} bytes"
        events = [e async for e in sb.engine.follow_events(flood, follow=False)]
        kept = sum(len(e.data["value"]) for e in events if e.type == "stdout")
        assert kept == 64 * 1024
        (truncated,) = [e.data for e in events if e.type == "truncated"]
        # Tens of MiB here; emulation (TIME_SCALE) pushes far fewer bytes per second.
        assert truncated["bytes_dropped"] > 10 * MiB / TIME_SCALE
        await sb.healthy(tier)


@pytest.mark.parametrize("tier", TIERS)
async def test_cpu_limit_caps_a_busy_loop_to_its_share(
    make_sandboxes: SandboxesFactory, tier: str
) -> None:
    async with make_sandboxes(cpu_limit=0.5) as sb:
        # Two spinners for 1 s would use ~2 CPU-seconds on two cores without the quota.
        op = succeeded(
            await sb.run(
                "spin() { timeout 1 sh -c 'while :; do :; done'; }; spin & spin; wait",
                tier=tier,
            )
        )
        assert op.result is not None
        used = op.result["resources"]["user_cpu_time"] + op.result["resources"]["system_cpu_time"]
        elapsed = op.result["resources"]["elapsed_time"]
        assert used > 0.25, f"the loop barely ran: {used:.2f} s CPU"
        assert used <= 0.6 * elapsed + 0.15, f"{used:.2f} s CPU in {elapsed:.2f} s with 0.5 CPU"


@pytest.mark.parametrize("tier", TIERS)
async def test_limits_of_one_run_do_not_end_another_running_beside_it(
    make_sandboxes: SandboxesFactory, tier: str
) -> None:
    async with make_sandboxes(memory_limit_bytes=128 * MiB, pids_limit=_BOMB_PIDS[tier]) as sb:
        calm = await sb.engine.spawn(sb.spec("sleep 2; echo calm", tier=tier))
        hogs = await asyncio.gather(
            sb.run("dd if=/dev/zero bs=400M count=1 of=/dev/null", tier=tier),
            sb.run(f"f(){{ f|f & }}; f; sleep {int(TIME_SCALE)}", tier=tier),
            sb.run("dd if=/dev/zero of=/f bs=1M count=30", tier=tier, max_layer_bytes=MiB),
        )
        assert [h.status for h in hogs] == ["FAILED"] * 3
        limits = [h.result and h.result["limit_hit"] for h in hogs[:2]]
        # Each gVisor process costs the host ~10 tasks and their memory: at 128 MiB a bomb
        # there can run out of memory before it runs out of processes. Either ends only it.
        bomb_limits = ("pids", "memory") if tier == "gvisor" else ("pids",)
        assert limits[0] == "memory"
        assert limits[1] in bomb_limits
        assert stdout(succeeded(await sb.finish(calm))) == "calm\n"
