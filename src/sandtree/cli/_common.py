"""What every client command shares: finding the server, one error line, --json output."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sandtree.client import Connection, Event, SandtreeClient, resolve_server
from sandtree.errors import SandtreeError

__all__ = [
    "CliState",
    "cancel_on_interrupt",
    "client_command",
    "connection_options",
    "emit",
    "err_console",
    "escape",
    "out",
    "uuid_table",
    "write_output",
]

P = ParamSpec("P")
T = TypeVar("T")

# Piped output is for scripts and files: tables get room for whole UUIDs instead of the
# 80 columns rich assumes when it cannot ask a terminal.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclasses.dataclass
class CliState:
    """Global options, read once (``--url``, ``--token``, ``--json``)."""

    url: str | None = None
    token: str | None = None
    json: bool = False
    _connection: Connection | None = None

    def connection(self) -> Connection:
        """The server named by flags, environment or config; else the embedded one, started."""
        if self._connection is None:
            self._connection = resolve_server(url=self.url, token=self.token)
        return self._connection


def connection_options(fn: Callable[P, T]) -> Callable[P, T]:
    """``--url``, ``--token`` and ``--json`` on a command or group."""
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(fn)
    fn = click.option("--token", default=None, help="API token [env SANDTREE_TOKEN].")(fn)
    fn = click.option("--url", default=None, help="Server URL [env SANDTREE_URL].")(fn)
    return fn


def _state(ctx: click.Context) -> CliState:
    state = ctx.find_object(CliState)
    if state is None:
        state = ctx.ensure_object(CliState)
    return state


def client_command(
    fn: Callable[Concatenate[SandtreeClient, CliState, P], Awaitable[int | None]],
) -> Callable[..., None]:
    """Run an async command body with a connected client; errors become one line, exit 1.

    The body gets ``(client, state, **params)`` and may return an exit code.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, url: str | None = None, token: str | None = None,
                as_json: bool = False, **kwargs: Any) -> None:  # fmt: skip
        state = _state(click.get_current_context())
        state.url = url or state.url
        state.token = token or state.token
        state.json = as_json or state.json

        async def main() -> int | None:
            conn = state.connection()
            async with SandtreeClient(conn.url, conn.token) as client:
                return await fn(client, state, *args, **kwargs)

        try:
            code = anyio.run(main)
        except (SandtreeError, OSError, ExceptionGroup) as exc:
            message = _message(exc)
            if message is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
        if code:
            sys.exit(code)

    return connection_options(wrapper)


def _message(exc: BaseException) -> str | None:
    """The one line to show for ``exc``: a sandtree error's message, a local file error, or
    the first of those in a task group's exception group; None for anything else (a bug)."""
    if isinstance(exc, SandtreeError):
        return exc.message
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, BaseExceptionGroup):
        messages = [_message(inner) for inner in exc.exceptions]
        if all(messages):
            return messages[0]
    return None


def uuid_table(*headers: str) -> Table:
    """A table whose first column is a UUID, never cut short (people copy it), then
    ``headers``."""
    table = Table()
    table.add_column("uuid", no_wrap=True, min_width=36)
    for header in headers:
        table.add_column(header)
    return table


def emit(state: CliState, data: Any, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON with --json, else call ``human`` to print it for people."""
    if state.json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human()


def write_output(event: Event) -> None:
    """Copy a stdout/stderr event's bytes to our own stdout/stderr; other events are ignored."""
    if event.type in ("stdout", "stderr"):
        stream = sys.stdout if event.type == "stdout" else sys.stderr
        stream.buffer.write(event.raw())
        stream.flush()


@contextlib.asynccontextmanager
async def cancel_on_interrupt(client: SandtreeClient, operation_id: str) -> AsyncIterator[None]:
    """Ctrl-C inside the block (a KeyboardInterrupt, or the main task's cancellation under
    asyncio) cancels the operation on the server too, rather than leaving it running."""
    try:
        yield
    except (KeyboardInterrupt, anyio.get_cancelled_exc_class()):
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await client.cancel_operation(operation_id)
        raise
