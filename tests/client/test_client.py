"""SandtreeClient against the app in process: each call, and errors as sandtree errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandtree.client import SandtreeClient, load_connection, write_client_config
from sandtree.engine import Engine
from sandtree.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    ServerUnavailableError,
)

pytestmark = pytest.mark.anyio


async def test_images_are_listed_resolved_by_tag_and_tagged(
    client: SandtreeClient, engine: Engine, rootfs: Path
) -> None:
    base = await engine.import_local(rootfs, tag="base:1")
    assert [i["uuid"] for i in await client.list_images(tag_prefix="base")] == [base.uuid]
    assert await client.resolve_image("tag:base:1") == base.uuid
    assert (await client.get_image(base.uuid))["tag"] == "base:1"
    await client.set_tag(base.uuid, "renamed")
    assert await client.resolve_image("tag:renamed") == base.uuid
    await client.remove_tag(base.uuid, "renamed")
    with pytest.raises(NotFoundError):
        await client.resolve_image("tag:renamed")


async def test_a_run_is_spawned_followed_and_waited_for(
    client: SandtreeClient, engine: Engine, rootfs: Path
) -> None:
    await engine.import_local(rootfs, tag="base")
    op = await client.spawn({"command": "echo hello; write /f x", "image": "tag:base"})
    done = await client.wait_operation(op["uuid"], timeout=10)
    events = [e async for e in client.events(op["uuid"], follow=False)]
    assert done["status"] == "SUCCESS"
    assert b"".join(e.raw() for e in events if e.type == "stdout") == b"hello\n"
    assert events[-1].type == "completion"
    assert [o["uuid"] for o in await client.list_operations(kind="instance")] == [op["uuid"]]


async def test_wait_on_a_finished_operation_answers_at_once(
    client: SandtreeClient, engine: Engine, rootfs: Path
) -> None:
    await engine.import_local(rootfs, tag="base")
    op = await client.spawn({"command": "echo x", "image": "tag:base"})
    await client.wait_operation(op["uuid"], timeout=10)
    assert (await client.wait_operation(op["uuid"], timeout=1))["status"] == "SUCCESS"


async def test_a_wait_that_times_out_leaves_the_operation_running(
    client: SandtreeClient, engine: Engine, rootfs: Path
) -> None:
    await engine.import_local(rootfs, tag="base")
    op = await client.spawn({"command": "block", "image": "tag:base"})
    with pytest.raises(TimeoutError):
        await client.wait_operation(op["uuid"], timeout=0.2)
    assert (await client.get_operation(op["uuid"]))["status"] in ("PENDING", "EXECUTING")
    await client.cancel_operation(op["uuid"])
    assert (await client.wait_operation(op["uuid"], timeout=10))["status"] == "CANCELLED"


async def test_files_upload_once_and_are_found_by_sha256(client: SandtreeClient) -> None:
    first = await client.upload_file(b"content")
    again = await client.upload_file(b"content")
    assert first["sha256"] == again["sha256"]
    assert (await client.find_file(first["sha256"])) is not None
    assert await client.find_file("0" * 64) is None


async def test_inspection_reads_lists_and_greps_without_a_sandbox(
    client: SandtreeClient, engine: Engine, rootfs: Path
) -> None:
    base = await engine.import_local(rootfs, tag="base")
    listing = await client.list_dir(base.uuid, "/")
    assert "etc" in {f["path"] for f in listing["files"]}
    assert "etc" in await client.list_dir_text(base.uuid, "/")
    hostname = await client.read_file(base.uuid, "/etc/hostname")
    assert hostname
    assert await client.read_file(base.uuid, "/etc/hostname", limit=2) == hostname[:2]
    found = await client.grep(base.uuid, pattern=hostname.decode().strip(), path="/etc")
    assert found


async def test_server_errors_arrive_as_sandtree_errors_with_the_server_message(
    client: SandtreeClient,
) -> None:
    with pytest.raises(NotFoundError, match="list_images shows"):
        await client.get_image("00000000-0000-4000-8000-000000000000")
    with pytest.raises(InvalidRequestError, match="'command' is required"):
        await client.spawn({"image": "tag:x"})


async def test_a_token_without_permission_gets_forbidden(engine: Engine, tmp_path: Path) -> None:
    import httpx

    from sandtree.api import TokenStore, create_app

    tokens = TokenStore(tmp_path / "t.db")
    _, secret = tokens.create(name="ro", permissions=["list"], created_at="2026-01-01T00:00:00Z")
    app = create_app(engine, tokens_store=tokens, manage_engine=False)
    async with SandtreeClient("http://x", secret, transport=httpx.ASGITransport(app=app)) as c:
        with pytest.raises(ForbiddenError):
            await c.upload_file(b"x")
    tokens.close()


async def test_an_unreachable_server_says_how_to_start_one() -> None:
    async with SandtreeClient("http://127.0.0.1:9", "t") as c:
        with pytest.raises(ServerUnavailableError, match="sandtree serve"):
            await c.whoami()


def test_connection_comes_from_flags_then_environment_then_config(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert load_connection(environ=env) is None
    write_client_config("http://saved:1", "saved-token", path=tmp_path / "sandtree" / "config.json")
    saved = load_connection(environ=env)
    assert saved is not None
    assert (saved.url, saved.token) == ("http://saved:1", "saved-token")
    from_env = load_connection(
        environ={**env, "SANDTREE_URL": "http://env:2/", "SANDTREE_TOKEN": "e"}
    )
    assert from_env is not None
    assert (from_env.url, from_env.token, from_env.source) == ("http://env:2", "e", "environment")
    flags = load_connection(url="http://flag:3", token="f", environ=env)
    assert flags is not None
    assert (flags.url, flags.token) == ("http://flag:3", "f")


def test_a_broken_config_file_says_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "sandtree" / "config.json"
    path.parent.mkdir()
    path.write_text("{nope")
    with pytest.raises(InvalidRequestError, match="sandtree serve"):
        load_connection(environ={"XDG_CONFIG_HOME": str(tmp_path)})
