"""``/v1/openapi.json`` and our extensions: lineage and diff."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from sandtree.api.openapi import openapi_document
from sandtree.testing import make_child

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio

SHARED_SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "contree-api-v1.yaml"


@pytest.mark.skipif(not SHARED_SPEC.exists(), reason="../shared is not beside the checkout")
def test_the_packaged_contract_is_the_shared_spec_verbatim() -> None:
    shared = yaml.safe_load(SHARED_SPEC.read_text(encoding="utf-8"))
    served = openapi_document()

    for path, item in shared["paths"].items():
        assert served["paths"][path] == item
    assert {k: v for k, v in served["components"]["schemas"].items() if k in shared["components"][
        "schemas"]} == shared["components"]["schemas"]  # fmt: skip


async def test_openapi_is_served_without_a_token_with_our_extensions_marked(api: Api) -> None:
    response = await api.http.get("/v1/openapi.json")

    document = response.json()
    assert response.status_code == 200
    assert "/instances" in document["paths"]
    lineage = document["paths"]["/images/{imageUUID}/lineage"]["get"]
    assert lineage["x-sandtree"] is True
    assert document["info"]["x-sandtree-extensions"] == [
        "/directory_states",
        "/directory_states/{stateId}",
        "/files/batch",
        "/files/lookup",
        "/images/{imageUUID}/diff",
        "/images/{imageUUID}/export",
        "/images/{imageUUID}/lineage",
        "/images/{imageUUID}/push",
    ]
    assert all(
        op["x-sandtree"] is True
        for path in document["info"]["x-sandtree-extensions"]
        for op in document["paths"][path].values()
    )
    progress = document["components"]["schemas"]["SandtreeEventDataProgress"]
    assert progress["x-sandtree"] is True


async def test_lineage_walks_to_the_root_with_each_command(api: Api, rootfs: Path) -> None:
    base = await api.engine.import_local(rootfs, tag="base")
    a = await make_child(api.engine, base, "write /a 1")
    b = await make_child(api.engine, a, "write /b 2")
    sibling = await make_child(api.engine, a, "write /c 3")

    body = (await api.http.get(f"/v1/images/{a.uuid}/lineage", headers=api.auth)).json()

    assert body["depth"] == 1
    assert body["parent"]["uuid"] == base.uuid
    assert body["root"]["uuid"] == base.uuid
    assert [c["uuid"] for c in body["children"]] == [b.uuid, sibling.uuid]
    assert [c["command"] for c in body["children"]] == ["write /b 2", "write /c 3"]
    assert [x["uuid"] for x in body["ancestors"]] == [base.uuid]


async def test_diff_against_the_parent_and_against_another_image(api: Api, rootfs: Path) -> None:
    base = await api.engine.import_local(rootfs, tag="base")
    a = await make_child(api.engine, base, "write /a 1; rm /etc/hostname")
    b = await make_child(api.engine, base, "write /b 1")

    parent = (await api.http.get(f"/v1/images/{a.uuid}/diff", headers=api.auth)).json()
    sibling = (
        await api.http.get(
            f"/v1/images/{a.uuid}/diff", headers=api.auth, params={"against": b.uuid}
        )
    ).json()
    root = await api.http.get(f"/v1/images/{base.uuid}/diff", headers=api.auth)

    assert (parent["added"], parent["deleted"], parent["against"]) == (
        ["/a"], ["/etc/hostname"], base.uuid
    )  # fmt: skip
    assert sibling["added"] == ["/a"]
    assert "/b" in sibling["deleted"]
    assert root.status_code == 400
    assert "no parent" in root.json()["error"]


async def test_a_lineage_of_an_unknown_image_is_404(api: Api) -> None:
    response = await api.http.get(
        "/v1/images/00000000-0000-0000-0000-000000000000/lineage", headers=api.auth
    )

    assert response.status_code == 404
