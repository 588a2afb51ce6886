"""A run past its timeout, as the API reports it: a completed operation (SUCCESS) whose result
says ``state.timed_out``, in documents that validate against the contract's schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from jsonschema import Draft7Validator

from sandtree.api.openapi import openapi_document
from sandtree.engine import ImageRecord

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
async def image(api: Api, rootfs: Path) -> ImageRecord:
    return await api.engine.import_local(rootfs, tag="base")


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema says it: ``null`` or the rest of the schema
    (which may be an ``allOf``, where 3.0 validators lose the flag)."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [{"type": "null"}, out]} if node.get("nullable") is True else out


def _valid_operation(answer: dict[str, Any]) -> None:
    """An instance's ``OperationResponse``. Its ``metadata`` is checked as the instance's: the
    contract's ``oneOf`` has no discriminator, and an import's metadata (no required field)
    matches every document, so ``oneOf`` would refuse any run's."""
    _valid({key: value for key, value in answer.items() if key != "metadata"}, "OperationResponse")
    _valid(answer["metadata"], "OperationInstanceMetadata")


def _valid(document: Any, schema: str) -> None:
    """Raises ``ValidationError`` unless ``document`` is a ``schema`` of the served contract."""
    components = _json_schema(openapi_document()["components"])
    Draft7Validator({"$ref": f"#/components/schemas/{schema}", "components": components}).validate(
        document
    )


async def _timed_out(api: Api, **fields: Any) -> str:
    created = await api.http.post(
        "/v1/instances", headers=api.auth,
        json={"image": "tag:base", "command": "echo started; block", "timeout": 1, **fields},
    )  # fmt: skip
    op_id: str = created.json()["uuid"]
    with anyio.fail_after(10):
        await api.engine.wait_operation(api.engine.get_operation(op_id))
    return op_id


async def test_a_timed_out_run_completes_with_its_result_and_validates(
    api: Api, image: ImageRecord
) -> None:
    op_id = await _timed_out(api, disposable=True)

    answer = (await api.http.get(f"/v1/operations/{op_id}", headers=api.auth)).json()

    _valid_operation(answer)
    assert (answer["status"], answer["error"]) == ("SUCCESS", None)
    result = answer["metadata"]["result"]
    assert result["state"]["timed_out"] is True
    assert result["state"]["signal"] == 9
    assert result["stdout"]["value"] == "started\n"
    assert result["resources"]["elapsed_time"] >= 1


async def test_a_timed_out_run_streams_a_timed_out_exit_then_a_successful_completion(
    api: Api, image: ImageRecord
) -> None:
    op_id = await _timed_out(api, disposable=True)

    body = (await api.http.get(f"/v1/operations/{op_id}/events", headers=api.auth)).text
    events = [json.loads(line.removeprefix("data: ")) for line in body.splitlines()
              if line.startswith("data: ")]  # fmt: skip

    for event in events:
        _valid(event, "OperationEvent")
    exit = next(e["data"] for e in events if e["type"] == "exit")
    _valid(exit, "EventDataExit")
    assert (exit["timed_out"], exit["signal"], exit["code"]) == (True, 9, -1)
    completion = events[-1]
    assert completion["type"] == "completion"
    _valid(completion["data"], "EventDataCompletion")
    assert (completion["data"]["status"], completion["data"]["error"]) == ("SUCCESS", None)
    assert completion["data"]["result_image_uuid"] is None  # disposable: nothing persisted


async def test_a_kept_timed_out_run_answers_the_image_it_kept(api: Api, image: ImageRecord) -> None:
    created = await api.http.post(
        "/v1/instances", headers=api.auth,
        json={"image": "tag:base", "command": "write /root/partial half; block", "timeout": 1,
              "disposable": False},
    )  # fmt: skip
    op_id = created.json()["uuid"]
    with anyio.fail_after(10):
        await api.engine.wait_operation(api.engine.get_operation(op_id))

    answer = (await api.http.get(f"/v1/operations/{op_id}", headers=api.auth)).json()

    _valid_operation(answer)
    assert answer["status"] == "SUCCESS"
    assert answer["metadata"]["result"]["state"]["timed_out"] is True
    kept = answer["result_image_uuid"]
    assert kept not in (None, image.uuid)
    read = await api.http.get(
        f"/v1/inspect/{kept}/download", headers=api.auth, params={"path": "/root/partial"}
    )
    assert read.content == b"half"
