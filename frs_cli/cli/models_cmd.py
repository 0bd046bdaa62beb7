"""``frs models``."""

from __future__ import annotations

import typer

from frs_cli.cli.common import console


def register(app: typer.Typer) -> None:
    @app.command("models", epilog="Example: frs models")
    def models():
        """List the detector architectures a recipe can name."""
        from rich.table import Column, Table

        from frs_cli.models import ARCHS

        table = Table(Column("arch", no_wrap=True), "family", "FPN ch", "about")
        for name, spec in ARCHS.items():
            table.add_row(name, spec.family, str(spec.fpn_channels), spec.summary)
        console.print(table)
