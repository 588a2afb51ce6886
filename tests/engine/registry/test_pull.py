"""Importing images from a real registry on loopback, and from one that misbehaves."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandtree.engine import Engine, ImageQuery, ImageRecord, OperationRecord
from sandtree.engine.registry import DestinationPolicy, RegistryClient, parse_reference
from sandtree.engine.types import OperationStatus
from sandtree.testing import make_engine, read_file, run_command
from sandtree.testing_registry import (
    Entry,
    LocalRegistry,
    ScriptedRegistry,
    TestImage,
    compress,
    layer_tar,
    write_oci_layout,
)

from .conftest import BASE

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    # Every test registry listens on 127.0.0.1: the operator allows it (all its ports).
    async with make_engine(
        tmp_path / "data", max_import_bytes=8 << 20, insecure_registries="127.0.0.1"
    ) as eng:
        yield eng


async def _import(engine: Engine, url: str, wait: float = 30, **options: Any) -> OperationRecord:
    op = await engine.import_image(url, **options)
    with anyio.fail_after(wait):
        return await engine.wait_operation(op)


async def _imported(engine: Engine, url: str, **options: Any) -> ImageRecord:
    done = await _import(engine, url, **options)
    assert done.status == OperationStatus.SUCCESS, done.error
    assert done.result_image is not None
    return engine.resolve_image(done.result_image)


def _names(engine: Engine, image: ImageRecord, path: str) -> set[str]:
    return {item.path for item in engine.list_dir(image, path)}


def _progress(engine: Engine, op_id: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in engine.store.events(op_id) if e.type == "progress"]


async def test_import_of_a_one_layer_image_makes_a_root_image_with_its_files(
    engine: Engine, registry: LocalRegistry
) -> None:
    image = await _imported(engine, f"docker://{registry.host}/test/one", tag="one:latest")
    assert image.parent is None
    assert image.tags == ("one:latest",)
    assert image.command == f"import docker://{registry.host}/test/one:latest"
    assert read_file(engine, image, "/etc/hello") == b"hello\n"
    assert engine.resolve_image("tag:one:latest") == image


async def test_layers_apply_in_order_with_deletions_opaque_dirs_owners_and_config(
    engine: Engine, registry: LocalRegistry
) -> None:
    image = await _imported(engine, f"docker://{registry.host}/test/multi:v1")
    assert _names(engine, image, "/etc") == {"hello"}  # opaque: os-release is gone
    assert read_file(engine, image, "/etc/hello") == b"replaced\n"
    assert read_file(engine, image, "/bin/tool") == b"#!/bin/sh\n"  # from the lower layer
    notes = engine.stat_path(image, "/home/user/notes")
    assert (notes.uid, notes.gid, stat.S_IMODE(notes.mode)) == (1000, 1000, 0o600)
    su = engine.stat_path(image, "/bin/su")
    assert stat.S_IMODE(su.mode) == 0o4755  # setuid kept, as containerd keeps it
    assert image.env == ("A=1", "PATH=/bin")
    assert (image.cwd, image.user) == ("/home/user", "1000:1000")


@pytest.mark.parametrize("name", ["test/zstd", "test/plain"])
async def test_zstd_and_uncompressed_layers_import_like_gzip(
    engine: Engine, registry: LocalRegistry, name: str
) -> None:
    image = await _imported(engine, f"docker://{registry.host}/{name}")
    assert read_file(engine, image, "/etc/hello") in (b"hello\n", b"replaced\n")


async def test_a_multi_platform_index_gives_linux_amd64_unless_told_otherwise(
    engine: Engine, registry: LocalRegistry
) -> None:
    amd = await _imported(engine, f"docker://{registry.host}/test/index")
    arm = await _imported(engine, f"docker://{registry.host}/test/index", platform="linux/arm64/v8")
    assert read_file(engine, amd, "/arch") == b"amd64\n"
    assert read_file(engine, arm, "/arch") == b"arm64\n"
    done = await _import(engine, f"docker://{registry.host}/test/index", platform="linux/s390x")
    assert done.status == OperationStatus.FAILED
    assert done.error is not None
    assert "no linux/s390x image" in done.error
    assert "linux/arm64/v8" in done.error


async def test_a_digest_reference_pins_the_manifest(
    engine: Engine, registry: LocalRegistry
) -> None:
    first = await _imported(engine, f"docker://{registry.host}/test/one")
    assert first.source_digest is not None
    pinned = await _imported(engine, f"docker://{registry.host}/test/one@{first.source_digest}")
    assert pinned.uuid == first.uuid


async def test_reimporting_the_same_digest_finishes_at_once_and_moves_the_tag(
    engine: Engine, registry: LocalRegistry
) -> None:
    url = f"docker://{registry.host}/test/one"
    first = await _imported(engine, url, tag="base")
    other = await _imported(engine, f"docker://{registry.host}/test/plain", tag="base")
    assert engine.resolve_image("tag:base").uuid == other.uuid
    again = await _import(engine, url, tag="base")
    assert again.result_image == first.uuid
    assert again.image_size == 0
    assert engine.resolve_image("tag:base").uuid == first.uuid
    assert [p["phase"] for p in _progress(engine, again.uuid)] == ["done"]


async def test_layers_shared_between_images_are_stored_once(
    engine: Engine, registry: LocalRegistry
) -> None:
    one = await _imported(engine, f"docker://{registry.host}/test/one")
    done = await _import(engine, f"docker://{registry.host}/test/multi:v1")
    multi = engine.resolve_image(str(done.result_image))
    assert multi.layers[0] == one.layers[0]
    last = _progress(engine, done.uuid)[-1]
    assert (last["layers_total"], last["layers_reused"], last["layers_done"]) == (2, 1, 2)


async def test_progress_events_count_layers_and_bytes_up_to_the_total(
    engine: Engine, registry: LocalRegistry
) -> None:
    done = await _import(engine, f"docker://{registry.host}/test/multi:v1")
    progress = _progress(engine, done.uuid)
    assert progress[-1]["phase"] == "done"
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] > 0
    assert progress[-1]["layers_done"] == progress[-1]["layers_total"] == 2
    done_counts = [p["bytes_done"] for p in progress]
    assert done_counts == sorted(done_counts)


async def test_token_registry_imports_with_the_right_credentials_only(
    engine: Engine, tmp_path: Path
) -> None:
    with LocalRegistry(tmp_path / "reg", auth="token") as reg:
        reg.push_image("private/app:1", [TestImage(layers=[BASE])], tmp_path)
        url = f"docker://{reg.host}/private/app:1"
        good = {"username": reg.username, "password": reg.password}
        image = await _imported(engine, url, credentials=good)
        assert read_file(engine, image, "/etc/hello") == b"hello\n"
        anonymous = await _import(engine, url)
        wrong = await _import(engine, url, credentials={"username": "tester", "password": "no"})
    assert anonymous.status == wrong.status == OperationStatus.FAILED
    assert "requires credentials" in str(anonymous.error)
    assert "refused the credentials of user 'tester'" in str(wrong.error)


async def test_basic_auth_registry_imports_with_credentials(engine: Engine, tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "reg", auth="basic") as reg:
        reg.push_image("private/app:1", [TestImage(layers=[BASE])], tmp_path)
        creds = {"username": reg.username, "password": reg.password}
        image = await _imported(engine, f"docker://{reg.host}/private/app:1", credentials=creds)
    assert read_file(engine, image, "/etc/hello") == b"hello\n"


async def test_a_missing_image_fails_the_operation_naming_it(
    engine: Engine, registry: LocalRegistry
) -> None:
    done = await _import(engine, f"docker://{registry.host}/test/absent:9")
    assert done.status == OperationStatus.FAILED
    assert "test/absent:9 was not found" in str(done.error)


async def test_an_unreachable_registry_fails_the_operation_saying_so(engine: Engine) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        done = await _import(engine, f"docker://127.0.0.1:{port}/x/y")
    assert done.status == OperationStatus.FAILED
    assert "cannot reach registry" in str(done.error)


async def test_a_corrupt_layer_fails_the_import_and_leaves_no_image(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    scripted.add_image("bad/layer", [BASE], corrupt=True)
    done = await _import(engine, f"docker://{scripted.host}/bad/layer")
    assert done.status == OperationStatus.FAILED
    assert "digest" in str(done.error)
    assert engine.list_images(ImageQuery(namespaces=("default",))) == []
    assert list(engine.layers.tmp_dir.iterdir()) == []


async def test_a_registry_error_status_is_reported_with_its_code_but_not_its_message(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    body = b'{"errors": [{"code": "UNAVAILABLE", "message": "maintenance"}]}'
    scripted.routes["/v2/down/app/manifests/latest"] = (503, "application/json", body)
    done = await _import(engine, f"docker://{scripted.host}/down/app")
    assert done.status == OperationStatus.FAILED
    assert "answered HTTP 503, UNAVAILABLE" in str(done.error)
    assert "maintenance" not in str(done.error)


async def _wait_for_bytes(engine: Engine, op: OperationRecord) -> None:
    with anyio.fail_after(20):
        async for event in engine.follow_events(op, follow=True):
            if event.type == "progress" and event.data.get("bytes_done", 0) > 0:
                return


def _big_layer() -> bytes:
    # Incompressible enough that the stall point falls inside the blob.
    import os

    return layer_tar([Entry(path="blob", data=os.urandom(256 << 10))])


async def test_cancel_stops_a_stalled_download_and_leaves_no_image(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    (blob,) = scripted.add_image("slow/app", [_big_layer()])
    scripted.stalling.add(blob)
    op = await engine.import_image(f"docker://{scripted.host}/slow/app")
    await _wait_for_bytes(engine, op)
    await engine.cancel_operation(op)
    with anyio.fail_after(10):
        done = await engine.wait_operation(op)
    assert done.status == OperationStatus.CANCELLED
    assert engine.list_images(ImageQuery(namespaces=("default",))) == []
    assert list(engine.layers.tmp_dir.iterdir()) == []


async def test_the_import_timeout_ends_a_stalled_import_as_failed(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    (blob,) = scripted.add_image("slow/app", [_big_layer()])
    scripted.stalling.add(blob)
    done = await _import(engine, f"docker://{scripted.host}/slow/app", timeout=1)
    assert done.status == OperationStatus.FAILED
    assert "timed out after 1 s" in str(done.error)
    assert engine.list_images(ImageQuery(namespaces=("default",))) == []


async def test_malicious_layer_entries_are_neutralised_and_the_host_is_untouched(
    engine: Engine, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = layer_tar(
        [
            Entry(path="../escape", data=b"x"),
            Entry(path="/abs/file", data=b"inside\n"),
            Entry(path="link", kind="symlink", target=str(outside)),
            Entry(path="link/pwned", data=b"x"),
            Entry(path="hard", kind="hardlink", target="../../../etc/passwd"),
            Entry(path="dev/sda", kind="chardev", major=8, minor=0),
            Entry(path="ok", data=b"fine\n"),
        ]
    )
    with LocalRegistry(tmp_path / "reg") as reg:
        reg.push_image("evil/app:1", [TestImage(layers=[evil])], tmp_path)
        done = await _import(engine, f"docker://{reg.host}/evil/app:1")
    assert done.status == OperationStatus.SUCCESS, done.error
    image = engine.resolve_image(str(done.result_image))
    assert read_file(engine, image, "/ok") == b"fine\n"
    assert read_file(engine, image, "/abs/file") == b"inside\n"  # absolute means rootfs-relative
    assert list(outside.iterdir()) == []
    assert not (engine.layers.root / "escape").exists()
    assert not (engine.layers.layers_dir / "escape").exists()
    names = _names(engine, image, "/")
    assert "hard" not in names
    assert "escape" not in names
    assert "dev" not in names or "sda" not in _names(engine, image, "/dev")
    warnings = _progress(engine, done.uuid)[-1]["warnings"]
    assert any("link/pwned" in w for w in warnings)


async def test_a_decompression_bomb_stops_at_the_import_size_limit(
    engine: Engine, tmp_path: Path
) -> None:
    bomb = layer_tar([Entry(path="zeros", data=bytes(64 << 20))])  # 64 MiB > the 8 MiB limit
    assert len(compress(bomb, "gzip")) < 1 << 20
    with LocalRegistry(tmp_path / "reg") as reg:
        reg.push_image("bomb/app:1", [TestImage(layers=[bomb])], tmp_path)
        done = await _import(engine, f"docker://{reg.host}/bomb/app:1")
    assert done.status == OperationStatus.FAILED
    assert "limit" in str(done.error)
    assert engine.list_images(ImageQuery(namespaces=("default",))) == []
    assert list(engine.layers.tmp_dir.iterdir()) == []


async def test_docker_v2_manifests_and_manifest_lists_import_like_oci_ones(
    engine: Engine, tmp_path: Path
) -> None:
    arm = layer_tar([Entry(path="arch", data=b"arm64\n")])
    amd = layer_tar([Entry(path="arch", data=b"amd64\n")])
    layout = tmp_path / "layout"
    write_oci_layout(
        layout,
        [TestImage(layers=[arm], platform="linux/arm64"), TestImage(layers=[amd])],
        tag="v1",
    )
    with LocalRegistry(tmp_path / "reg") as reg:
        # skopeo converts the OCI index and manifests to Docker's list and v2 schema 2 types.
        await anyio.run_process(
            ["skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--format", "v2s2",
             "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{reg.host}/dock/app:v1"]
        )  # fmt: skip
        policy = DestinationPolicy(insecure=[reg.host])
        client = RegistryClient(parse_reference(f"{reg.host}/dock/app:v1"), policy=policy)
        with client:
            top = client.get_manifest("v1")
        image = await _imported(engine, f"docker://{reg.host}/dock/app:v1")
        arm_image = await _imported(
            engine, f"docker://{reg.host}/dock/app:v1", platform="linux/arm64"
        )
    assert top.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert read_file(engine, image, "/arch") == b"amd64\n"
    assert read_file(engine, arm_image, "/arch") == b"arm64\n"


async def test_an_image_listing_one_layer_twice_imports_and_mounts(
    engine: Engine, tmp_path: Path
) -> None:
    first = layer_tar([Entry(path="f", data=b"one\n")])
    second = layer_tar([Entry(path="f", data=b"two\n")])
    with LocalRegistry(tmp_path / "reg") as reg:
        reg.push_image("dup/app:1", [TestImage(layers=[first, second, first])], tmp_path)
        image = await _imported(engine, f"docker://{reg.host}/dup/app:1")
    assert len(set(image.layers)) == len(image.layers) == 3
    assert read_file(engine, image, "/f") == b"one\n"  # the repeated layer applies again on top
    done = await run_command(engine, "echo ok", image)
    assert done.status == OperationStatus.SUCCESS, done.error


def _copy_image(scripted: ScriptedRegistry, source: str, dest: str) -> tuple[str, str]:
    """Serve ``source``'s manifest and config as ``dest`` too (the same digests), but not its
    layer; returns the layer's digest and its blob path under ``source``."""
    _, media, manifest = scripted.routes[f"/v2/{source}/manifests/latest"]
    scripted.routes[f"/v2/{dest}/manifests/latest"] = (200, media, manifest)
    body = json.loads(manifest)
    config = body["config"]["digest"]
    scripted.routes[f"/v2/{dest}/blobs/{config}"] = scripted.routes[f"/v2/{source}/blobs/{config}"]
    layer = body["layers"][0]["digest"]
    return layer, f"/v2/{source}/blobs/{layer}"


async def test_another_namespaces_layer_is_shared_only_once_the_blob_is_fetched_and_verified(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    scripted.add_image("team/app", [BASE])
    first = await _import(engine, f"docker://{scripted.host}/team/app", namespace="a")
    assert first.status == OperationStatus.SUCCESS, first.error
    layer, blob = _copy_image(scripted, "team/app", "thief/app")

    claimed = await _import(engine, f"docker://{scripted.host}/thief/app", namespace="b")

    assert claimed.status == OperationStatus.FAILED
    assert f"blob {layer} was not found" in str(claimed.error)
    assert engine.list_images(ImageQuery(namespaces=("b",))) == []
    scripted.routes[f"/v2/thief/app/blobs/{layer}"] = scripted.routes[blob]
    fetched = await _import(engine, f"docker://{scripted.host}/thief/app", namespace="b")
    assert fetched.status == OperationStatus.SUCCESS, fetched.error
    mine = engine.resolve_image(str(first.result_image), namespaces=("a",))
    theirs = engine.resolve_image(str(fetched.result_image), namespaces=("b",))
    assert theirs.layers == mine.layers  # the stored layer, shared once the blob was proven
    assert scripted.requests.count(f"/v2/thief/app/blobs/{layer}") == 2  # the 404, then it


async def test_a_public_images_layer_is_reused_by_any_namespace_without_a_download(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    (blob,) = scripted.add_image("pub/app", [BASE])
    url = f"docker://{scripted.host}/pub/app"
    published = await _import(engine, url, namespace="public")
    assert published.status == OperationStatus.SUCCESS, published.error
    scripted.requests.clear()

    done = await _import(engine, url, namespace="b")

    assert done.status == OperationStatus.SUCCESS, done.error
    assert blob not in scripted.requests
    assert _progress(engine, done.uuid)[-1]["layers_reused"] == 1


async def test_a_config_served_larger_than_its_descriptor_declares_is_refused(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    config = b'{"architecture": "amd64", "os": "linux", "config": {}}'
    scripted.add_image("big/config", [BASE], config=config)
    path = next(p for p in scripted.routes if p.startswith("/v2/big/config/blobs/") and
                scripted.routes[p][2] == config)  # fmt: skip
    scripted.routes[path] = (200, "application/json", config + b" " * (1 << 20))

    done = await _import(engine, f"docker://{scripted.host}/big/config")

    assert done.status == OperationStatus.FAILED
    assert f"larger than {len(config)} bytes" in str(done.error)


async def test_an_image_of_more_layers_than_docker_allows_is_refused_before_any_download(
    engine: Engine, scripted: ScriptedRegistry
) -> None:
    scripted.add_image(
        "deep/app", [layer_tar([Entry(path=f"f{i}", data=b"x")]) for i in range(128)]
    )

    done = await _import(engine, f"docker://{scripted.host}/deep/app")

    assert done.status == OperationStatus.FAILED
    assert "has 128 layers" in str(done.error)
    assert "at most 127" in str(done.error)
    assert not [r for r in scripted.requests if "/blobs/" in r]
