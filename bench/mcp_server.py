"""The MCP server's own costs: rsync of a large tree, and a run through MCP over the REST API.

Against a real ``sandtree serve`` (``ServerProcess``, crun, a busybox image) on loopback:

1. **rsync** of a generated tree: 10,000 small files (100-400 bytes, each distinct) in nested
   directories, plus 300 entries that the excludes ``__pycache__``, ``.git`` and
   ``node_modules`` drop at every depth. Ours is ``sandtree.mcp._rsync.sync`` called in this
   process with a ``SandtreeClient`` over HTTP (what the ``rsync`` tool runs, without the MCP
   framing). Steps: the first sync (empty local cache, nothing on the server), again with
   nothing changed (goal: under a second, nothing uploaded), after touching one file (its
   mtime only), after editing one file, and with the local cache lost (a new state dir; the
   files are on the server already). Baselines: the reference ``contree-mcp`` 0.5.0 syncing a
   tree of the same shape through its ``rsync`` tool over stdio (when its venv exists;
   ``scripts/install`` makes it), and the floor of any change detection: a bare walk that
   stats every file, and a walk that also hashes every file.
2. **run latency**: a disposable ``true`` through an in-process MCP client → our MCP server →
   HTTP → the server, against the same run through the REST API directly
   (``SandtreeClient.spawn`` + ``wait_operation``), and through ``sandtree mcp`` as a stdio
   process. The sides alternate in rotating order each round; the first rounds are warm-up.

Nothing is asserted: this is a report.

Usage (as root)::

    python bench/mcp_server.py [--files 10000] [--runs 100] [--reps 1] [--no-reference]
                               [--parts rsync,runs] [--quick] [--keep-workdir]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import _common
from _common import Row, Stats, log

_common.ensure_importable()

from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from sandtree.client import SandtreeClient  # noqa: E402
from sandtree.config import Settings  # noqa: E402
from sandtree.engine import Engine, default_runtimes  # noqa: E402
from sandtree.engine.runtime import enter_private_mount_namespace  # noqa: E402
from sandtree.mcp import McpContext, build_server  # noqa: E402
from sandtree.mcp._rsync import SyncCache, SyncResult, sync  # noqa: E402
from sandtree.testing import ServerProcess, build_busybox_rootfs  # noqa: E402

REFERENCE = Path("/var/cache/sandtree-test/contree-mcp-venv/bin/contree-mcp")
EXCLUDES = ("__pycache__", ".git", "node_modules")
WARMUP = 3
#: A run that needs the synced tree in place (the file is one ``make_tree`` always makes).
ARGS = {"command": "test -f /app/pkg00/mod0/part0/f00001.txt", "image": "tag:busybox:latest"}
#: The ``run`` tool's request body for ``run(command="true", image=...)``: the REST side sends
#: the same, so both sides ask the server for the same work.
RUN_BODY: dict[str, Any] = {
    "command": "true",
    "shell": True,
    "env": {},
    "preserve_env": False,
    "uid": 0,
    "gid": 0,
    "timeout": 30,
    "disposable": True,
    "truncate_output_at": 8000,
}


# -- the tree -------------------------------------------------------------------------------


def make_tree(root: Path, files: int, salt: str) -> int:
    """``files`` distinct small files under ``root`` in nested dirs (top/sub/leaf), plus
    excluded entries at several depths; returns how many excluded files it made."""
    excluded = 0
    per_leaf = 25
    for i in range(files):
        leaf = i // per_leaf
        path = root / f"pkg{leaf // 40:02d}" / f"mod{leaf // 4 % 10}" / f"part{leaf % 4}"
        if i % per_leaf == 0:
            path.mkdir(parents=True, exist_ok=True)
        line = f"{salt} file {i}: " + "x" * (i % 300) + "\n"
        (path / f"f{i:05d}.txt").write_text(line + "#" * 80 + "\n", encoding="utf-8")
    for top in sorted(p for p in root.iterdir() if p.is_dir()):
        for junk in (top / "__pycache__", top / "mod0" / "__pycache__", top / "node_modules" / "x"):
            junk.mkdir(parents=True, exist_ok=True)
            for j in range(4):
                (junk / f"junk{j}.pyc").write_bytes(os.urandom(64))
                excluded += 1
    git = root / ".git" / "objects"
    git.mkdir(parents=True)
    for j in range(300 - excluded if excluded < 300 else 0):
        (git / f"obj{j}").write_bytes(os.urandom(64))
        excluded += 1
    return excluded


def _walk(root: Path, hash_files: bool) -> int:
    """The floor of change detection: scandir every directory, stat every file (and read
    and hash it, with ``hash_files``), pruning the excluded names."""
    count = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name in EXCLUDES:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                entry.stat()
                if hash_files:
                    with open(entry.path, "rb") as f:
                        hashlib.sha256(f.read()).hexdigest()
                count += 1
    return count


# -- servers and clients --------------------------------------------------------------------


class Reference:
    """contree-mcp 0.5.0 over stdio, pointed at the server (its own temp CONTREE_HOME)."""

    def __init__(self, url: str, token: str, home: Path, errlog: TextIO) -> None:
        self.params = StdioServerParameters(
            command=str(REFERENCE),
            args=["--auth-type", "jwt", "--url", url, "--token", token],
            env={"CONTREE_HOME": str(home), "CONTREE_NO_UPDATE_CHECK": "1"},
        )
        self.errlog = errlog

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Client]:
        async with Client(stdio_client(self.params, errlog=self.errlog)) as client:
            yield client


async def _tool(client: Client, name: str, arguments: dict[str, Any]) -> Any:
    result = await client.call_tool(name, arguments)
    text = "".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        raise RuntimeError(f"{name} failed: {text}")
    return json.loads(text)


# -- 1. rsync -------------------------------------------------------------------------------


async def _timed_sync(
    client: SandtreeClient, state_dir: Path, server_key: str, tree: Path
) -> tuple[float, SyncResult]:
    cache = SyncCache(state_dir / "rsync.db")
    try:
        t0 = time.perf_counter()
        result = await sync(client, cache, server_key, str(tree), "/app", EXCLUDES)
        return time.perf_counter() - t0, result
    finally:
        cache.close()


async def _reference_rsyncs(
    reference: Reference, work: Path, files: int, rep: int, theirs: dict[str, list[float]]
) -> int:
    """The reference's rsync of a tree of the same shape (other contents: nothing of it is on
    the server yet), the same steps as ours; returns its directory state id."""
    ref_tree = work / f"tree-ref-{rep}"
    make_tree(ref_tree, files, salt=f"reference-{rep}")
    log(f"rsync rep {rep + 1}: the reference")
    ref_state = 0
    async with reference.session() as session:
        args = {"source": str(ref_tree), "destination": "/app", "exclude": list(EXCLUDES)}
        touched = next((ref_tree / "pkg00" / "mod0" / "part0").iterdir())
        for step in ["first", *["unchanged"] * 5, "touched", "edited"]:
            if step == "touched":
                os.utime(touched, ns=(time.time_ns(), time.time_ns()))
            elif step == "edited":
                touched.write_text(f"edited {rep}\n", encoding="utf-8")
            t0 = time.perf_counter()
            ref_state = int(await _tool(session, "rsync", args))
            theirs.setdefault(step, []).append(time.perf_counter() - t0)
    return ref_state


async def _runs_with_state(
    client: SandtreeClient,
    token: str,
    work: Path,
    rep: int,
    state_id: int,
    reference: Reference | None,
    ref_state: int | None,
    ours: dict[str, list[float]],
    theirs: dict[str, list[float]],
) -> None:
    """Runs that need the synced tree, alternating: ours names the state by id (the server
    places it); the reference sends every file's uuid and mode in each spawn request."""
    mc = McpContext(client=client, state_dir=work / f"run-state-{rep}", token=token)
    try:
        async with contextlib.AsyncExitStack() as stack:
            mine = await stack.enter_async_context(Client(build_server(mc)))
            sides = [(mine, state_id, ours)]
            if reference is not None and ref_state is not None:
                other = await stack.enter_async_context(reference.session())
                sides.append((other, ref_state, theirs))
            for i in range(1 + 5):  # the first round is a warm-up
                for session, state, sink in sides if i % 2 == 0 else sides[::-1]:
                    t0 = time.perf_counter()
                    await _tool(session, "run", {**ARGS, "directory_state_id": state})
                    if i:
                        sink.setdefault("run", []).append(time.perf_counter() - t0)
    finally:
        mc.close()


async def bench_rsync(
    url: str, token: str, work: Path, files: int, reps: int, reference: Reference | None
) -> tuple[list[Row], dict[str, Any]]:
    ours: dict[str, list[float]] = {}
    theirs: dict[str, list[float]] = {}
    counts: dict[str, list[dict[str, Any]]] = {}
    floors: dict[str, list[float]] = {"stat walk": [], "hash walk": []}
    excluded = 0

    def note(step: str, seconds: float, result: SyncResult) -> None:
        ours.setdefault(step, []).append(seconds)
        counts.setdefault(step, []).append(result.as_dict())

    async with SandtreeClient(url, token, timeout=300) as client:
        for rep in range(reps):
            tree = work / f"tree-ours-{rep}"
            excluded = make_tree(tree, files, salt=f"ours-{rep}")
            state = work / f"state-{rep}"
            key = f"{url}#bench"
            log(f"rsync rep {rep + 1}/{reps}: first sync of {files} files")
            note("first", *await _timed_sync(client, state, key, tree))
            for _ in range(5):
                note("unchanged", *await _timed_sync(client, state, key, tree))
            touched = next((tree / "pkg00" / "mod0" / "part0").iterdir())
            os.utime(touched, ns=(time.time_ns(), time.time_ns()))
            note("touched", *await _timed_sync(client, state, key, tree))
            touched.write_text(f"edited {rep}\n", encoding="utf-8")
            note("edited", *await _timed_sync(client, state, key, tree))
            note("lost cache", *await _timed_sync(client, work / f"fresh-{rep}", key, tree))
            for name, hashing in (("stat walk", False), ("hash walk", True)):
                t0 = time.perf_counter()
                await asyncio.to_thread(_walk, tree, hashing)
                floors[name].append(time.perf_counter() - t0)
            state_id = counts["lost cache"][-1]["directory_state_id"]
            ref_state = None
            if reference is not None:
                ref_state = await _reference_rsyncs(reference, work, files, rep, theirs)
            log(f"rsync rep {rep + 1}/{reps}: runs with the synced tree")
            await _runs_with_state(client, token, work, rep, state_id, reference, ref_state,
                                   ours, theirs)  # fmt: skip

    def seconds(values: list[float]) -> str:
        s = Stats.of(values)
        return f"{s.p50:.2f} s" if s.p50 >= 1 else f"{s.p50 * 1000:.0f} ms"

    def what(step: str) -> str:
        last = counts[step][-1]
        reused = ", same state" if last["reused_state"] else ""
        return f"{last['hashed']} hashed, {last['uploaded']} uploaded{reused}"

    rows: list[Row] = []
    labels = {
        "first": "rsync first sync",
        "unchanged": "rsync again, nothing changed",
        "touched": "rsync after touching 1 file",
        "edited": "rsync after editing 1 file",
        "lost cache": "rsync with the local cache lost",
        "run": "run `test -f` with the synced tree",
    }
    for step, label in labels.items():
        mine = Stats.of(ours[step]).p50
        ref = theirs.get(step)
        baseline = f"ref {seconds(ref)}" if ref else "—"
        diff = f"x{mine / Stats.of(ref).p50:.2f}" if ref else "—"
        goal, met = "—", None
        if step == "unchanged":
            goal = "< 1 s, 0 uploaded"
            uploaded = max(c["uploaded"] for c in counts[step])
            met = Stats.of(ours[step]).p90 < 1.0 and uploaded == 0
        rows.append(Row(f"{label} ({files} files)", "http", seconds(ours[step]), baseline, diff,
                        goal, met))  # fmt: skip
        if step != "run":
            rows.append(Row("  ↳ work done", "http", what(step), "", "—"))
    floor_stat, floor_hash = Stats.of(floors["stat walk"]).p50, Stats.of(floors["hash walk"]).p50
    unchanged = Stats.of(ours["unchanged"]).p50
    rows.append(Row("  ↳ unchanged vs a bare walk + stat (no HTTP)", "local",
                    f"{unchanged * 1000:.0f} ms", f"{floor_stat * 1000:.0f} ms",
                    f"x{unchanged / floor_stat:.1f}"))  # fmt: skip
    lost = Stats.of(ours["lost cache"]).p50
    rows.append(Row("  ↳ lost cache vs a bare walk + sha256 (no HTTP)", "local",
                    f"{lost * 1000:.0f} ms", f"{floor_hash * 1000:.0f} ms",
                    f"x{lost / floor_hash:.1f}"))  # fmt: skip
    details = {
        "files": files,
        "excluded": excluded,
        "reps": reps,
        "ours_s": {k: Stats.of(v).to_json() | {"samples": v} for k, v in ours.items()},
        "reference_s": {k: Stats.of(v).to_json() | {"samples": v} for k, v in theirs.items()},
        "ours_work": counts,
        "floors_s": {k: Stats.of(v).to_json() for k, v in floors.items()},
    }
    return rows, details


# -- 2. run latency -------------------------------------------------------------------------


async def bench_runs(
    url: str, token: str, image: str, work: Path, runs: int, errlog: TextIO
) -> tuple[list[Row], dict[str, Any]]:
    samples: dict[str, list[float]] = {"rest": [], "mcp": [], "stdio": []}
    stdio = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandtree", "mcp", "--url", url, "--token", token,
              "--state-dir", str(work / "stdio-state")],
    )  # fmt: skip
    async with SandtreeClient(url, token) as client:
        mc = McpContext(client=client, state_dir=work / "mcp-state", token=token)
        try:
            async with (
                Client(build_server(mc)) as in_process,
                Client(stdio_client(stdio, errlog=errlog)) as over_stdio,
            ):

                async def rest() -> None:
                    op = await client.spawn({**RUN_BODY, "image": image})
                    done = await client.wait_operation(str(op["uuid"]))
                    exit_code = done["metadata"]["result"]["state"]["exit_code"]
                    if done["status"] != "SUCCESS" or exit_code != 0:
                        raise RuntimeError(f"REST run failed: {done}")

                async def through(session: Client) -> None:
                    out = await _tool(session, "run", {"command": "true", "image": image})
                    if out["status"] != "SUCCESS" or out["exit_code"] != 0:
                        raise RuntimeError(f"MCP run failed: {out}")

                sides: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                    ("rest", rest),
                    ("mcp", lambda: through(in_process)),
                    ("stdio", lambda: through(over_stdio)),
                ]
                log(f"run latency: {runs} runs per side (+{WARMUP} warm-up rounds)")
                for i in range(runs + WARMUP):
                    order = sides[i % 3 :] + sides[: i % 3]
                    for name, side in order:
                        t0 = time.perf_counter()
                        await side()
                        if i >= WARMUP:
                            samples[name].append((time.perf_counter() - t0) * 1000)
                        await asyncio.sleep(0.01)  # a run's cleanup stays out of the next
        finally:
            mc.close()
    rest_s, mcp_s, stdio_s = (Stats.of(samples[k]) for k in ("rest", "mcp", "stdio"))
    rows = [
        Row("run true p50: MCP in process vs REST", "container", f"{mcp_s.p50:.1f} ms",
            f"{rest_s.p50:.1f} ms", f"{mcp_s.p50 - rest_s.p50:+.1f} ms"),
        Row("  ↳ p90", "container", f"{mcp_s.p90:.1f} ms", f"{rest_s.p90:.1f} ms",
            f"{mcp_s.p90 - rest_s.p90:+.1f} ms"),
        Row("run true p50: `sandtree mcp` stdio vs REST", "container", f"{stdio_s.p50:.1f} ms",
            f"{rest_s.p50:.1f} ms", f"{stdio_s.p50 - rest_s.p50:+.1f} ms"),
        Row("  ↳ p90", "container", f"{stdio_s.p90:.1f} ms", f"{rest_s.p90:.1f} ms",
            f"{stdio_s.p90 - rest_s.p90:+.1f} ms"),
    ]  # fmt: skip
    details = {"runs": runs, "warmup": WARMUP, "run_ms": {k: Stats.of(v).to_json() for k, v in
               samples.items()}, "run_samples_ms": samples}  # fmt: skip
    return rows, details


async def bench(ns: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    rootfs = build_busybox_rootfs(work / "rootfs")
    data = work / "served"
    settings = Settings(data_dir=data)
    async with Engine(settings, runtimes=default_runtimes(settings)) as engine:
        image = (await engine.import_local(rootfs, tag="busybox:latest")).uuid
    server = ServerProcess(data, work / "config")
    reference = None
    with (work / "mcp-stderr.log").open("w", encoding="utf-8") as errlog:
        try:
            await asyncio.to_thread(server.wait_until_ready)
            token = server.admin_token
            if ns.reference:
                reference = Reference(server.url, token, work / "contree-home", errlog)
            rows: list[Row] = []
            details: dict[str, Any] = {"parts": sorted(ns.parts)}
            if "rsync" in ns.parts:
                more, found = await bench_rsync(
                    server.url, token, work, ns.files, ns.reps, reference
                )
                rows += more
                details.update(found)
            if "runs" in ns.parts:
                more, found = await bench_runs(server.url, token, image, work, ns.runs, errlog)
                rows += more
                details.update(found)
        finally:
            await asyncio.to_thread(server.stop)
    details["reference"] = str(REFERENCE) if reference is not None else None
    return rows, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="files in the synced tree")
    parser.add_argument("--runs", type=int, default=100, help="runs per side")
    parser.add_argument("--reps", type=int, default=1, help="rsync repetitions (fresh trees)")
    parser.add_argument("--no-reference", action="store_true", help="skip contree-mcp")
    parser.add_argument("--parts", default="rsync,runs", help="rsync and/or runs (comma list)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1000 files, 10 runs")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir")
    ns = parser.parse_args(argv)
    ns.parts = set(ns.parts.split(","))
    if not ns.parts or ns.parts - {"rsync", "runs"}:
        parser.error("--parts takes rsync, runs or both (comma-separated)")
    if ns.quick:
        ns.files, ns.reps, ns.runs = min(ns.files, 1000), 1, 10
    ns.reference = not ns.no_reference and REFERENCE.is_file()
    if not ns.no_reference and not ns.reference:
        log(f"{REFERENCE} is missing (scripts/install makes it): no reference rows")
    _common.require_root("bench/mcp_server.py")
    if not enter_private_mount_namespace():
        sys.stderr.write("could not enter a private mount namespace (threads already running)\n")
        return 2
    work = Path(tempfile.mkdtemp(prefix="sandtree-mcp-bench-"))
    try:
        rows, details = asyncio.run(bench(ns, work))
    finally:
        if ns.keep_workdir:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return _common.report(
        "mcp",
        rows,
        details,
        title="sandtree MCP server: rsync and run latency",
        host=_common.host_info(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
