"""Git-like sessions: a current image per shell session, named branches, a log, rollback.

A session lives in ``$XDG_STATE_HOME/sandtree/sessions/<key>.json``; the key is
``$SANDTREE_SESSION`` when set (share it across shells), else the shell's process id. Runs
without ``--image`` start from the current branch's image, and ``--keep`` moves the branch to
the image the run made. The lineage itself is the server's: rollback asks it for the parent.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from sandtree.client import SandtreeClient
from sandtree.errors import InvalidRequestError

from ._common import CliState, client_command, emit, escape, out

__all__ = ["Session", "session"]


def _sessions_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "sandtree" / "sessions"


def session_key() -> str:
    return os.environ.get("SANDTREE_SESSION") or f"shell-{os.getppid()}"


@dataclasses.dataclass
class Session:
    """One session: branches (name → image UUID), the current branch, and what moved them."""

    key: str
    branch: str = "main"
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    log: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, key: str | None = None) -> Session:
        key = key or session_key()
        path = _sessions_dir() / f"{key}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(key=key)
        except ValueError:
            raise InvalidRequestError(
                f"session file {path} is corrupt; delete it and `sandtree session start IMAGE`"
            ) from None
        return cls(
            key=key,
            branch=str(data.get("branch", "main")),
            branches=dict(data.get("branches", {})),
            log=list(data.get("log", [])),
        )

    def save(self) -> None:
        directory = _sessions_dir()
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{self.key}.tmp"
        tmp.write_text(
            json.dumps({"branch": self.branch, "branches": self.branches, "log": self.log[-500:]}),
            encoding="utf-8",
        )
        os.replace(tmp, directory / f"{self.key}.json")

    @property
    def head(self) -> str | None:
        """The image the current branch is at (None before ``session start``)."""
        return self.branches.get(self.branch)

    def move(self, image: str, what: str) -> None:
        """Point the current branch at ``image``, noting why."""
        self.branches[self.branch] = image
        self.log.append(
            {
                "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "branch": self.branch,
                "image": image,
                "what": what,
            }
        )

    def as_json(self) -> dict[str, Any]:
        return {"session": self.key, "branch": self.branch, "image": self.head,
                "branches": self.branches}  # fmt: skip


def _show(state: CliState, s: Session) -> None:
    def human() -> None:
        table = Table("", "branch", "image", box=None)
        for name, image in sorted(s.branches.items()):
            table.add_row("*" if name == s.branch else "", name, image)
        out.print(f"session {s.key}")
        out.print(table)

    emit(state, s.as_json(), human)


@click.group()
def session() -> None:
    """Git-like sessions: a current image per shell, branches, log and rollback.

    \b
    Example:
      sandtree session start tag:python:3.11
      sandtree run --keep -- pip install numpy      # advances the branch
      sandtree session branch experiment && sandtree session checkout experiment
      sandtree session rollback                     # back to the parent image
      sandtree session log
    """


@session.command("start")
@click.argument("image")
@client_command
async def start(client: SandtreeClient, state: CliState, image: str) -> None:
    """Start (or reset) this shell's session at IMAGE (a UUID or tag:NAME).

    \b
    Example:
      sandtree session start tag:busybox
    """
    s = Session.load()
    s.branch = "main"
    s.move(await client.resolve_image(image), f"start at {image}")
    s.save()
    _show(state, s)


@session.command("show")
@client_command
async def show(client: SandtreeClient, state: CliState) -> None:
    """Show the current branch and image, and every branch.

    \b
    Example:
      sandtree session show --json
    """
    _show(state, Session.load())


@session.command("branch")
@click.argument("name")
@click.argument("image", required=False)
@client_command
async def branch(client: SandtreeClient, state: CliState, name: str, image: str | None) -> None:
    """Create branch NAME at IMAGE (default: the current image); stay on the current branch.

    \b
    Example:
      sandtree session branch experiment
    """
    s = Session.load()
    target = await client.resolve_image(image) if image else s.head
    if target is None:
        raise InvalidRequestError("no current image; `sandtree session start IMAGE` first")
    if name in s.branches:
        raise InvalidRequestError(f"branch {name!r} exists; checkout it or pick another name")
    s.branches[name] = target
    s.save()
    _show(state, s)


@session.command("checkout")
@click.argument("target")
@click.option("-b", "create", is_flag=True, help="Create the branch at the current image.")
@client_command
async def checkout(client: SandtreeClient, state: CliState, target: str, create: bool) -> None:
    """Switch to branch TARGET, or put the current branch at image TARGET.

    \b
    Example:
      sandtree session checkout experiment
      sandtree session checkout -b fix          # new branch here, switched to
      sandtree session checkout 3f6c…           # current branch → that image
    """
    s = Session.load()
    if create:
        if s.head is None:
            raise InvalidRequestError("no current image; `sandtree session start IMAGE` first")
        s.branches.setdefault(target, s.head)
        s.branch = target
    elif target in s.branches:
        s.branch = target
    else:
        s.move(await client.resolve_image(target), f"checkout {target}")
    s.save()
    _show(state, s)


@session.command("rollback")
@click.option("--steps", default=1, show_default=True, help="How many parents to go back.")
@client_command
async def rollback(client: SandtreeClient, state: CliState, steps: int) -> None:
    """Move the current branch back to its image's parent (or further ancestors).

    \b
    Example:
      sandtree session rollback --steps 2
    """
    s = Session.load()
    if s.head is None:
        raise InvalidRequestError("no current image; `sandtree session start IMAGE` first")
    ancestors = (await client.lineage(s.head)).get("ancestors", [])
    if steps < 1 or steps > len(ancestors):
        raise InvalidRequestError(
            f"the image has {len(ancestors)} ancestors; --steps must be between 1 and that"
        )
    s.move(str(ancestors[steps - 1]["uuid"]), f"rollback {steps}")
    s.save()
    _show(state, s)


@session.command("log")
@client_command
async def log(client: SandtreeClient, state: CliState) -> None:
    """The current branch's history: its image and ancestors with the command of each.

    \b
    Example:
      sandtree session log
    """
    s = Session.load()
    if s.head is None:
        raise InvalidRequestError("no current image; `sandtree session start IMAGE` first")
    tree = await client.lineage(s.head)
    chain = [tree["image"], *tree.get("ancestors", [])]

    def human() -> None:
        for i, node in enumerate(chain):
            marker = f"({s.branch}) " if i == 0 else ""
            tag = escape(f" [{node['tag']}]") if node.get("tag") else ""
            out.print(f"[yellow]{node['uuid']}[/]{tag} {escape(marker)}", markup=True)
            command = escape(str(node.get("command") or ""))
            out.print(f"    {command}  [dim]{node.get('created_at')}[/]", markup=True)

    emit(state, {"branch": s.branch, "log": chain}, human)
