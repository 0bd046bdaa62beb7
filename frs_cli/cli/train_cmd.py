"""``frs train``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from frs_cli.cli.common import (
    DEVICE,
    NO_EVAL,
    PIPELINE,
    RESUME_RUN,
    VERBOSE,
    handle_errors,
    is_main_process,
    load,
    print_complete,
    print_run,
    progress_for_rank,
    setup_logging,
)

log = logging.getLogger(__name__)
OVERRIDES = typer.Option([], "--set", help="Override a recipe key, e.g. --set teacher_train.epochs=2 (repeatable). "
                                          "--role teacher takes its schedule from the teacher_train table, --role "
                                          "student from the train table.")


def warn_unread_schedule(role: str, overrides: list[str]) -> None:
    """One warning when ``--set`` changes the schedule table of the role not trained (``train.*`` for the teacher,
    ``teacher_train.*`` for the student): those keys have no effect on the run."""
    from frs_cli.train.config import schedule_table  # the table each role reads (Recipe.train_config)

    if role not in ("teacher", "student"):
        return
    other = schedule_table("student" if role == "teacher" else "teacher")
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    unread = [k for k in keys if k.startswith(f"{other}.")]
    if unread:
        own = schedule_table(role)
        log.warning("--set %s: frs train --role %s takes its schedule from [%s], not [%s]; no effect on this run "
                    "(set %s instead)", ", ".join(unread), role, own, other,
                    ", ".join(own + k[len(other):] for k in unread))


def register(app: typer.Typer) -> None:
    @app.command("train", epilog="Example: frs train --pipeline demo --role teacher --out runs/teacher "
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
        if is_main_process():
            warn_unread_schedule(role, overrides)
        from frs_cli.dist import process_group
        from frs_cli.train.run import train_detector

        with process_group(device) as ctx:
            summary = train_detector(recipe, role, out, resume=resume, ctx=ctx, progress=progress_for_rank(),
                                     evaluate=not no_eval)
        if summary.complete:
            print_complete(out, recipe.train_config(role).epochs)
            return
        print_run(summary, f"trained {role} {recipe.model_config(role).arch}", recipe.data.val, role)
