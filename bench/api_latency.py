"""The REST API's cost over the engine: requests per second and run latency through HTTP.

Side by side in one process (the machine is noisy):

1. ``GET /v1/inspect/{uuid}/list?path=/bin`` and ``GET /v1/operations/{id}`` over HTTP on a real
   ``sandtree serve`` (8 concurrent keep-alive connections), against the same engine calls
   made in process on another engine;
2. a disposable ``/bin/true``: ``POST /v1/instances`` then following the SSE event stream to
   the completion, against ``Engine.spawn`` + ``wait_operation`` in process (A/B alternated).

Usage (as root)::

    python bench/api_latency.py [--requests 2000] [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _common
import httpx
from _common import Row, Stats

_common.ensure_importable()

from sandtree.config import Settings  # noqa: E402
from sandtree.engine import Engine, RunSpec, default_runtimes  # noqa: E402
from sandtree.engine.runtime import enter_private_mount_namespace  # noqa: E402
from sandtree.testing import ServerProcess, build_busybox_rootfs  # noqa: E402

CONCURRENCY = 8


async def _rate(call: Callable[[], Awaitable[Any]], total: int) -> float:
    """Calls per second of ``call`` with CONCURRENCY in flight."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - t0)


async def _http_run(http: httpx.AsyncClient, image: str) -> float:
    t0 = time.perf_counter()
    created = await http.post(
        "/v1/instances", json={"command": "/bin/true", "image": image, "disposable": True}
    )
    created.raise_for_status()
    op_id = created.json()["uuid"]
    async with http.stream("GET", f"/v1/operations/{op_id}/events?follow=1") as events:
        async for line in events.aiter_lines():
            if line == "event: completion":
                break
    return (time.perf_counter() - t0) * 1000


async def _engine_run(engine: Engine, image: str) -> float:
    t0 = time.perf_counter()
    op = await engine.spawn(RunSpec(image=image, command="/bin/true", disposable=True))
    await engine.wait_operation(op, timeout=60)
    return (time.perf_counter() - t0) * 1000


async def bench(work: Path, requests: int, runs: int) -> tuple[list[Row], dict[str, Any]]:
    rootfs = build_busybox_rootfs(work / "rootfs")
    served_dir, local_dir = work / "served", work / "local"
    settings = Settings(data_dir=local_dir)
    async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
        local = await engine.import_local(rootfs, tag="busybox")
        seed = await engine.spawn(RunSpec(image=local.uuid, command="/bin/true", disposable=True))
        await engine.wait_operation(seed, timeout=60)
        # The served engine gets its image the same way, before the server opens the store.
        served_settings = Settings(data_dir=served_dir)
        async with Engine(served_settings, runtimes=default_runtimes(served_settings)) as other:
            served = await other.import_local(rootfs, tag="busybox")
        server = ServerProcess(served_dir, work / "config")
        try:
            await asyncio.to_thread(server.wait_until_ready)
            token = (served_dir / "admin-token").read_text(encoding="utf-8").strip()
            limits = httpx.Limits(max_connections=CONCURRENCY)
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}, limits=limits
            ) as http:
                first = await _http_run(http, served.uuid)  # also the operation we GET below
                listing = f"/v1/inspect/{served.uuid}/list?path=/bin"
                op_url = (await http.get("/v1/operations?limit=1")).json()[0]["uuid"]

                async def get(url: str) -> None:
                    (await http.get(url)).raise_for_status()

                list_http = await _rate(lambda: get(listing), requests)
                list_engine = await _rate(
                    lambda: asyncio.to_thread(engine.list_dir, local, "/bin"), requests
                )
                op_http = await _rate(lambda: get(f"/v1/operations/{op_url}"), requests)

                async def get_op() -> None:
                    engine.get_operation(seed.uuid)

                op_engine = await _rate(get_op, requests)
                http_ms: list[float] = []
                engine_ms: list[float] = []
                for i in range(runs):
                    pair = [(_http_run(http, served.uuid), http_ms),
                            (_engine_run(engine, local.uuid), engine_ms)]  # fmt: skip
                    for coro, sink in pair if i % 2 == 0 else reversed(pair):
                        sink.append(await coro)
        finally:
            await asyncio.to_thread(server.stop)
    h, e = Stats.of(http_ms), Stats.of(engine_ms)
    rows = [
        Row("GET inspect list /bin, req/s", "container", f"{list_http:.0f}/s",
            f"{list_engine:.0f}/s", f"x{list_http / list_engine:.2f}"),
        Row("GET operation, req/s", "container", f"{op_http:.0f}/s", f"{op_engine:.0f}/s",
            f"x{op_http / op_engine:.2f}"),
        Row("disposable /bin/true p50 (HTTP+SSE vs engine)", "container", f"{h.p50:.1f} ms",
            f"{e.p50:.1f} ms", f"{h.p50 - e.p50:+.1f} ms"),
        Row("  ↳ p90", "container", f"{h.p90:.1f} ms", f"{e.p90:.1f} ms",
            f"{h.p90 - e.p90:+.1f} ms"),
    ]  # fmt: skip
    details = {
        "first_http_run_ms": round(first, 1),
        "http_run_ms": h.to_json(),
        "engine_run_ms": e.to_json(),
        "concurrency": CONCURRENCY,
        "requests": requests,
    }
    return rows, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per rate sample")
    parser.add_argument("--runs", type=int, default=30, help="runs per side")
    ns = parser.parse_args(argv)
    _common.require_root("bench/api_latency.py")
    if not enter_private_mount_namespace():
        sys.stderr.write("could not enter a private mount namespace (threads already running)\n")
        return 2
    work = Path(tempfile.mkdtemp(prefix="sandtree-api-bench-"))
    try:
        rows, details = asyncio.run(bench(work, ns.requests, ns.runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _common.report(
        "api_latency",
        rows,
        details,
        title="sandtree REST API vs the engine in process",
        host=_common.host_info(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
