"""``/v1/inspect``: reading an image over HTTP without starting a sandbox."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandtree.engine import ImageRecord
from sandtree.testing import make_child

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

pytestmark = pytest.mark.anyio


@pytest.fixture
async def image(api: Api, rootfs: Path) -> ImageRecord:
    base = await api.engine.import_local(rootfs, tag="base")
    return await make_child(api.engine, base, "write /srv/app/main.py print('needle'); "
                                              "write /srv/app/notes.txt nothing here")  # fmt: skip


async def test_find_by_tag_redirects_to_the_image_which_answers_its_metadata(
    api: Api, image: ImageRecord
) -> None:
    base = api.engine.resolve_image("tag:base")
    found = await api.http.get("/v1/inspect/", headers=api.auth, params={"tag": "base"})

    assert found.status_code == 302
    assert found.headers["Location"] == f"/v1/inspect/{base.uuid}/"
    meta = await api.http.get(found.headers["Location"], headers=api.auth)
    assert meta.json()["uuid"] == base.uuid
    slashless = await api.http.get(f"/v1/inspect/{base.uuid}", headers=api.auth)
    assert slashless.status_code == 307
    missing = await api.http.get("/v1/inspect/", headers=api.auth, params={"tag": "nope"})
    assert missing.status_code == 404


async def test_list_answers_file_items_or_ls_text(api: Api, image: ImageRecord) -> None:
    listed = await api.http.get(
        f"/v1/inspect/{image.uuid}/list", headers=api.auth, params={"path": "/srv/app"}
    )
    text = await api.http.get(
        f"/v1/inspect/{image.uuid}/list", headers=api.auth, params={"path": "/srv/app", "text": ""}
    )

    body = listed.json()
    assert body["path"] == "/srv/app"
    assert [f["path"] for f in body["files"]] == ["main.py", "notes.txt"]
    assert body["files"][0]["owner"] == "root"
    assert text.headers["content-type"].startswith("text/plain")
    assert "main.py" in text.text
    assert text.text.startswith("-rw-r--r--")


async def test_download_streams_a_file_and_head_checks_it(api: Api, image: ImageRecord) -> None:
    url = f"/v1/inspect/{image.uuid}/download"

    got = await api.http.get(url, headers=api.auth, params={"path": "/srv/app/main.py"})
    head = await api.http.head(url, headers=api.auth, params={"path": "/srv/app/main.py"})
    directory = await api.http.get(url, headers=api.auth, params={"path": "/srv"})
    missing = await api.http.head(url, headers=api.auth, params={"path": "/nope"})
    no_path = await api.http.get(url, headers=api.auth)

    assert got.content == b"print('needle')"
    assert head.status_code == 200
    assert directory.status_code == 422
    assert "/archive" in directory.json()["error"]
    assert missing.status_code == 404
    assert no_path.status_code == 400


async def test_archive_streams_a_tar_of_a_directory(api: Api, image: ImageRecord) -> None:
    response = await api.http.get(
        f"/v1/inspect/{image.uuid}/archive", headers=api.auth, params={"path": "/srv/app"}
    )

    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="srv_app.tar"'
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        names = sorted(tar.getnames())
        content = tar.extractfile("app/main.py")
        assert content is not None
        assert content.read() == b"print('needle')"
    assert names == ["app", "app/main.py", "app/notes.txt"]


async def test_grep_finds_matches_with_their_positions(api: Api, image: ImageRecord) -> None:
    response = await api.http.get(
        f"/v1/inspect/{image.uuid}/grep",
        headers=api.auth,
        params={"pattern": "needle", "path": "/srv", "glob": "*.py"},
    )

    body = response.json()
    assert response.status_code == 200
    assert body["truncated"] is False
    assert [(m["path"], m["line_number"], m["type"]) for m in body["matches"]] == [
        ("/srv/app/main.py", 1, "match")
    ]
    assert body["matches"][0]["submatches"] == [{"text": "needle", "start": 7, "end": 13}]


@pytest.mark.parametrize(
    "params",
    [{}, {"pattern": "("}, {"pattern": "x", "case": "loud"}, {"pattern": "x", "before": "99"}],
)
async def test_bad_grep_requests_get_400(
    api: Api, image: ImageRecord, params: dict[str, str]
) -> None:
    response = await api.http.get(f"/v1/inspect/{image.uuid}/grep", headers=api.auth, params=params)

    assert response.status_code == 400
    assert response.json()["error"]


async def test_a_backreference_gets_a_400_saying_what_re2_supports_and_fixed_strings_finds_it(
    api: Api, image: ImageRecord
) -> None:
    url = f"/v1/inspect/{image.uuid}/grep"
    refused = await api.http.get(url, headers=api.auth, params={"pattern": "print\\('(n)\\1"})
    literal = await api.http.get(
        url, headers=api.auth, params={"pattern": "print('needle')", "fixed_strings": "true"}
    )

    assert refused.status_code == 400
    message = refused.json()["error"]
    assert "backreferences" in message
    assert "RE2" in message
    assert "fixed_strings=true" in message
    assert literal.status_code == 200
    body = literal.json()
    assert [m["path"] for m in body["matches"]] == ["/srv/app/main.py"]
    assert (body["truncated"], body["truncated_reason"]) == (False, None)


async def test_too_many_grep_paths_or_globs_get_400(api: Api, image: ImageRecord) -> None:
    url = f"/v1/inspect/{image.uuid}/grep"
    paths = [("pattern", "x"), *[("path", "/srv")] * 17]
    globs = [("pattern", "x"), *[("glob", "*.py")] * 17]

    for params in (paths, globs):
        response = await api.http.get(url, headers=api.auth, params=params)
        assert response.status_code == 400
        assert "at most 16" in response.json()["error"]


async def test_paths_cannot_escape_the_image(api: Api, image: ImageRecord) -> None:
    response = await api.http.get(
        f"/v1/inspect/{image.uuid}/download",
        headers=api.auth,
        params={"path": "/../../../../etc/hostname"},
    )

    # /etc/hostname of the *image* (the mini rootfs says "sandbox"), not the host's.
    assert response.content == b"sandbox\n"
