"""``frs eval``: COCO mAP of a checkpoint or a results file, or the mask statistics of a cache."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.markup import escape

from frs_cli.cli.common import (
    DEVICE,
    VERBOSE,
    console,
    fail,
    handle_errors,
    is_main_process,
    metrics_table,
    progress_for_rank,
    say,
    setup_logging,
)
from frs_cli.errors import check_value
from frs_cli.files import check_output_file, write_json

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command("eval", epilog="Example: frs eval --checkpoint demo/student_frs/model_final.pt --data demo/data "
                                "--metrics student.json  (after frs demo --out demo)")
    @handle_errors
    def evaluate(
        command: typer.Context,
        checkpoint: Path = typer.Option(None, "--checkpoint", help="Model file (model_final.pt) to run on the split."),
        pipeline: Path = typer.Option(None, "--pipeline", "-p",
                                      help="Recipe: score its --role model as the recipe builds it (weights by "
                                           "torchvision enum name or file), on its val split of its data.root "
                                           "(--split, --data override them)."),
        role: str = typer.Option("teacher", help="With --pipeline: the recipe's teacher or student."),
        overrides: list[str] = typer.Option([], "--set", help="With --pipeline: override a recipe key (repeatable)."),
        detections: Path = typer.Option(None, "--detections", help="COCO results JSON to score instead."),
        cache: str = typer.Option(None, "--cache", help="Teacher cache: report mask statistics instead of mAP."),
        data: Path = typer.Option(None, "--data", help="Dataset root (annotations/, one folder per split)."),
        split: str = typer.Option("val", help="Split to evaluate: the folder name under --data, as in "
                                              "annotations/instances_SPLIT.json (COCO: val2017); with --pipeline "
                                              "the recipe's data.val unless given. Not with --cache (a cache holds "
                                              "one split)."),
        metrics: Path = typer.Option(None, "--metrics", help="Write the numbers as JSON here."),
        detections_out: Path = typer.Option(None, "--detections-out",
                                            help="With --checkpoint or --pipeline: write detections JSON."),
        batch_size: int = typer.Option(8, help="Images per forward pass."),
        workers: int = typer.Option(2, help="Image-decoding worker processes."),
        high: float = typer.Option(0.5, help="With --cache: S at or above this counts as a high-score position "
                                             "(0..1)."),
        max_views: int = typer.Option(None, help="With --cache: look at the first N views only (N >= 1)."),
        backend: str = typer.Option("pycocotools", "--backend",
                                    help="COCO evaluator: pycocotools (default) or faster (faster-coco-eval, "
                                         "pip install 'frs\\[faster-eval]'); the same numbers."),
        device: str = DEVICE,
        verbose: bool = VERBOSE,
    ):
        """Measure COCO box mAP (pycocotools) of a checkpoint, recipe model or detections, or a cache's mask statistics.

        --pipeline RECIPE --role teacher scores the recipe's teacher as it is built for caching, before caching it.

        A size range with no ground truth (pycocotools' -1) is undefined: null in --metrics, "–" in the table."""
        setup_logging(verbose)
        modes = {"checkpoint": checkpoint, "pipeline": pipeline, "detections": detections, "cache": cache}
        chosen = [m for m, x in modes.items() if x is not None]
        if len(chosen) != 1:
            fail("eval: expected exactly one of --checkpoint, --pipeline, --detections or --cache")
        _check_applies(command, chosen[0])
        _check_options(batch_size, workers, high, max_views, metrics, detections_out)
        if cache is not None:
            return _mask_stats(cache, data, high, max_views, metrics)
        if data is None and pipeline is None:
            fail("eval: --data DIR is required with --checkpoint or --detections")
        if backend not in ("pycocotools", "faster"):
            fail(f"eval --backend: expected pycocotools or faster, got {backend!r}")
        if detections is not None:
            from frs_cli.eval.coco_eval import evaluate_detections, load_coco, load_detections

            ann = data / "annotations" / f"instances_{split}.json"
            coco_gt = load_coco(ann)
            if not coco_gt.getImgIds():
                fail(_no_images(split, ann))
            result = evaluate_detections(coco_gt, load_detections(detections), backend=backend,
                                         progress=progress_for_rank())
            name = detections.name
        else:
            from frs_cli.dist import check_device, process_group
            from frs_cli.eval.predict import evaluate_detector

            check_device(device)
            if pipeline is not None:
                given = command.get_parameter_source("split").name == "COMMANDLINE"
                detector, dataset, name, split, data = _recipe_model(pipeline, role, overrides, data,
                                                                     split if given else None)
                labels = None  # the dataset's own map, as training evaluates
            else:
                detector, dataset, name, labels = _checkpoint_model(checkpoint, data, split)
            with process_group(device) as ctx:
                _check_same_eval(ctx, detector, dataset, {"--split": split, "--batch-size": batch_size,
                                                          "--backend": backend, "--metrics": str(metrics),
                                                          "--detections-out": str(detections_out)})
                result = evaluate_detector(detector.to(ctx.device), dataset, ctx, batch_size=batch_size, workers=workers,
                                           detections_out=detections_out, label_to_category=labels,
                                           progress=progress_for_rank(), backend=backend)
        if not is_main_process():
            return
        console.print(metrics_table(f"{split} split, {data}", {name: result}))
        if metrics is not None:
            write_json(metrics, result, indent=1)
            say(f"wrote {metrics}")
        if detections_out is not None:
            say(f"wrote {detections_out}")


def _check_same_eval(ctx, detector, dataset, options: dict) -> None:
    """Under torchrun each process scores its share of the images: all must score the same model on the same
    split with the same options (``dist.check_same_job``), or the table would mix two models' detections."""
    if not ctx.distributed:
        return
    from frs_cli.dist import check_same_job
    from frs_cli.models.base import fingerprint_state_dict

    check_same_job(ctx, "eval", {"the model (fingerprint)": fingerprint_state_dict(detector.state_dict()),
                                 "the split's annotations (sha256)": dataset.index.sha256, **options})


# the modes (--checkpoint, --pipeline, --detections, --cache) each option is read by: one given with another mode
# is refused, not ignored
_APPLIES = {"detections_out": ("checkpoint", "pipeline"), "batch_size": ("checkpoint", "pipeline"),
            "workers": ("checkpoint", "pipeline"), "backend": ("checkpoint", "pipeline", "detections"),
            "split": ("checkpoint", "pipeline", "detections"), "high": ("cache",), "max_views": ("cache",),
            "role": ("pipeline",), "overrides": ("pipeline",)}


def _checkpoint_model(checkpoint: Path, data: Path, split: str):
    """``(detector, dataset, name, label_to_category)`` of a model file and the split it is scored on; one line
    (exit 1) for a split without images or with categories the model has no label for."""
    from frs_cli.data.coco import CocoIndex, CocoViews, category_differences
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.eval.coco_eval import unlabelled_categories
    from frs_cli.train.checkpoint import load_detector

    ann = data / "annotations" / f"instances_{split}.json"
    detector, ckpt = load_detector(checkpoint)
    dataset = CocoViews(CocoIndex(ann, scored=True), data / split, GeometryConfig(**ckpt["geometry"]))
    if len(dataset.index) == 0:
        fail(_no_images(split, ann))
    differs = category_differences(ckpt, dataset.index.categories)
    unlabelled = unlabelled_categories(dataset.index.object_categories, ckpt["label_to_category"])
    if unlabelled:  # the evaluator would refuse after the predictions: one line now, the differences in it
        fail(f"eval: {str(checkpoint)!r} has no label for categories {unlabelled} of {str(ann)!r}, so their objects "
             f"cannot be scored ({differs + '; ' if differs else ''}is --data the dataset it was trained for?)")
    if differs:
        log.warning("eval: %s was trained on other categories than %s has: %s (is --data the dataset it "
                    "was trained for?)", checkpoint, ann, differs)
    return detector, dataset, f"{ckpt['arch']} ({checkpoint.name})", ckpt["label_to_category"]


def _recipe_model(pipeline: Path, role: str, overrides: list[str], data: Path | None, split: str | None):
    """``(detector, dataset, name, split, root)``: the recipe's ``role`` model built as train and teacher-cache build
    it (its weights loaded: a torchvision enum downloaded or taken from torch's hub cache, or a file), and the
    split it is scored on (``split``, else the recipe's val split) of ``data`` (else the recipe's data.root)."""
    import json

    from frs_cli.cli.common import load
    from frs_cli.data.coco import CocoViews
    from frs_cli.models import build_detector, build_teacher, warn_untrained_teacher

    if role not in ("teacher", "student"):
        fail(f"eval --role: expected teacher or student, got {role!r}")
    recipe = load(str(pipeline), [*overrides, *([f"data.root={json.dumps(str(data))}"] if data is not None else [])])
    split = split or recipe.data.val
    if not Path(recipe.data.root).is_dir():
        fail(f"eval --pipeline: expected a dataset folder at data.root {str(recipe.data.root)!r}, found none (give "
             "it with --data DIR, or --set data.root=DIR)")
    dataset = CocoViews.from_config(recipe.data, split, recipe.geometry, scored=True)
    if len(dataset.index) == 0:
        fail(_no_images(split, recipe.data.annotation_file(split)))
    cfg = recipe.model_config(role)
    if role == "teacher":
        warn_untrained_teacher(cfg, "eval")
        detector = build_teacher(cfg, dataset.index.num_classes)
    else:
        if not cfg.weights:
            log.warning("eval: student.weights is empty, so the student (%s) is scored untrained, its detection head "
                        "random; set student.weights to a trained model file", cfg.arch)
        detector = build_detector(cfg, dataset.index.num_classes, table="student")
    return detector, dataset, f"{cfg.arch} ({role} of {pipeline.name})", split, Path(recipe.data.root)


def _check_applies(command: typer.Context, mode: str) -> None:
    """One line (exit 1) for an option given on the command line that ``mode`` does not read."""
    for name, modes in _APPLIES.items():
        source = command.get_parameter_source(name)  # the enum of the click typer runs on: compared by name
        if mode not in modes and source is not None and source.name == "COMMANDLINE":
            flag = next((p.opts[0] for p in command.command.params if p.name == name), name)  # as typed: --set
            fail(f"eval {flag}: expected it with {' or '.join(f'--{m}' for m in modes)}, "
                 f"got it with --{mode}, which does not read it")


def _no_images(split: str, ann: Path) -> str:
    return f"eval --split {split}: expected at least one image to evaluate on, got none in {ann}"


def _check_options(batch_size: int, workers: int, high: float, max_views: int | None, metrics: Path | None,
                   detections_out: Path | None) -> None:
    """ConfigError (one line) for a number no evaluation can use or an output file that is a directory."""
    check_value("eval --batch-size", batch_size, 1)
    check_value("eval --workers", workers, 0)
    check_value("eval --high", high, 0, 1)
    if max_views is not None:
        check_value("eval --max-views", max_views, 1)
    for option, path in (("--metrics", metrics), ("--detections-out", detections_out)):
        if path is not None:
            check_output_file(path, f"eval {option}")


def _mask_stats(cache: str, data: Path | None, high: float, max_views: int | None, metrics: Path | None) -> None:
    from rich.table import Table

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.eval.mask_stats import mask_statistics

    c = TeacherCache(cache, require_complete=False)
    stats = mask_statistics(c, c.dataset(None if data is None else str(data)), high=high, max_views=max_views,
                            progress=progress_for_rank())
    table = Table("level", "stride", "positions", "mean S inside GT", "mean S outside GT", "mass outside GT",
                  f"S>={high} far from GT", f"S>={high} all",
                  title=f"FRS masks of {escape(str(cache))}" + ("" if c.complete else f" (incomplete: {int(c.written.sum())} of "
                                                                        f"{len(c)} views written)"))

    def shown(value: float | None, form: str) -> str:  # undefined (a mean over no positions) is "–", not 0
        return "–" if value is None else format(value, form)

    for s in stats:
        table.add_row(s.level, str(s.stride), f"{s.positions:,}", shown(s.mean_inside, ".3f"),
                      shown(s.mean_outside, ".3f"), shown(s.outside_mass, ".1%"), f"{s.high_far:,}",
                      f"{s.high_total:,}")
    console.print(table)
    if metrics is not None:
        write_json(metrics, {"levels": [s.to_dict() for s in stats], "high": high}, indent=1)
        say(f"wrote {metrics}")
