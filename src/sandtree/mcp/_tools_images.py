"""Tools for images: list, get, tag, import (with registry credentials), whoami, the guide."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from sandtree import __version__

from ._context import McpContext, registry_host, tool_errors
from ._guide import GUIDE
from ._results import operation_output

__all__ = ["register_image_tools"]

#: Where people create pull tokens for the registries agents use most.
_TOKEN_PAGES = {
    "docker.io": "https://app.docker.com/settings/personal-access-tokens",
    "ghcr.io": "https://github.com/settings/tokens/new?scopes=read:packages",
    "registry.gitlab.com": "https://gitlab.com/-/user_settings/personal_access_tokens",
    "gcr.io": "https://console.cloud.google.com/apis/credentials",
}


def _image(image: dict[str, Any]) -> dict[str, Any]:
    return {key: image.get(key) for key in ("uuid", "tag", "created_at", "operation_uuid")}


def register_image_tools(server: MCPServer, mc: McpContext) -> None:
    """Add the image, registry, whoami and guide tools."""

    @server.tool()
    async def list_images(
        limit: int = 100,
        offset: int = 0,
        tagged: bool | None = None,
        tag_prefix: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> dict[str, Any]:
        """Images you can run, newest first; tag_prefix="python" finds python images."""
        with tool_errors():
            images = await mc.client.list_images(
                limit=limit,
                offset=offset,
                tagged=tagged,
                tag_prefix=tag_prefix,
                since=since,
                until=until,
            )
        return {"images": [_image(i) for i in images]}

    @server.tool()
    async def get_image(image: str) -> dict[str, Any]:
        """One image by UUID or tag:NAME."""
        with tool_errors("list_images shows the images you can use, or import_image one"):
            return _image(await mc.client.get_image(image))

    @server.tool()
    async def set_tag(image_uuid: str, tag: str | None = None) -> dict[str, Any]:
        """Tag an image (moving the tag if another image has it); tag=None removes its tag."""
        with tool_errors("list_images shows the images you can use"):
            uuid = await mc.client.resolve_image(image_uuid)
            if tag:
                # An image may hold several tags and the API answers its first one: answer
                # the tag just set, which is what the caller asked about.
                return {**_image(await mc.client.set_tag(uuid, tag)), "tag": tag}
            await mc.client.remove_tag(uuid)
            return _image(await mc.client.get_image(uuid))

    @server.tool()
    async def import_image(
        registry_url: str,
        ctx: Context,
        tag: str | None = None,
        wait: bool = True,
        i_accept_that_anonymous_access_might_be_rate_limited: bool = False,
    ) -> dict[str, Any]:
        """Import an image from an OCI registry, e.g. docker://python:3.11-slim (bare names
        mean Docker Hub). Credentials stored with registry_auth are used for their registry.
        Check list_images(tag_prefix=...) first: importing what exists wastes time.
        """
        host = registry_host(registry_url)
        credentials = mc.registry_credentials(host)
        with tool_errors("registry_auth stores credentials for private registries"):
            op_id = await mc.client.import_image(registry_url, tag=tag, credentials=credentials)
            if not wait:
                return {"operation_id": op_id}
            async for event in mc.client.events(op_id, follow=True):
                if event.type == "progress":
                    data = event.data
                    total = float(data.get("bytes_total") or 0) or None
                    message = (
                        f"{data.get('phase')}: layers {data.get('layers_done')}/"
                        f"{data.get('layers_total')}"
                    )
                    await ctx.report_progress(float(data.get("bytes_done") or 0), total, message)
            return operation_output(await mc.client.get_operation(op_id))

    @server.tool()
    async def registry_auth(registry_url: str, username: str, token: str) -> dict[str, Any]:
        """Store pull credentials (a username and a token or password) for the registry of
        registry_url; later import_image calls from it send them. They stay on this machine."""
        host = registry_host(registry_url)
        if not username or not token:
            raise ToolError("pass both username and token (a personal access token or password)")
        mc.store_registry_credentials(host, username, token)
        return {
            "status": "success",
            "registry": host,
            "message": f"credentials for {host} stored; import_image uses them (a wrong token "
            "makes that import fail saying the registry refused the credentials)",
        }

    @server.tool()
    async def registry_token_obtain(registry_url: str) -> dict[str, Any]:
        """Where to create a pull token for a registry (Docker Hub, GHCR, GitLab, GCR)."""
        host = registry_host(registry_url)
        page = _TOKEN_PAGES.get(host) or _TOKEN_PAGES.get(host.removeprefix("us.")) or ""
        if not page:
            return {
                "status": "error",
                "registry": host,
                "url": "",
                "message": f"no known token page for {host}; see that registry's documentation",
            }
        return {
            "status": "success",
            "registry": host,
            "url": page,
            "message": f"ask the user to create a read-only token at {page}, then call "
            f"registry_auth(registry_url={registry_url!r}, username=..., token=...)",
        }

    @server.tool()
    async def whoami() -> dict[str, Any]:
        """The token in use: its permissions and limits."""
        with tool_errors():
            me = await mc.client.whoami()
        return {**me, "mcp_version": __version__, "server": mc.client.url}

    @server.tool()
    async def get_guide(section: str) -> dict[str, Any]:
        """A guide section: workflow, reference, quickstart, state, async, tagging or errors."""
        if section not in GUIDE:
            raise ToolError(
                f"unknown guide section {section!r}; available: {', '.join(sorted(GUIDE))}"
            )
        return {"section": section, "content": GUIDE[section], "available_sections": sorted(GUIDE)}
