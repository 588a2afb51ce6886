"""``sandtree run``: a command in a fresh sandbox, its output live, its exit code ours."""

from __future__ import annotations

from typing import Any

import click

from sandtree.client import SandtreeClient
from sandtree.errors import InvalidRequestError

from ._common import (
    CliState,
    cancel_on_interrupt,
    client_command,
    emit,
    err_console,
    escape,
    write_output,
)
from ._session import Session

__all__ = ["run"]


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise InvalidRequestError(f"--env {pair!r} is not KEY=VALUE")
        env[key] = value
    return env


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--image", "-i", default=None, help="UUID or tag:NAME [default: the session's].")
@click.option("--keep", is_flag=True, help="Keep the result as a new image (prints its UUID).")
@click.option("--env", "-e", multiple=True, metavar="K=V", help="Set a variable (repeatable).")
@click.option("--cwd", default=None, help="Working directory inside the sandbox.")
@click.option("--timeout", default=30, show_default=True, help="Seconds before it is killed.")
@click.option("--isolation", type=click.Choice(["container", "gvisor"]), default=None,
              help="Isolation tier [default: the server's].")  # fmt: skip
@click.option("--network", is_flag=True, help="Allow outbound network access.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@client_command
async def run(
    client: SandtreeClient,
    state: CliState,
    image: str | None,
    keep: bool,
    env: tuple[str, ...],
    cwd: str | None,
    timeout: int,
    isolation: str | None,
    network: bool,
    command: tuple[str, ...],
) -> int:
    """Run COMMAND in a fresh sandbox; its output streams as it runs; exits with its code.

    One argument is a shell command line; several are an argv (no shell). Without --image the
    session's current image is used, and --keep moves the session's branch to the result.

    \b
    Example:
      sandtree run --image tag:busybox -- sh -c 'for i in 1 2 3; do echo $i; sleep 1; done'
      sandtree run --keep -- 'apk add git'
      sandtree run -e DEBUG=1 --cwd /app -- python main.py
    """
    s = Session.load()
    ref = image or s.head
    if ref is None:
        raise InvalidRequestError(
            "no image to run: pass --image UUID|tag:NAME, or `sandtree session start IMAGE`"
        )
    uuid = await client.resolve_image(ref)
    body: dict[str, Any] = {"image": uuid, "disposable": not keep, "timeout": timeout,
                            "env": _env(env)}  # fmt: skip
    if len(command) == 1:
        body.update(command=command[0], shell=True)
    else:
        body.update(command=command[0], args=list(command[1:]), shell=False)
    if cwd:
        body["cwd"] = cwd
    if isolation:
        body["isolation"] = isolation
    if network:
        body["networking"] = {"enabled": True}
    op = await client.spawn(body)
    op_id = str(op["uuid"])
    async with cancel_on_interrupt(client, op_id):
        async for event in client.events(op_id, follow=True):
            if not state.json:
                write_output(event)
    done = await client.get_operation(op_id)
    result = (done.get("metadata") or {}).get("result") or {}
    exit_code = (result.get("state") or {}).get("exit_code")
    new_image = done.get("result_image_uuid")
    if keep and new_image and new_image != uuid and image is None:
        s.move(str(new_image), " ".join(command))
        s.save()

    timed_out = bool((result.get("state") or {}).get("timed_out"))

    def human() -> None:
        if done.get("status") != "SUCCESS":
            err_console.print(f"[red]{done.get('status')}:[/] {escape(str(done.get('error')))}",
                              markup=True)  # fmt: skip
            return
        if timed_out:
            err_console.print(f"[red]timed out:[/] the command ran past its timeout of {timeout} s"
                              " and was killed; pass a larger --timeout or make it finish sooner",
                              markup=True)  # fmt: skip
        if keep:
            changed = result.get("filesystem_changed")
            note = "" if changed else " (nothing changed: same image)"
            err_console.print(f"[green]kept[/] {new_image}{note}", markup=True)

    emit(state, done, human)
    if done.get("status") == "CANCELLED":
        return 130
    if timed_out:
        return 124
    if done.get("status") != "SUCCESS" or exit_code is None:
        return 1
    return int(exit_code)
