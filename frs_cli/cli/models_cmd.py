"""``frs models``."""

from __future__ import annotations

import typer

from frs_cli.cli.common import console, own_width

HEADERS = ("arch", "family", "FPN ch", "about")


def table_width(archs: dict) -> int:
    """The fewest columns the table of ``archs`` takes with no word of a description split: each column as wide as
    its longest name (the about column: its longest word), one space of padding either side, five borders."""
    widest = [max(len(HEADERS[0]), *map(len, archs)), max(len(HEADERS[1]), *(len(s.family) for s in archs.values())),
              len(HEADERS[2]), max(len(HEADERS[3]), *(len(w) for s in archs.values() for w in s.summary.split()))]
    return sum(widest) + 2 * len(widest) + len(widest) + 1


def register(app: typer.Typer) -> None:
    @app.command("models", epilog="Example: frs models")
    def models():
        """List the detector architectures a recipe can name."""
        from rich.markup import escape
        from rich.table import Column, Table

        from frs_cli.archs import ARCHS

        # in a log or pipe rich's own 80 columns (or COLUMNS), not the 160 other results may take: the descriptions
        # wrap in their cells, and no line is wider than a default terminal
        width = own_width(console)
        if width < table_width(ARCHS):  # the about column would split names mid-word: one entry per arch instead
            for name, spec in ARCHS.items():
                console.print(f"[bold]{name}[/]  {spec.family}, FPN {spec.fpn_channels} ch: {escape(spec.summary)}",
                              highlight=False, width=width, soft_wrap=False)  # escaped: "[_ms-640-800-2x]" is no markup
            return
        table = Table(Column(HEADERS[0], no_wrap=True), Column(HEADERS[1], min_width=11),
                      Column(HEADERS[2], min_width=6), Column(HEADERS[3], overflow="fold"))
        for name, spec in ARCHS.items():
            table.add_row(name, spec.family, str(spec.fpn_channels), spec.summary)
        console.print(table, width=width)
