"""``frs recipe show``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import SET_HELP, handle_errors


def register(recipe_app: typer.Typer) -> None:
    @recipe_app.command("show", epilog="Example: frs recipe show pipelines/coco_fcos_r50_to_r18.toml")
    @handle_errors
    def show(
        pipeline: Path = typer.Argument(..., help="Recipe TOML (see pipelines/)."),
        overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ):
        """Print the resolved recipe as TOML: its extends chain applied, --set on top, every default filled in."""
        from frs_cli.config import load_recipe, recipe_to_toml

        # plain print: the output is a file to redirect, not a rich renderable (no markup, no wrapping)
        typer.echo(recipe_to_toml(load_recipe(pipeline, overrides or [])), nl=False)
