"""``/v1/operations/{id}/subprocesses``: exec into a running instance, results, signals, stdin."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from sandtree.engine import ImageRecord, OperationEvent

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
async def image(api: Api, rootfs: Path) -> ImageRecord:
    return await api.engine.import_local(rootfs, tag="base")


async def _start(api: Api, body: dict[str, Any]) -> str:
    response = await api.http.post(
        "/v1/instances", headers=api.auth, json={"image": "tag:base", **body}
    )
    assert response.status_code == 201, response.text
    op_id: str = response.json()["uuid"]
    await _event(api, op_id, "spawn", spid=1)
    return op_id


async def _event(api: Api, op_id: str, kind: str, *, spid: int) -> OperationEvent:
    with anyio.fail_after(10):
        async for event in api.engine.follow_events(api.engine.get_operation(op_id)):
            if event.type == kind and event.spid == spid:
                return event
    raise AssertionError(f"no {kind} event for spid {spid}")


async def test_a_subprocess_runs_in_a_running_instance_and_reports_its_result(
    api: Api, image: ImageRecord
) -> None:
    op_id = await _start(api, {"command": "block"})

    created = await api.http.post(
        f"/v1/operations/{op_id}/subprocesses", headers=api.auth,
        json={"command": "echo from-sub; exit 3", "shell": True},
    )  # fmt: skip
    await _event(api, op_id, "exit", spid=2)
    result = await api.http.get(created.headers["Location"], headers=api.auth)

    assert created.status_code == 201
    assert created.json() == {"spid": 2}
    assert created.headers["Location"] == f"/v1/operations/{op_id}/subprocesses/2"
    body = result.json()
    assert body["stdout"]["value"] == "from-sub\n"
    assert body["state"]["exit_code"] == 3
    await api.http.delete(f"/v1/operations/{op_id}", headers=api.auth)


async def test_stdin_left_open_takes_later_writes_until_closed(
    api: Api, image: ImageRecord
) -> None:
    op_id = await _start(api, {"command": "cat", "stdin": {"value": "first ", "close": False}})

    more = await api.http.post(
        f"/v1/operations/{op_id}/subprocesses/1/stdin", headers=api.auth,
        json={"value": "second", "close": True},
    )  # fmt: skip
    with anyio.fail_after(10):
        done = await api.engine.wait_operation(api.engine.get_operation(op_id))

    assert more.status_code == 204
    assert done.result is not None
    assert done.result["stdout"]["value"] == "first second"


async def test_a_subprocess_can_be_signalled_by_name(api: Api, image: ImageRecord) -> None:
    op_id = await _start(api, {"command": "block"})
    await api.http.post(
        f"/v1/operations/{op_id}/subprocesses", headers=api.auth, json={"command": "block"}
    )
    await _event(api, op_id, "spawn", spid=2)

    killed = await api.http.delete(
        f"/v1/operations/{op_id}/subprocesses/2", headers=api.auth, params={"signal": "TERM"}
    )
    exit = await _event(api, op_id, "exit", spid=2)

    assert killed.status_code == 204
    assert exit.data["signal"] == 15
    bad = await api.http.delete(
        f"/v1/operations/{op_id}/subprocesses/2", headers=api.auth, params={"signal": "NOPE"}
    )
    assert bad.status_code == 400
    await api.http.delete(f"/v1/operations/{op_id}", headers=api.auth)


async def test_subprocesses_need_a_running_instance(api: Api, image: ImageRecord) -> None:
    finished = (
        await api.http.post("/v1/instances", headers=api.auth,
                            json={"command": "echo done", "image": "tag:base"})
    ).json()["uuid"]  # fmt: skip
    with anyio.fail_after(10):
        await api.engine.wait_operation(api.engine.get_operation(finished))

    late = await api.http.post(
        f"/v1/operations/{finished}/subprocesses", headers=api.auth, json={"command": "true"}
    )
    unknown = await api.http.get(f"/v1/operations/{finished}/subprocesses/7", headers=api.auth)
    main = await api.http.get(f"/v1/operations/{finished}/subprocesses/1", headers=api.auth)

    assert late.status_code == 409
    assert "ended SUCCESS" in late.json()["error"]
    assert "Retry-After" not in late.headers
    assert unknown.status_code == 404
    assert main.json()["state"]["exit_code"] == 0
    assert main.json()["stdout"]["value"] == "done\n"


async def test_a_disposable_only_token_may_exec_into_its_disposable_instance(
    api: Api, image: ImageRecord
) -> None:
    headers = api.token("spawn_disposable", "list")
    created = await api.http.post(
        "/v1/instances", headers=headers,
        json={"command": "block", "image": "tag:base", "disposable": True},
    )  # fmt: skip
    op_id = created.json()["uuid"]
    await _event(api, op_id, "spawn", spid=1)

    response = await api.http.post(
        f"/v1/operations/{op_id}/subprocesses", headers=headers, json={"command": "true"}
    )

    assert response.status_code == 201
    await api.http.delete(f"/v1/operations/{op_id}", headers=api.auth)
