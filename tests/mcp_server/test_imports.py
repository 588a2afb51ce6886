"""import_image from a real registry on loopback: anonymous, waited for or detached; and
credentials stored with registry_auth, which the next import from that registry sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from sandtree.engine import Engine
from sandtree.testing import make_engine
from sandtree.testing_registry import (
    LOOPBACK_REGISTRIES,
    Entry,
    LocalRegistry,
    TestImage,
    layer_tar,
)

from .conftest import Agent

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """The fake-runtime engine, with the operator allowing the loopback test registries."""
    async with make_engine(tmp_path / "data", insecure_registries=LOOPBACK_REGISTRIES) as eng:
        yield eng


LAYER = layer_tar(
    [
        Entry(path="etc", kind="dir"),
        Entry(path="etc/hello", data=b"hello from the registry\n"),
    ]
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An anonymous registry holding test/one:latest."""
    tmp = tmp_path_factory.mktemp("registry")
    with LocalRegistry(tmp / "registry") as reg:
        reg.push_image("test/one:latest", [TestImage(layers=[LAYER])], tmp)
        yield reg


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry that wants HTTP basic credentials, holding private/app:1."""
    tmp = tmp_path_factory.mktemp("private")
    with LocalRegistry(tmp / "registry", auth="basic") as reg:
        reg.push_image("private/app:1", [TestImage(layers=[LAYER])], tmp)
        yield reg


async def _import(agent: Agent, url: str, **options: object) -> dict[str, object]:
    with anyio.fail_after(60):
        out: dict[str, object] = await agent.call("import_image", registry_url=url, **options)
    return out


async def test_a_waited_import_answers_success_with_the_tagged_result_image(
    agent: Agent, registry: LocalRegistry
) -> None:
    out = await _import(agent, f"docker://{registry.host}/test/one:latest", tag="one:latest")
    assert (out["status"], out["state"], out["kind"]) == ("SUCCESS", "SUCCESS", "image_import")
    image = out["result_image"]
    assert out["result"] == {"image": image, "tag": "one:latest"}
    assert out["exit_code"] is None
    assert out["stdout"] == ""
    assert (await agent.call("get_image", image="tag:one:latest"))["uuid"] == image
    read = await agent.call("read_file", image="tag:one:latest", path="/etc/hello")
    assert read["content"] == "hello from the registry\n"
    ran = await agent.call("run", command="echo on it", image="tag:one:latest")
    assert ran["stdout"] == "on it\n"
    resource = json.loads(await agent.read(f"contree://operations/import/{out['uuid']}"))
    assert resource == {
        "state": "SUCCESS",
        "result_image": image,
        "result_tag": "one:latest",
        "registry_url": f"docker://{registry.host}/test/one:latest",
        "error": None,
    }


async def test_a_detached_import_answers_its_operation_id_to_wait_for(
    agent: Agent, registry: LocalRegistry
) -> None:
    started = await _import(
        agent,
        f"{registry.host}/test/one",
        wait=False,
        i_accept_that_anonymous_access_might_be_rate_limited=True,
    )
    assert list(started) == ["operation_id"]
    op_id = str(started["operation_id"])
    with anyio.fail_after(60):
        waited = await agent.call("wait_operations", operation_ids=[op_id], timeout=60)
    assert waited["results"][op_id]["status"] == "SUCCESS"
    assert waited["results"][op_id]["kind"] == "image_import"
    listed = await agent.call("list_operations", type="image_import")
    assert [op["uuid"] for op in listed["operations"]] == [op_id]


async def test_a_missing_image_fails_the_import_saying_so(
    agent: Agent, registry: LocalRegistry
) -> None:
    out = await _import(agent, f"docker://{registry.host}/test/absent:9")
    assert out["status"] == "FAILED"
    assert "test/absent:9" in str(out["error"])


async def test_an_import_that_the_server_refuses_at_once_is_a_tool_error(agent: Agent) -> None:
    message = await agent.fail("import_image", registry_url="docker://x/y", tag="Bad Tag!")
    assert "tag" in message


async def test_registry_auth_credentials_are_sent_with_the_next_import_from_that_registry(
    agent: Agent, private: LocalRegistry
) -> None:
    url = f"docker://{private.host}/private/app:1"
    anonymous = await _import(agent, url)
    assert anonymous["status"] == "FAILED"
    assert "credentials" in str(anonymous["error"])

    stored = await agent.call(
        "registry_auth", registry_url=url, username=private.username, token=private.password
    )
    assert (stored["status"], stored["registry"]) == ("success", private.host)
    done = await _import(agent, url, tag="app:1")
    assert done["status"] == "SUCCESS", done["error"]
    read = await agent.call("read_file", image="tag:app:1", path="/etc/hello")
    assert read["content"] == "hello from the registry\n"


async def test_wrong_stored_credentials_fail_the_import_naming_the_user(
    agent: Agent, private: LocalRegistry
) -> None:
    await agent.call(
        "registry_auth", registry_url=private.host, username="tester", token="not-the-password"
    )
    out = await _import(agent, f"{private.host}/private/app:1")
    assert out["status"] == "FAILED"
    assert "tester" in str(out["error"])
