"""Our extensions for moving images out: OCI archive download and push to a registry."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandtree.engine import Engine
from sandtree.testing import make_child, make_engine
from sandtree.testing_registry import LocalRegistry

from .conftest import Api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """The fake-runtime engine, with the operator allowing the loopback test registries."""
    async with make_engine(tmp_path / "data", insecure_registries="127.0.0.1") as eng:
        yield eng


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path / "registry", auth="basic") as reg:
        yield reg


async def test_export_streams_an_oci_archive_that_imports_back(api: Api, rootfs: Path) -> None:
    base = await api.engine.import_local(rootfs, tag="base:1")
    child = await make_child(api.engine, base, "write /etc/exported yes")

    response = await api.http.get(f"/v1/images/{child.uuid}/export", headers=api.auth)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-tar"
    assert f'filename="{child.uuid}.oci.tar"' in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        names = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json"} <= names
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    archive = Path(str(api.engine.settings.data_dir)) / "export.tar"
    archive.write_bytes(response.content)
    back = await api.engine.import_local(archive)
    with api.engine.open_file(back, "/etc/exported") as f:
        assert f.read() == b"yes"


async def test_export_head_answers_without_a_body_and_unknown_images_are_404(
    api: Api, rootfs: Path
) -> None:
    base = await api.engine.import_local(rootfs, tag="base:1")
    head = await api.http.head(f"/v1/images/{base.uuid}/export", headers=api.auth)
    missing = await api.http.get(
        "/v1/images/00000000-0000-4000-8000-000000000000/export", headers=api.auth
    )
    assert head.status_code == 200
    assert head.content == b""
    assert 'filename="base_1.oci.tar"' in head.headers["content-disposition"]
    assert missing.status_code == 404


async def test_export_of_another_namespace_image_is_404(api: Api, rootfs: Path) -> None:
    base = await api.engine.import_local(rootfs, tag="base")
    other = api.token(namespace="other")
    response = await api.http.get(f"/v1/images/{base.uuid}/export", headers=other)
    assert response.status_code == 404


async def test_push_uploads_the_image_and_answers_its_digest(
    api: Api, rootfs: Path, registry: LocalRegistry
) -> None:
    base = await api.engine.import_local(rootfs, tag="base")
    url = f"docker://{registry.host}/pushed/base:1"
    body = {
        "registry": {
            "url": url,
            "credentials": {"username": registry.username, "password": registry.password},
        }
    }

    response = await api.http.post(f"/v1/images/{base.uuid}/push", json=body, headers=api.auth)

    assert response.status_code == 200, response.text
    digest = response.json()["digest"]
    assert response.json()["url"] == url
    op = await api.engine.import_image(url, credentials=body["registry"]["credentials"])
    done = await api.engine.wait_operation(op, timeout=30)
    assert done.result_image is not None, done.error
    assert api.engine.resolve_image(done.result_image).source_digest == digest


async def test_push_with_wrong_credentials_is_a_502_naming_the_cause(
    api: Api, rootfs: Path, registry: LocalRegistry
) -> None:
    base = await api.engine.import_local(rootfs, tag="base")
    body = {
        "registry": {
            "url": f"docker://{registry.host}/x/y",
            "credentials": {"username": "tester", "password": "wrong"},
        }
    }
    response = await api.http.post(f"/v1/images/{base.uuid}/push", json=body, headers=api.auth)
    assert response.status_code == 502
    assert "refused the credentials" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({}, "registry.url"),
        ({"registry": {"url": ""}}, "registry.url"),
        ({"registry": {"url": "oci:/tmp/x"}}, "only docker://"),
        ({"registry": {"url": "docker://h:1/x", "credentials": "me"}}, "credentials"),
    ],
)
async def test_push_with_a_bad_body_is_a_400_saying_what_to_send(
    api: Api, rootfs: Path, body: dict[str, object], complaint: str
) -> None:
    base = await api.engine.import_local(rootfs, tag="base")
    response = await api.http.post(f"/v1/images/{base.uuid}/push", json=body, headers=api.auth)
    assert response.status_code == 400
    assert complaint in response.json()["error"]
