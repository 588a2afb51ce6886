"""Subprocesses, stdin and signals of a run whose sandbox is still starting: ``425 Too Early``
with ``Retry-After`` (the public clients retry it), never the 409 of an ended operation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from sandtree.engine import Engine, ImageRecord
from sandtree.engine.runtime import FakeRuntime
from sandtree.testing import make_engine

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
async def engine(tmp_path: Path, runtime: FakeRuntime) -> AsyncIterator[Engine]:
    """The API's engine, on a fake runtime whose sandbox starts the test can hold."""
    async with make_engine(tmp_path / "data", runtime=runtime) as eng:
        yield eng


@pytest.fixture
async def image(api: Api, rootfs: Path) -> ImageRecord:
    return await api.engine.import_local(rootfs, tag="base")


async def _held_run(api: Api, runtime: FakeRuntime) -> str:
    """A run that reads EXECUTING while its sandbox has not started."""
    runtime.start_gate = asyncio.Event()
    created = await api.http.post(
        "/v1/instances", headers=api.auth, json={"image": "tag:base", "command": "cat",
                                                 "stdin": {"value": "", "close": False}},
    )  # fmt: skip
    op_id: str = created.json()["uuid"]
    with anyio.fail_after(10):
        await runtime.at_gate.wait()
    assert api.engine.get_operation(op_id).status == "EXECUTING"
    return op_id


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/subprocesses", {"command": "echo sub", "shell": True}),
        ("POST", "/subprocesses/1/stdin", {"value": "fed", "close": True}),
        ("DELETE", "/subprocesses/1", None),
    ],
)
async def test_a_run_still_starting_answers_425_with_retry_after_not_409(
    api: Api, image: ImageRecord, runtime: FakeRuntime, method: str, path: str,
    body: dict[str, object] | None,
) -> None:  # fmt: skip
    op_id = await _held_run(api, runtime)

    early = await api.http.request(
        method, f"/v1/operations/{op_id}{path}", headers=api.auth, json=body
    )

    assert early.status_code == 425, early.text
    assert early.headers["Retry-After"] == "1"
    assert "retry" in early.json()["error"]
    assert api.engine.get_operation(op_id).status == "EXECUTING"
    assert runtime.started == []  # the request reached no sandbox
    assert runtime.start_gate is not None
    runtime.start_gate.set()
    await api.http.delete(f"/v1/operations/{op_id}", headers=api.auth)


async def test_the_same_request_is_served_once_the_sandbox_is_up(
    api: Api, image: ImageRecord, runtime: FakeRuntime
) -> None:
    op_id = await _held_run(api, runtime)
    early = await api.http.post(
        f"/v1/operations/{op_id}/subprocesses", headers=api.auth, json={"command": "block"}
    )
    assert runtime.start_gate is not None
    runtime.start_gate.set()

    # The main process's spawn event is logged in the same step that makes the run live.
    with anyio.fail_after(10):
        async for event in api.engine.follow_events(api.engine.get_operation(op_id)):
            if event.type == "spawn" and event.spid == 1:
                break
    again = await api.http.post(
        f"/v1/operations/{op_id}/subprocesses", headers=api.auth, json={"command": "block"}
    )

    assert early.status_code == 425
    assert again.status_code == 201, again.text
    assert again.json() == {"spid": 2}
    await api.http.delete(f"/v1/operations/{op_id}", headers=api.auth)
