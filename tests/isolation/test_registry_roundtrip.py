"""A registry round trip on the real runtime: import, run and keep, export and push, import on
a fresh data directory: the same files, modes and owners come back."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import anyio
import pytest

from sandtree.engine import Engine, ImageRecord, RunSpec
from sandtree.engine.types import OperationStatus
from sandtree.testing import tree_listing
from sandtree.testing_registry import LOOPBACK_REGISTRIES, LocalRegistry, TestImage

from .kit import real_engine

pytestmark = [pytest.mark.anyio, pytest.mark.isolation]

_CHANGES = (
    "set -e; echo made > /etc/made; chown 1000:100 /etc/made; chmod 640 /etc/made;"
    " mkdir -p /srv/data; chmod 1777 /srv/data; ln -s ../etc/made /srv/link;"
    " ln /etc/made /srv/hard; rm /etc/hostname; mkfifo /srv/fifo"
)


def _layer(rootfs: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    return buf.getvalue()


async def _import(engine: Engine, url: str) -> ImageRecord:
    op = await engine.import_image(url)
    with anyio.fail_after(60):
        done = await engine.wait_operation(op)
    assert done.status == OperationStatus.SUCCESS, done.error
    return engine.resolve_image(str(done.result_image))


async def test_import_run_export_and_push_round_trip_keeps_files_modes_and_owners(
    tmp_path: Path, busybox_rootfs: Path
) -> None:
    with LocalRegistry(tmp_path / "registry") as registry:
        registry.push_image(
            "base/busybox:1",
            [TestImage(layers=[_layer(busybox_rootfs)], env=["PATH=/bin"])],
            tmp_path,
        )
        async with real_engine(
            tmp_path / "first", insecure_registries=LOOPBACK_REGISTRIES
        ) as first:
            base = await _import(first, f"docker://{registry.host}/base/busybox:1")
            op = await first.spawn(
                RunSpec(image=base.uuid, command=_CHANGES, shell=True, disposable=False)
            )
            with anyio.fail_after(60):
                done = await first.wait_operation(op)
            assert done.status == OperationStatus.SUCCESS, done.error
            child = first.resolve_image(str(done.result_image))
            expected = tree_listing(first, child)
            archive = tmp_path / "child.oci.tar"
            with archive.open("wb") as out:
                await anyio.to_thread.run_sync(first.export_image, child, out)
            await first.push_image(child, f"docker://{registry.host}/out/child:1")
        async with real_engine(
            tmp_path / "second", insecure_registries=LOOPBACK_REGISTRIES
        ) as second:
            pulled = await _import(second, f"docker://{registry.host}/out/child:1")
            loaded = await second.import_local(archive)
            assert tree_listing(second, pulled) == expected
            assert tree_listing(second, loaded) == expected
            made = [row for row in expected if row[0].removeprefix("./") == "etc/made"]
            assert made
            assert made[0][2:5] == (0o640, 1000, 100)
            op = await second.spawn(
                RunSpec(
                    image=pulled.uuid, command="cat /srv/link; stat -c %a /srv/data", shell=True
                )
            )
            with anyio.fail_after(60):
                ran = await second.wait_operation(op)
            assert ran.status == OperationStatus.SUCCESS, ran.error
