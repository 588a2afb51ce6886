"""The tool surface agents written for contree-mcp 0.5.0 rely on: the same 19 tool names, the
same parameter names, which are required, and the same defaults."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Agent

pytestmark = pytest.mark.anyio

REQUIRED = object()

#: tool -> {parameter: default (REQUIRED when the caller must pass it)}, from the reference.
REFERENCE: dict[str, dict[str, Any]] = {
    "list_images": {
        "limit": 100,
        "offset": 0,
        "tagged": None,  # the reference's False: both mean "no filter"
        "tag_prefix": None,
        "since": None,
        "until": None,
    },
    "registry_token_obtain": {"registry_url": REQUIRED},
    "registry_auth": {"registry_url": REQUIRED, "username": REQUIRED, "token": REQUIRED},
    "import_image": {
        "registry_url": REQUIRED,
        "tag": None,
        "wait": True,
        "i_accept_that_anonymous_access_might_be_rate_limited": False,
    },
    "get_image": {"image": REQUIRED},
    "set_tag": {"image_uuid": REQUIRED, "tag": None},
    "run": {
        "command": REQUIRED,
        "image": REQUIRED,
        "shell": True,
        "env": None,
        "preserve_env": False,
        "cwd": "",
        "uid": 0,
        "gid": 0,
        "timeout": 30,
        "disposable": True,
        "stdin": None,
        "directory_state_id": None,
        "files": None,
        "wait": True,
        "truncate_output_at": 8000,
        "max_layer_bytes": None,
    },
    "rsync": {"source": REQUIRED, "destination": REQUIRED, "exclude": None},
    "upload": {"path": None, "content": None, "content_base64": None},
    "download": {"image": REQUIRED, "path": REQUIRED, "destination": REQUIRED, "executable": False},
    "get_operation": {"operation_id": REQUIRED},
    "list_operations": {"limit": 100, "status": None, "type": None, "since": None},
    "wait_operations": {"operation_ids": REQUIRED, "timeout": 300.0, "mode": "all"},
    "cancel_operation": {"operation_id": REQUIRED},
    "whoami": {},
    "list_files": {"image": REQUIRED, "path": "/"},
    "read_file": {"image": REQUIRED, "path": REQUIRED},
    "grep": {
        "image": REQUIRED,
        "pattern": REQUIRED,
        "path": None,
        "glob": None,
        "max_count": None,
        "max_total": None,
        "case": None,
        "fixed_strings": None,
    },
    "get_guide": {"section": REQUIRED},
}


async def test_the_tools_are_the_reference_tools(agent: Agent) -> None:
    tools = (await agent.session.list_tools()).tools
    assert sorted(t.name for t in tools) == sorted(REFERENCE)
    assert all(t.description for t in tools)


@pytest.mark.parametrize("name", list(REFERENCE))
async def test_a_tool_takes_the_reference_parameters_with_the_reference_defaults(
    agent: Agent, name: str
) -> None:
    tool = next(t for t in (await agent.session.list_tools()).tools if t.name == name)
    properties = tool.input_schema.get("properties", {})
    required = set(tool.input_schema.get("required", []))
    expected = REFERENCE[name]
    assert set(properties) == set(expected)
    assert required == {p for p, default in expected.items() if default is REQUIRED}
    for parameter, default in expected.items():
        if default is not REQUIRED:
            assert properties[parameter].get("default") == default, parameter


async def test_list_operations_offers_the_status_and_type_values_of_the_reference(
    agent: Agent,
) -> None:
    tool = next(t for t in (await agent.session.list_tools()).tools if t.name == "list_operations")
    text = str(tool.input_schema)
    for value in ("PENDING", "ASSIGNED", "EXECUTING", "SUCCESS", "FAILED", "CANCELLED"):
        assert value in text
    assert "image_import" in text
