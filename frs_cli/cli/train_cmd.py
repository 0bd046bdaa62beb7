"""``frs train``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import (
    PIPELINE_HELP,
    SET_HELP,
    console,
    handle_errors,
    is_main_process,
    load,
    metrics_table,
    progress_for_rank,
    setup_logging,
)


def register(app: typer.Typer) -> None:
    @app.command("train", epilog="Example: frs train --pipeline pipelines/demo.toml --role teacher --out runs/teacher "
                                 "--set data.root=demo/data  (after frs demo --out demo, which writes demo/data)")
    @handle_errors
    def train(
        pipeline: Path = typer.Option(..., "--pipeline", "-p", help=PIPELINE_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, metrics.jsonl, model_final.pt."),
        role: str = typer.Option("teacher", help="Which model of the recipe to train: teacher or student."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
        overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
        device: str = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
        no_eval: bool = typer.Option(False, "--no-eval", help="Skip COCO evaluation on the val split."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ):
        """Train a detector on ground truth: a teacher, or the student baseline (DDP under torchrun)."""
        setup_logging(verbose)
        recipe = load(str(pipeline), overrides)
        from frs_cli.dist import process_group
        from frs_cli.train.run import train_detector

        with process_group(device) as ctx:
            summary = train_detector(recipe, role, out, resume=resume, ctx=ctx, progress=progress_for_rank(),
                                     evaluate=not no_eval)
        if is_main_process():
            fit = summary.fit
            console.print(f"trained {role} {recipe.model_config(role).arch}: {fit.iterations} iterations in "
                          f"{fit.seconds:.0f} s ({fit.images_per_second:.1f} img/s) -> {summary.model_file}")
            if fit.eval_metrics:
                console.print(metrics_table(f"{recipe.data.val} split", {role: fit.eval_metrics}))
