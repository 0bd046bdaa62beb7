"""The embedded main job, start to finish: synth -> teacher -> teacher-cache -> FRS student (+ baseline) -> eval -> masks
-> report.

Every stage is the same library call the individual commands make; this only chains them and collects a summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from frs_cli.config import load_recipe
from frs_cli.errors import ConfigError, Interrupted
from frs_cli.files import atomic_path, write_json
from frs_cli.progress import NullProgress, Progress


def demo_recipe_path() -> Path:
    return Path(str(resources.files("frs_cli") / "recipes" / "demo.toml"))


@dataclass(frozen=True)
class DemoConfig:
    train_images: int = 600  # synthetic training images
    val_images: int = 150  # synthetic validation images
    size: int = 128  # image side, px
    min_object: float = 16.0  # smallest object diameter, px (larger than the default: the CPU budget is small)
    max_objects: int = 4  # annotated objects per image, at most
    seed: int = 0  # data and training seed
    baseline: bool = True  # also train the student without distillation, for comparison


@dataclass
class DemoSummary:
    out_dir: str
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # model -> COCO metrics (None: undefined)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    cache_mb_per_image: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "metrics": self.metrics, "seconds": self.seconds,
                "cache_mb_per_image": self.cache_mb_per_image, "files": self.files}


def run_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig(), progress: Progress | None = None) -> DemoSummary:
    """The whole job in ``out_dir`` (new or empty). Stopped part way (Ctrl-C), it says what was written and that
    it starts over, not ``--resume``: the demo takes no such option."""
    progress = progress or NullProgress()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"demo --out {str(out)!r}: expected a new or empty directory, got a file")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"demo --out {str(out)!r}: exists and is not empty", hint="choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _run_stages(out, cfg, progress)
    except (Interrupted, KeyboardInterrupt):  # the stages' own hint (--resume) is not the demo's
        raise Interrupted(f"demo stopped; what it wrote so far is in {out}",
                          hint=f"the demo does not resume: delete {out} or choose another --out and run it "
                               "again") from None


def _run_stages(out: Path, cfg: DemoConfig, progress: Progress) -> DemoSummary:
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.data.synth import SynthConfig, generate
    from frs_cli.dist import setup
    from frs_cli.eval.run_log import markdown_table, read_run
    from frs_cli.train.run import distill_student, train_detector
    from frs_cli.viz.cache_view import render_cached_view
    from frs_cli.viz.masks import save_png
    from frs_cli.viz.plots import run_report

    summary = DemoSummary(str(out))
    ctx = setup("cpu")
    base = [f"data.root={json.dumps(str(out / 'data'))}", f"train.seed={cfg.seed}", f"teacher_train.seed={cfg.seed}"]

    def stage(name: str):
        progress.log(f"[bold]demo:[/] {name}")
        return time.perf_counter()

    t = stage("generate the synthetic set")
    synth = SynthConfig(train=cfg.train_images, val=cfg.val_images, size=cfg.size, seed=cfg.seed,
                        min_object=cfg.min_object, max_objects=cfg.max_objects)
    progress.start("synth", cfg.train_images + cfg.val_images, unit="img")
    generate(out / "data", synth, progress=lambda n: progress.update(n))
    progress.stop()
    summary.seconds["synth"] = time.perf_counter() - t

    recipe = load_recipe(demo_recipe_path(), base)
    t = stage(f"train the teacher ({recipe.teacher.arch})")
    teacher = train_detector(recipe, "teacher", out / "teacher", ctx=ctx, progress=progress)
    summary.metrics["teacher"] = teacher.fit.eval_metrics
    summary.seconds["teacher"] = time.perf_counter() - t

    recipe = load_recipe(demo_recipe_path(), base + [f"teacher.weights={json.dumps(teacher.model_file)}"])
    t = stage("cache the teacher")
    write_teacher_cache(recipe, str(out / "cache.zarr"), ctx=ctx, progress=progress)
    cache = TeacherCache(str(out / "cache.zarr"))
    summary.cache_mb_per_image = cache.nbytes_stored()["views"] / 1e6 / cache.num_images
    summary.seconds["teacher-cache"] = time.perf_counter() - t

    t = stage(f"distill the student ({recipe.student.arch}) from the cache")
    student = distill_student(recipe, out / "student_frs", cache=str(out / "cache.zarr"), ctx=ctx, progress=progress)
    summary.metrics["student + FRS (cache)"] = student.fit.eval_metrics
    summary.seconds["distill"] = time.perf_counter() - t

    if cfg.baseline:
        t = stage("train the student alone (baseline)")
        plain = train_detector(recipe, "student", out / "student_plain", ctx=ctx, progress=progress)
        summary.metrics["student alone"] = plain.fit.eval_metrics
        summary.seconds["baseline"] = time.perf_counter() - t

    t = stage("draw the masks")
    save_png(render_cached_view(cache, cache.dataset(), level="all"), out / "masks.png")
    summary.seconds["visualize"] = time.perf_counter() - t

    t = stage("report the runs")
    runs = [read_run(out / name) for name in ("teacher", "student_frs", "student_plain") if (out / name).is_dir()]
    save_png(run_report(runs), out / "report.png")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown_table(runs), encoding="utf-8")
    summary.seconds["report"] = time.perf_counter() - t

    summary.files = sorted(str(p.relative_to(out)) for p in [
        out / "teacher" / "model_final.pt", out / "cache.zarr", out / "student_frs" / "model_final.pt",
        out / "student_frs" / "adapters.pt", out / "masks.png", out / "report.png", out / "report.md",
        out / "summary.json",
        *([out / "student_plain" / "model_final.pt"] if cfg.baseline else []),
    ])
    write_json(out / "summary.json", summary.to_dict(), indent=1)
    return summary
