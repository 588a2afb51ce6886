"""The layers keep to their lanes: the engine imports nothing from api, mcp, cli or client;
the MCP server and the client reach the engine only through the API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sandtree"
FORBIDDEN = {
    "engine": ("sandtree.api", "sandtree.mcp", "sandtree.cli", "sandtree.client", "starlette",
               "httpx", "click", "mcp"),
    "api": ("sandtree.mcp", "sandtree.cli", "sandtree.client", "click", "mcp"),
    # The MCP server and the client reach the engine only through the REST API.
    "mcp": ("sandtree.engine", "sandtree.api", "sandtree.cli", "starlette"),
    "client": ("sandtree.engine", "sandtree.api", "sandtree.mcp", "sandtree.cli", "mcp"),
}  # fmt: skip
#: The one outbound HTTP use inside the engine: registries speak the OCI distribution protocol.
ALLOWED = {"engine/registry": ("httpx",)}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_from_outer_layers(package: str) -> None:
    offenders = []
    for path in sorted((SRC / package).rglob("*.py")):
        for name in _imports(path):
            rel = str(path.relative_to(SRC))
            allowed = [a for prefix, names in ALLOWED.items() if rel.startswith(prefix + "/")
                       for a in names]  # fmt: skip
            if name in allowed:
                continue
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []
