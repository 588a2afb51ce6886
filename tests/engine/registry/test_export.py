"""Exporting images: to an OCI archive and to a registry, and back in on a fresh server."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from sandtree.engine import Engine, ImageRecord
from sandtree.engine.types import OperationStatus
from sandtree.testing import make_child, make_engine, read_file, tree_listing
from sandtree.testing_registry import LocalRegistry

pytestmark = pytest.mark.anyio


async def _import(engine: Engine, url: str) -> ImageRecord:
    op = await engine.import_image(url)
    with anyio.fail_after(30):
        done = await engine.wait_operation(op)
    assert done.status == OperationStatus.SUCCESS, done.error
    return engine.resolve_image(str(done.result_image))


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[Engine]:
    async with make_engine(tmp_path / "source", insecure_registries="127.0.0.1") as eng:
        yield eng


@pytest.fixture
async def fresh(tmp_path: Path) -> AsyncIterator[Engine]:
    async with make_engine(tmp_path / "fresh", insecure_registries="127.0.0.1") as eng:
        yield eng


async def test_an_exported_archive_imports_on_a_fresh_server_with_the_same_files(
    source: Engine, fresh: Engine, registry: LocalRegistry, tmp_path: Path
) -> None:
    base = await _import(source, f"docker://{registry.host}/test/multi:v1")
    child = await make_child(source, base, "write /etc/added new; rm /bin/tool")
    archive = tmp_path / "child.tar"
    with archive.open("wb") as out:
        await anyio.to_thread.run_sync(source.export_image, child, out)
    back = await fresh.import_local(archive, tag="back")
    assert tree_listing(fresh, back) == tree_listing(source, child)
    assert read_file(fresh, back, "/etc/added") == b"new"
    assert (back.env, back.cwd, back.user) == (child.env, child.cwd, child.user)


async def test_an_export_keeps_the_image_layers_and_is_reproducible(
    source: Engine, registry: LocalRegistry, tmp_path: Path
) -> None:
    base = await _import(source, f"docker://{registry.host}/test/multi:v1")
    child = await make_child(source, base, "write /etc/added new")
    first, second = io.BytesIO(), io.BytesIO()
    source.export_image(child, first)
    source.export_image(child, second)
    assert first.getvalue() == second.getvalue()
    first.seek(0)
    with tarfile.open(fileobj=first) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.load(tar.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
    assert len(manifest["layers"]) == len(child.layers) == 3


async def test_skopeo_reads_an_exported_archive(
    source: Engine, registry: LocalRegistry, tmp_path: Path
) -> None:
    image = await _import(source, f"docker://{registry.host}/test/one")
    archive = tmp_path / "one.tar"
    with archive.open("wb") as out:
        source.export_image(image, out)
    done = await anyio.run_process(
        ["skopeo", "inspect", "--raw", f"oci-archive:{archive}"], check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["layers"][0]["mediaType"].endswith("tar+gzip")


async def test_a_pushed_image_imports_on_a_fresh_server_with_the_same_files(
    source: Engine, fresh: Engine, registry: LocalRegistry
) -> None:
    base = await _import(source, f"docker://{registry.host}/test/multi:v1")
    child = await make_child(source, base, "write /home/user/more text; rm /etc/hello")
    url = f"docker://{registry.host}/pushed/child:v2"
    digest = await source.push_image(child, url)
    assert digest.startswith("sha256:")
    back = await _import(fresh, url)
    assert back.source_digest == digest
    assert tree_listing(fresh, back) == tree_listing(source, child)
    assert await source.push_image(child, url) == digest  # again: same digest, nothing new


async def test_push_to_a_token_registry_needs_its_credentials(
    source: Engine, registry: LocalRegistry, tmp_path: Path
) -> None:
    image = await _import(source, f"docker://{registry.host}/test/one")
    with LocalRegistry(tmp_path / "private", auth="token") as private:
        url = f"docker://{private.host}/team/one:1"
        with pytest.raises(Exception, match="requires credentials"):
            await source.push_image(image, url)
        creds = {"username": private.username, "password": private.password}
        digest = await source.push_image(image, url, credentials=creds)
        done = await anyio.run_process(
            [
                "skopeo",
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                f"{private.username}:{private.password}",
                f"docker://{private.host}/team/one:1",
            ],
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(done.stdout).hexdigest() == digest.removeprefix("sha256:")
