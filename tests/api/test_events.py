"""``GET /v1/operations/{id}/events``: the event log as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from sandtree.api._sse import sse_frames
from sandtree.engine import ImageRecord, OperationEvent

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
async def image(api: Api, rootfs: Path) -> ImageRecord:
    return await api.engine.import_local(rootfs, tag="base")


def _frames(body: str) -> list[dict[str, Any]]:
    frames = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        frames.append({"id": int(fields["id"]), "event": fields["event"],
                       "data": json.loads(fields["data"])})  # fmt: skip
    return frames


async def _run(api: Api, command: str) -> str:
    response = await api.http.post(
        "/v1/instances", headers=api.auth, json={"command": command, "image": "tag:base"}
    )
    op_id: str = response.json()["uuid"]
    return op_id


async def _run_to_end(api: Api, command: str) -> str:
    op_id = await _run(api, command)
    with anyio.fail_after(10):
        await api.engine.wait_operation(api.engine.get_operation(op_id))
    return op_id


async def _events(api: Api, op_id: str, **params: str) -> list[dict[str, Any]]:
    headers = {**api.auth, **params.pop("headers", {})}  # type: ignore[arg-type]
    response = await api.http.get(f"/v1/operations/{op_id}/events", headers=headers, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return _frames(response.text)


async def test_a_finished_operation_streams_its_whole_log_ending_with_completion(
    api: Api, image: ImageRecord
) -> None:
    op_id = await _run_to_end(api, "echo one; echoerr two")

    frames = await _events(api, op_id)

    assert [f["event"] for f in frames] == [f["data"]["type"] for f in frames]
    assert [f["id"] for f in frames] == sorted(f["id"] for f in frames)
    assert frames[0]["event"] == "init"
    assert frames[-1]["event"] == "completion"
    assert frames[-1]["data"]["data"]["status"] == "SUCCESS"
    assert "spid" not in frames[-1]["data"]
    out = [f["data"]["data"]["value"] for f in frames if f["event"] == "stdout"]
    assert out == ["one\n"]


async def test_since_and_last_event_id_resume_and_spid_filters(
    api: Api, image: ImageRecord
) -> None:
    op_id = await _run_to_end(api, "echo one")
    everything = await _events(api, op_id)
    middle = everything[2]["id"]

    after_query = await _events(api, op_id, since=str(middle))
    after_header = await _events(api, op_id, since="0", headers={"Last-Event-Id": str(middle)})
    main_process = await _events(api, op_id, spid="1")

    assert after_query == everything[3:]
    assert after_header == everything[3:]  # the header wins over ?since
    assert main_process == [f for f in everything if f["data"].get("spid") == 1]
    assert main_process


async def test_follow_streams_a_running_operation_until_it_ends(
    api: Api, image: ImageRecord
) -> None:
    op_id = await _run(api, "echo started; block")

    async def cancel_once_started() -> None:
        with anyio.fail_after(10):
            async for event in api.engine.follow_events(api.engine.get_operation(op_id)):
                if event.type == "stdout":
                    break
        await api.engine.cancel_operation(api.engine.get_operation(op_id))

    canceller = asyncio.create_task(cancel_once_started())
    with anyio.fail_after(20):
        frames = await _events(api, op_id, follow="1")
    await canceller

    assert frames[-1]["event"] == "completion"
    assert frames[-1]["data"]["data"]["status"] == "CANCELLED"
    assert any(f["event"] == "stdout" for f in frames)


async def test_follow_without_a_spawn_permission_is_forbidden(api: Api, image: ImageRecord) -> None:
    op_id = await _run(api, "echo one")

    response = await api.http.get(
        f"/v1/operations/{op_id}/events", headers=api.token("list"), params={"follow": ""}
    )

    assert response.status_code == 403
    assert "follow=0" in response.json()["error"]


async def test_bad_stream_parameters_get_400(api: Api, image: ImageRecord) -> None:
    op_id = await _run(api, "echo one")

    for params in ({"since": "x"}, {"spid": "one"}, {"follow": "yes"}):
        response = await api.http.get(
            f"/v1/operations/{op_id}/events", headers=api.auth, params=params
        )
        assert response.status_code == 400, params


async def test_an_idle_stream_sends_keepalive_comments() -> None:
    release = asyncio.Event()

    async def slow_events() -> AsyncIterator[OperationEvent]:
        await release.wait()
        yield OperationEvent(id=1, ts="t", type="init", data={})

    frames = sse_frames(slow_events(), keepalive=0.01)
    with anyio.fail_after(10):
        first = await frames.__anext__()
        release.set()
        rest = [frame async for frame in frames if not frame.startswith(b":")]

    assert first == b": keepalive\n\n"
    assert rest == [b'id: 1\nevent: init\ndata: {"id":1,"ts":"t","type":"init","data":{}}\n\n']
