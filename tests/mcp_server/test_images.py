"""Image tools: listing with filters, one image by UUID or tag, tagging; and the tools that
answer about the agent's setup: whoami, get_guide, registry_token_obtain, registry_auth."""

from __future__ import annotations

import json
import stat

import pytest

from sandtree.engine import ImageRecord
from sandtree.mcp._guide import GUIDE

from .conftest import Agent

pytestmark = pytest.mark.anyio

SECTIONS = ["async", "errors", "quickstart", "reference", "state", "tagging", "workflow"]
IMAGE_KEYS = {"uuid", "tag", "created_at", "operation_uuid"}


async def _child(agent: Agent, image: str, command: str = "write /f x") -> str:
    out = await agent.call("run", command=command, image=image, disposable=False)
    return str(out["result_image"])


async def test_list_images_lists_every_image_newest_first_and_filters_them(
    agent: Agent, base: ImageRecord
) -> None:
    python = await agent.call("run", command="write /py 3", image=base.uuid, disposable=False)
    await agent.call("set_tag", image_uuid=python["result_image"], tag="python:3.11")
    untagged = await _child(agent, base.uuid, "write /other 1")

    async def uuids(**filters: object) -> list[str]:
        return [i["uuid"] for i in (await agent.call("list_images", **filters))["images"]]

    listed = (await agent.call("list_images"))["images"]
    assert [i["uuid"] for i in listed] == [untagged, python["result_image"], base.uuid]
    assert all(set(i) == IMAGE_KEYS for i in listed)
    assert listed[1]["tag"] == "python:3.11"
    assert listed[1]["operation_uuid"] == python["uuid"]
    assert await uuids(tagged=True) == [python["result_image"], base.uuid]
    assert await uuids(tag_prefix="python") == [python["result_image"]]
    assert await uuids(tag_prefix="py") == [python["result_image"]]
    assert await uuids(tag_prefix="ruby") == []
    assert await uuids(limit=1) == [untagged]
    assert await uuids(limit=1, offset=1) == [python["result_image"]]
    assert await uuids(since="1h") == [untagged, python["result_image"], base.uuid]
    assert await uuids(since="2999-01-01T00:00:00Z") == []
    assert await uuids(until="2000-01-01T00:00:00Z") == []


async def test_a_time_filter_that_is_not_a_time_is_an_error_with_examples(agent: Agent) -> None:
    assert "15m" in await agent.fail("list_images", since="yesterday-ish")


async def test_get_image_finds_an_image_by_uuid_or_by_tag(agent: Agent, base: ImageRecord) -> None:
    by_uuid = await agent.call("get_image", image=base.uuid)
    by_tag = await agent.call("get_image", image="tag:base:1")
    assert by_uuid == by_tag
    assert set(by_uuid) == IMAGE_KEYS
    assert (by_uuid["uuid"], by_uuid["tag"]) == (base.uuid, "base:1")


async def test_get_image_of_a_missing_image_is_an_error_naming_list_images(
    agent: Agent, base: ImageRecord
) -> None:
    message = await agent.fail("get_image", image="tag:nope:1")
    assert "nope:1" in message
    assert "list_images" in message
    assert "list_images" in await agent.fail(
        "get_image", image="00000000-0000-4000-8000-000000000000"
    )


async def test_set_tag_tags_moves_and_removes_a_tag(agent: Agent, base: ImageRecord) -> None:
    child = await _child(agent, base.uuid)
    tagged = await agent.call("set_tag", image_uuid=child, tag="app:v1")
    assert (tagged["uuid"], tagged["tag"]) == (child, "app:v1")
    assert (await agent.call("get_image", image="tag:app:v1"))["uuid"] == child

    moved = await agent.call("set_tag", image_uuid=base.uuid, tag="app:v1")
    assert (moved["uuid"], moved["tag"]) == (base.uuid, "app:v1")
    assert (await agent.call("get_image", image="tag:app:v1"))["uuid"] == base.uuid
    assert (await agent.call("get_image", image=child))["tag"] is None

    removed = await agent.call("set_tag", image_uuid=child, tag="app:v2")
    removed = await agent.call("set_tag", image_uuid=child, tag=None)
    assert (removed["uuid"], removed["tag"]) == (child, None)
    assert "app:v2" in await agent.fail("get_image", image="tag:app:v2")


async def test_set_tag_accepts_a_tag_reference_for_the_image(
    agent: Agent, base: ImageRecord
) -> None:
    renamed = await agent.call("set_tag", image_uuid="tag:base:1", tag="base:2")
    assert (renamed["uuid"], renamed["tag"]) == (base.uuid, "base:2")


async def test_set_tag_refuses_a_malformed_tag_and_a_missing_image(
    agent: Agent, base: ImageRecord
) -> None:
    assert "tag" in await agent.fail("set_tag", image_uuid=base.uuid, tag="Not A Tag!")
    assert "list_images" in await agent.fail(
        "set_tag", image_uuid="00000000-0000-4000-8000-000000000000", tag="x:1"
    )


async def test_whoami_tells_the_token_its_permissions_and_limits(agent: Agent) -> None:
    me = await agent.call("whoami")
    assert me["token_uuid"]
    assert me["permissions"]["spawn"] is True
    assert me["limits"]["instance_max_concurrency"] == 64
    assert me["mcp_version"]
    assert me["server"] == "http://sandtree"


@pytest.mark.parametrize("section", SECTIONS)
async def test_get_guide_answers_each_section_as_markdown(agent: Agent, section: str) -> None:
    out = await agent.call("get_guide", section=section)
    assert out["section"] == section
    assert out["content"] == GUIDE[section]
    assert out["content"].startswith("#")
    assert out["available_sections"] == SECTIONS


async def test_get_guide_of_an_unknown_section_lists_the_sections(agent: Agent) -> None:
    message = await agent.fail("get_guide", section="bogus")
    assert "bogus" in message
    assert ", ".join(SECTIONS) in message


@pytest.mark.parametrize(
    ("url", "host", "page"),
    [
        ("docker://python:3.11-slim", "docker.io", "docker.com"),
        ("alpine", "docker.io", "docker.com"),
        ("docker://ghcr.io/owner/tool:1", "ghcr.io", "github.com"),
        ("ghcr.io", "ghcr.io", "github.com"),
        ("https://ghcr.io", "ghcr.io", "github.com"),
        ("registry-1.docker.io", "docker.io", "docker.com"),
        ("registry.gitlab.com/group/app", "registry.gitlab.com", "gitlab.com"),
        ("gcr.io/project/app", "gcr.io", "console.cloud.google.com"),
        ("us.gcr.io/project/app", "us.gcr.io", "console.cloud.google.com"),
    ],
)
async def test_registry_token_obtain_says_where_a_known_registry_makes_tokens(
    agent: Agent, url: str, host: str, page: str
) -> None:
    out = await agent.call("registry_token_obtain", registry_url=url)
    assert out["status"] == "success"
    assert out["registry"] == host
    assert page in out["url"]
    assert "registry_auth" in out["message"]


async def test_registry_token_obtain_of_an_unknown_registry_answers_an_error_status(
    agent: Agent,
) -> None:
    out = await agent.call("registry_token_obtain", registry_url="quay.io/org/app")
    assert (out["status"], out["registry"], out["url"]) == ("error", "quay.io", "")
    assert "quay.io" in out["message"]


async def test_registry_auth_stores_credentials_for_the_registry_only_on_this_machine(
    agent: Agent,
) -> None:
    out = await agent.call(
        "registry_auth", registry_url="ghcr.io/me/app:1", username="me", token="ghp_secret"
    )
    assert out["status"] == "success"
    assert out["registry"] == "ghcr.io"
    assert "ghp_secret" not in json.dumps(out)
    assert agent.mc.registry_credentials("ghcr.io") == {"username": "me", "password": "ghp_secret"}
    assert agent.mc.registry_credentials("docker.io") is None
    stored = agent.mc.state_dir / "registry-credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("ghcr.io", "ghcr.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("localhost:5000/team/app", "localhost:5000"),
        ("docker://python:3.11", "docker.io"),
        ("python:3.11", "docker.io"),
    ],
)
async def test_registry_auth_of_a_bare_registry_host_stores_credentials_for_that_host(
    agent: Agent, url: str, host: str
) -> None:
    out = await agent.call("registry_auth", registry_url=url, username="u", token="t")
    assert out["registry"] == host
    assert agent.mc.registry_credentials(host) == {"username": "u", "password": "t"}


async def test_registry_auth_wants_both_a_username_and_a_token(agent: Agent) -> None:
    message = await agent.fail("registry_auth", registry_url="ghcr.io/x", username="", token="t")
    assert "username" in message
