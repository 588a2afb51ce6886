"""Tools for files: rsync a tree, upload one file, download from an image, and read an image
without a sandbox (list_files, read_file, grep)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from ._context import McpContext, tool_errors
from ._rsync import sync

__all__ = ["READ_LIMIT", "register_file_tools"]

logger = logging.getLogger(__name__)

#: read_file answers at most this many bytes; download is for bigger files.
READ_LIMIT = 1 << 20
_NOT_FOUND_HINT = "list_files shows what the image holds; list_images shows the images"


def _kind(item: dict[str, Any]) -> str:
    if item.get("is_dir"):
        return "directory"
    if item.get("is_symlink"):
        return "symlink"
    return "file"


def _absolute(path: str) -> str:
    path = "/" + path.lstrip("/")
    return "/" if path in ("/.", "/") else path.rstrip("/")


def _local_path(path: str) -> str:
    """``~`` expanded (cheap: no filesystem access, only the environment)."""
    return os.path.expanduser(path)


def _temporary_beside(target: str) -> tuple[int, str]:
    """A new temporary file in ``target``'s directory (made if missing), renamed in later."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return tempfile.mkstemp(dir=os.path.dirname(target), prefix=".download-", suffix=".tmp")


def register_file_tools(server: MCPServer, mc: McpContext) -> None:
    """Add rsync, upload, download, list_files, read_file and grep."""

    @server.tool()
    async def rsync(source: str, destination: str, exclude: list[str] | None = None) -> int:
        """Sync a local directory, file or glob (absolute) to destination in the sandbox;
        returns a directory_state_id to pass to run. Only new or changed files are hashed and
        uploaded, so syncing again after a change is cheap. exclude takes .gitignore-style
        globs matched at any depth, e.g. ["__pycache__", ".git", "node_modules", "*.pyc"].
        """
        with tool_errors():
            result = await sync(
                mc.client, mc.sync_cache, mc.server_key, source, destination, exclude or ()
            )
        # The answer stays a bare id, as agents expect; what it cost goes to the log.
        logger.info(
            "rsync %s -> %s: %d files, %d hashed, %d uploaded (%d bytes) in %.3f s",
            source,
            destination,
            result.files,
            result.hashed,
            result.uploaded,
            result.bytes_uploaded,
            result.seconds,
        )
        return result.directory_state_id

    @server.tool()
    async def upload(
        path: str | None = None, content: str | None = None, content_base64: str | None = None
    ) -> dict[str, Any]:
        """Upload one file (a local path, text, or base64); returns {uuid, sha256, size}. Pass
        it to run as files={"/abs/path/in/sandbox": uuid}. Identical content is stored once."""
        with tool_errors():
            if path:
                local = _local_path(path)
                if not await asyncio.to_thread(os.path.isfile, local):
                    raise ToolError(f"{path} is not a file on this machine")
                found = await mc.client.upload_file(Path(local))
            elif content_base64:
                try:
                    data = base64.b64decode(content_base64, validate=True)
                except ValueError:
                    raise ToolError("content_base64 is not valid base64") from None
                found = await mc.client.upload_file(data)
            elif content is not None and content != "":
                found = await mc.client.upload_file(content.encode())
            else:
                raise ToolError("pass one of path, content or content_base64")
        return {"uuid": found["uuid"], "sha256": found["sha256"], "size": found.get("size")}

    @server.tool()
    async def download(
        image: str, path: str, destination: str, executable: bool = False
    ) -> dict[str, Any]:
        """Copy a file out of an image to an absolute local path (written atomically);
        executable=true makes it executable (e.g. a built binary)."""
        target = _local_path(destination)
        if not os.path.isabs(target):
            raise ToolError(f"destination must be an absolute local path, got {destination!r}")
        with tool_errors(_NOT_FOUND_HINT):
            uuid = await mc.client.resolve_image(image)
            fd, tmp = await asyncio.to_thread(_temporary_beside, target)
            size = 0
            try:
                with os.fdopen(fd, "wb") as out:
                    async for chunk in mc.client.download(uuid, path):
                        out.write(chunk)
                        size += len(chunk)
                # mkstemp makes the file 0600; a download gets the usual modes instead.
                os.chmod(tmp, 0o755 if executable else 0o644)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return {
            "success": True,
            "source": {"image": uuid, "path": path},
            "destination": str(target),
            "size": size,
            "executable": executable,
        }

    @server.tool()
    async def list_files(image: str, path: str = "/") -> dict[str, Any]:
        """List a directory of an image without starting a sandbox."""
        directory = _absolute(path)
        with tool_errors(_NOT_FOUND_HINT):
            uuid = await mc.client.resolve_image(image)
            listing = await mc.client.list_dir(uuid, directory)
        files = []
        for item in listing.get("files", []):
            name = str(item.get("path", "")).rsplit("/", 1)[-1]
            mode = int(item.get("mode") or 0)
            files.append(
                {
                    "name": name,
                    "path": f"{directory.rstrip('/')}/{name}",
                    "type": _kind(item),
                    "size": item.get("size"),
                    "mode": oct(mode),
                    "permissions": stat.filemode(mode),
                    "target": item.get("symlink_to") or None,
                }
            )
        return {"path": directory, "count": len(files), "files": files}

    @server.tool()
    async def read_file(image: str, path: str) -> dict[str, Any]:
        """Read a file of an image without starting a sandbox (text as UTF-8, else base64;
        at most 1 MiB: use download for bigger files)."""
        with tool_errors(_NOT_FOUND_HINT):
            uuid = await mc.client.resolve_image(image)
            data = await mc.client.read_file(uuid, path, limit=READ_LIMIT + 1)
        truncated = len(data) > READ_LIMIT
        data = data[:READ_LIMIT]
        try:
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode(), "base64"
        return {
            "path": path,
            "content": content,
            "encoding": encoding,
            "bytes_size": len(data),
            "truncated": truncated,
        }

    @server.tool()
    async def grep(
        image: str,
        pattern: str,
        path: str | None = None,
        glob: str | None = None,
        max_count: int | None = None,
        max_total: int | None = None,
        case: Literal["sensitive", "insensitive", "smart"] | None = None,
        fixed_strings: bool | None = None,
    ) -> dict[str, Any]:
        """Search file contents of an image (an RE2 regex, like ripgrep's; no backreferences or
        lookaround) without a sandbox. fixed_strings=true searches for the text literally."""
        with tool_errors(_NOT_FOUND_HINT):
            uuid = await mc.client.resolve_image(image)
            found = await mc.client.grep(
                uuid,
                pattern=pattern,
                path=path,
                glob=glob,
                max_count=max_count,
                max_total=max_total,
                case=case,
                fixed_strings="true" if fixed_strings else None,
            )
        return {
            "path": found.get("path"),
            "patterns": found.get("patterns"),
            "truncated": found.get("truncated"),
            "truncated_reason": found.get("truncated_reason"),
            "matches": [
                {k: m.get(k) for k in ("path", "line_number", "line_text")}
                for m in found.get("matches", [])
            ],
        }
