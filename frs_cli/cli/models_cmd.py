"""``frs models``."""

from __future__ import annotations

import typer

from frs_cli.cli.common import console

NARROW = 80  # columns below which the architectures are listed one entry each, not as a table


def register(app: typer.Typer) -> None:
    @app.command("models", epilog="Example: frs models")
    def models():
        """List the detector architectures a recipe can name."""
        from rich.markup import escape
        from rich.table import Column, Table

        from frs_cli.models import ARCHS

        if console.width < NARROW:  # a table's columns would shrink to nothing: one entry per arch instead
            for name, spec in ARCHS.items():
                console.print(f"[bold]{name}[/]  {spec.family}, FPN {spec.fpn_channels} ch: {escape(spec.summary)}",
                              highlight=False)  # escaped: a summary's "[_ms-640-800-2x]" is no markup
            return
        table = Table(Column("arch", no_wrap=True), Column("family", min_width=11), Column("FPN ch", min_width=6),
                      "about")
        for name, spec in ARCHS.items():
            table.add_row(name, spec.family, str(spec.fpn_channels), spec.summary)
        console.print(table)
