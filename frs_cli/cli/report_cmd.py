"""``frs report``."""

from __future__ import annotations

from pathlib import Path

import typer

from frs_cli.cli.common import err_console, handle_errors


def register(app: typer.Typer) -> None:
    @app.command("report", epilog="Example: frs report demo/student_plain demo/student_frs demo/teacher --out report.png")
    @handle_errors
    def report(
        runs: list[Path] = typer.Argument(..., help="Run folders (the --out of frs train / distill), each with metrics.jsonl."),
        out: Path = typer.Option(None, "--out", "-o", help="PNG to write: val AP per epoch and every loss term per iteration."),
        metric: str = typer.Option("AP", "--metric", help="Val metric to plot against epoch: AP, AP50, AP75, APs, "
                                                           "APm or APl."),
    ):
        """Compare runs side by side: a Markdown table on stdout and, with --out, one picture of their curves."""
        from frs_cli.errors import ConfigError
        from frs_cli.eval.coco_eval import METRIC_KEYS
        from frs_cli.eval.run_log import label_runs, markdown_table, read_run
        from frs_cli.files import check_output_file
        from frs_cli.viz.draw import save_png
        from frs_cli.viz.plots import check_run_labels, run_report

        if metric not in METRIC_KEYS:
            raise ConfigError(f"report --metric: expected one of {', '.join(METRIC_KEYS)}, got {metric!r}")
        if out is not None:
            check_output_file(out, "report --out", suffix=".png")

        logs = label_runs([read_run(r) for r in runs])
        check_run_labels(logs)  # the table's rows as the picture's lines
        picture = run_report(logs, metric=metric) if out is not None else None
        typer.echo(markdown_table(logs), nl=False)
        if picture is not None:
            save_png(picture, out)
            err_console.print(f"wrote {out} ({picture.width}x{picture.height})", markup=False, highlight=False)
