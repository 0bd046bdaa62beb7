"""``frs recipe show`` and ``frs recipe list``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import SET_HELP, handle_errors


def register(recipe_app: typer.Typer) -> None:
    @recipe_app.command("show", epilog="Example: frs recipe show coco_fcos_r50_to_r18")
    @handle_errors
    def show(
        pipeline: Path = typer.Argument(..., help="Recipe: an installed name (frs recipe list) or the path of a TOML file."),
        overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ):
        """Print the resolved recipe as TOML: its extends chain applied, --set on top, every default filled in."""
        from frs_cli.config import load_recipe, recipe_to_toml

        # plain print: the output is a file to redirect, not a rich renderable (no markup, no wrapping)
        typer.echo(recipe_to_toml(load_recipe(pipeline, overrides or [])), nl=False)

    @recipe_app.command("list", epilog="Example: frs recipe list")
    @handle_errors
    def list_():
        """The recipes installed with frs: their teacher, student and data.

        Any command's -p takes a name (-p coco_fcos_r50_to_r18) or its pipelines/ path, from any folder."""
        from frs_cli.config import installed_recipes, load_recipe

        folder = installed_recipes()
        typer.echo(f"recipes installed with frs ({folder}):")
        for path in sorted(folder.glob("*.toml")):
            r = load_recipe(path)
            typer.echo(f"  {path.stem:<34} {r.teacher.arch} -> {r.student.arch}, data {r.data.root}")
