"""``POST /v1/images/import`` in process: imports from a real registry on loopback, what the
operation shows (result, masked metadata, progress events), validation, permissions, limits,
namespaces and cancel."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from sandtree.engine import Engine, OperationRecord
from sandtree.testing import make_engine
from sandtree.testing_registry import (
    Entry,
    LocalRegistry,
    ScriptedRegistry,
    TestImage,
    layer_tar,
)

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """The fake-runtime engine, with the operator allowing the loopback test registries."""
    async with make_engine(tmp_path / "data", insecure_registries="127.0.0.1") as eng:
        yield eng


HELLO = layer_tar(
    [
        Entry(path="etc", kind="dir"),
        Entry(path="etc/hello", data=b"hello\n"),
        Entry(path="bin", kind="dir"),
        Entry(path="bin/tool", data=b"#!/bin/sh\n", mode=0o755),
    ]
)
PROGRESS_FIELDS = {
    "phase",
    "layers_total",
    "layers_done",
    "layers_reused",
    "bytes_total",
    "bytes_done",
    "warnings",
}
#: Nothing listens here: an import that got past validation by mistake fails at once.
UNREACHABLE = "docker://127.0.0.1:1/test/one"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An anonymous registry holding ``test/one:latest`` (one layer with /etc/hello) and
    ``test/index:latest`` (linux/amd64 and linux/arm64/v8 images, each with its /arch)."""
    tmp = tmp_path_factory.mktemp("registry")
    with LocalRegistry(tmp / "registry") as reg:
        reg.push_image("test/one:latest", [TestImage(layers=[HELLO])], tmp)
        arm = layer_tar([Entry(path="arch", data=b"arm64\n")])
        amd = layer_tar([Entry(path="arch", data=b"amd64\n")])
        platforms = [
            TestImage(layers=[arm], platform="linux/arm64/v8"),
            TestImage(layers=[amd], platform="linux/amd64"),
        ]
        reg.push_image("test/index:latest", platforms, tmp)
        yield reg


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry behind HTTP basic auth holding ``private/app:1``."""
    tmp = tmp_path_factory.mktemp("private")
    with LocalRegistry(tmp / "registry", auth="basic", password="hunter2-not-shown") as reg:
        reg.push_image("private/app:1", [TestImage(layers=[HELLO])], tmp)
        yield reg


@pytest.fixture
def scripted() -> Iterator[ScriptedRegistry]:
    with ScriptedRegistry() as reg:
        yield reg


def _one(registry: LocalRegistry) -> str:
    return f"docker://{registry.host}/test/one:latest"


async def _import(
    api: Api, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    response: httpx.Response = await api.http.post(
        "/v1/images/import", headers=headers or api.auth, json=body
    )
    return response


async def _started(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    response = await _import(api, body, headers)
    assert response.status_code == 201, response.text
    op_id: str = response.json()["uuid"]
    return op_id


async def _ended(api: Api, op_id: str, namespace: str = "default") -> OperationRecord:
    with anyio.fail_after(30):
        done: OperationRecord = await api.engine.wait_operation(
            api.engine.get_operation(op_id, namespaces=(namespace,))
        )
    return done


async def _finished(api: Api, op_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The operation as ``GET /v1/operations/{id}`` shows it once it has ended."""
    headers = headers or api.auth
    namespace = (await api.http.get("/v1/whoami", headers=headers)).json()["namespace"]
    await _ended(api, op_id, namespace)
    response = await api.http.get(f"/v1/operations/{op_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _frames(body: str) -> list[dict[str, Any]]:
    """SSE frames as {"id", "event", "data"}; keepalive comments skipped."""
    frames = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            frames.append({"id": int(fields["id"]), "event": fields["event"],
                           "data": json.loads(fields["data"])})  # fmt: skip
    return frames


async def _events(
    api: Api, op_id: str, headers: dict[str, str] | None = None, **params: str
) -> list[dict[str, Any]]:
    response = await api.http.get(
        f"/v1/operations/{op_id}/events", headers=headers or api.auth, params=params
    )
    assert response.status_code == 200, response.text
    return _frames(response.text)


def _progress(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["data"]["data"] for f in frames if f["event"] == "progress"]


async def _images(api: Api, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await api.http.get("/v1/images", headers=headers)
    assert response.status_code == 200, response.text
    images: list[dict[str, Any]] = response.json()["images"]
    return images


async def _imports(api: Api, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
    response = await api.http.get(
        "/v1/operations", headers=headers, params={"kind": "image_import", **params}
    )
    assert response.status_code == 200, response.text
    ops: list[dict[str, Any]] = response.json()
    return ops


async def test_an_import_answers_201_with_location_and_ends_with_a_tagged_readable_image(
    api: Api, registry: LocalRegistry
) -> None:
    url = _one(registry)

    response = await _import(api, {"registry": {"url": url}, "tag": "one:latest"})

    assert response.status_code == 201, response.text
    op_id = response.json()["uuid"]
    assert response.headers["Location"] == f"/v1/operations/{op_id}"
    op = await _finished(api, op_id)
    assert (op["status"], op["kind"], op["error"]) == ("SUCCESS", "image_import", None)
    image_id = op["result"]["image"]
    assert op["result"] == {"image": image_id, "tag": "one:latest"}
    assert op["result_image_uuid"] == image_id
    assert op["image_uuid"] is None
    assert op["image_size"] > 0
    assert op["metadata"] == {"registry": {"url": url}, "tag": "one:latest", "timeout": 300}
    listed = await _images(api, api.auth)
    assert [(i["uuid"], i["tag"], i["operation_uuid"]) for i in listed] == [
        (image_id, "one:latest", op_id)
    ]
    found = await api.http.get("/v1/inspect/", headers=api.auth, params={"tag": "one:latest"})
    assert found.headers["Location"] == f"/v1/inspect/{image_id}/"
    hello = await api.http.get(
        f"/v1/inspect/{image_id}/download", headers=api.auth, params={"path": "/etc/hello"}
    )
    assert hello.content == b"hello\n"
    etc = await api.http.get(
        f"/v1/inspect/{image_id}/list", headers=api.auth, params={"path": "/etc"}
    )
    assert [f["path"] for f in etc.json()["files"]] == ["hello"]


async def test_an_import_without_a_tag_makes_an_untagged_image_known_by_its_uuid(
    api: Api, registry: LocalRegistry
) -> None:
    op = await _finished(api, await _started(api, {"registry": {"url": _one(registry)}}))

    assert op["status"] == "SUCCESS", op["error"]
    assert op["result"]["tag"] is None
    assert op["metadata"]["tag"] is None
    listed = await _images(api, api.auth)
    assert [(i["uuid"], i["tag"]) for i in listed] == [(op["result"]["image"], None)]


async def test_the_platform_extension_picks_from_a_multi_platform_index_and_is_shown(
    api: Api, registry: LocalRegistry
) -> None:
    url = f"docker://{registry.host}/test/index"

    arm = await _finished(api, await _started(api, {"registry": {"url": url},
                                                    "platform": "linux/arm64/v8"}))  # fmt: skip
    amd = await _finished(api, await _started(api, {"registry": {"url": url}}))
    s390x = await _finished(api, await _started(api, {"registry": {"url": url},
                                                      "platform": "linux/s390x"}))  # fmt: skip

    async def arch(op: dict[str, Any]) -> bytes:
        response: httpx.Response = await api.http.get(
            f"/v1/inspect/{op['result']['image']}/download", headers=api.auth,
            params={"path": "/arch"},
        )  # fmt: skip
        return response.content

    assert (arm["status"], amd["status"]) == ("SUCCESS", "SUCCESS")
    assert await arch(arm) == b"arm64\n"
    assert await arch(amd) == b"amd64\n"  # linux/amd64 unless told otherwise
    assert arm["metadata"]["platform"] == "linux/arm64/v8"
    assert "platform" not in amd["metadata"]
    assert s390x["status"] == "FAILED"
    assert "no linux/s390x image" in s390x["error"]


async def test_the_operation_shows_the_registry_username_and_masks_the_password(
    api: Api, private: LocalRegistry
) -> None:
    url = f"docker://{private.host}/private/app:1"
    credentials = {"username": private.username, "password": private.password}

    op_id = await _started(api, {"registry": {"url": url, "credentials": credentials}})

    op = await _finished(api, op_id)
    assert op["status"] == "SUCCESS", op["error"]
    shown = {"username": private.username, "password": "<MASKED>"}
    assert op["metadata"]["registry"] == {"url": url, "credentials": shown}
    listed = await api.http.get("/v1/operations", headers=api.auth)
    events = await api.http.get(f"/v1/operations/{op_id}/events", headers=api.auth)
    for text in (json.dumps(op), listed.text, events.text):
        assert private.password not in text
    stored = api.engine.store.get_operation(op_id)
    assert stored is not None
    assert private.password not in json.dumps(dict(stored.request))


async def test_a_failed_import_shows_the_registry_complaint_as_the_operation_error(
    api: Api, private: LocalRegistry
) -> None:
    url = f"docker://{private.host}/private/app:1"
    wrong = {"username": private.username, "password": "wrong"}

    op = await _finished(api, await _started(api, {"registry": {"url": url, "credentials": wrong}}))

    assert op["status"] == "FAILED"
    assert f"refused the credentials of user '{private.username}'" in op["error"]
    assert op["result"] == {"image": None, "tag": None}
    assert op["result_image_uuid"] is None
    assert await _images(api, api.auth) == []


async def test_the_event_stream_of_an_import_is_progress_events_then_completion(
    api: Api, registry: LocalRegistry
) -> None:
    op_id = await _started(api, {"registry": {"url": _one(registry)}})

    with anyio.fail_after(30):
        followed = await _events(api, op_id, follow="1")  # ends with the operation
    replayed = await _events(api, op_id)

    assert followed == replayed
    assert [f["event"] for f in followed[:-1]] == ["progress"] * (len(followed) - 1)
    assert followed[-1]["event"] == "completion"
    assert followed[-1]["data"]["data"]["status"] == "SUCCESS"
    progress = _progress(followed)
    assert progress
    assert all(set(p) == PROGRESS_FIELDS for p in progress)
    assert all("spid" not in f["data"] for f in followed)  # no process: spid is null
    last = progress[-1]
    assert last["phase"] == "done"
    assert (last["layers_total"], last["layers_done"], last["layers_reused"]) == (1, 1, 0)
    assert last["bytes_done"] == last["bytes_total"] > 0
    assert [p["bytes_done"] for p in progress] == sorted(p["bytes_done"] for p in progress)


async def test_import_with_a_token_lacking_import_permission_is_forbidden(
    api: Api, registry: LocalRegistry
) -> None:
    everything_else = api.token("list", "spawn", "spawn_disposable", "cancel", "set_image_tag",
                                "upload")  # fmt: skip

    response = await _import(api, {"registry": {"url": _one(registry)}}, everything_else)

    assert response.status_code == 403
    assert "'import'" in response.json()["error"]
    assert await _imports(api, api.auth) == []


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"registry": {}}, "'registry.url' is required"),
        ({"tag": "one:latest"}, "'registry.url' is required"),
        ({"registry": "docker://alpine"}, "'registry.url' is required"),
        ([UNREACHABLE], "send a JSON object like"),
        ({"registry": {"url": "oci-archive:/x"}}, "only docker:// registry references"),
        ({"registry": {"url": "https://127.0.0.1:1/x"}}, "uses https://"),
        ({"registry": {"url": "docker://127.0.0.1:1/Upper"}}, "not a valid repository name"),
        ({"registry": {"url": UNREACHABLE}, "tag": "bad tag!"}, "'bad tag!' is not a valid tag"),
        ({"registry": {"url": UNREACHABLE}, "tag": ""}, "'tag' must be a non-empty string"),
        ({"registry": {"url": UNREACHABLE}, "timeout": "soon"}, "'timeout' must be a whole"),
        ({"registry": {"url": UNREACHABLE}, "timeout": 1.5}, "'timeout' must be a whole"),
        ({"registry": {"url": UNREACHABLE}, "timeout": True}, "'timeout' must be a whole"),
        ({"registry": {"url": UNREACHABLE}, "timeout": 0}, "timeout must be between 1 and"),
        (
            {"registry": {"url": UNREACHABLE}, "timeout": 601},
            "timeout 601 s is above this token's import limit of 600 s",
        ),
        (
            {"registry": {"url": UNREACHABLE, "credentials": "user:pass"}},
            "'registry.credentials' must be an object",
        ),
        (
            {"registry": {"url": UNREACHABLE, "credentials": {"username": "u"}}},
            "needs both a username and a password",
        ),
        ({"registry": {"url": UNREACHABLE}, "platform": "amd64"}, "platform 'amd64' is malformed"),
    ],
)
async def test_a_bad_import_body_gets_400_saying_what_is_wrong_and_starts_nothing(
    api: Api, body: Any, complaint: str
) -> None:
    headers = api.token(limits={"images_import_max_timeout": 600})

    response = await _import(api, body, headers)

    assert response.status_code == 400, response.text
    assert complaint in response.json()["error"]
    assert await _imports(api, headers) == []


async def test_a_body_that_is_not_json_gets_400_showing_an_example(api: Api) -> None:
    response = await api.http.post("/v1/images/import", headers=api.auth, content=b"docker://x")

    assert response.status_code == 400
    assert '{"registry": {"url": ' in response.json()["error"]


async def test_an_import_in_one_namespace_is_invisible_to_another_which_gets_its_own_image(
    api: Api, registry: LocalRegistry
) -> None:
    team_a, team_b = api.token(namespace="team-a"), api.token(namespace="team-b")
    body = {"registry": {"url": _one(registry)}, "tag": "one:latest"}

    op_a = await _finished(api, await _started(api, body, team_a), team_a)
    image_a = op_a["result"]["image"]

    assert await _images(api, team_b) == []
    assert await _imports(api, team_b) == []
    for path in (f"/v1/operations/{op_a['uuid']}", f"/v1/inspect/{image_a}/"):
        assert (await api.http.get(path, headers=team_b)).status_code == 404

    op_b_id = await _started(api, body, team_b)
    op_b = await _finished(api, op_b_id, team_b)
    image_b = op_b["result"]["image"]

    assert op_b["status"] == "SUCCESS", op_b["error"]
    assert image_b != image_a
    assert [(i["uuid"], i["tag"]) for i in await _images(api, team_a)] == [(image_a, "one:latest")]
    assert [(i["uuid"], i["tag"]) for i in await _images(api, team_b)] == [(image_b, "one:latest")]
    layers_a = api.engine.resolve_image(image_a, namespaces=("team-a",)).layers
    assert api.engine.resolve_image(image_b, namespaces=("team-b",)).layers == layers_a
    last = _progress(await _events(api, op_b_id, team_b))[-1]
    # team-b shares team-a's stored layer only after downloading the blob itself (proof it
    # may have it), so nothing was reused unseen and every byte was fetched again.
    assert (last["layers_total"], last["layers_reused"]) == (1, 0)
    assert last["bytes_done"] == last["bytes_total"] > 0
    assert [o["uuid"] for o in await _imports(api, team_a)] == [op_a["uuid"]]
    assert [o["uuid"] for o in await _imports(api, team_b)] == [op_b_id]


async def test_reimporting_in_the_same_namespace_returns_the_same_image_at_once(
    api: Api, registry: LocalRegistry
) -> None:
    body = {"registry": {"url": _one(registry)}, "tag": "one:latest"}
    first = await _finished(api, await _started(api, body))

    again = await _finished(api, await _started(api, body))

    assert again["status"] == "SUCCESS", again["error"]
    assert again["result"] == first["result"]
    assert again["image_size"] == 0
    assert len(await _images(api, api.auth)) == 1


async def test_listing_operations_of_kind_image_import_shows_imports_and_not_runs(
    api: Api, registry: LocalRegistry
) -> None:
    op_id = await _started(api, {"registry": {"url": _one(registry)}, "tag": "one:latest"})
    image_id = (await _finished(api, op_id))["result"]["image"]
    run = await api.http.post(
        "/v1/instances", headers=api.auth, json={"command": "echo hi", "image": "tag:one:latest"}
    )
    await _ended(api, run.json()["uuid"])

    imports = await _imports(api, api.auth)
    succeeded = await _imports(api, api.auth, status="SUCCESS")
    failed = await _imports(api, api.auth, status="FAILED")
    runs = await api.http.get("/v1/operations", headers=api.auth, params={"kind": "instance"})

    assert [o["uuid"] for o in imports] == [op_id]
    summary = imports[0]
    assert (summary["kind"], summary["status"]) == ("image_import", "SUCCESS")
    assert (summary["result_image_uuid"], summary["image_uuid"]) == (image_id, None)
    assert summary["image_size"] > 0
    assert succeeded == imports
    assert failed == []
    assert [o["uuid"] for o in runs.json()] == [run.json()["uuid"]]


def _stalled_image(scripted: ScriptedRegistry, name: str) -> str:
    """Serve ``name`` with a layer that stalls after its first KiB; returns the import URL."""
    big = layer_tar([Entry(path="blob", data=os.urandom(256 << 10))])  # incompressible
    (blob,) = scripted.add_image(name, [big])
    scripted.stalling.add(blob)
    return f"docker://{scripted.host}/{name}"


async def _until_downloading(api: Api, op_id: str) -> None:
    with anyio.fail_after(20):
        async for event in api.engine.follow_events(api.engine.get_operation(op_id)):
            if event.type == "progress" and event.data.get("bytes_done", 0) > 0:
                return
    raise AssertionError(f"import {op_id} ended before it downloaded anything")


async def test_cancelling_a_running_import_ends_it_cancelled_and_leaves_no_image(
    api: Api, scripted: ScriptedRegistry
) -> None:
    url = _stalled_image(scripted, "slow/app")
    op_id = await _started(api, {"registry": {"url": url}, "tag": "slow:1"})
    follow = asyncio.create_task(_events(api, op_id, follow="1"))
    await _until_downloading(api, op_id)

    cancelled = await api.http.delete(f"/v1/operations/{op_id}", headers=api.token("cancel"))

    assert cancelled.status_code == 202
    with anyio.fail_after(20):
        frames = await follow
    assert frames[-1]["event"] == "completion"
    assert frames[-1]["data"]["data"]["status"] == "CANCELLED"
    op = await _finished(api, op_id)
    assert op["status"] == "CANCELLED"
    assert op["result"] == {"image": None, "tag": None}
    assert await _images(api, api.auth) == []
    assert list(api.engine.layers.tmp_dir.iterdir()) == []


async def test_a_token_at_its_import_concurrency_limit_gets_400_until_an_import_ends(
    api: Api, scripted: ScriptedRegistry
) -> None:
    headers = api.token(limits={"images_import_max_concurrency": 1})
    scripted.add_image("fast/app", [HELLO])
    fast = {"registry": {"url": f"docker://{scripted.host}/fast/app"}}
    slow_id = await _started(api, {"registry": {"url": _stalled_image(scripted, "slow/app")}},
                             headers)  # fmt: skip

    refused = await _import(api, fast, headers)
    other_token = await _import(api, fast, api.auth)  # the limit is per token

    assert refused.status_code == 400
    assert "already has 1 imports queued or running (its limit is 1)" in refused.json()["error"]
    assert other_token.status_code == 201
    assert (await _finished(api, other_token.json()["uuid"]))["status"] == "SUCCESS"
    await api.http.delete(f"/v1/operations/{slow_id}", headers=headers)
    assert (await _finished(api, slow_id, headers))["status"] == "CANCELLED"
    accepted = await _import(api, fast, headers)
    assert accepted.status_code == 201, accepted.text
    assert (await _finished(api, accepted.json()["uuid"], headers))["status"] == "SUCCESS"
