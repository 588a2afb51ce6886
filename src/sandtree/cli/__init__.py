"""The ``sandtree`` command line."""

from __future__ import annotations

import click

from sandtree import __version__
from sandtree.cli._completion import completion
from sandtree.cli._demo import demo
from sandtree.cli._doctor import doctor
from sandtree.cli._files import files
from sandtree.cli._images import images
from sandtree.cli._mcp import mcp
from sandtree.cli._ops import ops
from sandtree.cli._run import run
from sandtree.cli._serve import serve, token
from sandtree.cli._service import install_service
from sandtree.cli._session import session

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sandtree")
def cli() -> None:
    """Sandboxes for AI agents whose images branch like git.

    \b
    Example:
      sandtree demo            # import a tiny image, run, branch and show the lineage
      sandtree serve           # the REST API on the embedded default
      sandtree mcp             # the MCP server for agents (stdio)
    """


cli.add_command(demo)
cli.add_command(run)
cli.add_command(images)
cli.add_command(ops)
cli.add_command(files)
cli.add_command(session)
cli.add_command(completion)
cli.add_command(mcp)
cli.add_command(serve)
cli.add_command(token)
cli.add_command(doctor)
cli.add_command(install_service)


def main() -> None:
    """Entry point of the ``sandtree`` script."""
    cli()
