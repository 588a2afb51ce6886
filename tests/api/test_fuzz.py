"""A property-based fuzz of the API from our own ``/v1/openapi.json`` (schemathesis), against a
real ``sandtree serve``: whatever a request holds, the answer is no 5xx, has a documented
status code and content type, and matches its documented schema."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

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

#: Endpoints implemented so far; the fuzz grows with the API.
IMPLEMENTED = r"^/(images|instances|operations|files|inspect|whoami)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("fuzz")
    with ServerProcess(base / "data", base / "config") as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> schemathesis.BaseSchema:
    token = (server.data_dir / "admin-token").read_text(encoding="utf-8").strip()
    schema = schemathesis.openapi.from_url(f"{server.url}/v1/openapi.json")
    schema = schema.include(path_regex=IMPLEMENTED)
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
