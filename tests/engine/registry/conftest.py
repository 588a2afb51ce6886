"""Registries for the import tests: a real one on loopback with test images pushed by skopeo,
and a scripted one (``ScriptedRegistry``) that misbehaves on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandtree.testing_registry import Entry, LocalRegistry, ScriptedRegistry, TestImage, layer_tar

BASE = layer_tar(
    [
        Entry(path="etc", kind="dir"),
        Entry(path="etc/hello", data=b"hello\n"),
        Entry(path="etc/os-release", data=b"ID=test\n"),
        Entry(path="bin", kind="dir"),
        Entry(path="bin/tool", data=b"#!/bin/sh\n", mode=0o755),
    ]
)
#: On top of BASE: a deleted file, a replaced (opaque) directory, an owner and a setuid bit.
CHANGES = layer_tar(
    [
        Entry(path="etc/os-release", kind="whiteout"),
        Entry(path="etc", kind="opaque"),
        Entry(path="etc/hello", data=b"replaced\n"),
        Entry(path="home/user", kind="dir", uid=1000, gid=1000, mode=0o750),
        Entry(path="home/user/notes", data=b"mine\n", uid=1000, gid=1000, mode=0o600),
        Entry(path="bin/su", data=b"\x7fELF", mode=0o4755),
    ]
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An anonymous registry holding test/one, test/multi, test/index, test/zstd, test/plain."""
    tmp = tmp_path_factory.mktemp("registry")
    with LocalRegistry(tmp / "registry") as reg:
        reg.push_image("test/one:latest", [TestImage(layers=[BASE])], tmp)
        reg.push_image(
            "test/multi:v1",
            [
                TestImage(
                    layers=[BASE, CHANGES],
                    env=["A=1", "PATH=/bin"],
                    workdir="/home/user",
                    user="1000:1000",
                )
            ],
            tmp,
        )
        arm = layer_tar([Entry(path="arch", data=b"arm64\n")])
        amd = layer_tar([Entry(path="arch", data=b"amd64\n")])
        reg.push_image(
            "test/index:latest",
            [
                TestImage(layers=[arm], platform="linux/arm64/v8"),
                TestImage(layers=[amd], platform="linux/amd64"),
            ],
            tmp,
        )
        reg.push_image(
            "test/zstd:latest", [TestImage(layers=[BASE, CHANGES], compression="zstd")], tmp
        )
        reg.push_image("test/plain:latest", [TestImage(layers=[BASE], compression="none")], tmp)
        yield reg


@pytest.fixture
def scripted() -> Iterator[ScriptedRegistry]:
    with ScriptedRegistry() as reg:
        yield reg


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
