"""``frs teacher-cache`` and ``frs cache info | verify | export``."""

from __future__ import annotations

import signal
from pathlib import Path

import typer
from rich.markup import escape

from frs_cli.cli.common import (
    DEVICE,
    OVERRIDES,
    PIPELINE,
    VERBOSE,
    console,
    handle_errors,
    is_main_process,
    load,
    progress_for_rank,
    say,
    setup_logging,
)
from frs_cli.errors import Interrupted, check_value
from frs_cli.files import plural


def register(app: typer.Typer, cache_app: typer.Typer) -> None:
    app.command("teacher-cache", epilog="Example: frs teacher-cache --pipeline demo --out runs/cache.zarr "
                                        "--set teacher.weights=demo/teacher/model_final.pt"
                                        "  (after frs demo --out demo)")(handle_errors(teacher_cache))
    cache_app.command("info", epilog="Example: frs cache info demo/cache.zarr  (after frs demo --out demo)")(
        handle_errors(info))
    cache_app.command("verify", epilog="Example: frs cache verify demo/cache.zarr  (after frs demo --out demo)")(
        handle_errors(verify))
    cache_app.command("export", epilog="Example: frs cache export demo/cache.zarr runs/cache.h5"
                                       "  (after frs demo --out demo)")(handle_errors(export))


def teacher_cache(
    pipeline: Path = PIPELINE,
    out: str = typer.Option(..., "--out", "-o", help="Cache path or URL (a Zarr v3 group; created)."),
    resume: bool = typer.Option(False, "--resume", help="Verify what is written, then write what is missing or "
                                                        "corrupt (also on a complete cache: verify and repair)."),
    check_teacher: int = typer.Option(None, "--check-teacher", metavar="N",
                                      help="First score the teacher on N val images; refuse below "
                                           "cache.min_teacher_map (default from cache.check_teacher_images)."),
    overrides: list[str] = OVERRIDES,
    device: str = DEVICE,
    verbose: bool = VERBOSE,
):
    """Run the frozen teacher once over a split; write its FPN features and FRS masks to Zarr (torchrun: many GPUs)."""
    setup_logging(verbose)
    if check_teacher is not None:
        check_value("teacher-cache --check-teacher", check_teacher, 0)  # N val images: named as the option given
        overrides = [*overrides, f"cache.check_teacher_images={check_teacher}"]
    recipe = load(str(pipeline), overrides)
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.dist import process_group
    from frs_cli.signals import sigint_handled

    # SIGINT stops the write even where the process started with it ignored (a job started with & from a
    # script), as it stops frs train and frs distill
    with process_group(device) as ctx, sigint_handled(signal.default_int_handler):
        try:
            s = write_teacher_cache(recipe, out, resume=resume, ctx=ctx, progress=progress_for_rank())
        except KeyboardInterrupt:
            if "://" not in str(out) and not Path(out).exists():  # stopped before the cache was made (a download)
                raise Interrupted("teacher-cache stopped before it made the cache; nothing was written") from None
            raise Interrupted(f"teacher-cache stopped; the views written so far are kept in {out}",
                              hint="run the same command with --resume to write the rest") from None
    if not is_main_process():
        return
    if s.teacher_check:
        tc = s.teacher_check
        console.print(f"teacher check: AP {tc['AP']:.4f} on the first {tc['images']} {tc['split']} images "
                      f"(minimum {tc['min_AP']:.4f})")
    if s.arrays_rewritten:
        names = ", ".join(s.arrays_rewritten[:3]) + (", ..." if len(s.arrays_rewritten) > 3 else "")
        were = "was" if len(s.arrays_rewritten) == 1 else "were"
        console.print(f"recreated {plural(len(s.arrays_rewritten), 'array')} that {were} missing or damaged ({names})")
    if s.views_rejected:
        console.print(f"rewrote {plural(s.views_rejected, 'written view')} that "
                      f"{'was' if s.views_rejected == 1 else 'were'} missing or corrupt")
    if s.views_written == 0 and s.complete:
        repaired = s.arrays_rewritten or s.views_rejected
        say(f"cache {str(out)!r} is complete ({plural(s.views_total, 'view')}); no view needed writing" if repaired
            else f"cache {str(out)!r} is already complete ({plural(s.views_total, 'view')}); nothing written")
    else:
        console.print(f"wrote {s.views_written} of {s.views_total} views in {s.seconds:.1f} s "
                      f"({s.views_per_second:.1f} views/s per process{_rate_mb(s)}) -> {escape(str(out))}"
                      + ("" if s.complete else "  [yellow](incomplete: run again with --resume)[/]"))
        for hint in bottleneck_hints(s.stage_seconds, s.seconds, recipe.cache, s.write_processes, s.mb_per_second):
            console.print(f"[dim]{hint}[/]", highlight=False, soft_wrap=True)


HINT_SHARE = 0.25  # a wait above this share of the write loop gets a hint
HINT_MIN_S = 1.0  # and above this many seconds (a short run's waits are its start and its end)


def _mb_s(rate: float) -> str:
    """A write rate in MB/s: whole MB from 100 up, one decimal below (a small cache's short write)."""
    return f"{rate:,.0f} MB/s" if rate >= 100 else f"{rate:.1f} MB/s"


def _rate_mb(s) -> str:
    """", N MB/s in all" (every process's bytes) of a write that counted them, else nothing."""
    return f", {_mb_s(s.mb_per_second)} in all" if s.bytes_written else ""


def bottleneck_hints(stages: dict | None, seconds: float, cfg, write_processes: int | None = None,
                     mb_per_second: float = 0.0) -> list[str]:
    """What held the teacher back, when a wait took more than ``HINT_SHARE`` of the write loop's ``seconds`` (and
    more than ``HINT_MIN_S``):
    the loader (images not decoded in time) or the write side (no free writer slot). Each line names the knob
    and its value in ``cfg`` (the recipe's ``cache``), with ``write_processes`` the count the write ran
    ("auto" resolves per host and per GPU process). A write side that held it back is the disk when the write's
    rate (``mb_per_second``) is all the disk gives, else the writers: the line gives that rate and both knobs,
    fewer bits a value for a new cache and more writer processes."""
    if not stages or seconds <= 0:
        return []
    hints = []
    loader, writers = stages.get("loader_wait", 0.0), stages.get("backpressure", 0.0)
    if loader > max(HINT_SHARE * seconds, HINT_MIN_S):
        hints.append(f"waited {loader:.1f} of {seconds:.1f} s for decoded images: more loader workers may help "
                     f"(--set cache.workers=N, now {cfg.workers})")
    if writers > max(HINT_SHARE * seconds, HINT_MIN_S):
        n = cfg.writer_processes() if write_processes is None else write_processes
        now = ("0, threads in this process" if n == 0 else f"auto = {n}" if cfg.write_processes == "auto"
               else f"{n}")
        from frs_cli.cache.encoding import FeatureEncoding

        rate = f", which wrote {_mb_s(mb_per_second)}" if mb_per_second > 0 else ""
        bits = FeatureEncoding(cfg.dtype).bits
        smaller = [f"{d} ({FeatureEncoding(d).bits} bits a value)" for d in ("int8", "int5")
                   if FeatureEncoding(d).bits < bits]
        fewer = (f", and a new cache with fewer bits a value writes less (cache.dtype {' or '.join(smaller)}, "
                 f"now {cfg.dtype}: {bits})" if smaller else "")
        hints.append(f"waited {writers:.1f} of {seconds:.1f} s for the writers{rate}: if the disk writes no faster, "
                     f"it is the bound{fewer}; if it writes faster, more writer processes may help "
                     f"(--set cache.write_processes=N, now {now})")
    return hints


def _per_image(views: int, images: int) -> str:
    return f"{plural(views // max(1, images), 'view')} per image"


def _image_files(attrs: dict) -> str:
    """What a complete cache recorded of its split's image files (``identity.image_files_record``), or nothing."""
    files = attrs.get("dataset", {}).get("image_files")
    if not isinstance(files, dict):
        return ""
    return f"  (image files as completed: {files.get('files')}, {files.get('bytes', 0) / 1e6:,.2f} MB)"


def _teacher_pass(cache) -> str:
    """How the teacher computed the cached views, as the cache records it (``teacher.autocast``, ``teacher.pass``):
    what a resume keeps, and what an older frs did not record."""
    teacher = cache.teacher
    precision = ("bf16 autocast" if cache.teacher_autocast else "float32") + (
        "" if "autocast" in teacher else " (not recorded: read as bf16 autocast)")
    record = teacher.get("pass")
    if record is None:
        return f"{precision}; layout not recorded (an older frs: batch norms not folded)"
    folded = "batch norms folded" if record.get("batchnorm_folded") else "batch norms not folded"
    return f"{precision}, {'channels-last' if record.get('channels_last') else 'NCHW'}, {folded}"


def _codec(cache) -> str:
    """The compressor the cache's features are stored with (its first features array's), and the attributes' own
    when they say another (an export holds every array uncompressed; an edited ``zarr.json``)."""
    from frs_cli.cache.store import array_codec

    said = cache.attrs["storage"].get("codec", "none")  # older caches: not recorded
    path = f"buckets/{cache.buckets[0].name}/{cache.levels[0].name}/features" if cache.buckets else None
    if path is None or not cache.backend.has(path):
        return said
    stored = array_codec(cache.backend.array(path))
    return stored if stored == said else f"{stored} (its attributes say {said})"


def info(cache: str = typer.Argument(..., help="Cache path, URL or .h5 file.")):
    """Summarise a teacher cache: images, views, levels, bytes on disk, MB per image, teacher, fingerprints."""
    import logging

    from rich.table import Table

    from frs_cli.cache.reader import TeacherCache, contradiction_faults, faults_text

    setup_logging(False)  # its warning as every command's: "warning: ...", one line
    c = TeacherCache(cache, require_complete=False)
    a = c.attrs
    done = int(c.done().sum())
    n_images = c.num_images
    nbytes = c.nbytes_stored()
    per_view_bytes = nbytes["views"] / max(1, done or len(c))
    table = Table(show_header=False, title=f"teacher cache {escape(cache)}")  # paths as they are, not markup
    rows = [
        ("state", f"{a.get('state')} ({done}/{len(c)} views written)"),
        ("images", str(n_images) + _image_files(a)),
        ("views", f"{len(c)}  ({', '.join(c.views)})"),
        ("levels", "  ".join(f"{lv.name}/s{lv.stride}/{lv.channels}ch" for lv in c.levels)),
        ("size buckets", str(len(c.buckets))),
        ("storage", (f"{c.dtype} features, {a['storage'].get('mask_dtype', 'float16')} masks, "  # older caches: neither
                     f"codec {_codec(c)}")),
        ("bytes on disk", (f"{nbytes['total'] / 1e6:,.1f} MB  (views {nbytes['views'] / 1e6:,.1f} MB, "
                           f"index and teacher head {nbytes['fixed'] / 1e6:,.2f} MB)")),
        ("per image", (f"{per_view_bytes * len(c) / max(1, n_images) / 1e6:.4f} MB  "
                       f"({per_view_bytes / 1e6:.4f} MB per view, {_per_image(len(c), n_images)})")),
        ("teacher", f"{a['teacher']['arch']}  weights {a['teacher']['weights'] or '(random init)'}"),
        ("teacher pass", _teacher_pass(c)),
        ("fingerprints", "  ".join(f"{k} {v}" for k, v in c.fingerprints.items())),
        ("geometry", "  ".join(f"{k} {v}" for k, v in a["geometry"].items())),
        ("dataset", f"split {a['dataset']['split']}, {a['dataset']['annotation_file']}"),
        ("format", f"{a['format']} v{a['format_version']}, {a.get('created_by', '?')}, {a.get('created', '?')}"),
    ]
    for k, v in rows:
        table.add_row(k, escape(v))
    console.print(table)
    # the table shows what the attributes say; say when they cannot be so (their kinds: checked when opened)
    faults = contradiction_faults(c.backend, a, c.index_arrays())
    if faults:
        logging.getLogger(__name__).warning("cache %s: its attributes do not match its arrays (%s): they were edited "
                                            "or damaged, so this table may not describe it (frs cache verify %s)",
                                            cache, faults_text(faults), cache)


def verify(cache: str = typer.Argument(..., help="Cache path, URL or .h5 file.")):
    """Check that every view recorded as written has all its arrays, each matching its stored checksum."""
    from frs_cli.cache.verify import verify_cache

    report = verify_cache(cache, progress=progress_for_rank())
    for f in report.faults:  # as written, not as rich markup: a path or finding may hold '[v2]'
        say(f"image {f.image_id} {f.view} (bucket {f.bucket}, row {f.row}): {f.describe()}")
    say(report.summary())
    if not report.ok:
        raise typer.Exit(1)


def export(cache: str = typer.Argument(..., help="Complete Zarr cache (path or URL)."),
           out: str = typer.Argument(..., help="Local HDF5 file to write (.h5); replaced whole at the end.")):
    """Copy a complete cache into one HDF5 file of the same layout; distill reads either."""
    from frs_cli.cache.export import export_hdf5

    s = export_hdf5(cache, out, progress=progress_for_rank())
    say(f"exported {s.views} views ({s.arrays} arrays, {s.bytes / 1e6:,.1f} MB) -> {s.path}")
