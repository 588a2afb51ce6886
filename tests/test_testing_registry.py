"""The registry test kit: test layers and OCI layouts, and a real loopback registry in each
auth mode, checked with plain HTTP requests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandtree.testing_registry import (
    LAYER_MEDIA_TYPES,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    Entry,
    LocalRegistry,
    ScriptedRegistry,
    TestImage,
    compress,
    layer_tar,
    write_oci_layout,
)

ACCEPT = {"Accept": f"{MEDIA_MANIFEST}, {MEDIA_INDEX}"}
HELLO = layer_tar([Entry(path="etc", kind="dir"), Entry(path="etc/hello", data=b"hello\n")])
WORLD = layer_tar([Entry(path="etc/world", data=b"world\n", mode=0o600, uid=1000)])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def read_json_blob(layout: Path, digest: str) -> Any:
    return json.loads(read_blob(layout, digest))


@pytest.fixture
def anonymous(tmp_path: Path) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path / "registry") as registry:
        yield registry


def test_layer_tar_writes_every_entry_kind_with_paths_verbatim() -> None:
    entries = [
        Entry(path="bin", kind="dir"),
        Entry(path="bin/tool", data=b"#!/bin/sh\n", mode=0o755, uid=1, gid=2),
        Entry(path="bin/sh", kind="symlink", target="tool"),
        Entry(path="bin/hard", kind="hardlink", target="bin/tool"),
        Entry(path="etc/gone", kind="whiteout"),
        Entry(path="var/cache", kind="opaque"),
        Entry(path="run/pipe", kind="fifo"),
        Entry(path="dev/null", kind="chardev", mode=0o666, major=1, minor=3),
        Entry(path="../escape", data=b"x"),
        Entry(path="/abs/olute", data=b"y"),
    ]
    data = layer_tar(entries)
    assert layer_tar(entries) == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("bin/tool").read() == b"#!/bin/sh\n"  # type: ignore[union-attr]
    assert list(members) == [
        "bin",
        "bin/tool",
        "bin/sh",
        "bin/hard",
        "etc/.wh.gone",
        "var/cache/.wh..wh..opq",
        "run/pipe",
        "dev/null",
        "../escape",
        "/abs/olute",
    ]
    assert members["bin"].isdir()
    assert members["bin"].mode == 0o755
    tool = members["bin/tool"]
    assert (tool.mode, tool.uid, tool.gid) == (0o755, 1, 2)
    assert members["bin/sh"].issym()
    assert members["bin/sh"].linkname == "tool"
    assert members["bin/hard"].islnk()
    assert members["bin/hard"].linkname == "bin/tool"
    assert members["etc/.wh.gone"].isfile()
    assert members["etc/.wh.gone"].size == 0
    assert members["run/pipe"].isfifo()
    dev = members["dev/null"]
    assert dev.ischr()
    assert (dev.devmajor, dev.devminor) == (1, 3)
    assert len({m.mtime for m in members.values()}) == 1


def test_compress_round_trips_every_format_reproducibly() -> None:
    assert compress(HELLO, "none") == HELLO
    assert gzip.decompress(compress(HELLO, "gzip")) == HELLO
    assert compress(HELLO, "gzip") == compress(HELLO, "gzip")
    zstd = compress(HELLO, "zstd")
    assert zstd.startswith(b"\x28\xb5\x2f\xfd")
    unpacked = subprocess.run(["zstd", "-d", "-c"], input=zstd, capture_output=True, check=True)
    assert unpacked.stdout == HELLO
    with pytest.raises(ValueError, match="unknown compression"):
        compress(HELLO, "xz")


def test_oci_layout_holds_an_index_of_per_platform_manifests_and_configs(tmp_path: Path) -> None:
    images = [
        TestImage(layers=[HELLO, WORLD], env=["A=1"], workdir="/srv", user="1000:1000"),
        TestImage(layers=[HELLO], compression="zstd", platform="linux/arm64/v8"),
    ]
    digest = write_oci_layout(tmp_path, images, tag="v1")

    assert json.loads((tmp_path / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    (top,) = json.loads((tmp_path / "index.json").read_text())["manifests"]
    assert top["digest"] == digest
    assert top["mediaType"] == MEDIA_INDEX
    assert top["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    assert sha256(read_blob(tmp_path, digest)) == digest
    amd64, arm64 = read_json_blob(tmp_path, digest)["manifests"]
    assert amd64["platform"] == {"os": "linux", "architecture": "amd64"}
    assert arm64["platform"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}

    manifest = read_json_blob(tmp_path, amd64["digest"])
    assert manifest["mediaType"] == MEDIA_MANIFEST
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_MEDIA_TYPES["gzip"]] * 2
    config = read_json_blob(tmp_path, manifest["config"]["digest"])
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(HELLO), sha256(WORLD)]}
    assert config["config"] == {"Env": ["A=1"], "WorkingDir": "/srv", "User": "1000:1000"}
    for layer in manifest["layers"]:
        assert sha256(read_blob(tmp_path, layer["digest"])) == layer["digest"]

    zstd_manifest = read_json_blob(tmp_path, arm64["digest"])
    (layer,) = zstd_manifest["layers"]
    assert layer["mediaType"] == LAYER_MEDIA_TYPES["zstd"]
    assert read_blob(tmp_path, layer["digest"]) == compress(HELLO, "zstd")


def test_a_second_tag_in_the_same_layout_keeps_the_first(tmp_path: Path) -> None:
    one = write_oci_layout(tmp_path, [TestImage(layers=[HELLO])], tag="one")
    two = write_oci_layout(tmp_path, [TestImage(layers=[WORLD])], tag="two")
    again = write_oci_layout(tmp_path, [TestImage(layers=[WORLD, HELLO])], tag="one")
    index = json.loads((tmp_path / "index.json").read_text())
    tags = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    assert tags == {"two": two, "one": again}
    assert again != one


def test_anonymous_registry_serves_a_pushed_single_layer_image_byte_for_byte(
    anonymous: LocalRegistry, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [TestImage(layers=[HELLO])], tag="latest")
    anonymous.push(layout, "test/one:latest")

    with httpx.Client(base_url=anonymous.url) as client:
        got = client.get("/v2/test/one/manifests/latest", headers=ACCEPT)
        assert got.status_code == 200
        assert got.headers["content-type"] == MEDIA_MANIFEST
        assert got.headers["docker-content-digest"] == digest
        assert got.content == read_blob(layout, digest)
        manifest = got.json()
        for descriptor in [manifest["config"], *manifest["layers"]]:
            blob = client.get(f"/v2/test/one/blobs/{descriptor['digest']}")
            assert blob.status_code == 200
            assert sha256(blob.content) == descriptor["digest"]
            assert blob.content == read_blob(layout, descriptor["digest"])
        assert client.get(f"/v2/test/one/manifests/{digest}", headers=ACCEPT).status_code == 200


def test_anonymous_registry_serves_a_pushed_multi_platform_index(
    anonymous: LocalRegistry, tmp_path: Path
) -> None:
    images = [TestImage(layers=[HELLO]), TestImage(layers=[HELLO, WORLD], platform="linux/arm64")]
    digest = anonymous.push_image("test/multi:v2", images, tmp_path)

    with httpx.Client(base_url=anonymous.url) as client:
        got = client.get("/v2/test/multi/manifests/v2", headers=ACCEPT)
        assert got.status_code == 200
        assert got.headers["content-type"] == MEDIA_INDEX
        assert got.headers["docker-content-digest"] == digest == sha256(got.content)
        platforms = []
        for entry in got.json()["manifests"]:
            platforms.append(entry["platform"]["architecture"])
            child = client.get(f"/v2/test/multi/manifests/{entry['digest']}", headers=ACCEPT)
            assert child.headers["content-type"] == MEDIA_MANIFEST
            assert sha256(child.content) == entry["digest"]
        assert platforms == ["amd64", "arm64"]


def test_zstd_layers_stay_zstd_after_a_push(anonymous: LocalRegistry, tmp_path: Path) -> None:
    anonymous.push_image(
        "test/zstd:latest", [TestImage(layers=[HELLO], compression="zstd")], tmp_path
    )

    with httpx.Client(base_url=anonymous.url) as client:
        manifest = client.get("/v2/test/zstd/manifests/latest", headers=ACCEPT).json()
        (layer,) = manifest["layers"]
        assert layer["mediaType"] == LAYER_MEDIA_TYPES["zstd"]
        blob = client.get(f"/v2/test/zstd/blobs/{layer['digest']}").content
    assert blob == compress(HELLO, "zstd")
    assert sha256(blob) == layer["digest"]


def test_basic_registry_answers_401_anonymously_and_200_with_the_credentials(
    tmp_path: Path,
) -> None:
    with LocalRegistry(tmp_path / "registry", auth="basic", username="u", password="pw") as reg:
        digest = reg.push_image("test/basic:latest", [TestImage(layers=[HELLO])], tmp_path)
        with httpx.Client(base_url=reg.url, headers=ACCEPT) as client:
            assert client.get("/v2/").status_code == 401
            assert client.get("/v2/", auth=("u", "pw")).status_code == 200
            anonymous = client.get("/v2/test/basic/manifests/latest")
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"].startswith("Basic realm=")
            wrong = client.get("/v2/test/basic/manifests/latest", auth=("u", "nope"))
            assert wrong.status_code == 401
            got = client.get("/v2/test/basic/manifests/latest", auth=("u", "pw"))
            assert got.status_code == 200
            assert got.headers["docker-content-digest"] == digest


def parse_challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    assert scheme == "Bearer"
    fields = dict(part.split("=", 1) for part in params.split('",'))
    return {k: v.strip('"') for k, v in fields.items()}


def test_token_registry_challenges_anonymous_requests_and_accepts_a_token_from_its_realm(
    tmp_path: Path,
) -> None:
    with LocalRegistry(tmp_path / "registry", auth="token") as reg:
        digest = reg.push_image("test/token:latest", [TestImage(layers=[HELLO])], tmp_path)
        with httpx.Client(base_url=reg.url, headers=ACCEPT) as client:
            assert client.get("/v2/").status_code == 401
            anonymous = client.get("/v2/test/token/manifests/latest")
            assert anonymous.status_code == 401
            challenge = parse_challenge(anonymous.headers["www-authenticate"])
            assert challenge == {
                "realm": reg.realm,
                "service": "sandtree-test-registry",
                "scope": "repository:test/token:pull",
            }
            params = {"service": challenge["service"], "scope": challenge["scope"]}
            answer = httpx.get(challenge["realm"], params=params, auth=(reg.username, reg.password))
            assert answer.status_code == 200
            body = answer.json()
            assert body["token"] == body["access_token"]
            assert body["expires_in"] > 0
            bearer = {"Authorization": f"Bearer {body['token']}"}
            got = client.get("/v2/test/token/manifests/latest", headers=bearer)
            assert got.status_code == 200
            assert got.headers["docker-content-digest"] == digest
            # The token grants what was asked: pull on test/token, nothing elsewhere.
            other = client.get("/v2/test/other/manifests/latest", headers=bearer)
            assert other.status_code == 401


def test_token_server_refuses_wrong_or_missing_credentials(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "registry", auth="token") as reg:
        assert reg.realm is not None
        params = {"service": "sandtree-test-registry", "scope": "repository:test/x:pull"}
        assert httpx.get(reg.realm, params=params).status_code == 401
        assert httpx.get(reg.realm, params=params, auth=("tester", "wrong")).status_code == 401
        assert httpx.get(reg.realm, params=params, auth=("other", "s3cret")).status_code == 401
        form = {"grant_type": "password", "username": "tester", "password": "s3cret", **params}
        assert httpx.post(reg.realm, data=form).status_code == 200
        assert httpx.post(reg.realm, data={**form, "password": "no"}).status_code == 401
        reg.password = "wrong"  # only skopeo's side: the token server keeps the right one
        layout = tmp_path / "layout"
        write_oci_layout(layout, [TestImage(layers=[HELLO])])
        with pytest.raises(RuntimeError, match="skopeo copy"):
            reg.push(layout, "test/x:latest")


def test_leaving_the_context_stops_the_registry_and_the_token_server(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "registry", auth="token") as reg:
        process, realm = reg.process, reg.realm
        assert process is not None
        assert realm is not None
        host, port = reg.host.split(":")
    assert process.returncode is not None
    for address in ((host, int(port)), ("127.0.0.1", int(realm.split(":")[2].split("/")[0]))):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(address)


def test_scripted_registry_serves_its_routes_stalls_a_blob_and_records_requests() -> None:
    with ScriptedRegistry() as reg:
        (blob,) = reg.add_image("slow/app", [HELLO])
        reg.stalling.add(blob)
        reg.stall_after = 16
        url = f"http://{reg.host}"
        manifest = httpx.get(f"{url}/v2/slow/app/manifests/latest")
        missing = httpx.get(f"{url}/v2/slow/app/manifests/other")
        received: list[bytes] = []
        with (
            httpx.stream("GET", url + blob, timeout=httpx.Timeout(5, read=0.5)) as stalled,
            pytest.raises(httpx.ReadTimeout),  # the rest never comes
        ):
            received.extend(stalled.iter_raw())

    assert manifest.headers["content-type"] == MEDIA_MANIFEST
    assert json.loads(manifest.content)["layers"][0]["digest"] == blob.rsplit("/", 1)[1]
    assert missing.status_code == 404
    assert len(b"".join(received)) == 16
    assert reg.requests == [
        "/v2/slow/app/manifests/latest",
        "/v2/slow/app/manifests/other",
        blob,
    ]
