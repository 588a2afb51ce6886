"""Resources: an image's lineage (from the server, for images any client made), listings and
files of an image, runs and imports as operations, and the guide."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import pytest

from sandtree.engine import ImageRecord
from sandtree.mcp._guide import GUIDE
from sandtree.testing import make_child

from .conftest import Agent

pytestmark = pytest.mark.anyio

TEMPLATES = {
    "contree://image/{image}/lineage",
    "contree://image/{image}/ls/{+path}",
    "contree://image/{image}/read/{+path}",
    "contree://operations/instance/{operation_id}",
    "contree://operations/import/{operation_id}",
    "contree://guide/{section}",
}


async def _child(agent: Agent, image: str, command: str) -> str:
    out = await agent.call("run", command=command, image=image, disposable=False)
    return str(out["result_image"])


async def _lineage(agent: Agent, image: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(await agent.read(f"contree://image/{image}/lineage"))
    return out


def _uuids(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["uuid"] for n in nodes]


async def test_every_resource_template_is_listed(agent: Agent) -> None:
    listed = await agent.session.list_resource_templates()
    assert {t.uri_template for t in listed.resource_templates} == TEMPLATES


async def test_lineage_gives_parent_children_ancestors_root_and_depth_with_commands(
    agent: Agent, base: ImageRecord
) -> None:
    child = await _child(agent, base.uuid, "write /a 1")
    sibling = await _child(agent, base.uuid, "write /b 2")
    grandchild = await _child(agent, child, "write /c 3")

    middle = await _lineage(agent, child)
    assert middle["image"]["uuid"] == child
    assert middle["image"]["command"] == "write /a 1"
    assert middle["parent"]["uuid"] == base.uuid
    assert middle["parent"]["tag"] == "base:1"
    assert _uuids(middle["children"]) == [grandchild]
    assert middle["children"][0]["command"] == "write /c 3"
    assert _uuids(middle["ancestors"]) == [base.uuid]
    assert middle["root"]["uuid"] == base.uuid
    assert middle["depth"] == 1

    deepest = await _lineage(agent, grandchild)
    assert deepest["parent"]["uuid"] == child
    assert deepest["parent"]["command"] == "write /a 1"
    assert _uuids(deepest["ancestors"]) == [child, base.uuid]  # nearest first
    assert deepest["root"]["uuid"] == base.uuid
    assert deepest["children"] == []
    assert deepest["depth"] == 2

    root = await _lineage(agent, "tag:base:1")
    assert root["image"]["uuid"] == base.uuid
    assert root["parent"] is None
    assert root["ancestors"] == []
    assert sorted(_uuids(root["children"])) == sorted([child, sibling])
    assert root["depth"] == 0


async def test_lineage_rollback_takes_the_parent_and_works_from_it(
    agent: Agent, base: ImageRecord
) -> None:
    good = await _child(agent, base.uuid, "write /app/state good")
    bad = await _child(agent, good, "write /app/state broken")
    parent = (await _lineage(agent, bad))["parent"]["uuid"]
    assert parent == good
    read = await agent.call("read_file", image=parent, path="/app/state")
    assert read["content"] == "good"


async def test_lineage_holds_images_made_without_this_mcp_server(
    agent: Agent, base: ImageRecord
) -> None:
    made_elsewhere = await make_child(agent.engine, base, "write /elsewhere 1")
    grandchild = await make_child(agent.engine, made_elsewhere, "write /deeper 2")
    lineage = await _lineage(agent, made_elsewhere.uuid)
    assert lineage["image"]["command"] == "write /elsewhere 1"
    assert lineage["parent"]["uuid"] == base.uuid
    assert _uuids(lineage["children"]) == [grandchild.uuid]
    assert lineage["image"]["operation_uuid"] == made_elsewhere.operation


async def test_lineage_of_a_missing_image_is_an_error_naming_list_images(agent: Agent) -> None:
    assert "list_images" in await agent.read_fails("contree://image/tag:nope:1/lineage")


async def test_ls_lists_nested_directories_named_with_slashes(
    agent: Agent, base: ImageRecord
) -> None:
    image = await _child(agent, base.uuid, "write /srv/app/src/main.py print(1)")
    listing = await agent.read(f"contree://image/{image}/ls/srv/app/src")
    assert listing.splitlines()[0].startswith("-rw-")
    assert listing.rstrip().endswith("main.py")
    root = await agent.read("contree://image/tag:base:1/ls/")
    assert {line.split()[-1] for line in root.splitlines() if line} >= {"bin", "etc", "tmp"}
    etc = await agent.read("contree://image/tag:base:1/ls/etc/")
    assert "hostname" in etc


async def test_read_answers_text_and_binary_as_base64_text(agent: Agent, base: ImageRecord) -> None:
    assert await agent.read("contree://image/tag:base:1/read/etc/hostname") == "sandbox\n"
    uploaded = await agent.call("upload", content_base64=base64.b64encode(b"\x00\xff\x01").decode())
    out = await agent.call(
        "run",
        command="write /deep/er/text.txt plain",
        image=base.uuid,
        files={"/deep/er/blob.bin": uploaded["uuid"]},
        disposable=False,
    )
    image = out["result_image"]
    assert await agent.read(f"contree://image/{image}/read/deep/er/text.txt") == "plain"
    assert await agent.read(f"contree://image/{image}/read/deep/er/blob.bin") == "base64:AP8B"


async def test_reading_a_missing_file_is_an_error_naming_it(
    agent: Agent, base: ImageRecord
) -> None:
    message = await agent.read_fails(f"contree://image/{base.uuid}/read/etc/nope")
    assert "/etc/nope" in message


async def test_an_instance_operation_reads_as_its_result(agent: Agent, base: ImageRecord) -> None:
    ran = await agent.call(
        "run", command="echo out; echoerr err; exit 2", image=base.uuid, disposable=False
    )
    op = json.loads(await agent.read(f"contree://operations/instance/{ran['uuid']}"))
    assert op["state"] == "SUCCESS"
    assert (op["exit_code"], op["timed_out"]) == (2, False)
    assert (op["stdout"], op["stderr"]) == ("out\n", "err\n")
    assert op["result_image"] == ran["result_image"]
    assert "elapsed_time" in op["resources"]


async def test_an_import_operation_reads_as_its_state_registry_and_error(agent: Agent) -> None:
    url = "docker://127.0.0.1:9/nothing/here:1"  # nothing listens: the import fails at once
    with anyio.fail_after(30):
        failed = await agent.call("import_image", registry_url=url, tag="here:1")
    op = json.loads(await agent.read(f"contree://operations/import/{failed['uuid']}"))
    assert op["state"] == "FAILED"
    assert op["registry_url"] == url
    assert op["error"]
    assert op["result_image"] is None


async def test_an_operation_read_through_the_wrong_kind_says_which_uri_to_read(
    agent: Agent, base: ImageRecord
) -> None:
    ran = await agent.call("run", command="echo", image=base.uuid)
    message = await agent.read_fails(f"contree://operations/import/{ran['uuid']}")
    assert f"contree://operations/instance/{ran['uuid']}" in message
    with anyio.fail_after(30):
        imported = await agent.call("import_image", registry_url="docker://127.0.0.1:9/x/y")
    message = await agent.read_fails(f"contree://operations/instance/{imported['uuid']}")
    assert f"contree://operations/import/{imported['uuid']}" in message


async def test_an_unknown_operation_is_an_error_naming_list_operations(agent: Agent) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    assert "list_operations" in await agent.read_fails(f"contree://operations/instance/{unknown}")


@pytest.mark.parametrize("section", sorted(GUIDE))
async def test_each_guide_section_reads_as_its_markdown(agent: Agent, section: str) -> None:
    assert await agent.read(f"contree://guide/{section}") == GUIDE[section]


async def test_an_unknown_guide_section_lists_the_sections(agent: Agent) -> None:
    message = await agent.read_fails("contree://guide/bogus")
    assert "workflow" in message
    assert "bogus" in message
