"""A property-based fuzz of the API from our own ``/v1/openapi.json`` (schemathesis), against a
real ``sandtree serve``: whatever a request holds, the answer is no 5xx, has a documented
status code and content type, and matches its documented schema."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandtree.testing import ServerProcess

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]

#: Nothing listens on port 1: as the server's proxy, it makes every registry import the fuzz
#: posts (``docker://docker.io/busybox:latest`` is the schema's example) fail at once, with or
#: without a network.
NO_REGISTRY = {
    "HTTP_PROXY": "http://127.0.0.1:1",
    "HTTPS_PROXY": "http://127.0.0.1:1",
    "ALL_PROXY": "http://127.0.0.1:1",
    "NO_PROXY": "",
}


@schemathesis.serializer("application/x-tar")
def _tar_body(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """POST /files/batch takes a tar: fuzz it with whatever bytes the strategy made (most
    are not tars, which must be a 400, never a 500)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as env:
        for name, value in NO_REGISTRY.items():
            env.setenv(name, value)
            env.delenv(name.lower(), raising=False)
        process = ServerProcess(base / "data", base / "config")  # inherits the environment
    with process as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> schemathesis.BaseSchema:
    token = (server.data_dir / "admin-token").read_text(encoding="utf-8").strip()
    schema = schemathesis.openapi.from_url(f"{server.url}/v1/openapi.json")
    schema.config.base_url = f"{server.url}/v1"
    schema.config.headers = {"Authorization": f"Bearer {token}"}
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_answer_is_documented_and_none_is_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )


def test_imports_on_the_fuzzed_server_fail_at_once_without_reaching_a_registry(
    server: ServerProcess,
) -> None:
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=f"{server.url}/v1", headers=auth, timeout=30) as http:
        posted = http.post(
            "/images/import", json={"registry": {"url": "docker://docker.io/busybox:latest"}}
        )
        assert posted.status_code == 201, posted.text
        op_id = posted.json()["uuid"]
        http.get(f"/operations/{op_id}/events", params={"follow": "1"})  # ends with the op
        imports = http.get("/operations", params={"kind": "image_import", "limit": "1000"})

    ours = [op for op in imports.json() if op["uuid"] == op_id]
    assert [(op["status"], op["duration"] < 5) for op in ours] == [("FAILED", True)]
    assert "cannot reach registry docker.io" in ours[0]["error"]
    assert {op["status"] for op in imports.json()} == {"FAILED"}  # the fuzz's too, if any
