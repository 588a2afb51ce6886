"""Resources: lineage (from the server, so true for any client and after restarts), image
listings and files, operations, and the guide."""

from __future__ import annotations

import base64
import json
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.resources.templates import ResourceSecurity

from sandtree.errors import SandtreeError

from ._context import McpContext
from ._guide import GUIDE
from ._results import operation_output

__all__ = ["register_resources"]

# Paths are resolved inside the image by the server, never on this machine: they may hold
# anything a path in an image can.
_IMAGE_PATHS = ResourceSecurity(exempt_params=frozenset({"path"}))


def _node(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    keys = ("uuid", "tag", "created_at", "depth", "command", "operation_uuid")
    return {key: node.get(key) for key in keys}


def register_resources(server: MCPServer, mc: McpContext) -> None:
    """Add the resource templates."""

    async def resolve(image: str) -> str:
        try:
            return await mc.client.resolve_image(image)
        except SandtreeError as exc:
            raise ResourceError(f"{exc.message} (list_images shows the images)") from exc

    @server.resource("contree://image/{image}/lineage", mime_type="application/json")
    async def image_lineage(image: str) -> str:
        """An image's parent, children, ancestors (nearest first), root and depth, each with
        the command that made it."""
        uuid = await resolve(image)
        try:
            tree = await mc.client.lineage(uuid)
        except SandtreeError as exc:
            raise ResourceError(exc.message) from exc
        out = {
            "image": _node(tree.get("image")),
            "parent": _node(tree.get("parent")),
            "children": [_node(c) for c in tree.get("children", [])],
            "ancestors": [_node(a) for a in tree.get("ancestors", [])],
            "root": _node(tree.get("root")),
            "depth": tree.get("depth"),
        }
        return json.dumps(out, indent=2)

    @server.resource("contree://image/{image}/ls/{+path}", mime_type="text/plain",
                     security=_IMAGE_PATHS)  # fmt: skip
    async def image_ls(image: str, path: str) -> str:
        """An ls -l style listing of a directory of an image."""
        uuid = await resolve(image)
        try:
            return await mc.client.list_dir_text(uuid, "/" + path.strip("/"))
        except SandtreeError as exc:
            raise ResourceError(exc.message) from exc

    @server.resource("contree://image/{image}/read/{+path}", mime_type="text/plain",
                     security=_IMAGE_PATHS)  # fmt: skip
    async def image_read(image: str, path: str) -> str:
        """A file of an image: its text, or "base64:" and its bytes in base64."""
        uuid = await resolve(image)
        try:
            data = await mc.client.read_file(uuid, "/" + path.lstrip("/"))
        except SandtreeError as exc:
            raise ResourceError(exc.message) from exc
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(data).decode()

    @server.resource("contree://operations/instance/{operation_id}", mime_type="application/json")
    async def instance_operation(operation_id: str) -> str:
        """A run: state, exit code, timed_out, stdout, stderr, result image, resources."""
        op = await _operation(mc, operation_id, "instance")
        return json.dumps(operation_output(op), indent=2)

    @server.resource("contree://operations/import/{operation_id}", mime_type="application/json")
    async def import_operation(operation_id: str) -> str:
        """An import: state, result image and tag, registry URL, error."""
        op = await _operation(mc, operation_id, "image_import")
        metadata = op.get("metadata") or {}
        result = op.get("result") or {}
        out = {
            "state": op.get("status"),
            "result_image": result.get("image"),
            "result_tag": result.get("tag"),
            "registry_url": (metadata.get("registry") or {}).get("url"),
            "error": op.get("error"),
        }
        return json.dumps(out, indent=2)

    @server.resource("contree://guide/{section}", mime_type="text/markdown")
    async def guide(section: str) -> str:
        """A section of the guide: workflow, reference, quickstart, state, async, tagging,
        errors."""
        if section not in GUIDE:
            raise ResourceError(f"no guide section {section!r}; have {', '.join(sorted(GUIDE))}")
        return GUIDE[section]


async def _operation(mc: McpContext, operation_id: str, kind: str) -> dict[str, Any]:
    try:
        op = await mc.client.get_operation(operation_id)
    except SandtreeError as exc:
        raise ResourceError(f"{exc.message} (list_operations shows the ids)") from exc
    if op.get("kind") != kind:
        other = "import" if kind == "instance" else "instance"
        raise ResourceError(
            f"operation {operation_id} is an {op.get('kind')} operation; read "
            f"contree://operations/{other}/{operation_id} instead"
        )
    return op
