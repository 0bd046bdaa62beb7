"""Entry points behind ``frs train`` and ``frs distill``: build the pieces from a recipe, then ``fit``."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from frs_cli.archs import ModelConfig
from frs_cli.data.coco import CocoIndex, CocoViews, category_differences
from frs_cli.dist import DistContext, check_same_job, setup
from frs_cli.errors import ConfigError
from frs_cli.eval.predict import evaluate_detector, prepare_evaluation
from frs_cli.files import plural
from frs_cli.lock import job_lock
from frs_cli.models import (
    anchor_mismatch,
    arch_spec,
    build_detector,
    build_teacher,
    check_compatible,
    check_distillable,
    signature,
    warn_other_categories,
    warn_untrained_teacher,
)
from frs_cli.models.torchfile import holds_the_states_model, load_torch_file
from frs_cli.progress import Progress
from frs_cli.train.checkpoint import (
    FINAL,
    LAST,
    TRAINING_SAVE_HINT,
    atomic_save,
    load_training_state,
    save_model,
)
from frs_cli.train.config import schedule_table
from frs_cli.train.loop import FitResult, fit, training_views
from frs_cli.train.metrics_log import require_tensorboard, teacher_mask_picture, write_images
from frs_cli.train.objectives import CachedTeacher, FRSObjective, GTObjective, OnlineTeacher
from frs_cli.train.rundir import (
    JOB,
    PATHS,
    TEACHER,
    RunStart,
    annotations_identity,
    check_run_dir,
    digest_changes,
    job_settings,
    path_identities,
    record_resume,
    resume_changes,
    stamp_versions,
    start_run_dir,
)

log = logging.getLogger(__name__)
ADAPTERS = "adapters.pt"


@dataclass
class RunSummary:
    out_dir: str
    model_file: str
    fit: FitResult | None  # None: the run was already complete (``complete``), nothing ran
    complete: bool = False
    final_files: tuple[str, ...] = (FINAL,)  # what the run writes in ``out_dir`` once its last epoch is done

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "model_file": self.model_file, "complete": self.complete,
                **(asdict(self.fit) if self.fit is not None else {})}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _one_writer(fn):
    """Run ``fn`` holding the lock of its ``out_dir`` (rank 0 for the whole job; ``frs_cli.lock``): two runs
    never write one run directory."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        ctx = bound.arguments.get("ctx") or setup()
        bound.arguments["ctx"] = ctx
        with job_lock(Path(bound.arguments["out_dir"]), ctx, what="--out"):
            return fn(*bound.args, **bound.kwargs)
    return locked


def _check_out(out_dir: Path, resume: bool, recipe_dict: dict, job: str) -> tuple[RunStart, dict]:
    """How the run starts in ``out_dir``, and the recipe changes a resume makes (checked before anything is built)."""
    start = check_run_dir(out_dir, resume)
    changes = resume_changes(out_dir, recipe_dict, job) if start.resume else {}
    stamp_versions(out_dir, recipe_dict, start.resume)
    return start, changes


def _cache_identity(path: str) -> str:
    """A cache as a resume sees it: its fingerprints (teacher, dataset, geometry), views and stored dtypes, so that
    its Zarr store moved or exported to HDF5 is the same source; the real path of what is not a readable cache."""
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.errors import CacheFormatError

    try:
        store = TeacherCache(path, require_complete=False)
    except CacheFormatError:
        return os.path.realpath(path)
    attrs, storage = store.attrs, store.attrs.get("storage", {})
    return json.dumps({"fingerprints": attrs.get("fingerprints"), "views": attrs.get("views"),
                       "dtype": storage.get("dtype"), "mask_dtype": storage.get("mask_dtype"),
                       "autocast": "bfloat16" if store.teacher_autocast else None}, sort_keys=True)


def _live_teacher(recipe, online: bool) -> dict[str, str]:
    """``{TEACHER: identity}`` of an online run's teacher weights (a file: its bytes; an enum: its published hash),
    so that a resume onto a teacher file changed in place says so; ``{}`` from a cache (the cache pins its teacher)
    or for a teacher without weights."""
    from frs_cli.cache.identity import teacher_fingerprint

    teacher = teacher_fingerprint(recipe.teacher) if online else None
    return {TEACHER: teacher} if teacher else {}


def _finished_at(start: RunStart, outputs: tuple[str, ...]) -> int | None:
    """On a resume, the epochs the run finished (its saved state at an epoch's end, and each final file in
    ``outputs`` written from it: ``_written_from``), else None. A run finished at its recipe's epochs is left as it
    is: its final files are not written again (a cache fingerprints its teacher by the model file's bytes); one
    finished earlier goes on (``_keep_finished_outputs``)."""
    if not start.resume:
        return None
    state = load_training_state(start.out_dir / LAST)
    return state["epoch"] if _written_from(state, start.out_dir, outputs) else None


def _written_from(state: dict, out_dir: Path, outputs: tuple[str, ...]) -> bool:
    """Whether the final files ``outputs`` in ``out_dir`` were written from ``state``, the state a run finished
    at: at an epoch's end, the model file holding its student's weights and ``adapters.pt`` (a distillation's) its
    adapters. Judged by content, not by the files' times, which a copy or a restore from an archive changes."""
    if state["epoch_step"] or not all((out_dir / name).is_file() for name in outputs):
        return False
    if not holds_the_states_model(out_dir / FINAL, state):
        return False
    if ADAPTERS not in outputs:
        return True
    saved = load_torch_file(out_dir / ADAPTERS).get("adapters", {})
    adapters = state["modules"].get("adapters", {})
    return saved.keys() == adapters.keys() and all(torch.equal(saved[k], adapters[k]) for k in saved)


def _start_out(start: RunStart, recipe_dict: dict, ctx: DistContext) -> None:
    """Create the run directory once everything is built (``fit``'s ``started``), so a failed start leaves
    nothing behind."""
    if ctx.is_main:
        start_run_dir(start, recipe_dict)


def _on_resumed(start: RunStart, recipe_dict: dict, changes: dict, ctx: DistContext, outputs: tuple[str, ...],
                finished: int | None):
    """What ``fit`` calls once it has restored and checked the saved state: record the recipe now followed, and
    keep the final files (``outputs``) of a run that had ``finished`` (``_finished_at``) under their epoch's name."""
    def resumed() -> None:
        if ctx.is_main:
            record_resume(start.out_dir, recipe_dict, changes)
            if finished is not None:
                _keep_finished_outputs(start.out_dir, outputs, finished)
    return resumed


def _keep_finished_outputs(out_dir: Path, outputs: tuple[str, ...], epoch: int) -> None:
    """A run that had finished after ``epoch`` epochs, resumed to go on: its final files ``outputs`` renamed after
    that epoch (``model_epoch6.pt``, ``adapters_epoch6.pt``), so that until the longer run ends no file stands as
    its final model, and the earlier one is kept (a cache made from a teacher names it by its bytes, whatever the
    file is called)."""
    kept = []
    for name in outputs:
        path = out_dir / name
        kept.append(f"{path.stem.removesuffix('_final')}_epoch{epoch}{path.suffix}")
        path.replace(out_dir / kept[-1])
    log.warning("--resume: the run had finished after %s and now goes on: its %s %s kept as %s, and written again "
                "when the run ends", plural(epoch, "epoch"), " and ".join(outputs), "is" if len(outputs) == 1 else "are",
                " and ".join(kept))


def _record_annotations(start: RunStart, recipe_dict: dict, changes: dict, index, ctx: DistContext, command: str,
                        evaluate: bool) -> None:
    """Once the training split's annotations are read: their digest into ``recipe_dict``'s paths, and on a resume
    onto annotations (or an online teacher's weights file) changed in place, that change into ``changes``
    (``record_resume`` names it). Then, under torchrun, that every process runs this same job (``check_same_job``)."""
    recipe_dict[PATHS].update(annotations_identity(index))
    if start.resume:
        changes.update(digest_changes(start.out_dir, recipe_dict))
    check_same_job(ctx, command, job_settings(recipe_dict, start.out_dir,
                                              {"--no-eval": not evaluate, "--resume": start.resume}))


def _check_training_split(views: CocoViews, split: str, command: str, ctx: DistContext, key: str = "data.train"):
    """Before anything is built: the split (the recipe's ``key``) lists images (one line naming it and its annotation
    file, as teacher-cache's), their files are there (``check_files``), and one warning if none has an object."""
    views.require_images(command.split(" ")[0], split, hint=f"set {key} to a split with images")
    views.check_files()
    _warn_no_objects(views, command, ctx)


def _warn_no_objects(views: CocoViews, command: str, ctx: DistContext) -> None:
    """One warning when no image of the training split has a box: the ground-truth loss then teaches background
    alone (an annotation file of the wrong split, or one whose boxes were all dropped)."""
    if ctx.is_main and not any(len(r.boxes_xyxy) for r in views.index.records):
        log.warning("%s: no image of the training split has an object (%s: %s), so the detector learns "
                    "background alone; check data.train and the annotation file", command,
                    plural(len(views.index.records), "image"), views.index.path)


def _warn_cached_flips(views, hflip_prob: float, ctx: DistContext) -> None:
    """One warning when ``train.hflip_prob`` is not the share of flipped views among the cached ``views`` that a
    cached run draws from uniformly: from a cache the setting has no effect (README), so a run asking for no
    flips, or only flips, would otherwise get the cache's share without a word."""
    from frs_cli.data.geometry import parse_view

    share = sum(parse_view(v)[0] == "hflip" for v in views) / len(views)
    if ctx.is_main and not math.isclose(share, hflip_prob):
        log.warning("distill: train.hflip_prob = %g has no effect from a cache: each image is shown in one of the "
                    "views %s, drawn uniformly (flipped in %g of them); for another share, cache other views "
                    "(cache.views = [\"orig\"]: no flips)", hflip_prob, list(views), share)


def _warn_anchor_mismatch(recipe, teacher_arch: str, teacher_anchor_size: int, ctx: DistContext) -> None:
    """One warning when the head term is on and the student's anchors are not the teacher's size."""
    beta = recipe.distill.for_family(arch_spec(recipe.student.arch).family).beta
    mismatch = anchor_mismatch(recipe.student, teacher_arch, teacher_anchor_size)
    if ctx.is_main and beta and mismatch:
        log.warning("distill: %s", mismatch)


def _as_stored(recipe, cache: str, ctx: DistContext, resume: bool):
    """``recipe`` with ``cache.dtype`` and ``cache.codec`` as the cache at ``cache`` stores its features (a cache
    is read as it was written), so that the run records what it read; a warning when the recipe said otherwise,
    given when the run starts (a resume compares the cache with the one it started with, and says what differs).
    A cache that cannot be read is left to the checks that follow, which say why. Returns the recipe and the
    cache's ``attribute_faults`` where they were found here (``None`` where not: the recipe agreed with the cache,
    or it could not be read), for ``TeacherCache.check_attributes``."""
    import dataclasses

    from frs_cli.cache.backend import open_backend
    from frs_cli.cache.reader import attribute_faults
    from frs_cli.errors import FrsError

    faults = None
    try:
        backend = open_backend(str(cache))
        storage = dict(backend.attrs.get("storage", {}))
        stored = {k: storage[k] for k in ("dtype", "codec") if k in storage}
        given = {k: getattr(recipe.cache, k) for k in stored}
        if stored == given:
            return recipe, None
        faults = attribute_faults(backend, dict(backend.attrs))
        if faults:  # refused later, unwarned
            return recipe, faults
    except (FrsError, OSError, KeyError, TypeError, ValueError):
        return recipe, faults
    if ctx.is_main and not resume:
        differ = ", ".join(f"cache.{k} = {given[k]!r} (the cache's: {stored[k]!r})"
                           for k in stored if given[k] != stored[k])
        log.warning("distill: %s: a cache is read as it was written, so the run uses and records the cache's", differ)
    return dataclasses.replace(recipe, cache=dataclasses.replace(recipe.cache, **stored)), faults


def _model_saver(model_cfg: ModelConfig, index, geometry, extra: bool = False):
    def save(objective, out_dir: Path) -> None:
        save_model(out_dir / FINAL, objective.student, model_cfg, index, geometry)
        if extra:  # a distillation run: its FRSObjective's adapters too
            adapters = {"adapters": objective.adapters.state_dict(),
                        "levels": [lv.to_dict() for lv in objective.student.levels]}
            atomic_save(adapters, out_dir / ADAPTERS, TRAINING_SAVE_HINT)
    return save


def _skipped_eval(recipe, out_dir: Path, evaluate: bool):
    """With --no-eval, what ``fit`` calls when a resume finds every epoch done and no final evaluation in
    metrics.jsonl (the run's failed, or never ran): one warning that --no-eval skips it, and how to score the model
    file then written (``frs eval``). None with evaluation on: the resume runs that evaluation (``EvalHook``)."""
    if evaluate:
        return None
    split = "" if recipe.data.val == "val" else f" --split {recipe.data.val}"

    def warn(epochs: int) -> None:
        log.warning("--no-eval: the final evaluation (after epoch %d) is skipped, and metrics.jsonl holds none from "
                    "an earlier attempt (it failed, or that attempt had --no-eval too); %s is written unevaluated "
                    "(frs eval --checkpoint %s --data %s%s scores it)", epochs, FINAL, out_dir / FINAL,
                    recipe.data.root, split)
    return warn


def _warn_val_categories(trained: CocoIndex, val: CocoIndex, command: str, ctx: DistContext) -> None:
    """One warning when the val split names other categories than the training split ``trained`` (id 1 'circle'
    there, 'oval' here), in the words ``eval`` uses for a model file and the data it is scored on."""
    differs = category_differences({"category_ids": [c["id"] for c in trained.categories],
                                    "category_names": [c["name"] for c in trained.categories]}, val.categories)
    if ctx.is_main and differs:
        log.warning("%s: the model learns the categories of %s, %s has others: %s (is data.val a split of the "
                    "training split's dataset?)", command, trained.path, val.path, differs)


def _evaluator(recipe, ctx: DistContext, cfg, trained: CocoIndex, command: str, progress: Progress | None):
    """What ``fit`` evaluates with, built before the run starts: a val split without images (evaluation would
    fail once the whole schedule has run) is one ConfigError here; one of other categories than the training
    split ``trained`` is a warning. The evaluation shows its own bar on the run's ``progress``."""
    val = CocoViews.from_config(recipe.data, recipe.data.val, recipe.geometry, scored=True)
    _warn_val_categories(trained, val.index, command, ctx)
    if len(val) == 0:
        raise ConfigError(f"data.val: expected at least one image to evaluate on, got none in the "
                          f"{recipe.data.val!r} split ({recipe.data.annotation_file(recipe.data.val)})",
                          hint="add --no-eval to train without evaluation, or set data.val to a split with images")
    prepare_evaluation(val)  # what would stop the evaluation after the last epoch stops the run now
    val.check_images()  # and what the image files' headers tell (not pixels: a file cut short is found then)

    def evaluate(objective) -> dict:
        return evaluate_detector(objective.student, val, ctx, batch_size=max(1, cfg.batch_size),
                                 workers=cfg.workers, amp=cfg.amp, progress=progress)
    return evaluate


@_one_writer
def train_detector(recipe, role: str, out_dir: str | Path, *, resume: bool = False, ctx: DistContext | None = None,
                   progress: Progress | None = None, evaluate: bool = True) -> RunSummary:
    """Plain GT training of the recipe's teacher or student (``role``)."""
    if role not in ("teacher", "student"):
        raise ConfigError(f"--role: expected 'teacher' or 'student', got {role!r}")
    ctx = ctx or setup()
    out_dir = Path(out_dir)
    recipe_dict = {**recipe.to_dict(), JOB: f"train {role}"}
    recipe_dict[PATHS] = path_identities(recipe_dict)
    start, changes = _check_out(out_dir, resume, recipe_dict, f"train {role}")
    cfg = recipe.train_config(role)
    model_cfg = recipe.model_config(role)
    finished = _finished_at(start, (FINAL,))
    if finished == cfg.epochs:
        return RunSummary(str(out_dir), str(out_dir / FINAL), None, complete=True)
    if cfg.tensorboard:
        require_tensorboard()
    seed_everything(cfg.seed)
    train = CocoViews.from_config(recipe.data, recipe.data.train, recipe.geometry)
    _record_annotations(start, recipe_dict, changes, train.index, ctx, f"train --role {role}", evaluate)
    _check_training_split(train, recipe.data.train, f"train --role {role}", ctx)
    evaluator = _evaluator(recipe, ctx, cfg, train.index, "train", progress) if evaluate else None
    detector = build_detector(model_cfg, train.index.num_classes, table=role)
    result = fit(GTObjective(detector), train, cfg, ctx, out_dir,
                 views=training_views(cfg.hflip_prob, cfg.min_sizes, recipe.geometry), resume=start.resume,
                 started=lambda: _start_out(start, recipe_dict, ctx),
                 resumed=_on_resumed(start, recipe_dict, changes, ctx, (FINAL,), finished),
                 save_outputs=_model_saver(model_cfg, train.index, recipe.geometry),
                 evaluate=evaluator, skipped_eval=_skipped_eval(recipe, out_dir, evaluate), progress=progress,
                 table=schedule_table(role))
    return RunSummary(str(out_dir), str(out_dir / FINAL), result)


def _mask_picture(store, coco, teacher, view: str = "orig"):
    """The teacher's FRS mask figure of one training image: from the cache (in ``view``, one it holds), or from the
    live teacher."""
    if store is not None:
        from frs_cli.viz.cache_view import render_cached_view

        return render_cached_view(store, coco, view=view, level="all")
    return teacher_mask_picture(teacher, coco)


@_one_writer
def distill_student(recipe, out_dir: str | Path, *, cache: str | None = None, online: bool = False,
                    resume: bool = False, ctx: DistContext | None = None, progress: Progress | None = None,
                    evaluate: bool = True) -> RunSummary:
    """Train the recipe's student with FRS: teacher targets from ``cache``, or the live teacher (``online``).

    From a cache, the teacher is neither built nor loaded: the cache holds its targets and its classification
    head, and the student is checked against the cache's signature before anything is built."""
    from frs_cli.cache.reader import CachedViews, TeacherCache

    if online == (cache is not None):
        raise ConfigError("distill: expected exactly one teacher source: --cache PATH or --online")
    ctx = ctx or setup()
    out_dir = Path(out_dir)
    if cache is not None:
        recipe, faults = _as_stored(recipe, cache, ctx, resume)
    job = "distill online" if online else "distill cache"
    recipe_dict = {**recipe.to_dict(), "teacher_source": "online" if online else str(cache), JOB: job}
    recipe_dict[PATHS] = path_identities(recipe_dict, {"teacher_source": _cache_identity}) | _live_teacher(recipe, online)
    start, changes = _check_out(out_dir, resume, recipe_dict, job)
    cfg = recipe.train
    finished = _finished_at(start, (FINAL, ADAPTERS))
    if finished == cfg.epochs:
        return RunSummary(str(out_dir), str(out_dir / FINAL), None, complete=True)
    if cfg.tensorboard:
        require_tensorboard()
    coco = CocoViews.from_config(recipe.data, recipe.cache.split if cache else recipe.data.train, recipe.geometry)
    _record_annotations(start, recipe_dict, changes, coco.index, ctx, job.split(" ")[0], evaluate)
    _check_training_split(coco, recipe.cache.split if cache else recipe.data.train, "distill", ctx,
                          "cache.split" if cache else "data.train")
    num_classes = coco.index.num_classes
    evaluator = _evaluator(recipe, ctx, cfg, coco.index, "distill", progress) if evaluate else None
    if cache is not None:
        recipe.cache.check_training_scales(cfg.min_sizes, recipe.geometry)
        store = TeacherCache(cache).check_attributes(faults)  # as verify does: an edited zarr.json is not trained on
        cached_arch = store.teacher.get("arch")
        if cached_arch and cached_arch != recipe.teacher.arch:  # the recipe would record a teacher it never had
            raise ConfigError(f"distill: the cache {str(cache)!r} holds a {cached_arch} teacher, the recipe names "
                              f"teacher.arch = {recipe.teacher.arch!r}",
                              hint=f"set teacher.arch = {cached_arch!r} (the cache's), or cache this recipe's teacher")
        store.check_fingerprints(recipe.teacher, coco.index, recipe.geometry)  # before the student is matched to it
        store.check_image_files(coco)  # a re-encoded or swapped image: the targets are not of what is read
        check_compatible(signature(recipe.student.arch, num_classes), store.signature)
        # the cache's teacher is recipe.teacher.arch (checked above), with the anchors its model config records
        cached_anchors = store.teacher.get("model_config", {}).get("anchor_size", recipe.teacher.anchor_size)
        _warn_anchor_mismatch(recipe, recipe.teacher.arch, int(cached_anchors), ctx)
        if ctx.is_main and not store.teacher.get("weights", "?"):  # teacher-cache warned once; every student now
            log.warning("distill: the cache %s was written by a teacher with no weights (teacher.weights was empty: "
                        "a random detection head), so its FRS masks and targets teach nothing; write the cache "
                        "again with teacher.weights set", cache)
        if store.nbytes_stored()["views"] <= recipe.cache.preload_mb * 1e6:
            store.preload()
        # the online run's order (training_views), so that a seed shows each image in the same view either way
        online = training_views(0.5, cfg.min_sizes, recipe.geometry)
        views = tuple(sorted(recipe.cache.views, key=lambda v: online.index(v) if v in online else len(online)))
        missing = [v for v in views if v not in store.views]
        if missing:
            raise ConfigError(f"distill: the recipe asks for views {list(views)}, the cache holds {store.views}",
                              hint=f"write a cache of those views (frs teacher-cache with cache.views = "
                                   f"{list(views)}), or set cache.views to views this cache holds")
        _warn_cached_flips(views, cfg.hflip_prob, ctx)
        teacher_side = CachedTeacher.from_cache(store, cuda_graphs=recipe.distill.cuda_graphs)
        teacher_signature = store.signature
        dataset = CachedViews(coco, store)
    else:
        check_distillable(recipe.student, recipe.teacher, num_classes)
        _warn_anchor_mismatch(recipe, recipe.teacher.arch, recipe.teacher.anchor_size, ctx)
        if ctx.is_main:
            warn_untrained_teacher(recipe.teacher, "distill --online")
        teacher = build_teacher(recipe.teacher, num_classes)
        if ctx.is_main:
            warn_other_categories(teacher, coco.index.categories, "distill --online")
        teacher_side = OnlineTeacher(teacher, autocast=recipe.cache.amp)
        teacher_signature = teacher.signature
        views = training_views(cfg.hflip_prob, cfg.min_sizes, recipe.geometry)
        dataset = coco
    seed_everything(cfg.seed)
    student = build_detector(recipe.student, num_classes, table="student")
    objective = FRSObjective(student, teacher_signature, teacher_side, recipe.distill)

    def started() -> None:
        _start_out(start, recipe_dict, ctx)
        if cfg.tensorboard and ctx.is_main and not start.resume:
            write_images(out_dir, {"frs/teacher_masks": _mask_picture(store if cache else None, coco,
                                                                        None if cache else teacher, views[0])})

    result = fit(objective, dataset, cfg, ctx, out_dir, views=views, resume=start.resume, started=started,
                 resumed=_on_resumed(start, recipe_dict, changes, ctx, (FINAL, ADAPTERS), finished),
                 save_outputs=_model_saver(recipe.student, coco.index, recipe.geometry, extra=True),
                 evaluate=evaluator, progress=progress, skipped_eval=_skipped_eval(recipe, out_dir, evaluate))
    return RunSummary(str(out_dir), str(out_dir / FINAL), result, final_files=(FINAL, ADAPTERS))
