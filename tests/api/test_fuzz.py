"""A property-based fuzz of the API from our own ``/v1/openapi.json`` (schemathesis), against a
real ``sandtree serve``: whatever a request holds, the answer is no 5xx, has a documented
status code and content type, and matches its documented schema. A second fuzz sends what the
schema does not describe (any body, headers, query parameters and token to any route): never
a 5xx."""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandtree.api import TokenStore
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


# -- bodies, headers and query strings the schema does not describe -------------------------

_QUERY_NAMES = ("limit", "offset", "since", "until", "tag", "tagged", "uuid", "follow", "path",
                "pattern", "against", "spid", "kind", "status", "signal", "close")  # fmt: skip
_HEADER_NAMES = ("Content-Type", "Accept", "Last-Event-Id", "Range", "If-None-Match",
                 "Accept-Encoding", "Cookie", "X-Forwarded-For", "Connection")  # fmt: skip
_FIELDS = ("command", "image", "shell", "args", "env", "cwd", "uid", "gid", "stdin", "files",
           "timeout", "disposable", "directory_state_id", "tag", "registry", "sha256", "value",
           "encoding", "close", "networking", "resources_limits", "truncate_output_at")  # fmt: skip
_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELDS) | _text, inner, max_size=5)
    ),
    max_leaves=12,
)
_bodies = (
    st.none()
    | st.binary(max_size=2048)
    | _json.map(lambda value: json.dumps(value).encode())
    | st.sampled_from([10, 1500, 5000]).map(lambda depth: b"[" * depth + b"]" * depth)
)


@pytest.fixture(scope="module")
def routes(server: ServerProcess) -> list[tuple[str, str]]:
    """Every (method, path template) of the served contract."""
    paths = httpx.get(f"{server.url}/v1/openapi.json", timeout=30).json()["paths"]
    return sorted(
        (method.upper(), path)
        for path, item in paths.items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete", "head")
    )


@pytest.fixture(scope="module")
def list_only(server: ServerProcess) -> str:
    store = TokenStore(server.data_dir / "tokens.db")
    _, secret = store.create(name="fuzz-list", permissions=("list",), created_at="2026-01-01")
    store.close()
    return secret


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_no_body_header_or_query_string_makes_a_server_error(
    server: ServerProcess, routes: list[tuple[str, str]], list_only: str, data: st.DataObject
) -> None:
    method, template = data.draw(st.sampled_from(routes))
    path = re.sub(
        r"\{[^}]+\}",
        lambda _: urllib.parse.quote(data.draw(_text.filter(bool)), safe=""),
        template,
    )
    tokens = [server.admin_token, server.admin_token, list_only, "garbage", None]
    auth = data.draw(st.sampled_from(tokens))
    values = _text.map(str.strip)  # the client refuses a value with spaces around it
    headers = data.draw(st.dictionaries(st.sampled_from(_HEADER_NAMES), values, max_size=4))
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    params = data.draw(st.dictionaries(st.sampled_from(_QUERY_NAMES), _text, max_size=4))
    body = data.draw(_bodies) if method not in ("GET", "HEAD") else None
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.request(method, f"/v1{path}", headers=headers, params=params, content=body)
    assert answer.status_code < 500, f"{method} {path}: {answer.status_code} {answer.text[:300]}"
