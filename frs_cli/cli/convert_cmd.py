"""``frs convert mmdet``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import VERBOSE, handle_errors, say, setup_logging


def register(convert_app: typer.Typer) -> None:
    @convert_app.command("mmdet", epilog="Example: frs convert mmdet retinanet_r101_fpn_2x_coco.pth "
                                         "--arch retinanet_resnet101_fpn_mmdet --out teachers/retinanet_r101.pt")
    @handle_errors
    def mmdet(
        checkpoint: Path = typer.Argument(..., help="mmdetection checkpoint (.pth) of a model-zoo config."),
        arch: str = typer.Option(..., "--arch", help="The matching *_mmdet arch (frs models lists them)."),
        out: Path = typer.Option(..., "--out", help="frs model file to write (.pt)."),
        categories: Path = typer.Option(None, "--categories",
                                        help="COCO annotation file of the dataset the model was trained on: label i "
                                             "is its i-th category in id order (needed unless it has COCO's 80)."),
        allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                          help="Also unpickle Python objects besides tensors (trusted files only)."),
        verbose: bool = VERBOSE,
    ):
        """Convert an mmdetection RetinaNet, FCOS, Faster R-CNN or GFL checkpoint into an frs model file."""
        setup_logging(verbose)
        from frs_cli.convert import convert_mmdet

        done = convert_mmdet(checkpoint, arch, out, allow_pickle=allow_pickle, categories=categories)
        say(f"wrote {done.out}: {done.arch}, {done.num_classes} classes, {done.tensors} tensors, "
            f"fingerprint {done.fingerprint}")
