"""``/v1/openapi.json`` and our extensions: lineage and diff."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml

from sandtree.api.openapi import openapi_document
from sandtree.testing import make_child

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio

SHARED_SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "contree-api-v1.yaml"


def _ours(entry: dict[str, Any], document: dict[str, Any]) -> bool:
    if "$ref" in entry:
        _, _, kind, name = entry["$ref"].split("/")  # "#/components/<kind>/<name>"
        entry = document["components"][kind][name]
    return entry.get("x-sandtree") is True


def _without_ours(item: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """A contract path item with the parameters and responses we add (marked) left out."""
    item = copy.deepcopy(item)
    for operation in item.values():
        if not isinstance(operation, dict):
            continue
        if "parameters" in operation:
            operation["parameters"] = [p for p in operation["parameters"] if not _ours(p, document)]
        responses = operation.get("responses", {})
        operation["responses"] = {
            code: r for code, r in responses.items() if not _ours(r, document)
        }
    return item


@pytest.mark.skipif(not SHARED_SPEC.exists(), reason="../shared is not beside the checkout")
def test_the_packaged_contract_is_the_shared_spec_verbatim() -> None:
    shared = yaml.safe_load(SHARED_SPEC.read_text(encoding="utf-8"))
    served = openapi_document()

    for path, item in shared["paths"].items():
        assert _without_ours(served["paths"][path], served) == item
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


def test_the_document_describes_grep_push_and_the_body_and_request_limits() -> None:
    document = openapi_document()
    paths, components = document["paths"], document["components"]
    grep = paths["/inspect/{image_uuid}/grep"]["get"]
    push = paths["/images/{imageUUID}/push"]["post"]
    with_body = [
        (path, method)
        for path, item in paths.items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    ]

    fixed = [p for p in grep["parameters"] if p["name"] == "fixed_strings"]
    assert fixed == [{**fixed[0], "in": "query", "x-sandtree": True}]
    assert fixed[0]["schema"]["type"] == "boolean"
    assert grep["responses"]["429"]["x-sandtree"] is True
    reason = components["schemas"]["SandtreeGrepFields"]
    assert reason["x-sandtree-extends"] == "#/components/schemas/GrepResult"
    assert "max_total" in reason["properties"]["truncated_reason"]["enum"]
    assert push["x-sandtree-permission"] == "push"
    assert "`push` permission" in push["description"]
    assert push["responses"]["403"] == {"$ref": "#/components/responses/Forbidden"}
    assert ("/files", "post") in with_body
    assert ("/images/{imageUUID}/push", "post") in with_body
    for path, method in with_body:
        responses = paths[path][method]["responses"]
        assert {code: responses[code] for code in ("408", "413", "429")} == {
            "408": {"$ref": "#/components/responses/SandtreeRequestTimeout"},
            "413": {"$ref": "#/components/responses/SandtreePayloadTooLarge"},
            "429": {"$ref": "#/components/responses/SandtreeTooManyRequests"},
        }, (method, path)
    for name in ("SandtreeRequestTimeout", "SandtreePayloadTooLarge", "SandtreeTooManyRequests"):
        assert components["responses"][name]["x-sandtree"] is True
    assert "408" not in paths["/images"]["get"]["responses"]  # no body read there


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


async def _run_in(api: Api, namespace: str, image: str, command: str) -> str:
    """Run ``command`` kept from ``image`` as a token of ``namespace``; its result image."""
    spawned = await api.http.post(
        "/v1/instances",
        headers=api.token(namespace=namespace),
        json={"command": command, "image": image},
    )
    op = api.engine.get_operation(spawned.json()["uuid"], namespaces=(namespace,))
    with anyio.fail_after(10):
        done = await api.engine.wait_operation(op)
    assert done.result_image is not None, done.error
    return done.result_image


async def test_lineage_of_a_public_image_shows_none_of_another_tenants_children(
    api: Api, rootfs: Path
) -> None:
    public = await api.engine.import_local(rootfs, tag="shared:1", namespace="public")
    team_b, team_c = api.token(namespace="team-b"), api.token(namespace="team-c")
    c_child = await _run_in(api, "team-c", public.uuid, "write /c-secret-command 1")
    b_child = await _run_in(api, "team-b", public.uuid, "write /b 1")

    seen_by_b = (await api.http.get(f"/v1/images/{public.uuid}/lineage", headers=team_b)).json()
    b_lineage = (await api.http.get(f"/v1/images/{b_child}/lineage", headers=team_b)).json()
    c_from_b = await api.http.get(f"/v1/images/{c_child}/lineage", headers=team_b)
    diff_c = await api.http.get(
        f"/v1/images/{b_child}/diff", headers=team_b, params={"against": c_child}
    )

    assert [c["uuid"] for c in seen_by_b["children"]] == [b_child]
    assert "c-secret-command" not in str(seen_by_b)
    assert [a["uuid"] for a in b_lineage["ancestors"]] == [public.uuid]
    assert b_lineage["parent"]["tag"] == "shared:1"
    assert (c_from_b.status_code, diff_c.status_code) == (404, 404)
    seen_by_c = (await api.http.get(f"/v1/images/{public.uuid}/lineage", headers=team_c)).json()
    assert [c["command"] for c in seen_by_c["children"]] == ["write /c-secret-command 1"]
