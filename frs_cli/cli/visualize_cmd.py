"""``frs visualize``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import handle_errors, say


def register(app: typer.Typer) -> None:
    @app.command("visualize", epilog="Example: frs visualize --cache demo/cache.zarr --level all --out masks.png"
                                     "  (after frs demo --out demo)")
    @handle_errors
    def visualize(
        cache: str = typer.Option(..., "--cache", help="Teacher cache."),
        level: str = typer.Option("all", "--level", help="FPN level by name (P3, or 3; Faster R-CNN caches hold P2..P6), or 'all' for one panel each."),
        image_id: int = typer.Option(None, "--image-id", help="COCO image id (default: the first cached image)."),
        view: str = typer.Option(None, "--view", help="orig or hflip, or one at another short side such as hflip@640 "
                                                     "(a cache of several scales); default: the cache's first view."),
        out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
        data: Path = typer.Option(None, "--data", help="Dataset root, if it moved since the cache was written."),
        compare: str = typer.Option(None, "--compare", help="A second cache (another teacher) of the same images: "
                                                           "its masks in a row below, on the same colour scale."),
        vmax: float = typer.Option(None, "--vmax", help="Mask value drawn brightest (default: the largest shown); "
                                                       "fix it, e.g. 1.0, to compare pictures of different images."),
    ):
        """Draw the teacher's FRS mask of one level (or all) as a heat map over the greyed image, with GT boxes.

        One colour scale for every panel, drawn as a colour bar; each panel names its level, stride and max."""
        from frs_cli.cache.reader import TeacherCache
        from frs_cli.files import check_output_file
        from frs_cli.viz.cache_view import render_cached_view
        from frs_cli.viz.masks import save_png

        check_output_file(out, "visualize --out", suffix=".png")
        c = TeacherCache(cache, require_complete=False)
        other = TeacherCache(compare, require_complete=False) if compare is not None else None
        picture = render_cached_view(c, c.dataset(None if data is None else str(data)), image_id, view, level,
                                     compare=other, vmax=vmax)
        save_png(picture, out)
        say(f"wrote {out} ({picture.width}x{picture.height})")
