"""The embedded main job, start to finish: synth -> teacher -> teacher-cache -> FRS student (+ baseline) -> eval -> masks
-> report.

Every stage is the same library call the individual commands make; this only chains them and collects a summary.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from frs_cli.config import load_recipe
from frs_cli.errors import ConfigError, Interrupted
from frs_cli.files import atomic_path, storage_errors, write_json
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
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time (of this session, if resumed)
    resumed: bool = False  # continued a stopped demo: the seconds are this session's, not the stages' whole work
    cache_mb_per_image: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "metrics": self.metrics, "seconds": self.seconds, "resumed": self.resumed,
                "cache_mb_per_image": self.cache_mb_per_image, "files": self.files}


CONFIG_FILE = "demo.json"  # the DemoConfig a demo in this folder runs with (written first; --resume checks it)


def run_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig(), progress: Progress | None = None,
             resume: bool = False) -> DemoSummary:
    """The whole job in ``out_dir`` (new or empty). ``resume``: continue a demo stopped part way in ``out_dir``
    with the same ``cfg``: the finished stages are kept (their numbers read back from their run folders), the
    stopped one continues (the commands' own ``--resume``), the rest run; a missing or empty ``out_dir`` starts."""
    progress = progress or NullProgress()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"demo --out {str(out)!r}: expected a new or empty directory, got a file")
    used = out.exists() and any(out.iterdir())
    if used and not resume:
        raise ConfigError(f"demo --out {str(out)!r}: exists and is not empty",
                          hint="add --resume to continue the demo stopped there, or choose a new directory")
    if used:
        _check_same_demo(out, cfg)
    else:
        with storage_errors(f"demo --out {str(out)!r}"):
            out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, asdict(cfg), indent=1)
    try:
        return _run_stages(out, cfg, progress, resume=used)
    except (Interrupted, KeyboardInterrupt):  # the stages' own hint is the command's, not the demo's
        raise Interrupted(f"demo stopped; what it wrote so far is in {out}",
                          hint=f"run frs demo --out {out} --resume to continue it") from None


def _check_same_demo(out: Path, cfg: DemoConfig) -> None:
    """ConfigError unless ``out`` holds a demo started with ``cfg`` (its ``demo.json``)."""
    path = out / CONFIG_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"demo --resume: expected a demo's {CONFIG_FILE} in {str(out)!r}, found "
                          f"{'none' if not path.exists() else 'an unreadable file'}",
                          hint="choose a new --out for a new demo") from None
    now = asdict(cfg)
    changed = [f"{k} = {json.dumps(v)}, now {json.dumps(now.get(k))}" for k, v in stored.items() if now.get(k) != v]
    if changed:
        raise ConfigError(f"demo --resume: the demo in {str(out)!r} started with other options: {'; '.join(changed)}",
                          hint="resume with the options it started with, or choose a new --out")


def _synth_done(root: Path, cfg) -> bool:
    """Whether ``root`` holds the set ``cfg`` generates: both annotation files (written last) from that config."""
    for split in ("train", "val"):
        try:
            info = json.loads((root / "annotations" / f"instances_{split}.json").read_text())["info"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if info.get("config") != cfg.to_dict():
            return False
    return True


def _metrics(run, out: Path) -> dict:
    """A stage's val metrics: what its fit returned, or (a run found complete by --resume) its last evaluation."""
    from frs_cli.eval.run_log import read_run

    if run.fit is not None:
        return run.fit.eval_metrics
    last = read_run(out).last_eval()
    return None if last is None else last[1]


def _outputs(cfg: DemoConfig) -> list[str]:
    """Every output of a finished demo, relative to its folder: each run folder's files (the model first), then the
    cache, the generated set (a folder, ``data/``), the pictures, the report and the summaries."""
    from frs_cli.train.checkpoint import FINAL, LAST
    from frs_cli.train.metrics_log import METRICS_FILE
    from frs_cli.train.run import ADAPTERS
    from frs_cli.train.rundir import RECIPE

    runs = {"teacher": (), "student_frs": (ADAPTERS,), **({"student_plain": ()} if cfg.baseline else {})}
    return [*(f"{run}/{name}" for run, extra in runs.items() for name in (FINAL, *extra, RECIPE, METRICS_FILE, LAST)),
            "cache.zarr", "data/", "masks.png", "report.png", "report.md", "summary.json", CONFIG_FILE]


def _run_stages(out: Path, cfg: DemoConfig, progress: Progress, resume: bool = False) -> DemoSummary:
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.data.synth import SynthConfig, generate
    from frs_cli.dist import setup
    from frs_cli.eval.run_log import markdown_table, read_run
    from frs_cli.train.run import distill_student, train_detector
    from frs_cli.viz.cache_view import render_cached_view
    from frs_cli.viz.masks import save_png
    from frs_cli.viz.plots import run_report

    summary = DemoSummary(str(out), resumed=resume)
    ctx = setup("cpu")
    base = [f"data.root={json.dumps(str(out / 'data'))}", f"train.seed={cfg.seed}", f"teacher_train.seed={cfg.seed}"]

    def begun(path: Path) -> bool:  # a stage to continue; one not begun starts without the commands' --resume warning
        return resume and path.exists()

    def stage(name: str):
        progress.log(f"demo: {name}")
        return time.perf_counter()

    t = stage("generate the synthetic set")
    synth = SynthConfig(train=cfg.train_images, val=cfg.val_images, size=cfg.size, seed=cfg.seed,
                        min_object=cfg.min_object, max_objects=cfg.max_objects)
    if not (resume and _synth_done(out / "data", synth)):
        if (out / "data").exists():  # a generation stopped part way: its images without their annotation files
            shutil.rmtree(out / "data")
        progress.start("synth", cfg.train_images + cfg.val_images, unit="img")
        generate(out / "data", synth, progress=lambda n: progress.update(n))
        progress.stop()
    summary.seconds["synth"] = time.perf_counter() - t

    recipe = load_recipe(demo_recipe_path(), base)
    t = stage(f"train the teacher ({recipe.teacher.arch})")
    teacher = train_detector(recipe, "teacher", out / "teacher", resume=begun(out / "teacher"), ctx=ctx,
                             progress=progress)
    summary.metrics["teacher"] = _metrics(teacher, out / "teacher")
    summary.seconds["teacher"] = time.perf_counter() - t

    recipe = load_recipe(demo_recipe_path(), base + [f"teacher.weights={json.dumps(teacher.model_file)}"])
    t = stage("cache the teacher")
    write_teacher_cache(recipe, str(out / "cache.zarr"), resume=begun(out / "cache.zarr"), ctx=ctx, progress=progress)
    cache = TeacherCache(str(out / "cache.zarr"))
    summary.cache_mb_per_image = cache.nbytes_stored()["views"] / 1e6 / cache.num_images
    summary.seconds["teacher-cache"] = time.perf_counter() - t

    t = stage(f"distill the student ({recipe.student.arch}) from the cache")
    student = distill_student(recipe, out / "student_frs", cache=str(out / "cache.zarr"),
                              resume=begun(out / "student_frs"), ctx=ctx, progress=progress)
    summary.metrics["student + FRS (cache)"] = _metrics(student, out / "student_frs")
    summary.seconds["distill"] = time.perf_counter() - t

    if cfg.baseline:
        t = stage("train the student alone (baseline)")
        plain = train_detector(recipe, "student", out / "student_plain", resume=begun(out / "student_plain"), ctx=ctx,
                               progress=progress)
        summary.metrics["student alone"] = _metrics(plain, out / "student_plain")
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

    summary.files = _outputs(cfg)
    write_json(out / "summary.json", summary.to_dict(), indent=1)
    return summary
