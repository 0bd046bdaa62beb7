"""``frs train``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import (
    DEVICE,
    NO_EVAL,
    OVERRIDES,
    PIPELINE,
    RESUME_RUN,
    VERBOSE,
    console,
    handle_errors,
    is_main_process,
    load,
    print_run,
    progress_for_rank,
    setup_logging,
)


def register(app: typer.Typer) -> None:
    @app.command("train", epilog="Example: frs train --pipeline pipelines/demo.toml --role teacher --out runs/teacher "
                                 "--set data.root=demo/data  (after frs demo --out demo, which writes demo/data)")
    @handle_errors
    def train(
        pipeline: Path = PIPELINE,
        out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints, metrics.jsonl, model_final.pt."),
        role: str = typer.Option("teacher", help="Which model of the recipe to train: teacher or student."),
        resume: bool = RESUME_RUN,
        overrides: list[str] = OVERRIDES,
        device: str = DEVICE,
        no_eval: bool = NO_EVAL,
        verbose: bool = VERBOSE,
    ):
        """Train a detector on ground truth: a teacher, or the student baseline (DDP under torchrun)."""
        setup_logging(verbose)
        recipe = load(str(pipeline), overrides)
        from frs_cli.dist import process_group
        from frs_cli.train.run import train_detector

        with process_group(device) as ctx:
            summary = train_detector(recipe, role, out, resume=resume, ctx=ctx, progress=progress_for_rank(),
                                     evaluate=not no_eval)
        if summary.complete:
            if is_main_process():
                console.print(f"run {out} is already complete ({recipe.train_config(role).epochs} epochs); "
                              "nothing written")
            return
        print_run(summary, f"trained {role} {recipe.model_config(role).arch}", recipe.data.val, role)
