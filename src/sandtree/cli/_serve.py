"""``sandtree serve`` (the server on the embedded default) and ``sandtree token``."""

from __future__ import annotations

import datetime
import os
import re
import shutil
from pathlib import Path

import click
import uvicorn

from sandtree._datadir import private_dir
from sandtree.api import PERMISSIONS, TokenStore, create_app
from sandtree.cli._doctor import preflight
from sandtree.cli._http_edge import edge_options
from sandtree.cli._shutdown import serve_until_stopped
from sandtree.client._config import write_client_config
from sandtree.config import Settings
from sandtree.engine import Engine
from sandtree.engine.runtime import enter_private_mount_namespace
from sandtree.engine.runtime._lock import DataDirLock
from sandtree.engine.runtime._network import NetworkPool
from sandtree.errors import InvalidRequestError, SandtreeError

__all__ = ["serve", "token"]

_ADMIN_TOKEN_FILE = "admin-token"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_duration(text: str) -> datetime.timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` as a positive timedelta."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise InvalidRequestError(
            f"--expires-in {text!r} is not a duration; give a whole number and a unit: "
            "90s, 30m, 12h, 7d or 2w"
        )
    return datetime.timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def _parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 date or time; without an offset it is UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequestError(
            f"--expires-at {text!r} is not an ISO 8601 time; give e.g. 2026-07-01 or "
            "2026-07-01T12:00:00Z (UTC unless it names an offset)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


def _expiry(
    expires_in: str | None, expires_at: str | None, now: datetime.datetime
) -> datetime.datetime | None:
    if expires_in is not None and expires_at is not None:
        raise InvalidRequestError("give --expires-in or --expires-at, not both")
    if expires_at is not None:
        return _parse_time(expires_at)
    if expires_in is None:
        return None
    try:
        return now + _parse_duration(expires_in)
    except OverflowError:
        raise InvalidRequestError(
            f"--expires-in {expires_in} ends after the year 9999; give a shorter duration"
        ) from None


def _tokens(data_dir: Path) -> TokenStore:
    private_dir(data_dir)  # tokens, the admin token and the store: the server's alone
    return TokenStore(data_dir / "tokens.db")


def _first_start(settings: Settings, tokens: TokenStore) -> str | None:
    """On the first start: an admin token, saved (0600) and returned; later: None."""
    path = settings.data_dir / _ADMIN_TOKEN_FILE
    if path.exists():
        return None
    _, secret = tokens.create(name="admin", created_at=_now())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    return secret


def _network(data_dir: Path) -> NetworkPool | None:
    if shutil.which("ip") and shutil.which("iptables"):
        # This data dir's own prefix, subnet and chains: another server on the host (a test
        # server, the embedded one the CLI starts) never touches them, nor we theirs.
        return NetworkPool.for_data_dir(data_dir)
    click.echo("warning: ip or iptables is missing; runs with networking will be refused", err=True)
    return None


@click.command()
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default: 9450].")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where images, operations and tokens live [default: ~/.local/share/sandtree].",
)
def serve(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Serve the REST API v1 on the embedded default (SQLite, local image store, crun).

    Settings also come from SANDTREE_HOST, SANDTREE_PORT, SANDTREE_DATA_DIR and the other
    SANDTREE_* variables. On the first start it prints an admin token once, keeps it in
    <data-dir>/admin-token (0600) and writes the client config the CLI and MCP server read.
    SIGTERM or Ctrl-C stop it cleanly: running sandboxes are stopped first.

    \b
    Example:
      sudo sandtree serve --port 9450 --data-dir /var/lib/sandtree
    """
    if not enter_private_mount_namespace():
        raise click.ClickException("could not enter a private mount namespace; run as root")
    try:
        settings = Settings.from_env(host=host, port=port, data_dir=data_dir)
    except SandtreeError as exc:
        raise click.ClickException(str(exc)) from exc
    # sandtree doctor's checks: a host that cannot run sandboxes refuses here, in one line
    # with the fix, before anything is written to the data dir.
    preflight(settings)
    tokens = _tokens(settings.data_dir)
    try:
        # Held until the process exits: a second server on this data dir refuses to start
        # (it would take this one's sandboxes and firewall for leftovers and remove them).
        DataDirLock(settings.data_dir).acquire()
        network = _network(settings.data_dir)
    except SandtreeError as exc:
        raise click.ClickException(str(exc)) from exc
    url = f"http://{settings.host}:{settings.port}"
    secret = _first_start(settings, tokens)
    if secret is not None:
        client_config = write_client_config(url, secret)
        click.echo(f"admin token (shown once; also in {settings.data_dir / _ADMIN_TOKEN_FILE}):")
        click.echo(f"  {secret}")
        click.echo(f"client config written to {client_config}")
    engine = Engine(settings, network=network)
    app = create_app(engine, tokens_store=tokens)
    click.echo(
        f"sandtree listening on {url} (data in {settings.data_dir}; {engine.cgroups().describe()})"
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        # Open requests (an SSE follower) get a fifth of the shutdown; running work the rest.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout / 5)),
        # Header and linger deadlines, the connection cap, the header size (slowloris).
        **edge_options(settings),
    )
    serve_until_stopped(config, deadline=settings.shutdown_timeout)


@click.group()
def token() -> None:
    """Create, list and revoke API tokens (run on the server's machine).

    \b
    Example:
      sandtree token create --name ci --namespace team-a --permission list --permission spawn
    """


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The server's data directory [default: ~/.local/share/sandtree].",
)


@token.command("create")
@click.option("--name", default="token", show_default=True, help="A label for people.")
@click.option("--namespace", default="default", show_default=True, help="What it sees.")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    type=click.Choice(PERMISSIONS),
    help="Grant this permission (repeat); all of them when none is given.",
)
@click.option(
    "--expires-in",
    metavar="DURATION",
    help="Expire after this long: 90s, 30m, 12h, 7d or 2w [default: never].",
)
@click.option(
    "--expires-at",
    metavar="ISO8601",
    help="Expire at this time, e.g. 2026-07-01T12:00:00Z (UTC unless it names an offset).",
)
@_data_dir_option
def token_create(
    name: str,
    namespace: str,
    permissions: tuple[str, ...],
    expires_in: str | None,
    expires_at: str | None,
    data_dir: Path | None,
) -> None:
    """Create a token and print its UUID and secret (shown only once).

    \b
    Example:
      sandtree token create --name ci --permission list --expires-in 30d
    """
    settings = Settings.from_env(data_dir=data_dir)
    now = datetime.datetime.now(datetime.UTC)
    try:
        record, secret = _tokens(settings.data_dir).create(
            name=name,
            namespace=namespace,
            permissions=permissions or PERMISSIONS,
            created_at=now.isoformat(timespec="seconds"),
            expires_at=_expiry(expires_in, expires_at, now),
        )
    except SandtreeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{record.uuid}  {secret}")
    if record.expires_at is not None:
        click.echo(f"expires at {record.expires_at.isoformat()}", err=True)


@token.command("list")
@_data_dir_option
def token_list(data_dir: Path | None) -> None:
    """List tokens (never their secrets), with when each expires; marks expired ones.

    \b
    Example:
      sandtree token list --data-dir /var/lib/sandtree
    """
    settings = Settings.from_env(data_dir=data_dir)
    store = _tokens(settings.data_dir)
    now = store.now()
    click.echo(_token_row("UUID", "NAME", "NAMESPACE", "STATE", "EXPIRES", "PERMISSIONS"))
    for record in store.list():
        if record.revoked:
            state = "revoked"
        elif record.expired(now):
            state = "expired"
        else:
            state = "active"
        expires = record.expires_at.isoformat() if record.expires_at is not None else "never"
        perms = ",".join(sorted(record.permissions))
        click.echo(_token_row(record.uuid, record.name, record.namespace, state, expires, perms))


def _token_row(
    token_uuid: str, name: str, namespace: str, state: str, expires: str, perms: str
) -> str:
    return f"{token_uuid:<36}  {name:<12} {namespace:<12} {state:<8} {expires:<25} {perms}"


@token.command("revoke")
@click.argument("token_uuid")
@_data_dir_option
def token_revoke(token_uuid: str, data_dir: Path | None) -> None:
    """Revoke a token by its UUID; requests with it get 401 from then on.

    \b
    Example:
      sandtree token revoke 3f6c2a9e-…
    """
    settings = Settings.from_env(data_dir=data_dir)
    try:
        _tokens(settings.data_dir).revoke(token_uuid)
    except SandtreeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked {token_uuid}")
