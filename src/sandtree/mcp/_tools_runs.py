"""Tools for runs and operations: run, get/list/wait/cancel operations.

Waiting follows each operation's event stream (no polling, no cap on how many at once); a
wait that times out says so and leaves the work running; long runs send MCP progress
notifications carrying their latest output lines.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from sandtree.client import TERMINAL_STATUSES
from sandtree.errors import SandtreeError

from ._context import McpContext, tool_errors
from ._results import operation_output, summary_output

__all__ = ["register_run_tools"]

_PROGRESS_EVERY = 0.5  # seconds between progress notifications
_TAIL_LINES = 5


def _stdin(text: str) -> dict[str, str]:
    if all(32 <= ord(c) < 127 or c in "\t\n\r" for c in text):
        return {"value": text}
    return {"value": base64.b64encode(text.encode()).decode(), "encoding": "base64"}


async def _follow(mc: McpContext, op_id: str, ctx: Context | None) -> None:
    """Follow the run's events to its end, reporting progress with the last output lines."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    chunks, last = 0, 0.0
    async for event in mc.client.events(op_id, follow=True):
        if event.type not in ("stdout", "stderr"):
            continue
        chunks += 1
        text = event.raw().decode("utf-8", "replace")
        tail.extend(line for line in text.splitlines() if line.strip())
        now = time.monotonic()
        if ctx is not None and now - last >= _PROGRESS_EVERY:
            last = now
            await ctx.report_progress(chunks, None, "\n".join(tail))


async def _forget_if_lost(mc: McpContext, state_id: int) -> None:
    """If the server no longer has directory state ``state_id``, drop it from the sync cache:
    otherwise the rsync the error asks for would answer the same missing id again."""
    try:
        await mc.client.get_directory_state(state_id)
    except SandtreeError as exc:
        if exc.status == 404:
            mc.sync_cache.forget_state(mc.server_key, state_id)


def register_run_tools(server: MCPServer, mc: McpContext) -> None:
    """Add run, get_operation, list_operations, wait_operations and cancel_operation."""

    @server.tool()
    async def run(
        command: str,
        image: str,
        ctx: Context,
        shell: bool = True,
        env: dict[str, str | None] | None = None,
        preserve_env: bool = False,
        cwd: str = "",
        uid: int = 0,
        gid: int = 0,
        timeout: int = 30,
        disposable: bool = True,
        stdin: str | None = None,
        directory_state_id: int | None = None,
        files: dict[str, str] | None = None,
        wait: bool = True,
        truncate_output_at: int = 8000,
        max_layer_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Run a command in a fresh sandbox started from an image (UUID or tag:NAME).

        disposable=false keeps the resulting filesystem as a new image (result_image), a child
        of the input; otherwise changes are discarded. directory_state_id (from rsync) and
        files ({"/abs/path": file_uuid} from upload) place files first. wait=false answers
        {"operation_id"} at once (see wait_operations). Returns exit_code, timed_out, state,
        stdout, stderr (+ *_truncated), result_image, filesystem_changed and resources.
        """
        with tool_errors("list_images shows the images you can use, or import_image one"):
            uuid = await mc.client.resolve_image(image)
        body: dict[str, Any] = {
            "command": command,
            "image": uuid,
            "shell": shell,
            "env": env or {},
            "preserve_env": preserve_env,
            "uid": uid,
            "gid": gid,
            "timeout": timeout,
            "disposable": disposable,
            "truncate_output_at": truncate_output_at,
        }
        if cwd:
            body["cwd"] = cwd
        if stdin:
            body["stdin"] = _stdin(stdin)
        if files:
            body["files"] = {path: {"uuid": uuid_, "mode": "0644"} for path, uuid_ in files.items()}
        if directory_state_id:
            body["directory_state_id"] = directory_state_id
        if max_layer_bytes:
            body["resources_limits"] = {"max_layer_bytes": max_layer_bytes}
        try:
            with tool_errors(
                "list_images shows the images you can use, or import_image one; rsync again if "
                "the directory state is gone, upload files again if they are"
            ):
                op = await mc.client.spawn(body)
        except ToolError:
            if directory_state_id:
                await _forget_if_lost(mc, directory_state_id)
            raise
        op_id = str(op["uuid"])
        if not wait:
            return {"operation_id": op_id}
        with tool_errors():
            await _follow(mc, op_id, ctx)
            return operation_output(await mc.client.get_operation(op_id))

    @server.tool()
    async def get_operation(operation_id: str) -> dict[str, Any]:
        """The operation as the server has it now (never a cached state)."""
        with tool_errors("list_operations shows the ids you can use"):
            return operation_output(await mc.client.get_operation(operation_id))

    @server.tool()
    async def list_operations(
        limit: int = 100,
        status: Literal["PENDING", "ASSIGNED", "EXECUTING", "SUCCESS", "FAILED", "CANCELLED"]
        | None = None,
        type: Literal["instance", "image_import"] | None = None,
        since: str | None = None,
    ) -> dict[str, Any]:
        """Recent operations, newest first; filter by status, type and age (e.g. since="1h")."""
        with tool_errors():
            ops = await mc.client.list_operations(
                limit=limit, status=status, kind=type, since=since
            )
        return {"operations": [summary_output(op) for op in ops]}

    @server.tool()
    async def wait_operations(
        operation_ids: list[str],
        timeout: float = 300.0,
        mode: Literal["all", "any"] = "all",
    ) -> dict[str, Any]:
        """Wait for operations (runs or imports) started with wait=false.

        mode="all" waits for every one, mode="any" for the first. Operations that do not end
        within timeout seconds keep running: they are listed in "pending" and timed_out is
        true; wait again or cancel_operation them.
        """
        ids = list(dict.fromkeys(operation_ids))
        if not ids:
            raise ToolError("operation_ids is empty; pass the ids run(wait=false) returned")
        waits: dict[asyncio.Future[dict[str, Any]], str] = {
            asyncio.ensure_future(mc.client.wait_operation(i)): i for i in ids
        }
        when = asyncio.FIRST_COMPLETED if mode == "any" else asyncio.ALL_COMPLETED
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done: set[asyncio.Future[dict[str, Any]]] = set()
        pending: set[asyncio.Future[dict[str, Any]]] = set(waits)
        # In mode "any" an id that cannot be waited for (unknown, gone) does not end the
        # wait: the first operation that ends does.
        ended = False
        while pending and not ended and (left := deadline - loop.time()) > 0:
            finished, pending = await asyncio.wait(pending, timeout=left, return_when=when)
            done |= finished
            ended = not pending if mode == "all" else any(t.exception() is None for t in finished)
        for task in pending:
            task.cancel()  # stops waiting only; the operation goes on
        await asyncio.gather(*pending, return_exceptions=True)
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for task in done:
            exc = task.exception()
            if exc is None:
                results[waits[task]] = operation_output(task.result())
            else:
                errors[waits[task]] = getattr(exc, "message", str(exc))
        still = [waits[t] for t in pending]
        return {
            "results": results,
            "completed": [i for i in ids if i in results],
            "cancelled": [i for i in ids if results.get(i, {}).get("status") == "CANCELLED"],
            "pending": still,
            "errors": errors,
            "timed_out": bool(still) and not ended,
        }

    @server.tool()
    async def cancel_operation(operation_id: str) -> dict[str, Any]:
        """Cancel a pending or running operation (one already ended is left as it is)."""
        with tool_errors("list_operations shows the ids you can use"):
            op = await mc.client.get_operation(operation_id)
            if op.get("status") in TERMINAL_STATUSES:
                return {
                    "cancelled": op.get("status") == "CANCELLED",
                    "operation_id": operation_id,
                    "status": op.get("status"),
                }
            await mc.client.cancel_operation(operation_id)
        return {"cancelled": True, "operation_id": operation_id}
