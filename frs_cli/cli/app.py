"""The ``frs`` command: a thin typer app; each command lives in its own module of this package."""

from __future__ import annotations

import signal

import typer

from frs_cli.cli import (
    cache_cmd,
    convert_cmd,
    data_cmd,
    demo_cmd,
    distill_cmd,
    eval_cmd,
    export_cmd,
    models_cmd,
    recipe_cmd,
    report_cmd,
    train_cmd,
    visualize_cmd,
)

app = typer.Typer(
    name="frs",
    help="Feature-Richness Score distillation for object detectors, with a cached teacher.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Datasets: generate the embedded synthetic COCO-format set.",
                       epilog="Example: frs data synth data/synth --train 400 --val 100")
cache_app = typer.Typer(help="Inspect, verify and export teacher caches (Zarr folders, URLs, exported .h5 files).",
                        epilog="Example: frs cache verify demo/cache.zarr  (after frs demo --out demo)")


def _print_version(value: bool) -> None:
    if value:
        import torch
        import torchvision

        from frs_cli import __version__

        typer.echo(f"frs {__version__} (torch {torch.__version__}, torchvision {torchvision.__version__})")
        raise typer.Exit()


def _help_without_a_command(ctx: typer.Context) -> None:
    """A group given no command (a bare ``frs``, ``frs data``) prints its help and exits 0: a newcomer's first try is
    no mistake (click's ``no_args_is_help`` exits 2, as for a command line that does not parse)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _options(ctx: typer.Context,
             version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print frs's version (and torch's, torchvision's) and exit.")) -> None:
    """Feature-Richness Score distillation for object detectors, with a cached teacher."""
    _help_without_a_command(ctx)


app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
recipe_app = typer.Typer(help="Recipes: list those installed with frs, or print one resolved (extends applied, "
                         "every default filled in).",
                         epilog="Example: frs recipe show demo")
app.add_typer(recipe_app, name="recipe")
convert_app = typer.Typer(help="Import detectors trained elsewhere as frs model files.",
                          epilog="Example: frs convert mmdet retinanet_r101_fpn_2x_coco.pth --arch "
                                 "retinanet_resnet101_fpn_mmdet --out teachers/retinanet_r101.pt")
app.add_typer(convert_app, name="convert")
for _group in (data_app, cache_app, recipe_app, convert_app):
    _group.callback(invoke_without_command=True)(_help_without_a_command)

data_cmd.register(data_app)
cache_cmd.register(app, cache_app)
train_cmd.register(app)
distill_cmd.register(app)
eval_cmd.register(app)
visualize_cmd.register(app)
demo_cmd.register(app)
models_cmd.register(app)
recipe_cmd.register(recipe_app)
report_cmd.register(app)
export_cmd.register(app)
convert_cmd.register(convert_app)


def main() -> None:
    # a closed pipe ends frs as it ends other command-line tools (status 141 in the shell, no message): `frs
    # models | head -1` is not a failure of frs (Python's own handling made it exit 1, as for bad input). A job's
    # setup and a cache opened at a URL ignore SIGPIPE again (frs_cli.signals.ignore_closed_pipes): there a closed
    # socket or pipe is a peer gone, an error to report
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()
