"""File tools: upload (path, text, base64; stored once), download (atomic, executable,
absolute destinations only), and reading an image without a sandbox: list_files, read_file
(text, binary, capped) and grep."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import anyio
import pytest

from sandtree.engine import ImageRecord
from sandtree.mcp._tools_files import READ_LIMIT

from .conftest import Agent

pytestmark = pytest.mark.anyio


async def _image_with(agent: Agent, base: ImageRecord, files: dict[str, bytes]) -> str:
    """A child of ``base`` holding ``files`` (uploaded, then placed by a run)."""
    placed = {}
    for path, data in files.items():
        uploaded = await agent.call("upload", content_base64=base64.b64encode(data).decode())
        placed[path] = uploaded["uuid"]
    out = await agent.call(
        "run", command="write /.made x", image=base.uuid, files=placed, disposable=False
    )
    return str(out["result_image"])


async def test_upload_of_text_answers_its_uuid_sha256_and_size(agent: Agent) -> None:
    out = await agent.call("upload", content="hello upload\n")
    assert set(out) == {"uuid", "sha256", "size"}
    assert out["sha256"] == hashlib.sha256(b"hello upload\n").hexdigest()
    assert out["size"] == len(b"hello upload\n")


async def test_the_same_content_from_text_base64_or_a_file_is_stored_once(
    agent: Agent, tmp_path: Path
) -> None:
    data = "same bytes ☃\n".encode()
    local = tmp_path / "same.txt"
    local.write_bytes(data)
    answers = [
        await agent.call("upload", content=data.decode()),
        await agent.call("upload", content_base64=base64.b64encode(data).decode()),
        await agent.call("upload", path=str(local)),
        await agent.call("upload", content=data.decode()),
    ]
    assert len({(a["uuid"], a["sha256"]) for a in answers}) == 1
    assert answers[0]["sha256"] == hashlib.sha256(data).hexdigest()
    other = await agent.call("upload", content="other bytes")
    assert other["uuid"] != answers[0]["uuid"]


async def test_upload_of_binary_content_keeps_every_byte(agent: Agent, base: ImageRecord) -> None:
    data = bytes(range(256)) * 4
    image = await _image_with(agent, base, {"/data/blob.bin": data})
    read = await agent.call("read_file", image=image, path="/data/blob.bin")
    assert read["encoding"] == "base64"
    assert base64.b64decode(read["content"]) == data


async def test_upload_needs_exactly_something_to_upload(agent: Agent, tmp_path: Path) -> None:
    assert "path, content or content_base64" in await agent.fail("upload")
    assert "path, content or content_base64" in await agent.fail("upload", content="")
    assert "base64" in await agent.fail("upload", content_base64="not base64!")
    missing = tmp_path / "absent.txt"
    assert str(missing) in await agent.fail("upload", path=str(missing))
    assert "not a file" in await agent.fail("upload", path=str(tmp_path))


async def test_download_writes_the_file_and_answers_where(
    agent: Agent, base: ImageRecord, tmp_path: Path
) -> None:
    image = await _image_with(agent, base, {"/app/report.txt": b"report\n"})
    target = tmp_path / "out" / "nested" / "report.txt"
    out = await agent.call("download", image=image, path="/app/report.txt", destination=str(target))
    assert out == {
        "success": True,
        "source": {"image": image, "path": "/app/report.txt"},
        "destination": str(target),
        "size": 7,
        "executable": False,
    }
    assert target.read_bytes() == b"report\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


async def test_download_executable_makes_the_file_mode_0755(
    agent: Agent, base: ImageRecord, tmp_path: Path
) -> None:
    image = await _image_with(agent, base, {"/app/target/release/tool": b"\x7fELF binary"})
    target = tmp_path / "tool"
    out = await agent.call(
        "download",
        image=image,
        path="/app/target/release/tool",
        destination=str(target),
        executable=True,
    )
    assert out["executable"] is True
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert target.read_bytes() == b"\x7fELF binary"


async def test_download_by_tag_replaces_an_existing_file_and_leaves_no_temporary_file(
    agent: Agent, base: ImageRecord, tmp_path: Path
) -> None:
    target = tmp_path / "downloads" / "hostname"
    target.parent.mkdir()
    target.write_text("old content that is longer\n")
    out = await agent.call(
        "download", image="tag:base:1", path="/etc/hostname", destination=str(target)
    )
    assert out["source"]["image"] == base.uuid
    assert target.read_text() == "sandbox\n"
    assert os.listdir(target.parent) == ["hostname"]


async def test_a_failed_download_keeps_the_old_file_and_leaves_no_temporary_file(
    agent: Agent, base: ImageRecord, tmp_path: Path
) -> None:
    target = tmp_path / "downloads" / "kept.txt"
    target.parent.mkdir()
    target.write_text("keep me\n")
    message = await agent.fail(
        "download", image=base.uuid, path="/no/such/file", destination=str(target)
    )
    assert "list_files" in message
    assert target.read_text() == "keep me\n"
    assert os.listdir(target.parent) == ["kept.txt"]


async def test_download_to_a_relative_destination_is_an_error(
    agent: Agent, base: ImageRecord, tmp_path: Path
) -> None:
    message = await agent.fail(
        "download", image=base.uuid, path="/etc/hostname", destination="relative/out.txt"
    )
    assert "absolute" in message
    assert not await anyio.Path("relative").exists()


async def test_list_files_lists_a_directory_with_types_modes_and_link_targets(
    agent: Agent, base: ImageRecord
) -> None:
    root = await agent.call("list_files", image=base.uuid)
    assert root["path"] == "/"
    assert root["count"] == len(root["files"])
    names = {f["name"]: f for f in root["files"]}
    assert {"bin", "etc", "root", "tmp"} <= set(names)
    assert names["tmp"]["type"] == "directory"
    assert names["tmp"]["mode"] == oct(0o41777)
    assert names["tmp"]["path"] == "/tmp"

    bin_dir = await agent.call("list_files", image="tag:base:1", path="bin/")
    assert bin_dir["path"] == "/bin"
    entries = {f["name"]: f for f in bin_dir["files"]}
    assert entries["sh"]["type"] == "symlink"
    assert entries["sh"]["target"] == "busybox"
    assert entries["busybox"]["type"] == "file"
    assert entries["busybox"]["target"] is None
    assert entries["busybox"]["path"] == "/bin/busybox"
    assert set(entries["busybox"]) == {
        "name",
        "path",
        "type",
        "size",
        "mode",
        "permissions",
        "target",
    }


async def test_list_files_of_a_missing_directory_is_an_error_naming_list_files(
    agent: Agent, base: ImageRecord
) -> None:
    assert "list_files" in await agent.fail("list_files", image=base.uuid, path="/nope")


async def test_read_file_answers_text_as_utf8(agent: Agent, base: ImageRecord) -> None:
    out = await agent.call("read_file", image="tag:base:1", path="/etc/hostname")
    assert out == {
        "path": "/etc/hostname",
        "content": "sandbox\n",
        "encoding": "utf-8",
        "bytes_size": 8,
        "truncated": False,
    }


async def test_read_file_answers_binary_as_base64(agent: Agent, base: ImageRecord) -> None:
    image = await _image_with(agent, base, {"/bin/blob": b"\x00\xff\x01"})
    out = await agent.call("read_file", image=image, path="/bin/blob")
    assert (out["content"], out["encoding"], out["bytes_size"]) == ("AP8B", "base64", 3)


async def test_read_file_of_a_file_over_the_limit_answers_its_start_marked_truncated(
    agent: Agent, base: ImageRecord
) -> None:
    image = await _image_with(agent, base, {"/var/big.log": b"x" * (READ_LIMIT + 10)})
    out = await agent.call("read_file", image=image, path="/var/big.log")
    assert out["truncated"] is True
    assert out["bytes_size"] == READ_LIMIT
    assert out["content"] == "x" * READ_LIMIT


async def test_read_file_of_a_missing_file_is_an_error_naming_list_files(
    agent: Agent, base: ImageRecord
) -> None:
    assert "list_files" in await agent.fail("read_file", image=base.uuid, path="/etc/nope")


async def test_grep_finds_lines_with_their_paths_and_numbers(
    agent: Agent, base: ImageRecord
) -> None:
    out = await agent.call("grep", image="tag:base:1", pattern="sandbox")
    assert out["patterns"] == ["sandbox"]
    assert out["truncated"] is False
    assert out["matches"] == [{"path": "/etc/hostname", "line_number": 1, "line_text": "sandbox\n"}]


async def test_grep_narrows_by_path_glob_case_and_count(agent: Agent, base: ImageRecord) -> None:
    image = await _image_with(
        agent, base, {"/src/a.py": b"TODO one\nTODO two\n", "/src/b.txt": b"todo three\n"}
    )

    async def found(**options: object) -> list[tuple[str, int]]:
        out = await agent.call("grep", image=image, **options)
        return [(m["path"], m["line_number"]) for m in out["matches"]]

    assert await found(pattern="TODO", path="/src") == [("/src/a.py", 1), ("/src/a.py", 2)]
    assert await found(pattern="TODO", path="/src", case="insensitive") == [
        ("/src/a.py", 1),
        ("/src/a.py", 2),
        ("/src/b.txt", 1),
    ]
    assert await found(pattern="todo", path="/src", case="insensitive", glob="*.txt") == [
        ("/src/b.txt", 1)
    ]
    assert await found(pattern="TODO", path="/src", max_count=1) == [("/src/a.py", 1)]
    assert await found(pattern="nowhere to be found") == []
