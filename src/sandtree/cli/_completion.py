"""``sandtree completion``: the shell completion script for bash, zsh or fish."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

__all__ = ["completion"]


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL; source it from your shell's start-up file.

    \b
    Example:
      sandtree completion bash > /etc/bash_completion.d/sandtree
      echo 'eval "$(sandtree completion zsh)"' >> ~/.zshrc
      sandtree completion fish > ~/.config/fish/completions/sandtree.fish
    """
    root = ctx.find_root()
    cls = get_completion_class(shell)
    if cls is None:  # click knows all three; guard for the type checker
        raise click.ClickException(f"no completion support for {shell}")
    script = cls(root.command, {}, "sandtree", "_SANDTREE_COMPLETE").source()
    click.echo(script)
