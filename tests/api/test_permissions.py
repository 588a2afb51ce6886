"""Every route and the permission it needs: without it, 403 naming it; with it, no 403."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from sandtree.api import PERMISSIONS

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio

# (method, path template, JSON body or bytes, permission needed)
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/v1/images", None, "list"),
    ("PATCH", "/v1/images/{image}/tag", {"tag": "renamed"}, "set_image_tag"),
    ("DELETE", "/v1/images/{image}/tag", None, "set_image_tag"),
    # Nothing listens on port 1: an import let through fails at once.
    ("POST", "/v1/images/import", {"registry": {"url": "docker://127.0.0.1:1/x/y"}}, "import"),
    # Nothing listens on port 1 either (and it is not an allowed registry): a push fails.
    ("POST", "/v1/images/{image}/push", {"registry": {"url": "docker://127.0.0.1:1/x/y"}}, "push"),
    ("GET", "/v1/images/{image}/lineage", None, "list"),
    ("GET", "/v1/images/{image}/diff", None, "list"),
    ("POST", "/v1/instances", {"command": "true", "image": "tag:base"}, "spawn"),
    ("GET", "/v1/operations", None, "list"),
    ("GET", "/v1/operations/{op}", None, "list"),
    ("GET", "/v1/operations/{op}/events", None, "list"),
    ("DELETE", "/v1/operations/{running}", None, "cancel"),
    ("POST", "/v1/files", b"content", "upload"),
    ("GET", "/v1/files", None, "list"),
    ("GET", "/v1/files/{sha}", None, "list"),
    ("GET", "/v1/inspect/?tag=base", None, "list"),
    ("GET", "/v1/inspect/{image}/", None, "list"),
    ("GET", "/v1/inspect/{image}/list?path=/", None, "list"),
    ("GET", "/v1/inspect/{image}/download?path=/etc/hostname", None, "list"),
    ("GET", "/v1/inspect/{image}/archive?path=/etc", None, "list"),
    ("GET", "/v1/inspect/{image}/grep?pattern=root", None, "list"),
]


@pytest.fixture
async def ids(api: Api, rootfs: Path) -> dict[str, str]:
    base = await api.engine.import_local(rootfs, tag="base")
    child = (
        await api.http.post(
            "/v1/instances", headers=api.auth, json={"command": "write /x 1", "image": base.uuid}
        )
    ).json()["uuid"]
    running = (
        await api.http.post(
            "/v1/instances", headers=api.auth, json={"command": "block", "image": base.uuid}
        )
    ).json()["uuid"]
    with anyio.fail_after(10):
        done = await api.engine.wait_operation(api.engine.get_operation(child))
    sha = (await api.http.post("/v1/files", headers=api.auth, content=b"seed")).json()["sha256"]
    assert done.result_image is not None
    return {"image": done.result_image, "op": child, "running": running, "sha": sha}


async def _call(api: Api, route: tuple[str, str, Any, str], ids: dict[str, str],
                headers: dict[str, str]) -> int:  # fmt: skip
    method, template, body, _ = route
    url = template.format(**ids)
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = await api.http.request(method, url, headers=headers, **kwargs)
    return response.status_code if response.status_code != 403 else -403


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
async def test_a_route_answers_403_without_its_permission_and_not_with_it(
    api: Api, ids: dict[str, str], route: tuple[str, str, Any, str]
) -> None:
    permission = route[3]
    without = api.token(*[p for p in PERMISSIONS if p != permission])
    only = api.token(permission)

    assert await _call(api, route, ids, without) == -403
    assert await _call(api, route, ids, only) != -403
    running = api.engine.get_operation(ids["running"])
    if not running.status.terminal:
        await api.engine.cancel_operation(running)


async def test_whoami_needs_no_permission(api: Api) -> None:
    response = await api.http.get("/v1/whoami", headers=api.token("upload"))

    assert response.status_code == 200
