"""``frs models``."""

from __future__ import annotations

import typer

from frs_cli.cli.common import console, own_width

NARROW = 80  # columns below which the architectures are listed one entry each, not as a table


def register(app: typer.Typer) -> None:
    @app.command("models", epilog="Example: frs models")
    def models():
        """List the detector architectures a recipe can name."""
        from rich.markup import escape
        from rich.table import Column, Table

        from frs_cli.models import ARCHS

        # in a log or pipe rich's own 80 columns (or COLUMNS), not the 160 other results may take: the descriptions
        # wrap in their cells, and no line is wider than a default terminal
        width = own_width(console)
        if width < NARROW:  # a table's columns would shrink to nothing: one entry per arch instead
            for name, spec in ARCHS.items():
                console.print(f"[bold]{name}[/]  {spec.family}, FPN {spec.fpn_channels} ch: {escape(spec.summary)}",
                              highlight=False, width=width, soft_wrap=False)  # escaped: "[_ms-640-800-2x]" is no markup
            return
        table = Table(Column("arch", no_wrap=True), Column("family", min_width=11), Column("FPN ch", min_width=6),
                      Column("about", overflow="fold"))
        for name, spec in ARCHS.items():
            table.add_row(name, spec.family, str(spec.fpn_channels), spec.summary)
        console.print(table, width=width)
