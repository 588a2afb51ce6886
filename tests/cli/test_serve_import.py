"""Registry import end to end: a real ``sandtree serve`` importing from a real registry on
loopback, driven by the public ConTree client and SDK from PyPI, then running the image."""

from __future__ import annotations

import io
import shutil
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from contree_client import ImageImportRegistry, ImageImportRegistryCredentials
from contree_client.httpx import ContreeClient
from contree_sdk import ContreeSync

from sandtree.testing import ServerProcess, build_busybox_rootfs
from sandtree.testing_registry import LocalRegistry, TestImage, loopback_registries_allowed

pytestmark = [
    pytest.mark.isolation,
    pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed"),
]

HELLO = "hello from the registry\n"


@pytest.fixture(scope="module", autouse=True)
def _loopback_registries() -> Iterator[None]:
    """The servers of this module reach the test registries on 127.0.0.1 (the operator lists
    them: sandtree refuses loopback registries otherwise)."""
    with loopback_registries_allowed():
        yield


def _layer_of(rootfs: Path) -> bytes:
    """An uncompressed layer tar of everything under ``rootfs`` (symlinks kept as links)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(rootfs.iterdir()):
            tar.add(child, arcname=child.name)
    return out.getvalue()


@pytest.fixture(scope="module")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Busybox with its applets, and an /etc/hello to read back."""
    rootfs = build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
    (rootfs / "etc" / "hello").write_text(HELLO, encoding="utf-8")
    return _layer_of(rootfs)


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, busybox_layer: bytes
) -> Iterator[LocalRegistry]:
    """An anonymous registry holding ``test/busybox:1``."""
    tmp = tmp_path_factory.mktemp("registry")
    with LocalRegistry(tmp / "registry") as reg:
        reg.push_image("test/busybox:1", [TestImage(layers=[busybox_layer])], tmp)
        yield reg


@pytest.fixture(scope="module")
def private(
    tmp_path_factory: pytest.TempPathFactory, busybox_layer: bytes
) -> Iterator[LocalRegistry]:
    """A registry with docker token auth holding ``private/busybox:1``."""
    tmp = tmp_path_factory.mktemp("private")
    with LocalRegistry(tmp / "registry", auth="token", password="token-s3cret") as reg:
        reg.push_image("private/busybox:1", [TestImage(layers=[busybox_layer])], tmp)
        yield reg


def _until_listening(server: ServerProcess, deadline: float = 20.0) -> None:
    """Wait until the server accepts connections: uvicorn prints "Application startup
    complete" (what ``ServerProcess`` waits for) before it binds its socket."""
    end = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except ConnectionRefusedError:
            if time.monotonic() > end or server.process.poll() is not None:
                raise AssertionError(
                    "sandtree serve is not listening:\n" + "".join(server.output)
                ) from None
            time.sleep(0.01)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", tmp_path / "config") as srv:
        _until_listening(srv)
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[ContreeClient]:
    with ContreeClient(server.admin_token, base_url=server.url) as c:
        yield c


def _run(client: ContreeClient, command: str, image: str) -> str:
    """Run ``command`` through the shell in ``image``; its stdout."""
    spawned = client.spawn_instance(command, image, shell=True)
    assert isinstance(spawned.uuid, str)
    done = client.wait_operation(spawned.uuid, timeout=60).to_dict()
    assert done["status"] == "SUCCESS", done["error"]
    result = done["metadata"]["result"]
    assert result["state"]["exit_code"] == 0, result["stderr"]
    stdout: str = result["stdout"]["value"]
    return stdout


def test_the_contree_client_imports_from_a_registry_and_runs_a_command_in_the_image(
    client: ContreeClient, registry: LocalRegistry
) -> None:
    url = f"docker://{registry.host}/test/busybox:1"

    op_id = client.import_image(ImageImportRegistry(url=url), tag="busybox:imported")
    # For imports the client polls the operation (every 0.5 s) instead of following events.
    done = client.wait_operation(op_id, timeout=60).to_dict()

    assert (done["kind"], done["status"], done["error"]) == ("image_import", "SUCCESS", None)
    image_id = done["result_image_uuid"]
    assert done["result"] == {"image": image_id, "tag": "busybox:imported"}
    assert done["metadata"] == {"registry": {"url": url}, "tag": "busybox:imported",
                                "timeout": 300}  # fmt: skip
    tagged = client.list_images(tagged=True).to_dict()["images"]
    assert [(i["uuid"], i["tag"]) for i in tagged] == [(image_id, "busybox:imported")]
    assert _run(client, "cat /etc/hello", "tag:busybox:imported") == HELLO
    assert _run(client, "cat /etc/hello", image_id) == HELLO
    imports = client.list_operations(kind="image_import")
    assert [o.uuid for o in imports] == [op_id]
    events = list(client.follow_operation_events(op_id, timeout=30))
    assert {e.type for e in events[:-1]} == {"progress"}  # sandtree's, beyond the contract's
    assert events[-1].type == "completion"


def test_the_contree_client_imports_from_a_token_registry_with_credentials_shown_masked(
    client: ContreeClient, private: LocalRegistry
) -> None:
    url = f"docker://{private.host}/private/busybox:1"
    credentials = ImageImportRegistryCredentials(
        username=private.username, password=private.password
    )

    op_id = client.import_image(
        ImageImportRegistry(url=url, credentials=credentials), tag="private:1", timeout=120
    )
    done = client.wait_operation(op_id, timeout=60).to_dict()
    refused = client.wait_operation(client.import_image(ImageImportRegistry(url=url)), timeout=60)

    assert done["status"] == "SUCCESS", done["error"]
    shown = {"username": private.username, "password": "<MASKED>"}
    assert done["metadata"] == {"registry": {"url": url, "credentials": shown},
                                "tag": "private:1", "timeout": 120}  # fmt: skip
    assert _run(client, "cat /etc/hello", "tag:private:1") == HELLO
    assert refused.status == "FAILED"
    assert "requires credentials" in str(refused.error)


def test_the_contree_sdk_imports_from_a_token_registry_and_runs_in_the_image(
    server: ServerProcess, private: LocalRegistry
) -> None:
    sdk = ContreeSync(base_url=server.url, token=server.admin_token)
    url = f"docker://{private.host}/private/busybox:1"

    image = sdk.images.import_from(
        url, tag="sdk:1", username=private.username, password=private.password, timeout=60
    )
    ran = image.run(shell="cat /etc/hello; echo $((6 * 7))").wait()

    assert image.tag == "sdk:1"
    assert (ran.stdout, ran.exit_code) == (HELLO + "42\n", 0)
    assert sdk.images.use("sdk:1").run(shell="cat /etc/hello").wait().stdout == HELLO


def test_the_contree_sdk_oci_imports_an_image_once_then_finds_it_by_its_tag(
    server: ServerProcess, client: ContreeClient, registry: LocalRegistry
) -> None:
    sdk = ContreeSync(base_url=server.url, token=server.admin_token)
    url = f"docker://{registry.host}/test/busybox:1"

    first = sdk.images.oci(url, timeout=60)
    second = sdk.images.oci(url, timeout=60)

    assert first.tag == second.tag == f"{registry.host}/test/busybox:1"
    assert first.uuid == second.uuid
    assert len(client.list_operations(kind="image_import")) == 1
    assert second.run(shell="cat /etc/hello").wait().stdout == HELLO
