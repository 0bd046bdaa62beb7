"""``frs export``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import VERBOSE, console, fail, handle_errors, progress_for_rank, say, setup_logging
from frs_cli.files import check_output_file, missing_file


def register(app: typer.Typer) -> None:
    @app.command("export", epilog="Example: frs export --onnx demo/student_frs/model_final.pt student_frs.onnx  (after frs demo --out demo)")
    @handle_errors
    def export(
        checkpoint: Path = typer.Option(..., "--onnx", help="INPUT: the trained model file (model_final.pt) to read. "
                                                            "(The ONNX file written is the argument OUT.)"),
        out: Path = typer.Argument(..., help="OUTPUT: the ONNX file to write (.onnx); the model read is --onnx."),
        check: bool = typer.Option(True, help="Compare onnxruntime's outputs with PyTorch's before keeping the file."),
        verbose: bool = VERBOSE,
    ):
        """Write a trained RetinaNet as ONNX (dynamic batch and image size): pixels in, each level's head outputs out.

        Reads the model file given to --onnx and writes OUT. Needs pip install 'frs\\[onnx]'.

        Anchor decoding and NMS stay outside the graph: the metadata carries the levels, anchors, label map, geometry."""
        setup_logging(verbose)
        if not checkpoint.is_file():
            fail(f"export --onnx: expected a model file at {str(checkpoint)!r}, but it {missing_file(checkpoint)}")
        check_output_file(out, "export OUT", ".onnx")
        from frs_cli.export.onnx import export_onnx

        result = export_onnx(checkpoint, out, check=check, progress=progress_for_rank())
        say(f"wrote {out}: input images (B, 3, H, W) float 0..255; outputs {', '.join(result.outputs)}")
        if check:
            shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
            console.print(f"checked with onnxruntime on {shapes}: largest difference {result.max_abs_diff:.2e} "
                          f"(outputs up to {result.max_ref:.3g})", highlight=False)
