"""``/v1/images`` and ``/v1/whoami`` in process: auth, permissions, namespaces, filters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandtree.engine import ImageRecord
from sandtree.testing import make_child

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
async def image(api: Api, rootfs: Path) -> ImageRecord:
    return await api.engine.import_local(rootfs, tag="busybox:latest")


async def test_a_request_without_a_token_gets_401_saying_how_to_get_one(api: Api) -> None:
    response = await api.http.get("/v1/images")

    assert response.status_code == 401
    body = response.json()
    assert body["status"] == 401
    assert "Authorization: Bearer" in body["error"]


async def test_an_unknown_or_revoked_token_gets_401(api: Api) -> None:
    headers = api.token("list")
    record = api.tokens.list()[-1]
    assert (await api.http.get("/v1/images", headers=headers)).status_code == 200

    api.tokens.revoke(record.uuid)

    assert (await api.http.get("/v1/images", headers=headers)).status_code == 401
    unknown = {"Authorization": "Bearer st_not-a-token"}
    assert (await api.http.get("/v1/images", headers=unknown)).status_code == 401


async def test_tokens_are_stored_only_as_hashes(api: Api, tmp_path: Path) -> None:
    database = (tmp_path / "tokens.db").read_bytes()

    assert api.admin.encode() not in database


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("GET", "/v1/images", "list"),
        ("PATCH", "/v1/images/{uuid}/tag", "set_image_tag"),
        ("DELETE", "/v1/images/{uuid}/tag", "set_image_tag"),
    ],
)
async def test_a_token_without_the_permission_gets_403_naming_it(
    api: Api, image: ImageRecord, method: str, path: str, permission: str
) -> None:
    others = [p for p in ("list", "spawn", "set_image_tag", "upload") if p != permission]
    response = await api.http.request(
        method, path.format(uuid=image.uuid), headers=api.token(*others), json={"tag": "x"}
    )

    assert response.status_code == 403
    assert f"'{permission}'" in response.json()["error"]


async def test_list_images_returns_the_spec_fields(api: Api, image: ImageRecord) -> None:
    response = await api.http.get("/v1/images", headers=api.auth)

    assert response.status_code == 200
    assert response.json() == {
        "images": [
            {
                "uuid": image.uuid,
                "tag": "busybox:latest",
                "created_at": image.created_at,
                "operation_uuid": None,
            }
        ]
    }


async def test_list_images_filters_by_tagged_tag_prefix_uuid_and_paging(
    api: Api, image: ImageRecord
) -> None:
    child = await make_child(api.engine, image, "write /x 1")

    async def uuids(**params: str) -> list[str]:
        response = await api.http.get("/v1/images", headers=api.auth, params=params)
        assert response.status_code == 200, response.text
        return [i["uuid"] for i in response.json()["images"]]

    assert set(await uuids()) == {image.uuid, child.uuid}
    assert await uuids(tagged="1") == [image.uuid]
    assert await uuids(tagged="") == [image.uuid]  # a bare ?tagged means 1
    assert set(await uuids(tagged="0")) == {image.uuid, child.uuid}
    assert await uuids(tag="busy") == [image.uuid]
    assert await uuids(tag="Busy") == []  # tags are case-sensitive
    assert await uuids(uuid=child.uuid) == [child.uuid]
    assert await uuids(limit="1") == [child.uuid]  # newest first
    assert await uuids(limit="1", offset="1") == [image.uuid]
    assert await uuids(since="1h") == [child.uuid, image.uuid]
    assert await uuids(until="2000-01-01T00:00:00Z") == []


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"limit": "0"}, "limit must be between 1 and 1000"),
        ({"limit": "many"}, "limit must be an integer"),
        ({"offset": "-1"}, "offset must be between 0"),
        ({"since": "yesterday"}, "since='yesterday' is not a time"),
        ({"uuid": "nope"}, "is not a UUID"),
    ],
)
async def test_bad_list_parameters_get_400_saying_what_to_send(
    api: Api, params: dict[str, str], complaint: str
) -> None:
    response = await api.http.get("/v1/images", headers=api.auth, params=params)

    assert response.status_code == 400
    assert complaint in response.json()["error"]


async def test_tagging_moves_the_tag_and_untagging_removes_it(api: Api, image: ImageRecord) -> None:
    child = await make_child(api.engine, image, "write /x 1")

    moved = await api.http.patch(
        f"/v1/images/{child.uuid}/tag", headers=api.auth, json={"tag": "busybox:latest"}
    )
    assert moved.status_code == 200
    assert moved.json()["uuid"] == child.uuid
    assert moved.json()["tag"] == "busybox:latest"
    assert api.engine.resolve_image("tag:busybox:latest").uuid == child.uuid

    removed = await api.http.delete(
        f"/v1/images/{child.uuid}/tag", headers=api.auth, params={"tag": "busybox:latest"}
    )
    assert removed.status_code == 204
    assert api.engine.resolve_image(child.uuid).tags == ()


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"not json", 400), (b'{"label": "x"}', 400), (b'{"tag": "bad tag!"}', 400)],
)
async def test_a_bad_tag_request_gets_400(
    api: Api, image: ImageRecord, body: bytes, status: int
) -> None:
    response = await api.http.patch(f"/v1/images/{image.uuid}/tag", headers=api.auth, content=body)

    assert response.status_code == status
    assert response.json()["status"] == status


async def test_tagging_an_unknown_image_gets_404(api: Api) -> None:
    response = await api.http.patch(
        "/v1/images/00000000-0000-0000-0000-000000000000/tag",
        headers=api.auth,
        json={"tag": "x"},
    )

    assert response.status_code == 404
    assert "list_images" in response.json()["error"]


async def test_a_namespace_sees_neither_the_images_nor_the_tags_of_another(
    api: Api, image: ImageRecord
) -> None:
    other = api.token(namespace="team-b")

    listed = await api.http.get("/v1/images", headers=other)
    tagged = await api.http.patch(
        f"/v1/images/{image.uuid}/tag", headers=other, json={"tag": "mine"}
    )

    assert listed.json() == {"images": []}
    assert tagged.status_code == 404


async def test_whoami_reports_every_permission_and_the_limits(api: Api) -> None:
    response = await api.http.get("/v1/whoami", headers=api.token("list", "spawn"))

    body = response.json()
    assert response.status_code == 200
    assert body["permissions"]["list"] is True
    assert body["permissions"]["spawn"] is True
    assert body["permissions"]["import"] is False
    assert body["limits"]["instance_max_timeout"] == 3600
    assert body["token_expiration"] is None
    assert body["namespace"] == "default"


async def test_an_unknown_endpoint_gets_a_json_404(api: Api) -> None:
    response = await api.http.get("/v1/nothing-here", headers=api.auth)

    assert response.status_code == 404
    assert response.json()["error"] == "no such endpoint: GET /v1/nothing-here"


async def test_public_images_are_seen_and_run_by_every_namespace_their_children_are_not(
    api: Api, rootfs: Path
) -> None:
    public = await api.engine.import_local(rootfs, tag="shared:1", namespace="public")
    team_b, team_c = api.token(namespace="team-b"), api.token(namespace="team-c")

    listed = (await api.http.get("/v1/images", headers=team_b)).json()["images"]
    spawned = await api.http.post(
        "/v1/instances", headers=team_b, json={"command": "write /b 1", "image": "tag:shared:1"}
    )
    op = await api.engine.wait_operation(
        api.engine.get_operation(spawned.json()["uuid"], namespaces=("team-b",)), timeout=10
    )

    assert [i["uuid"] for i in listed] == [public.uuid]
    assert listed[0]["operation_uuid"] is None
    assert op.result_image is not None
    seen_by_c = (await api.http.get("/v1/images", headers=team_c)).json()["images"]
    assert [i["uuid"] for i in seen_by_c] == [public.uuid]  # not team-b's child
    seen_by_b = (await api.http.get("/v1/images", headers=team_b)).json()["images"]
    assert {i["uuid"] for i in seen_by_b} == {public.uuid, op.result_image}


# -- tags belong to the caller's namespace -----------------------------------------------------


@pytest.fixture
async def shared(api: Api, rootfs: Path) -> ImageRecord:
    """A public image tagged ``shared:1`` by the public namespace and ``c-secret`` by team-c."""
    public = await api.engine.import_local(rootfs, tag="shared:1", namespace="public")
    api.engine.tag_image(public, "c-secret", namespace="team-c")
    return public


async def test_a_bare_untag_of_a_public_image_leaves_other_namespaces_tags(
    api: Api, shared: ImageRecord
) -> None:
    team_b = api.token(namespace="team-b")
    await api.http.patch(f"/v1/images/{shared.uuid}/tag", headers=team_b, json={"tag": "b-name"})

    removed = await api.http.delete(f"/v1/images/{shared.uuid}/tag", headers=team_b)

    assert removed.status_code == 204
    engine = api.engine
    assert engine.resolve_image("tag:c-secret", namespaces=("team-c",)).uuid == shared.uuid
    assert engine.resolve_image("tag:shared:1", namespaces=("team-b",)).uuid == shared.uuid
    listed = (await api.http.get("/v1/images", headers=team_b, params={"tag": "b-"})).json()
    assert listed == {"images": []}


async def test_removing_a_public_tag_without_the_public_token_is_403(
    api: Api, shared: ImageRecord
) -> None:
    response = await api.http.delete(
        f"/v1/images/{shared.uuid}/tag",
        headers=api.token(namespace="team-b"),
        params={"tag": "shared:1"},
    )

    assert response.status_code == 403
    assert "public namespace" in response.json()["error"]
    assert api.engine.resolve_image("tag:shared:1").uuid == shared.uuid


async def test_another_namespaces_tag_of_a_public_image_is_never_shown_or_matched(
    api: Api, shared: ImageRecord
) -> None:
    team_b = api.token(namespace="team-b")

    listed = (await api.http.get("/v1/images", headers=team_b)).json()["images"]
    by_prefix = (await api.http.get("/v1/images", headers=team_b, params={"tag": "c-"})).json()
    inspected = (await api.http.get(f"/v1/inspect/{shared.uuid}/", headers=team_b)).json()
    lineage = (await api.http.get(f"/v1/images/{shared.uuid}/lineage", headers=team_b)).json()
    by_tag = await api.http.get("/v1/inspect/", headers=team_b, params={"tag": "c-secret"})
    run = await api.http.post(
        "/v1/instances", headers=team_b, json={"command": "true", "image": "tag:c-secret"}
    )
    untag = await api.http.delete(
        f"/v1/images/{shared.uuid}/tag", headers=team_b, params={"tag": "c-secret"}
    )

    assert [i["tag"] for i in listed] == ["shared:1"]
    assert by_prefix == {"images": []}
    assert inspected["tag"] == "shared:1"
    assert lineage["image"]["tag"] == "shared:1"
    assert by_tag.status_code == 404
    assert run.status_code == 400
    assert "no image is tagged" in run.json()["error"]
    assert untag.status_code == 400
    assert "c-secret" not in untag.json()["error"].replace("tagged 'c-secret'", "")
    assert "c-secret" not in str([listed, inspected, lineage])


async def test_tagging_answers_with_the_tag_just_set_and_a_tag_filter_with_the_tag_matched(
    api: Api, image: ImageRecord
) -> None:
    tagged = await api.http.patch(
        f"/v1/images/{image.uuid}/tag", headers=api.auth, json={"tag": "zz:1"}
    )  # "busybox:latest" sorts first
    matched = await api.http.get("/v1/images", headers=api.auth, params={"tag": "zz"})

    assert tagged.json()["tag"] == "zz:1"
    assert [i["tag"] for i in matched.json()["images"]] == ["zz:1"]
    unfiltered = (await api.http.get("/v1/images", headers=api.auth)).json()["images"]
    assert [i["tag"] for i in unfiltered] == ["busybox:latest"]


async def test_the_callers_own_tag_of_a_public_image_is_shown_before_the_public_one(
    api: Api, shared: ImageRecord
) -> None:
    team_c = api.token(namespace="team-c")

    listed = (await api.http.get("/v1/images", headers=team_c)).json()["images"]
    by_public_prefix = await api.http.get("/v1/images", headers=team_c, params={"tag": "shared"})

    assert [i["tag"] for i in listed] == ["c-secret"]
    assert [i["tag"] for i in by_public_prefix.json()["images"]] == ["shared:1"]
