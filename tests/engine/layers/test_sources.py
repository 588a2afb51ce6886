from __future__ import annotations

import gzip
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
from layer_testkit import (
    UID_SHIFT,
    add_oci_image,
    build_tar,
    directory,
    file,
    image_config,
    put_blob,
    sha256,
    tar_directory,
    unpack,
    whiteout,
    write_docker_save,
    write_oci_layout,
    zstd_compress,
)

from sandtree.engine.layers._copy import copy_rootfs_dir
from sandtree.engine.layers._sources import ImageConfig, ImageSource, open_source
from sandtree.errors import InvalidRequestError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown, mknod, trusted.*")

BASE = build_tar(directory("etc"), file("etc/os-release", b"ID=demo\n"), file("etc/old", b"1"))
TOP = build_tar(whiteout("etc/old"), file("etc/new", b"2"))


def _unpack_all(source: ImageSource, dest: Path) -> list[Path]:
    """Unpack every layer of ``source`` into ``dest/0``, ``dest/1``, ..."""
    out = []
    for i, layer in enumerate(source.layers()):
        target = dest / str(i)
        target.mkdir(parents=True)
        with layer as stream:
            unpack(stream.read(), target)
        out.append(target)
    return out


def test_rootfs_directory_is_detected_and_copied_with_shifted_owners(tmp_path: Path) -> None:
    src = tmp_path / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "sh").write_bytes(b"#!shell")
    os.chmod(src / "bin" / "sh", 0o4755)
    os.link(src / "bin" / "sh", src / "bin" / "ash")
    os.symlink("/etc/shadow", src / "shadow-link")
    os.symlink(str(tmp_path), src / "hostdir")
    (src / "home").mkdir()
    os.chown(src / "home", 1000, 1000)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(src / "pipe")
    os.setxattr(src / "bin" / "sh", "user.note", b"kept")
    os.utime(src / "bin" / "sh", ns=(1, 1_500_000_000_123_456_789))
    dest = tmp_path / "layer"
    dest.mkdir()

    source = open_source(src)
    stats = copy_rootfs_dir(src, dest, uid_shift=UID_SHIFT)

    assert source.is_directory
    assert source.description == f"rootfs-dir:{src}"
    assert source.config == ImageConfig(env=[], cwd="/", user="")
    sh = os.lstat(dest / "bin" / "sh")
    assert (sh.st_uid, sh.st_gid, stat.S_IMODE(sh.st_mode)) == (UID_SHIFT, UID_SHIFT, 0o4755)
    assert sh.st_mtime_ns == 1_500_000_000_123_456_789
    assert os.lstat(dest / "bin" / "ash").st_ino == sh.st_ino
    assert os.getxattr(dest / "bin" / "sh", "user.note") == b"kept"
    assert os.lstat(dest / "home").st_uid == UID_SHIFT + 1000
    assert os.readlink(dest / "shadow-link") == "/etc/shadow"
    assert os.readlink(dest / "hostdir") == str(tmp_path)
    assert stat.S_ISFIFO(os.lstat(dest / "pipe").st_mode)
    assert not (dest / "null").exists()
    assert any("null" in w for w in stats.warnings)
    with pytest.raises(InvalidRequestError, match="copy it instead"):
        next(source.layers())


def test_rootfs_directory_with_a_manifest_json_is_still_a_rootfs(tmp_path: Path) -> None:
    src = tmp_path / "rootfs"
    (src / "etc").mkdir(parents=True)
    (src / "manifest.json").write_text("{}", encoding="utf-8")

    assert open_source(src).is_directory


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"], ids=["plain", "gzip", "zstd"])
def test_plain_rootfs_tar_is_one_layer_with_default_config(
    tmp_path: Path, compression: str | None
) -> None:
    path = tmp_path / "rootfs.tar"
    path.write_bytes(build_tar(directory("."), *BASE_MEMBERS, compression=compression))

    source = open_source(path)
    [layer] = _unpack_all(source, tmp_path / "out")

    assert source.description == f"rootfs-tar:{path}"
    assert source.config == ImageConfig()
    assert (layer / "etc" / "os-release").read_bytes() == b"ID=demo\n"


BASE_MEMBERS = [directory("etc"), file("etc/os-release", b"ID=demo\n")]


def test_oci_layout_directory_gives_config_and_layers_bottom_first(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    config = image_config(env=["PATH=/usr/bin", "A=1"], cwd="/srv", user="app")
    write_oci_layout(root, [add_oci_image(root, [BASE, TOP], config)])

    source = open_source(root)
    base, top = _unpack_all(source, tmp_path / "out")

    assert source.description == f"oci-layout:{root}"
    assert source.config == ImageConfig(env=["PATH=/usr/bin", "A=1"], cwd="/srv", user="app")
    assert (base / "etc" / "old").read_bytes() == b"1"
    assert stat.S_ISCHR(os.lstat(top / "etc" / "old").st_mode)
    assert (top / "etc" / "new").read_bytes() == b"2"


def test_oci_layout_tar_reads_like_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    write_oci_layout(root, [add_oci_image(root, [BASE, TOP], image_config(user="1000"))])
    archive = tmp_path / "oci.tar"
    archive.write_bytes(tar_directory(root))

    source = open_source(archive)
    _base, top = _unpack_all(source, tmp_path / "out")

    assert source.description == f"oci-layout:{archive}"
    assert source.config.user == "1000"
    assert (top / "etc" / "new").read_bytes() == b"2"


def test_gzipped_oci_layout_tar_is_read(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    write_oci_layout(root, [add_oci_image(root, [BASE], image_config())])
    archive = tmp_path / "oci.tar.gz"
    archive.write_bytes(gzip.compress(tar_directory(root)))

    [base] = _unpack_all(open_source(archive), tmp_path / "out")

    assert (base / "etc" / "old").read_bytes() == b"1"


def _platform(descriptor: dict[str, Any], arch: str) -> dict[str, Any]:
    return dict(descriptor, platform={"os": "linux", "architecture": arch})


def test_oci_layout_with_several_platforms_picks_linux_amd64(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    arm = add_oci_image(root, [build_tar(file("arch", b"arm64"))], image_config(arch="arm64"))
    amd = add_oci_image(root, [build_tar(file("arch", b"amd64"))], image_config(arch="amd64"))
    attestation = dict(
        add_oci_image(root, [build_tar(file("sbom"))], image_config(arch="unknown")),
        platform={"os": "unknown", "architecture": "unknown"},
    )
    write_oci_layout(root, [_platform(arm, "arm64"), _platform(amd, "amd64"), attestation])

    [layer] = _unpack_all(open_source(root), tmp_path / "out")

    assert (layer / "arch").read_bytes() == b"amd64"


def test_oci_layout_platform_comes_from_the_config_when_the_index_has_none(
    tmp_path: Path,
) -> None:
    root = tmp_path / "oci"
    arm = add_oci_image(root, [build_tar(file("arch", b"arm64"))], image_config(arch="arm64"))
    amd = add_oci_image(root, [build_tar(file("arch", b"amd64"))], image_config(arch="amd64"))
    write_oci_layout(root, [arm, amd])

    [layer] = _unpack_all(open_source(root), tmp_path / "out")

    assert (layer / "arch").read_bytes() == b"amd64"


def test_nested_image_index_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    arm = add_oci_image(root, [build_tar(file("arch", b"arm64"))], image_config(arch="arm64"))
    amd = add_oci_image(root, [build_tar(file("arch", b"amd64"))], image_config(arch="amd64"))
    nested = {"schemaVersion": 2, "manifests": [_platform(arm, "arm64"), _platform(amd, "amd64")]}
    blob = put_blob(root, json.dumps(nested).encode())
    write_oci_layout(root, [{"mediaType": "application/vnd.oci.image.index.v1+json", **blob}])

    [layer] = _unpack_all(open_source(root), tmp_path / "out")

    assert (layer / "arch").read_bytes() == b"amd64"


def test_oci_layout_without_linux_amd64_raises_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    arm = add_oci_image(root, [BASE], image_config(arch="arm64"))
    ppc = add_oci_image(root, [BASE], image_config(arch="ppc64le"))
    write_oci_layout(root, [_platform(arm, "arm64"), _platform(ppc, "ppc64le")])

    with pytest.raises(InvalidRequestError, match=r"no linux/amd64 image .*linux/arm64"):
        open_source(root)


def test_single_image_for_another_platform_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    write_oci_layout(root, [add_oci_image(root, [BASE], image_config(arch="arm64"))])

    with pytest.raises(InvalidRequestError, match="no linux/amd64 image"):
        open_source(root)


def test_several_linux_amd64_images_are_ambiguous(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    one = add_oci_image(root, [BASE], image_config(user="a"))
    two = add_oci_image(root, [TOP], image_config(user="b"))
    write_oci_layout(root, [one, two])

    with pytest.raises(InvalidRequestError, match="several linux/amd64 images"):
        open_source(root)


def test_docker_save_archive_with_a_deduplicated_layer(tmp_path: Path) -> None:
    tree = write_docker_save(
        tmp_path / "save", [BASE, TOP, BASE], image_config(env=["X=1"], cwd="/app")
    )
    archive = tmp_path / "save.tar"
    archive.write_bytes(tar_directory(tree))

    source = open_source(archive)
    layers = _unpack_all(source, tmp_path / "out")

    assert source.description == f"docker-save:{archive}"
    assert source.config == ImageConfig(env=["X=1"], cwd="/app", user="")
    assert len(layers) == 3
    assert (layers[2] / "etc" / "old").read_bytes() == b"1"


def test_docker_save_directory_is_read_too(tmp_path: Path) -> None:
    tree = write_docker_save(tmp_path / "save", [BASE, TOP], image_config())

    source = open_source(tree)
    _base, top = _unpack_all(source, tmp_path / "out")

    assert source.description == f"docker-save:{tree}"
    assert (top / "etc" / "new").read_bytes() == b"2"


def test_docker_save_with_blob_paths_is_read(tmp_path: Path) -> None:
    # Docker 25+ writes "blobs/sha256/<hex>" paths in manifest.json.
    root = tmp_path / "save"
    root.mkdir()
    config = image_config(user="www")
    config["rootfs"]["diff_ids"] = [sha256(BASE)]
    config_blob = put_blob(root, json.dumps(config).encode())["digest"].split(":")[1]
    layer_blob = put_blob(root, BASE)["digest"].split(":")[1]
    manifest = [{"Config": f"blobs/sha256/{config_blob}", "Layers": [f"blobs/sha256/{layer_blob}"]}]
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    source = open_source(root)
    [base] = _unpack_all(source, tmp_path / "out")

    assert source.config.user == "www"
    assert (base / "etc" / "os-release").exists()


def test_skopeo_docker_archive_with_top_level_layer_tars_is_read(tmp_path: Path) -> None:
    # skopeo copy ... docker-archive: writes <diff_id hex>.tar blobs at the top level.
    root = tmp_path / "save"
    root.mkdir()
    config = image_config(env=["S=1"])
    config["rootfs"]["diff_ids"] = [sha256(BASE), sha256(TOP)]
    config_bytes = json.dumps(config).encode()
    config_name = sha256(config_bytes).split(":")[1] + ".json"
    (root / config_name).write_bytes(config_bytes)
    names = []
    for layer in (BASE, TOP):
        names.append(sha256(layer).split(":")[1] + ".tar")
        (root / names[-1]).write_bytes(layer)
    manifest = [{"Config": config_name, "RepoTags": ["demo:latest"], "Layers": names}]
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    archive = tmp_path / "save.tar"
    archive.write_bytes(tar_directory(root))

    source = open_source(archive)
    _base, top = _unpack_all(source, tmp_path / "out")

    assert source.description == f"docker-save:{archive}"
    assert source.config.env == ["S=1"]
    assert (top / "etc" / "new").read_bytes() == b"2"


def test_layer_digest_mismatch_raises_when_the_layer_is_closed(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    write_oci_layout(root, [add_oci_image(root, [BASE], image_config())])
    blob = root / "blobs" / "sha256" / sha256(BASE).split(":")[1]
    tampered = bytearray(BASE)
    tampered[1024] ^= 0xFF  # first byte of etc/os-release: still a valid tar
    blob.write_bytes(bytes(tampered))

    [layer] = open_source(root).layers()
    with pytest.raises(InvalidRequestError, match="digest mismatch"), layer as stream:
        stream.read()


def test_layer_size_mismatch_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    write_oci_layout(root, [add_oci_image(root, [BASE], image_config())])
    blob = root / "blobs" / "sha256" / sha256(BASE).split(":")[1]
    blob.write_bytes(BASE + bytes(512))

    [layer] = open_source(root).layers()
    with pytest.raises(InvalidRequestError, match="differs from the recorded"), layer:
        pass


def test_tampered_manifest_is_rejected_at_open(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    descriptor = add_oci_image(root, [BASE], image_config())
    write_oci_layout(root, [descriptor])
    manifest = root / "blobs" / "sha256" / descriptor["digest"].split(":")[1]
    manifest.write_bytes(
        manifest.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":2 ')
    )

    with pytest.raises(InvalidRequestError, match="digest mismatch"):
        open_source(root)


def test_docker_save_layer_not_matching_its_diff_id_is_rejected(tmp_path: Path) -> None:
    tree = write_docker_save(tmp_path / "save", [BASE], image_config())
    [layer_tar] = tree.glob("*/layer.tar")
    layer_tar.write_bytes(build_tar(*BASE_MEMBERS, file("etc/implant", b"evil")))

    [layer] = open_source(tree).layers()
    with pytest.raises(InvalidRequestError, match="digest mismatch"), layer as stream:
        stream.read()


def test_missing_blob_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    write_oci_layout(root, [add_oci_image(root, [BASE], image_config())])
    (root / "blobs" / "sha256" / sha256(BASE).split(":")[1]).unlink()

    [layer] = open_source(root).layers()
    with pytest.raises(InvalidRequestError, match="missing"), layer:
        pass


def test_missing_path_and_non_tar_file_raise_invalid_request(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not an archive " * 100)

    with pytest.raises(InvalidRequestError, match="does not exist"):
        open_source(tmp_path / "nope")
    with pytest.raises(InvalidRequestError, match="neither a directory nor a tar"):
        open_source(junk)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("index.json", "{not json", "not valid JSON"),
        ("index.json", '{"manifests": {"a": 1}}', "not a JSON list"),
        ("index.json", '{"manifests": [{"digest": "md5:abc"}]}', "unsupported digest"),
        ("index.json", '{"manifests": []}', "no linux/amd64 image"),
    ],
)
def test_malformed_oci_metadata_is_reported_as_invalid(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    root = write_oci_layout(tmp_path / "oci", [])
    (root / name).write_text(content, encoding="utf-8")

    with pytest.raises(InvalidRequestError, match=message):
        open_source(root)


def test_malformed_docker_manifest_is_reported_as_invalid(tmp_path: Path) -> None:
    tree = write_docker_save(tmp_path / "save", [BASE], image_config())
    (tree / "manifest.json").write_text('{"Config": "x"}', encoding="utf-8")

    with pytest.raises(InvalidRequestError, match="not a JSON list"):
        open_source(tree)


def test_zstd_compressed_image_archive_is_refused_with_a_hint(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    write_oci_layout(root, [add_oci_image(root, [BASE], image_config())])
    archive = tmp_path / "oci.tar.zst"
    archive.write_bytes(zstd_compress(tar_directory(root)))

    with pytest.raises(InvalidRequestError, match="zstd -d"):
        open_source(archive)


def test_copy_rootfs_dir_keeps_file_capabilities_namespaced(tmp_path: Path) -> None:
    src = tmp_path / "rootfs"
    src.mkdir()
    (src / "ping").write_bytes(b"\x7fELF")
    os.setxattr(
        src / "ping", "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    )
    dest = tmp_path / "layer"
    dest.mkdir()

    copy_rootfs_dir(src, dest, uid_shift=UID_SHIFT)

    stored = os.getxattr(dest / "ping", "security.capability")
    assert stored == struct.pack("<IIIIII", 0x03000001, 1 << 13, 0, 0, 0, UID_SHIFT)
