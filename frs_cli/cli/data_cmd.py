"""``frs data synth``."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from frs_cli.cli.common import handle_errors, progress_for_rank, say
from frs_cli.errors import Interrupted
from frs_cli.signals import sigint_handled


def register(data_app: typer.Typer) -> None:
    @data_app.command("synth", epilog="Example: frs data synth data/synth --train 2000 --val 300 --size 192 --seed 0")
    @handle_errors
    def synth(
        out_dir: Path = typer.Argument(..., help="Directory to create (must not exist or be empty)."),
        train: int = typer.Option(400, help="Training images."),
        val: int = typer.Option(100, help="Validation images."),
        size: int = typer.Option(160, help="Long side of every image, px."),
        seed: int = typer.Option(0, help="Same seed, same dataset (byte-identical annotations)."),
        aspect_jitter: bool = typer.Option(False, help="Mix square, landscape and portrait images."),
    ):
        """Generate the embedded synthetic COCO-format detection set (shapes, look-alikes, textures)."""
        from frs_cli.data.synth import SynthConfig, check_output, generate

        cfg = SynthConfig(train=train, val=val, size=size, seed=seed, aspect_jitter=aspect_jitter)
        check_output(out_dir)  # before the progress bar: a refusal is its one line
        progress = progress_for_rank()
        progress.start("synth", train + val, unit="img")
        try:
            with sigint_handled(signal.default_int_handler):  # SIGTERM too: a KeyboardInterrupt, the folder removed
                summary = generate(out_dir, cfg, progress=lambda n: progress.update(n))
        except KeyboardInterrupt:
            raise Interrupted(f"data synth stopped; the images made so far were removed, nothing was written to "
                              f"{str(out_dir)!r}", hint="run the same command again") from None
        finally:
            progress.stop()
        say(f"wrote {summary['train']} train and {summary['val']} val images, "
            f"{summary['annotations']['train'] + summary['annotations']['val']} boxes, "
            f"categories {', '.join(summary['categories'])} -> {out_dir}")
