"""Our directory states: a synced tree saved once and named by id in runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandtree.testing import read_file

from .conftest import Api

pytestmark = pytest.mark.anyio


async def _upload(api: Api, data: bytes) -> str:
    response = await api.http.post("/v1/files", content=data, headers=api.auth)
    assert response.status_code == 201
    return str(response.json()["uuid"])


async def _run(api: Api, body: dict[str, object]) -> dict[str, object]:
    response = await api.http.post("/v1/instances", json=body, headers=api.auth)
    assert response.status_code == 201, response.text
    op = api.engine.get_operation(response.json()["uuid"])
    done = await api.engine.wait_operation(op, timeout=10)
    return {"status": str(done.status), "result_image": done.result_image, "error": done.error}


async def test_a_run_with_a_directory_state_id_gets_its_files(api: Api, rootfs: Path) -> None:
    await api.engine.import_local(rootfs, tag="base")
    main, lib = await _upload(api, b"print(1)\n"), await _upload(api, b"x = 2\n")
    files = {"/app/main.py": {"uuid": main}, "/app/lib/x.py": {"uuid": lib, "mode": "0600"}}
    created = await api.http.post("/v1/directory_states", json={"files": files}, headers=api.auth)
    assert created.status_code == 201
    state = created.json()
    assert state["file_count"] == 2
    assert created.headers["location"] == f"/v1/directory_states/{state['id']}"

    done = await _run(
        api,
        {"command": "echo ok", "image": "tag:base", "disposable": False,
         "directory_state_id": state["id"]},
    )  # fmt: skip

    assert done["status"] == "SUCCESS", done["error"]
    child = api.engine.resolve_image(str(done["result_image"]))
    assert read_file(api.engine, child, "/app/main.py") == b"print(1)\n"
    assert api.engine.stat_path(child, "/app/lib/x.py").mode & 0o777 == 0o600


async def test_files_in_the_request_win_over_the_directory_state(api: Api, rootfs: Path) -> None:
    await api.engine.import_local(rootfs, tag="base")
    old, new = await _upload(api, b"old"), await _upload(api, b"new")
    created = await api.http.post(
        "/v1/directory_states", json={"files": {"/app/a": {"uuid": old}}}, headers=api.auth
    )
    done = await _run(
        api,
        {"command": "echo ok", "image": "tag:base", "disposable": False,
         "directory_state_id": created.json()["id"], "files": {"/app/a": {"uuid": new}}},
    )  # fmt: skip
    child = api.engine.resolve_image(str(done["result_image"]))
    assert read_file(api.engine, child, "/app/a") == b"new"


async def test_a_directory_state_is_read_back_with_its_files(api: Api) -> None:
    file_id = await _upload(api, b"data")
    files = {"/srv/f": {"uuid": file_id, "mode": "0755"}}
    created = (
        await api.http.post("/v1/directory_states", json={"files": files}, headers=api.auth)
    ).json()
    got = await api.http.get(f"/v1/directory_states/{created['id']}", headers=api.auth)
    assert got.status_code == 200
    assert got.json()["files"] == {"/srv/f": {"uuid": file_id, "mode": "0755", "uid": 0, "gid": 0}}


async def test_directory_states_are_private_to_their_namespace(api: Api, rootfs: Path) -> None:
    file_id = await _upload(api, b"data")
    created = (
        await api.http.post(
            "/v1/directory_states", json={"files": {"/f": {"uuid": file_id}}}, headers=api.auth
        )
    ).json()
    other = api.token(namespace="other")
    got = await api.http.get(f"/v1/directory_states/{created['id']}", headers=other)
    await api.engine.import_local(rootfs, tag="base", namespace="other")
    run = await api.http.post(
        "/v1/instances",
        json={"command": "true", "image": "tag:base", "directory_state_id": created["id"]},
        headers=other,
    )
    assert got.status_code == 404
    assert run.status_code == 400
    assert "sync the directory again" in run.json()["error"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({}, "send a JSON object"),
        ({"files": {"relative/path": {"uuid": "x"}}}, "absolute path"),
        ({"files": {"/a": {"uuid": "00000000-0000-4000-8000-000000000000"}}}, "upload it first"),
        ({"files": {"/a": {"uuid": "x", "mode": "rwx"}}}, "octal"),
    ],
)
async def test_bad_directory_states_are_refused_saying_what_to_send(
    api: Api, body: dict[str, object], complaint: str
) -> None:
    response = await api.http.post("/v1/directory_states", json=body, headers=api.auth)
    assert response.status_code in (400, 404)
    assert complaint in response.json()["error"]


@pytest.mark.parametrize(
    ("owner", "field"),
    [
        ({"uid": -100000, "gid": -100000}, "files['/bin/rootme'].uid"),
        ({"gid": -100000}, "files['/bin/rootme'].gid"),
        ({"uid": 70000}, "files['/bin/rootme'].uid"),
        ({"gid": 2**32}, "files['/bin/rootme'].gid"),
    ],
)
async def test_a_directory_state_with_an_owner_outside_the_sandbox_ids_gets_400(
    api: Api, owner: dict[str, object], field: str
) -> None:
    file_id = await _upload(api, b"#!/bin/sh\n")
    files = {"/bin/rootme": {"uuid": file_id, "mode": "04755", **owner}}

    response = await api.http.post("/v1/directory_states", json={"files": files}, headers=api.auth)

    assert response.status_code == 400
    assert field in response.json()["error"]
    assert "0 to 65535" in response.json()["error"]


async def test_creating_a_directory_state_needs_the_upload_permission(api: Api) -> None:
    response = await api.http.post(
        "/v1/directory_states", json={"files": {}}, headers=api.token("list")
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("0755", 0o755), ("0o100640", 0o640), (0o600, 0o600), ("4755", 0o4755)],
)
async def test_file_modes_are_octal_text_python_octal_or_integers_keeping_permission_bits(
    api: Api, rootfs: Path, mode: object, expected: int
) -> None:
    await api.engine.import_local(rootfs, tag="base")
    file_id = await _upload(api, b"x")
    done = await _run(
        api,
        {"command": "echo ok", "image": "tag:base", "disposable": False,
         "files": {"/app/f": {"uuid": file_id, "mode": mode}}},
    )  # fmt: skip
    child = api.engine.resolve_image(str(done["result_image"]))
    assert api.engine.stat_path(child, "/app/f").mode & 0o7777 == expected
