"""``POST /v1/instances`` and ``/v1/operations`` in process, on the fake runtime."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from sandtree.engine import ImageRecord, OperationQuery

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
async def image(api: Api, rootfs: Path) -> ImageRecord:
    return await api.engine.import_local(rootfs, tag="base")


async def _spawn(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return await api.http.post("/v1/instances", json=body, headers=headers or api.auth)


async def _finished(api: Api, op_id: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        await api.engine.wait_operation(api.engine.get_operation(op_id))
    response = await api.http.get(f"/v1/operations/{op_id}", headers=api.auth)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_spawn_answers_201_with_location_and_the_run_ends_with_its_result(
    api: Api, image: ImageRecord
) -> None:
    body = {"command": "echo hello; write /out x", "image": "tag:base", "shell": True}

    response = await _spawn(api, body)

    assert response.status_code == 201
    created = response.json()
    assert response.headers["Location"] == f"/v1/operations/{created['uuid']}"
    assert created["image"] == image.uuid
    assert created["command"] == body["command"]
    op = await _finished(api, created["uuid"])
    assert op["status"] == "SUCCESS"
    assert op["kind"] == "instance"
    assert op["image_uuid"] == image.uuid
    result = op["metadata"]["result"]
    assert result["state"]["exit_code"] == 0
    assert result["stdout"] == {"value": "hello\n", "encoding": "ascii", "truncated": False}
    assert op["result_image_uuid"] == result["result_image"] != image.uuid
    assert op["result"] == {"image": op["result_image_uuid"], "tag": None}
    assert "Retry-After" not in (await api.http.get(response.headers["Location"],
                                                    headers=api.auth)).headers  # fmt: skip


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"image": "tag:base"}, "'command' is required"),
        ({"command": "true"}, "'image' is required"),
        ({"command": "true", "image": "tag:base", "shell": "yes"}, "'shell' must be bool"),
        ({"command": "true", "image": "tag:base", "timeout": True}, "'timeout' must be int"),
        ({"command": "true", "image": "tag:base", "cwd": "relative"}, "'cwd' must be"),
        ({"command": "true", "image": "tag:base", "env": {"A": 1}}, "'env' values"),
        ({"command": "true", "image": "tag:base", "stdin": "x"}, "stdin must be"),
        (
            {"command": "true", "image": "tag:base", "files": {"rel": {"uuid": "x"}}},
            "absolute path",
        ),
        ({"command": "true", "image": "tag:nope"}, "no image is tagged 'nope'"),
        ({"command": "true", "image": "tag:base", "timeout": 0}, "timeout must be between"),
    ],
)
async def test_a_bad_spawn_request_gets_4xx_naming_the_field(
    api: Api, image: ImageRecord, body: dict[str, Any], complaint: str
) -> None:
    response = await _spawn(api, body)

    assert response.status_code in (400, 404)
    assert complaint in response.json()["error"]


@pytest.mark.parametrize(
    ("owner", "field"),
    [
        ({"uid": -100000, "gid": -100000}, "files['/bin/rootme'].uid"),
        ({"uid": 0, "gid": -1}, "files['/bin/rootme'].gid"),
        ({"uid": 70000}, "files['/bin/rootme'].uid"),
        ({"gid": 2**32}, "files['/bin/rootme'].gid"),
        ({"uid": "0"}, "'uid' must be int"),
    ],
)
async def test_a_placed_file_owned_outside_the_sandbox_ids_gets_400_naming_field_and_range(
    api: Api, image: ImageRecord, owner: dict[str, Any], field: str
) -> None:
    uploaded = await api.http.post("/v1/files", content=b"#!/bin/sh\n", headers=api.auth)
    meta = {"uuid": uploaded.json()["uuid"], "mode": "04755", **owner}
    body = {"command": "true", "image": "tag:base", "files": {"/bin/rootme": meta}}

    response = await _spawn(api, body)

    assert response.status_code == 400
    assert field in response.json()["error"]
    if "must be int" not in field:
        assert "0 to 65535" in response.json()["error"]
    assert api.engine.list_operations(OperationQuery()) == []


@pytest.mark.parametrize("owner", [{"uid": -100000}, {"gid": -100000}, {"uid": 65536}])
async def test_a_run_as_an_id_outside_the_sandbox_gets_400_naming_field_and_range(
    api: Api, image: ImageRecord, owner: dict[str, Any]
) -> None:
    response = await _spawn(api, {"command": "true", "image": "tag:base", "cwd": "/new", **owner})

    assert response.status_code == 400
    assert f"'{next(iter(owner))}'" in response.json()["error"]
    assert "0 to 65535" in response.json()["error"]


async def test_a_disposable_only_token_cannot_keep_results(api: Api, image: ImageRecord) -> None:
    headers = api.token("spawn_disposable", "list")
    body = {"command": "true", "image": "tag:base"}

    kept = await _spawn(api, {**body, "disposable": False}, headers)
    thrown_away = await _spawn(api, {**body, "disposable": True}, headers)

    assert kept.status_code == 403
    assert '"disposable": true' in kept.json()["error"]
    assert thrown_away.status_code == 201


async def test_a_timeout_above_the_token_limit_is_refused(api: Api, image: ImageRecord) -> None:
    response = await _spawn(api, {"command": "true", "image": "tag:base", "timeout": 7200})

    assert response.status_code == 400
    assert "limit of 3600 s" in response.json()["error"]


async def test_a_default_timeout_is_lowered_to_the_token_limit_instead_of_refused(
    api: Api, image: ImageRecord
) -> None:
    headers = api.token(limits={"instance_max_timeout": 5})
    response = await _spawn(api, {"command": "true", "image": "tag:base"}, headers)

    assert response.status_code == 201
    op = api.engine.get_operation(response.json()["uuid"])
    done = await api.engine.wait_operation(op, timeout=10)
    assert done.status == "SUCCESS"


async def test_cancel_stops_a_running_operation_and_a_second_cancel_conflicts(
    api: Api, image: ImageRecord
) -> None:
    created = (await _spawn(api, {"command": "block", "image": "tag:base"})).json()
    location = f"/v1/operations/{created['uuid']}"
    live = await api.http.get(location, headers=api.auth)
    assert live.headers["Retry-After"] == "1"

    cancelled = await api.http.delete(location, headers=api.auth)
    again = await api.http.delete(location, headers=api.auth)

    assert cancelled.status_code == 202
    assert (await _finished(api, created["uuid"]))["status"] == "CANCELLED"
    assert again.status_code == 409


async def test_list_operations_filters_by_status_and_kind(api: Api, image: ImageRecord) -> None:
    ok = (await _spawn(api, {"command": "true", "image": "tag:base"})).json()["uuid"]
    bad = (await _spawn(api, {"command": "oom", "image": "tag:base"})).json()["uuid"]
    await _finished(api, ok)
    await _finished(api, bad)

    async def listed(**params: str) -> list[str]:
        response = await api.http.get("/v1/operations", headers=api.auth, params=params)
        assert response.status_code == 200, response.text
        return [o["uuid"] for o in response.json()]

    assert set(await listed()) == {ok, bad}
    assert await listed(status="SUCCESS") == [ok]
    assert await listed(kind="image_import") == []
    assert await listed(limit="1") == [bad]  # newest first
    bad_filter = await api.http.get("/v1/operations", headers=api.auth, params={"status": "x"})
    assert bad_filter.status_code == 400


async def test_operations_of_another_namespace_are_not_found(api: Api, image: ImageRecord) -> None:
    created = (await _spawn(api, {"command": "true", "image": "tag:base"})).json()
    other = api.token(namespace="team-b")

    response = await api.http.get(f"/v1/operations/{created['uuid']}", headers=other)

    assert response.status_code == 404
    assert (await api.http.get("/v1/operations", headers=other)).json() == []


async def test_a_body_past_the_size_cap_is_refused_pointing_at_file_uploads(
    api: Api, image: ImageRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = dataclasses.replace(api.engine.settings, max_json_bytes=1000)
    monkeypatch.setattr(api.engine, "settings", small)
    stdin = {"value": "x" * 2000}

    response = await _spawn(api, {"command": "cat", "image": "tag:base", "stdin": stdin})

    assert response.status_code == 413
    assert "1000 bytes" in response.json()["error"]
    assert "POST /v1/files" in response.json()["error"]


async def test_a_live_operation_reports_its_duration_so_far(api: Api, image: ImageRecord) -> None:
    # contree-sdk reads `duration` as a number on every poll, live operations included.
    created = (await _spawn(api, {"command": "block", "image": "tag:base"})).json()

    live = (await api.http.get(f"/v1/operations/{created['uuid']}", headers=api.auth)).json()
    await api.engine.cancel_operation(api.engine.get_operation(created["uuid"]))

    assert isinstance(live["duration"], float)
    assert live["duration"] >= 0


async def test_a_token_past_its_concurrency_limit_gets_429_until_one_ends(
    api: Api, image: ImageRecord
) -> None:
    _, secret = api.tokens.create(
        name="small", limits={"instance_max_concurrency": 1}, created_at="2026-01-01T00:00:00"
    )
    headers = {"Authorization": f"Bearer {secret}"}
    first = (await _spawn(api, {"command": "block", "image": "tag:base"}, headers)).json()

    refused = await _spawn(api, {"command": "true", "image": "tag:base"}, headers)
    other_token = await _spawn(api, {"command": "true", "image": "tag:base"})
    await api.engine.cancel_operation(api.engine.get_operation(first["uuid"]))
    accepted = await _spawn(api, {"command": "true", "image": "tag:base"}, headers)

    assert refused.status_code == 429
    assert "limit is 1" in refused.json()["error"]
    assert other_token.status_code == 201
    assert accepted.status_code == 201


async def test_env_values_are_masked_in_what_the_operation_keeps_and_serves(
    api: Api, image: ImageRecord
) -> None:
    env = {"DATABASE_URL": "postgres://u:hunter2@db/x", "GITHUB_TOKEN": "s3cr3t", "GONE": None}
    body = {"command": "env", "image": "tag:base", "shell": True, "env": env}

    created = await _spawn(api, body)
    op = await _finished(api, created.json()["uuid"])

    masked = {"DATABASE_URL": "<MASKED>", "GITHUB_TOKEN": "<MASKED>", "GONE": None}
    assert created.json()["env"] == masked
    assert op["metadata"]["env"] == masked
    assert api.engine.get_operation(op["uuid"]).request["env"] == masked  # as stored
    stdout = op["metadata"]["result"]["stdout"]["value"]
    assert "DATABASE_URL=postgres://u:hunter2@db/x" in stdout  # the run itself got the values
    events = (await api.http.get(f"/v1/operations/{op['uuid']}/events", headers=api.auth)).text
    frames = [f for f in events.split("\n\n") if f.strip()]
    served = [f for f in frames if "event: stdout" not in f]  # all but the run's own output
    assert any("event: spawn" in f for f in served)
    assert not [f for f in served if "hunter2" in f or "s3cr3t" in f]
