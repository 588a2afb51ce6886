"""``sandtree ops``: list, show, wait for, cancel operations and follow their logs."""

from __future__ import annotations

import json
from typing import Any

import anyio
import click
from rich.table import Table

from sandtree.client import SandtreeClient

from ._common import CliState, client_command, emit, err_console, escape, out, write_output

__all__ = ["ops"]

_STYLE = {"SUCCESS": "green", "FAILED": "red", "CANCELLED": "yellow"}


def _status(op: dict[str, Any]) -> str:
    status = str(op.get("status"))
    return f"[{_STYLE.get(status, 'cyan')}]{status}[/]"


@click.group()
def ops() -> None:
    """Operations (runs and imports): list, show, wait, cancel, logs.

    \b
    Example:
      sandtree ops list --status EXECUTING
      sandtree ops logs -f 6a1f…
    """


@ops.command("list")
@click.option("--status", default=None, help="PENDING, EXECUTING, SUCCESS, FAILED, CANCELLED…")
@click.option("--kind", type=click.Choice(["instance", "image_import"]), default=None)
@click.option("--since", default=None, help="Newer than this (ISO time or 1h, 2d…).")
@click.option("--limit", default=50, show_default=True)
@client_command
async def list_ops(
    client: SandtreeClient,
    state: CliState,
    status: str | None,
    kind: str | None,
    since: str | None,
    limit: int,
) -> None:
    """List operations, newest first.

    \b
    Example:
      sandtree ops list --kind instance --limit 10
    """
    rows = await client.list_operations(limit=limit, status=status, kind=kind, since=since)

    def human() -> None:
        table = Table("uuid", "kind", "status", "created", "seconds", "result image")
        for op in rows:
            seconds = op.get("duration")
            table.add_row(
                str(op["uuid"]),
                str(op.get("kind")),
                _status(op),
                str(op.get("created_at", ""))[:19],
                f"{seconds:.2f}" if isinstance(seconds, int | float) else "",
                str(op.get("result_image_uuid") or ""),
            )
        out.print(table)

    emit(state, rows, human)


def _describe(op: dict[str, Any]) -> None:
    result = (op.get("metadata") or {}).get("result") or {}
    exit_state = result.get("state") or {}
    lines = [
        ("uuid", op.get("uuid")),
        ("kind", op.get("kind")),
        ("status", None),
        ("error", op.get("error")),
        ("created", op.get("created_at")),
        ("duration", op.get("duration")),
        ("image", op.get("image_uuid")),
        ("result image", op.get("result_image_uuid")),
        ("exit code", exit_state.get("exit_code")),
        ("timed out", exit_state.get("timed_out")),
    ]
    for key, value in lines:
        if key == "status":
            out.print(f"[bold]{key:>12}[/] {_status(op)}", markup=True)
        elif value not in (None, ""):
            out.print(f"[bold]{key:>12}[/] {escape(str(value))}", markup=True)


@ops.command("show")
@click.argument("operation_id")
@client_command
async def show(client: SandtreeClient, state: CliState, operation_id: str) -> None:
    """Show one operation as the server has it now.

    \b
    Example:
      sandtree ops show 6a1f… --json
    """
    op = await client.get_operation(operation_id)
    emit(state, op, lambda: _describe(op))


@ops.command("wait")
@click.argument("operation_ids", nargs=-1, required=True)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@client_command
async def wait(
    client: SandtreeClient, state: CliState, operation_ids: tuple[str, ...], timeout: float | None
) -> int:
    """Wait until the operations end (following their event streams); exit 1 if any did
    not succeed, 124 if the wait timed out (they keep running).

    \b
    Example:
      sandtree ops wait 6a1f… 9b2c… --timeout 600
    """
    results: dict[str, dict[str, Any]] = {}

    async def one(op_id: str) -> None:
        results[op_id] = await client.wait_operation(op_id)

    with anyio.move_on_after(timeout) as scope:
        async with anyio.create_task_group() as group:
            for op_id in operation_ids:
                group.start_soon(one, op_id)

    def human() -> None:
        for op_id in operation_ids:
            op = results.get(op_id)
            status = _status(op) if op else "[cyan]still running[/]"
            out.print(f"{op_id} {status}", markup=True)

    emit(state, results, human)
    if scope.cancelled_caught:
        return 124
    return 0 if all(op.get("status") == "SUCCESS" for op in results.values()) else 1


@ops.command("cancel")
@click.argument("operation_id")
@client_command
async def cancel(client: SandtreeClient, state: CliState, operation_id: str) -> None:
    """Cancel a pending or running operation.

    \b
    Example:
      sandtree ops cancel 6a1f…
    """
    await client.cancel_operation(operation_id)
    op = await client.wait_operation(operation_id, timeout=30)
    emit(state, op, lambda: out.print(f"{operation_id} {_status(op)}", markup=True))


@ops.command("logs")
@click.argument("operation_id")
@click.option("--follow", "-f", is_flag=True, help="Keep following until the operation ends.")
@client_command
async def logs(client: SandtreeClient, state: CliState, operation_id: str, follow: bool) -> None:
    """Print an operation's output (stdout to stdout, stderr to stderr); -f follows it live.

    \b
    Example:
      sandtree ops logs -f 6a1f…
    """
    async for event in client.events(operation_id, follow=follow):
        if state.json:
            click.echo(
                json.dumps(
                    {"id": event.id, "type": event.type, "spid": event.spid, "data": event.data}
                )
            )
        elif event.type in ("stdout", "stderr"):
            write_output(event)
        elif event.type == "progress":
            data = event.data
            err_console.print(
                f"[dim]{data.get('phase')}: layers {data.get('layers_done')}/"
                f"{data.get('layers_total')}, {data.get('bytes_done')}/{data.get('bytes_total')}"
                " bytes[/]",
                markup=True,
            )
        elif event.type == "completion":
            data = event.data
            err_console.print(f"[dim]{data.get('status')} {escape(data.get('error') or '')}[/]",
                              markup=True)  # fmt: skip
