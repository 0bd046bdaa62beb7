"""A run directory (``--out`` of ``frs train`` / ``frs distill``): may a run start or resume in it, and what may
a resume change.

A directory holding nothing, or only what a run writes before its first saved state (``recipe.json``,
``metrics.jsonl``, hidden temporary or lock files), has nothing to lose: a run starts there from the beginning,
with or without ``--resume`` (a run killed in its first epoch is never a dead end). A directory with a saved
state (``last.pt``) continues only with ``--resume``, and only with the recipe it started with, up to the keys
in ``RESUMABLE`` (how long the schedule runs and how the run is watched), and only by the job that made it
(``recipe.json``'s ``job``: ``train teacher``, ``train student``, ``distill cache``, ``distill online``).
``recipe.json`` stays true: it is rewritten only when a run starts and when a resume with allowed changes has
restored its state.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import frs_cli
from frs_cli.errors import ConfigError, TrainingError
from frs_cli.files import atomic_path, plural, storage_errors, write_json
from frs_cli.train.checkpoint import FINAL, LAST
from frs_cli.train.config import schedule_table

log = logging.getLogger(__name__)
RECIPE = "recipe.json"
JOB = "job"  # the key of recipe.json naming the job that made the run (a key of JOB_TABLES)
CREATED_BY = "created_by"  # the key of recipe.json naming the frs version the run started under ("frs 0.1.0")
RESUMED_BY = "resumed_by"  # and the version that last resumed it, when another one did
PATHS = "paths"  # the key of recipe.json holding what each key of PATH_KEYS named when the run started
# keys whose value is a path (or an enum name): a resume spelling the same file another way (relative, absolute,
# a trailing slash, from another folder; the same cache as Zarr or HDF5) changes nothing
PATH_KEYS = ("data.root", "teacher.weights", "student.weights", "student.weights_backbone", "teacher_source")
# the key of PATHS holding the digest of the training split's annotation file: a resume onto annotations changed in
# place (a dataset regenerated or edited at the same data.root) says so
ANNOTATIONS = "train_annotations"
ANNOTATIONS_FILE = "train_annotations_file"  # and the path of that file, which the warning names
# the key of PATHS holding an online run's teacher identity (its weights file's bytes, cache.identity's form): a resume
# onto a teacher file changed in place (retrained, or copied over) says so
TEACHER = "teacher"
DIGESTS = (ANNOTATIONS, TEACHER)  # keys of PATHS a resume compares by content
METRICS = "metrics.jsonl"
# written before a run's first saved state: a directory holding only these holds nothing worth keeping
EARLY_FILES = (RECIPE, METRICS)
# keys of the run's schedule table that --resume may change (the saved state does not depend on them)
RESUMABLE = ("epochs", "workers", "worker_hold", "log_every", "eval_every", "checkpoint_every")
# keys a newer frs added whose default changes what a run does: the value a run whose recipe.json predates the key
# had in effect (batches mixed canvases before train.group_by_canvas); a resume compares against it
BEFORE_THE_KEY = {f"{table}.{key}": value for table in ("train", "teacher_train")
                  for key, value in (("group_by_canvas", False), ("min_sizes", []), ("bias_lr_mult", 1.0),
                                     ("bias_decay_mult", 1.0), ("warmup", "linear"))}
# recipe tables each job reads; keys of the other tables do not touch the run
JOB_TABLES = {
    "train teacher": ("data", "geometry", "teacher", "teacher_train"),
    "train student": ("data", "geometry", "student", "train"),
    "distill cache": ("data", "geometry", "teacher", "student", "train", "distill", "cache", "teacher_source"),
    "distill online": ("data", "geometry", "teacher", "student", "train", "distill", "teacher_source"),
}
# keys of those tables one job does not depend on: a cached run's teacher is the cache's (teacher_source pins it)
JOB_IGNORED = {"distill cache": ("teacher.weights",)}
# keys of those tables that change how the step is laid out or launched, not the model (the same numbers to
# rounding): a resume may change them, and says that the rest of the run then sums in another order, so it is not
# bit for bit the run never stopped
LAYOUT = ("train.cuda_graphs", "train.channels_last", "distill.cuda_graphs", "distill.teacher_beside")
# the split a run is scored on: its weights do not depend on it, so a resume may change it, and says that the
# evaluations logged from then on score another split than those before
SCORED_ON = "data.val"
# keys of those tables a run does not depend on: a label, what teacher-cache alone reads
IGNORED = ("name", "cache.dtype", "cache.codec", "cache.batch_size",
           "cache.workers", "cache.write_processes", "cache.resize_on_gpu", "cache.amp", "cache.channels_last",
           "cache.cuda_graphs", "cache.preload_mb",
           "cache.check_teacher_images", "cache.min_teacher_map")


@dataclass(frozen=True)
class RunStart:
    """How a run begins in its directory: ``resume`` from its ``last.pt``, or from the beginning; ``over``: from
    the beginning in a directory an earlier attempt left without a saved state."""

    out_dir: Path
    resume: bool
    over: bool = False


def _early_only(entries: list[Path]) -> bool:
    return all(p.name in EARLY_FILES or p.name.startswith(".") for p in entries)


def check_run_dir(out_dir: Path, resume: bool) -> RunStart:
    """Decide how a run starts in ``out_dir`` (nothing is written); ConfigError when it may not."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r}: expected a run directory, found a file",
                          hint="choose a directory path for --out")
    entries = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    if (out_dir / LAST).is_file():
        if not resume:
            raise ConfigError(f"--out {str(out_dir)!r}: exists and holds a saved run state ({LAST})",
                              hint="add --resume to continue that run, or choose a new directory")
        return RunStart(out_dir, resume=True)
    if not entries:
        if resume and out_dir.is_dir():
            log.warning("--resume: %s holds no saved state; starting the run from the beginning", out_dir)
        elif resume:
            log.warning("--resume: %s does not exist yet; starting the run from the beginning", out_dir)
        return RunStart(out_dir, resume=False)
    if not _early_only(entries):
        if (out_dir / FINAL).is_file() and (out_dir / RECIPE).is_file():  # last.pt removed to save space
            raise ConfigError(f"--out {str(out_dir)!r}: holds a finished run ({FINAL}, {RECIPE}) without the saved "
                              f"state {LAST} a run continues from", hint="keep it, and give a new run another --out")
        others = [p.name for p in entries if p.name not in EARLY_FILES and not p.name.startswith(".")]
        raise ConfigError(f"--out {str(out_dir)!r}: exists and is not empty (it holds {', '.join(others[:3])}"
                          f"{', ...' if len(others) > 3 else ''}, and no saved run state {LAST})",
                          hint="choose a new directory, or empty this one")
    log.warning("--out %s holds a run without a saved state %s (it stopped before its first checkpoint, or the file "
                "was removed); starting it again from the beginning, with a new %s", out_dir, LAST, METRICS)
    return RunStart(out_dir, resume=False, over=True)


def _flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, full + "."))
        else:
            out[full] = value
    return out


def _normal(recipe_dict: dict) -> dict:
    """As JSON would store it (tuples become lists), flattened to dotted keys."""
    return _flat(json.loads(json.dumps(recipe_dict)))


def path_identities(recipe_dict: dict, identify: dict[str, Callable[[str], str]] | None = None) -> dict[str, str]:
    """``{key: identity}`` for each key of PATH_KEYS whose value names an existing file or folder: its real path,
    or ``identify[key](value)`` (a cache: its fingerprints, whatever its store). Other values are left out."""
    flat, identify = _normal(recipe_dict), identify or {}
    out = {}
    for key in PATH_KEYS:
        value = flat.get(key)
        if isinstance(value, str) and value and Path(value).exists():
            out[key] = identify[key](value) if key in identify else os.path.realpath(value)
    return out


def annotations_identity(index) -> dict[str, str]:
    """``{ANNOTATIONS: "sha256:<hex>", ANNOTATIONS_FILE: path}`` of the training split's annotations ``index`` (a
    ``CocoIndex``, which hashed the file's bytes as it read them)."""
    return {ANNOTATIONS: f"sha256:{index.sha256}", ANNOTATIONS_FILE: str(index.path)}


def job_settings(recipe_dict: dict, out_dir: Path, flags: dict) -> dict:
    """What every process of one torchrun job must agree on (``dist.check_same_job``): the recipe as ``recipe.json``
    records it, its paths as given (each host may find them elsewhere), a cache by what it holds (its Zarr store and
    its HDF5 export alike), the training split's annotations by digest, the output folder and the command's
    ``flags`` (``--no-eval``, ``--resume``)."""
    paths = recipe_dict.get(PATHS) or {}
    flat = _normal({k: v for k, v in recipe_dict.items() if k != PATHS})
    if "teacher_source" in paths and flat.get("teacher_source") != "online":
        flat["teacher_source"] = paths["teacher_source"]
    flat["the training split's annotations (sha256)"] = paths.get(ANNOTATIONS)
    return {**flat, "--out": str(out_dir), **flags}


def digest_changes(out_dir: Path, recipe_dict: dict) -> dict[str, tuple]:
    """On a resume, ``{"paths.<key>": (then, now)}`` for each key of DIGESTS whose digest in ``recipe_dict`` is not
    the one ``recipe.json`` recorded (a change allowed, which ``record_resume`` names), else ``{}``."""
    stored = (json.loads((out_dir / RECIPE).read_text(encoding="utf-8")).get(PATHS) or {})
    now = recipe_dict.get(PATHS) or {}
    return {f"{PATHS}.{k}": (stored.get(k), now.get(k)) for k in DIGESTS
            if stored.get(k) and now.get(k) and stored[k] != now[k]}


def _same_paths(old: dict, stored: dict, recipe_dict: dict) -> set[str]:
    """The keys of PATH_KEYS spelled differently that name the same thing: by the identities recorded at the start
    (``PATHS``), else (a run from before they were) by the real paths of the stored values seen from here."""
    then = stored.get(PATHS) or path_identities(stored)
    now = recipe_dict.get(PATHS, {})
    return {k for k in PATH_KEYS if k in then and then[k] == now.get(k) and k in old}


def resume_changes(out_dir: Path, recipe_dict: dict, job: str) -> dict[str, tuple]:
    """The keys this resume changes, ``{key: (stored, asked)}``, all of them allowed; ConfigError naming every
    key it may not change, with both values. The stored recipe is read from ``recipe.json``."""
    path = out_dir / RECIPE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: expected the recipe the run started with at {str(path)!r}, "
                          f"found {'none' if isinstance(exc, FileNotFoundError) else 'an unreadable file'}",
                          hint="put back its recipe.json, or start a new run in another --out") from exc
    _check_job(out_dir, stored, job)
    _check_same_cache(stored, recipe_dict)
    tables = JOB_TABLES[job]
    schedule = schedule_table("teacher" if job == "train teacher" else "student")
    old, new = _normal(stored), _normal(recipe_dict)
    older = {k: v for k, v in BEFORE_THE_KEY.items() if k not in old and k in new}  # the run predates these keys
    old.update(older)
    old, new = _resolved(old), _resolved(new)
    # other keys the stored recipe lacks are settings a newer frs added that change nothing a run did (their
    # defaults); they are recorded, not refused
    same = _same_paths(old, stored, recipe_dict)
    changed = {k: (old[k], new.get(k)) for k in old if k in new and old[k] != new[k] and k not in same}
    ignored = (*IGNORED, *JOB_IGNORED.get(job, ()))
    relevant = {k: v for k, v in changed.items() if k.split(".")[0] in tables and k not in ignored}
    may_change = {*(f"{schedule}.{r}" for r in RESUMABLE), *LAYOUT, SCORED_ON}
    refused = {k: v for k, v in relevant.items() if k not in may_change}
    if refused:
        listed = "; ".join(f"{k} = {_shown(a)}, now {_shown(b)}" for k, (a, b) in refused.items())
        allowed = ", ".join([*(f"{schedule}.{r}" for r in RESUMABLE),  # the schedule, the layout, the val split
                             *(k for k in (*LAYOUT, SCORED_ON) if k.split(".")[0] in tables)])
        kept = [f"--set {k}={_shown(older[k])}" for k in refused if k in older]
        hint = (f"the run began under an older frs, before {', '.join(k for k in refused if k in older)} existed; "
                f"{' '.join(kept)} resumes it as it began" if kept and len(kept) == len(refused) else
                f"a resume may change only {allowed}; resume with the recipe it started with, or start a new run in "
                "another --out")
        raise ConfigError(f"--resume: the run in {str(out_dir)!r} started with another recipe: {listed}", hint=hint)
    return relevant


_CACHE_PARTS = (("fingerprints", "teacher", "teacher fingerprint"), ("fingerprints", "dataset", "dataset fingerprint"),
                ("fingerprints", "geometry", "geometry fingerprint"), ("views", None, "views"),
                ("dtype", None, "feature dtype"), ("mask_dtype", None, "mask dtype"),
                ("autocast", None, "teacher precision"))


def _check_same_cache(stored: dict, recipe_dict: dict) -> None:
    """ConfigError when a cached run's cache (``teacher_source``) now holds another cache than the run started
    with, however it is spelled: the same path may name a cache written again or put there since. Compared by the
    identities ``recipe.json`` records (``paths``: fingerprints, views, dtypes), when both are of that kind."""
    then, now = ((d.get(PATHS) or {}).get("teacher_source") for d in (stored, recipe_dict))
    try:
        then, now = json.loads(then), json.loads(now)
    except (TypeError, ValueError):  # not both recorded as a cache's identity (a run from before, or no cache)
        return
    if not isinstance(then, dict) or not isinstance(now, dict):
        return
    both = set(then) & set(now)  # a part an older frs did not record is not compared
    then, now = {k: then[k] for k in both}, {k: now[k] for k in both}
    if then == now:
        return
    for key, sub, name in _CACHE_PARTS:
        a, b = then.get(key), now.get(key)
        if sub is not None:
            a, b = (a or {}).get(sub), (b or {}).get(sub)
        if a != b:
            break
    else:  # a part this frs does not name
        a, b, name = then, now, "identity"
    was, asked = stored.get("teacher_source"), recipe_dict.get("teacher_source")
    where = f"--cache {asked!r}" + ("" if asked == was else f" (the run started with {was!r})")
    raise ConfigError(f"--resume: {where} holds another cache than the run started with: its {name} "
                      f"{'are' if name == 'views' else 'is'} {_shown(b)}, was {_shown(a)}",
                      hint="resume with the cache the run started with, or start a new run in another --out")


def _resolved(flat: dict) -> dict:
    """``flat`` with the values that stand for another (``nms_thresh = 0``: the arch's own, 0.5 or 0.6) replaced by
    it, so that a run recorded before such a default (its value written out) resumes under the same recipe."""
    from frs_cli.archs import arch_spec
    from frs_cli.errors import FrsError

    out = dict(flat)
    for table in ("teacher", "student"):
        if out.get(f"{table}.nms_thresh") == 0 and isinstance(out.get(f"{table}.arch"), str):
            try:
                out[f"{table}.nms_thresh"] = arch_spec(out[f"{table}.arch"]).nms_iou()
            except FrsError:  # an arch this frs does not know: left as written
                pass
    return out


def _shown(value) -> str:
    """A recipe value in a message as JSON writes it, letters beyond ASCII as they are (not ``\\u00e9``)."""
    return json.dumps(value, ensure_ascii=False)


def _command(job: str) -> str:
    """The command line of a job: ``train --role teacher``, ``distill`` (``train``: a train run of either role)."""
    kind, _, detail = job.partition(" ")
    return f"train --role {detail}" if kind == "train" and detail else kind


def _check_job(out_dir: Path, stored: dict, job: str) -> None:
    """ConfigError when the run in ``out_dir`` (its recipe.json, ``stored``) was made by another job than ``job``.
    A recipe.json from before ``job`` was recorded tells a distill run by its ``teacher_source``; a train run's role
    it does not tell. Cache and online distillation differ in ``teacher_source``, which ``resume_changes`` names."""
    made = stored.get(JOB)
    if isinstance(made, str) and made in JOB_TABLES:
        evidence = f"{RECIPE} records job {json.dumps(made)}"
    else:
        made = "distill" if "teacher_source" in stored else "train"
        evidence = f"{RECIPE} {'holds' if made == 'distill' else 'has no'} teacher_source"
    if _command(made) in (_command(job), _command(job).split(" ")[0]):
        return
    raise ConfigError(f"--resume: --out {str(out_dir)!r} holds a run of frs {_command(made)} ({evidence}), "
                      f"not of frs {_command(job)}",
                      hint=f"continue it with frs {_command(made)} --resume, or give frs {_command(job)} another --out")


def stamp_versions(out_dir: Path, recipe_dict: dict, resume: bool) -> None:
    """Record in ``recipe_dict`` the frs version that started the run (``CREATED_BY``): this one for a new run;
    for a resume the one ``recipe.json`` records (none for a run from before it was recorded), and this version as
    ``RESUMED_BY`` when it is another. Not a setting: a resume compares no version."""
    this = f"frs {frs_cli.__version__}"
    if not resume:
        recipe_dict[CREATED_BY] = this
        return
    stored = json.loads((out_dir / RECIPE).read_text(encoding="utf-8"))  # read by resume_changes before
    recipe_dict.pop(CREATED_BY, None)
    if stored.get(CREATED_BY):
        recipe_dict[CREATED_BY] = stored[CREATED_BY]
    if recipe_dict.get(CREATED_BY) != this:
        recipe_dict[RESUMED_BY] = this


def record_resume(out_dir: Path, recipe_dict: dict, changes: dict[str, tuple]) -> None:
    """Once the saved state is restored: write the recipe the run now follows to ``recipe.json``."""
    for key, (old, new) in changes.items():
        if key == f"{PATHS}.{ANNOTATIONS}":
            log.warning("--resume: the training split's annotation file %s is not the one the run started with (%s "
                        "then, %s now: changed in place); the run continues on it as it is now (recorded in %s)",
                        recipe_dict[PATHS][ANNOTATIONS_FILE], old[:19], new[:19], RECIPE)
            continue
        if key == f"{PATHS}.{TEACHER}":
            log.warning("--resume: the teacher's weights file %r is not the one the run started with (%s then, %s now: "
                        "changed in place); the rest of the run distills from it as it is now (recorded in %s)",
                        str(recipe_dict.get("teacher", {}).get("weights")), old, new, RECIPE)
            continue
        if key == SCORED_ON:
            log.warning("--resume: %s changes from %s to %s (recorded in %s): the evaluations from here on score the "
                        "%r split, those metrics.jsonl holds from before the %r split", key, _shown(old), _shown(new),
                        RECIPE, new, old)
            continue
        if key in LAYOUT:
            log.warning("--resume: %s changes from %s to %s (recorded in %s): the same model, its steps summed in "
                        "another order, so the rest of the run differs in rounding from the run never stopped",
                        key, _shown(old), _shown(new), RECIPE)
            continue
        log.warning("--resume: %s changes from %s to %s (recorded in %s)", key, _shown(old), _shown(new), RECIPE)
    if _normal(json.loads((out_dir / RECIPE).read_text(encoding="utf-8"))) != _normal(recipe_dict):
        write_json(out_dir / RECIPE, recipe_dict, indent=1)


def start_run_dir(start: RunStart, recipe_dict: dict) -> None:
    """Create the run directory and record its recipe (call on the main process only, once everything is
    built). A run starting over drops the earlier attempt's metrics and temporary files."""
    out_dir = start.out_dir
    if start.resume:
        return
    hint = "choose an --out on a writable disk"
    with storage_errors(f"--out {str(out_dir)!r}", hint=hint):
        Path(os.path.realpath(out_dir)).mkdir(parents=True, exist_ok=True)  # a link to a folder not made yet: made
        if start.over:
            for p in out_dir.iterdir():
                if p.name == METRICS or (p.name.startswith(".") and p.name.endswith(".tmp")):
                    p.unlink()
    with atomic_path(out_dir / RECIPE, hint=hint) as tmp:
        tmp.write_text(json.dumps(recipe_dict, indent=1), encoding="utf-8")


def check_resumed_epoch(epoch: int, epoch_step: int, epochs: int) -> None:
    """TrainingError when a saved state (at ``epoch``, ``epoch_step`` steps into the next) lies beyond ``epochs``."""
    needed = epoch + (1 if epoch_step else 0)
    if needed > epochs:
        raise TrainingError(f"--resume: the saved state is at epoch {epoch + 1 if epoch_step else epoch}"
                            f"{f', iteration {epoch_step}' if epoch_step else ''}, beyond the {plural(epochs, 'epoch')} "
                            "this run asks for", hint=f"ask for at least {plural(needed, 'epoch')}")
