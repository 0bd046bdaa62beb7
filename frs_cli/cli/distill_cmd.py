"""``frs distill``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import (
    DEVICE,
    NO_EVAL,
    PIPELINE_HELP,
    RESUME_RUN,
    SET_HELP,
    VERBOSE,
    handle_errors,
    load,
    print_complete,
    print_run,
    progress_for_rank,
    setup_logging,
)


def register(app: typer.Typer) -> None:
    @app.command("distill", epilog="Example: frs distill --pipeline demo --cache demo/cache.zarr "
                                   "--out runs/student --set teacher.weights=demo/teacher/model_final.pt"
                                   "  (after frs demo --out demo)")
    @handle_errors
    def distill(
        pipeline: Path = typer.Option(..., "--pipeline", "-p", help=PIPELINE_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory: model_final.pt (student), adapters.pt, metrics."),
        cache: str = typer.Option(None, "--cache", help="Teacher cache written by frs teacher-cache."),
        online: bool = typer.Option(False, "--online", help="Run the teacher every step instead (the original method)."),
        resume: bool = RESUME_RUN,
        overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
        device: str = DEVICE,
        no_eval: bool = NO_EVAL,
        verbose: bool = VERBOSE,
    ):
        """Train the student with FRS against cached teacher targets (or --online), L = L_GT + a*L_FPN + b*L_head."""
        setup_logging(verbose)
        recipe = load(str(pipeline), overrides)
        from frs_cli.dist import process_group
        from frs_cli.train.run import distill_student

        with process_group(device) as ctx:
            summary = distill_student(recipe, out, cache=cache, online=online, resume=resume, ctx=ctx,
                                      progress=progress_for_rank(), evaluate=not no_eval)
        if summary.complete:
            print_complete(out, recipe.train.epochs)
            return
        source = "online teacher" if online else f"cache {cache}"
        print_run(summary, f"distilled {recipe.student.arch} from {source}", recipe.data.val, _row_label(recipe),
                  data_wait=True)


def _row_label(recipe) -> str:
    """The metrics row's name: what the run distilled with (FRS masks, GT-box masks, or neither term weighted)."""
    from frs_cli.archs import arch_spec

    d = recipe.distill.for_family(arch_spec(recipe.student.arch).family)
    if d.alpha == 0 and d.beta == 0:
        return "student (alpha = beta = 0)"
    return "student + FRS" if d.mask == "frs" else "student + GT-box masks"
