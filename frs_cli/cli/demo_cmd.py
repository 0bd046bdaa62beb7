"""``frs demo``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from frs_cli.cli.common import VERBOSE, console, handle_errors, metrics_table, progress_for_rank, say, setup_logging


def register(app: typer.Typer) -> None:
    @app.command("demo", epilog="Example: frs demo --out demo")
    @handle_errors
    def demo(
        out: Path = typer.Option(Path("demo"), "--out", "-o", help="Directory for everything the demo writes (new)."),
        train_images: int = typer.Option(600, help="Synthetic training images."),
        val_images: int = typer.Option(150, help="Synthetic validation images."),
        seed: int = typer.Option(0, help="Data and training seed."),
        baseline: bool = typer.Option(True, help="Also train the student alone, for comparison."),
        resume: bool = typer.Option(False, "--resume", help="Continue a demo stopped part way in --out (the same "
                                                            "options): finished stages are kept."),
        verbose: bool = VERBOSE,
    ):
        """Run the whole job on the embedded data: synth, teacher, teacher-cache, distill, eval, visualize (CPU)."""
        setup_logging(verbose)
        from frs_cli.errors import check_value

        check_value("demo --train-images", train_images, 1)  # before anything is written under --out
        check_value("demo --val-images", val_images, 1)
        from frs_cli.demo import DemoConfig, run_demo

        t0 = time.perf_counter()
        s = run_demo(out, DemoConfig(train_images=train_images, val_images=val_images, seed=seed, baseline=baseline),
                     progress=progress_for_rank(), resume=resume)
        console.print(metrics_table(f"frs demo: COCO box mAP on the synthetic val split ({val_images} images)", s.metrics))
        console.print(f"cache: {s.cache_mb_per_image:.3f} MB per image (fp16 features + masks, 2 views)")
        when = "time (this session, which resumed the demo): " if s.resumed else "time: "
        console.print(when + ", ".join(f"{k} {v:.0f} s" for k, v in s.seconds.items())
                      + f"; total {time.perf_counter() - t0:.0f} s")
        say(files_line(out, s.files))


def files_line(out: Path, files: list[str]) -> str:
    """``files: D/teacher/, D/student_frs/ (each holds …; student_frs/ also adapters.pt), D/cache.zarr, …``: the
    demo's outputs (``DemoSummary.files``), each run folder once, with the files they all hold named once."""
    runs: dict[str, list[str]] = {}
    for f in files:
        folder, _, name = f.partition("/")
        if name:
            runs.setdefault(folder, []).append(name)
    common = [name for name in next(iter(runs.values()), []) if all(name in held for held in runs.values())]
    extra = "".join(f"; {folder}/ also {', '.join(n for n in held if n not in common)}"
                    for folder, held in runs.items() if len(held) > len(common))
    shown = [f"{out}/{folder}/" for folder in runs]
    if runs:
        shown[-1] += f" (each holds {', '.join(common)}{extra})"
    return "files: " + ", ".join(shown + [f"{out}/{f}" for f in files if not f.partition("/")[2]])
