"""``frs cache verify`` and the repair it drives: ``teacher-cache --resume`` rewrites exactly what verify rejects."""

import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
import zarr
from conftest import assert_same_cache_arrays, write_recipe
from typer.testing import CliRunner

from frs_cli.cache.reader import TeacherCache
from frs_cli.cache.verify import CHECKSUM, MISSING, UNREADABLE, verify_cache
from frs_cli.cache.writer import write_teacher_cache
from frs_cli.cli.app import app
from frs_cli.config import load_recipe
from frs_cli.dist import setup
from frs_cli.errors import CacheFormatError

runner = CliRunner()
BUCKET = "buckets/64x64"


def _chunk_files(path: Path) -> dict[Path, int]:
    """Every chunk file of the per-view arrays, with its modification time."""
    return {p: p.stat().st_mtime_ns for p in (path / BUCKET).rglob("c.*") if p.is_file()}


def _shard_of(chunk: Path) -> int:
    """Shard files are c.<batch>...: one plan batch (4 views) each."""
    return int(chunk.name.split(".")[1])


def _flip_a_byte_of_view(shard: Path, inner: int) -> None:
    """Flip one byte inside inner chunk ``inner`` of an uncompressed shard, read from the shard's index
    (at its end: (offset, nbytes) as two little-endian uint64 per inner chunk, then a 4-byte CRC-32C)."""
    data = bytearray(shard.read_bytes())
    index = data[-(4 * 16 + 4):-4]
    offset, nbytes = struct.unpack_from("<QQ", index, 16 * inner)
    data[offset + nbytes // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.fixture
def damaged(cache_path, tmp_path):
    """A copy of the complete cache with row 5's P3 features corrupted (inner chunk 1 of shard 1) and the P5
    mask shard of rows 8-11 deleted."""
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(cache_path, copy)
    _flip_a_byte_of_view(copy / BUCKET / "P3" / "features" / "c.1.0.0.0", 1)
    (copy / BUCKET / "P5" / "mask" / "c.2.0.0").unlink()
    return copy


def test_intact_cache_verifies_ok_with_a_one_line_summary(cache_path):
    result = runner.invoke(app, ["cache", "verify", cache_path])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines() == [
        f"OK: cache {cache_path}: 48 of 48 written views intact (all 48 views, state complete)"]


def test_verify_names_a_path_with_brackets_as_it_is(cache_path, tmp_path):
    """rich read the verdict as markup: a cache at c[v2].zarr was named c.zarr, in the OK line and in the --resume
    the verdict proposes (another path)."""
    copy = tmp_path / "c[v2].zarr"
    shutil.copytree(cache_path, copy)
    result = runner.invoke(app, ["cache", "verify", str(copy)])
    ok = f"OK: cache {copy}: 48 of 48 written views intact (all 48 views, state complete)"
    assert result.stdout.strip().splitlines() == [ok]
    (copy / BUCKET / "P5" / "mask" / "c.2.0.0").unlink()
    result = runner.invoke(app, ["cache", "verify", str(copy)])
    assert result.exit_code == 1 and f"--out {copy} --resume rewrites them" in " ".join(result.stdout.split())


def test_result_lines_name_paths_with_brackets_as_they_are(cache_path, synth_root, teacher_ckpt, tmp_path):
    """Like verify's verdict, every other result line printed a path through rich markup, which dropped '[v2]':
    teacher-cache's "already complete", cache export's "-> path", visualize's and eval's "wrote path", the titles of
    eval's and cache info's tables."""
    folder = tmp_path / "runs[v2]"
    folder.mkdir()
    copy = folder / "c.zarr"
    shutil.copytree(cache_path, copy)
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    calls = [(["teacher-cache", "--pipeline", recipe, "--out", copy, "--resume"],
              [f"cache {str(copy)!r} is already complete (48 views); nothing written"]),
             (["cache", "export", copy, folder / "c.h5"], [f"-> {folder / 'c.h5'}"]),
             (["visualize", "--cache", copy, "--out", folder / "m.png"], [f"wrote {folder / 'm.png'} ("]),
             (["eval", "--cache", copy, "--metrics", folder / "m.json"],
              [f"FRS masks of {copy}", f"wrote {folder / 'm.json'}"]),
             (["cache", "info", copy], [f"teacher cache {copy}"])]
    for args, lines in calls:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        for line in lines:
            assert line in result.stdout, result.stdout


def test_verify_of_a_cache_from_before_head_checksums_says_its_index_and_head_were_not_checked(cache_path, tmp_path):
    """A cache written before frs recorded the checksums of its index and teacher head (no ``checksums`` root
    attribute), its head then damaged: verify still passes its views, and says the index and head were not
    checked (before: "OK … intact", and distill trained on the damaged head without a word)."""
    copy = tmp_path / "old.zarr"
    shutil.copytree(cache_path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    recorded = dict(group.attrs["checksums"])
    group.attrs.put({k: v for k, v in group.attrs.asdict().items() if k != "checksums"})
    head = next(n for n in recorded if n.startswith("teacher_head/") and n.endswith("weight"))
    array = zarr.open_array(str(copy / head), mode="r+")
    array[(0,) * array.ndim] = array[(0,) * array.ndim] + 1.0
    result = runner.invoke(app, ["cache", "verify", str(copy)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"OK: cache {copy}: 48 of 48 written views intact (all 48 views, state complete); its {len(recorded)} index "
        "and teacher-head arrays carry no checksums (a cache written before frs recorded them), so they were not "
        "checked: writing the cache again gives them checksums")


def test_verify_lists_exactly_the_corrupt_and_the_missing_view(damaged, cache_path):
    report = verify_cache(str(damaged))
    assert not report.ok and report.views_done == 48
    cache = TeacherCache(str(damaged))
    assert [(f.bucket, f.row, f.problems) for f in report.faults] == [
        ("64x64", 5, (("P3/features", CHECKSUM),))] + [("64x64", row, (("P5/mask", MISSING),)) for row in (8, 9, 10, 11)]
    for f in report.faults:  # the index maps each fault back to its image and view
        assert (int(cache.image_id[f.index]), f.view) == (f.image_id, f.view)
        assert cache.find(f.image_id, f.view) == f.index
    result = runner.invoke(app, ["cache", "verify", str(damaged)])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 6, lines
    assert re.fullmatch(r"image 3 hflip \(bucket 64x64, row 5\): P3/features checksum mismatch", lines[0])
    assert re.fullmatch(r"image 5 orig \(bucket 64x64, row 8\): P5/mask missing", lines[1])
    assert "43 of 48 written views intact, 5 missing or corrupt" in lines[5] and "--resume" in lines[5]


def test_truncated_chunk_is_unreadable(cache_path, tmp_path):
    copy = tmp_path / "c.zarr"
    shutil.copytree(cache_path, copy)
    shard = copy / BUCKET / "P4" / "features" / "c.2.0.0.0"  # rows 8-11
    shard.write_bytes(shard.read_bytes()[:50])
    faults = verify_cache(str(copy)).faults
    assert [(f.row, f.problems) for f in faults] == [(row, (("P4/features", UNREADABLE),)) for row in (8, 9, 10, 11)]


def test_resume_rewrites_exactly_the_rejected_views(damaged, cache_path, recipe_path):
    before = _chunk_files(damaged)
    result = runner.invoke(app, ["teacher-cache", "--pipeline", recipe_path, "--out", str(damaged), "--resume",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "rewrote 5 written views that were missing or corrupt" in result.stdout
    assert "wrote 5 of 48 views" in result.stdout
    after = _chunk_files(damaged)
    changed = {p for p in after if before.get(p) != after[p]}
    assert {_shard_of(p) for p in changed} == {1, 2}  # every file of other batches is untouched
    assert len(changed) == 2 * (2 * 5 + 2)  # both batches: 5 levels x (features, mask), crc, done
    result = runner.invoke(app, ["cache", "verify", str(damaged)])
    assert result.exit_code == 0 and result.stdout.startswith("OK:")
    assert_same_cache_arrays(damaged, cache_path)
    assert zarr.open_group(str(damaged), mode="r").attrs["state"] == "complete"


def test_resume_of_an_intact_complete_cache_writes_nothing(cache_path, synth_root, teacher_ckpt, tmp_path):
    before = _chunk_files(Path(cache_path))
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    s = write_teacher_cache(r, cache_path, resume=True, ctx=setup("cpu"))
    assert (s.views_written, s.views_rejected, s.complete) == (0, 0, True)
    assert _chunk_files(Path(cache_path)) == before


def test_verify_of_an_unfinished_cache_counts_the_views_not_yet_written(cache_path, tmp_path):
    copy = tmp_path / "c.zarr"
    shutil.copytree(cache_path, copy)
    root = zarr.open_group(str(copy), mode="r+")
    root[f"{BUCKET}/done"][40:] = 0
    root.attrs["state"] = "writing"
    report = verify_cache(str(copy))
    assert (report.ok, report.views_done, report.faults) == (False, 40, [])
    assert "8 of 48 views not yet written (state writing" in report.summary()
    result = runner.invoke(app, ["cache", "verify", str(copy)])
    assert result.exit_code == 1
    # every view written, the state left at writing (a writer stopped before marking it): readers refuse it, so
    # verify does not call it OK (before: "OK: ... state writing", exit 0)
    root[f"{BUCKET}/done"][40:] = 1
    report = verify_cache(str(copy))
    assert (report.ok, report.views_done, report.faults) == (False, 48, [])
    assert report.summary() == (f"cache {copy}: 48 of 48 written views intact, all 48 views, but not marked complete "
                                f"(state writing; frs teacher-cache --pipeline RECIPE --out {copy} --resume finishes it)")
    assert runner.invoke(app, ["cache", "verify", str(copy)]).exit_code == 1


def test_verify_of_something_that_is_not_a_cache_is_one_line(tmp_path):
    result = runner.invoke(app, ["cache", "verify", str(tmp_path / "nothing.zarr")])
    assert result.exit_code == 1 and "found nothing there" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output


def _first_view_of_row(cache: TeacherCache, row: int) -> int:
    return next(k for k in range(len(cache)) if int(cache.row[k]) == row)


@pytest.mark.parametrize("gone, named", [
    ("P5/mask/c.2.0.0", "P5/mask"), ("P3/features/c.2.0.0.0", "P3/features"), ("crc/c.2.0", "crc")])
def test_a_deleted_shard_is_named_missing_by_readers_and_verify_alike(cache_path, tmp_path, gone, named):
    """Zarr reads an absent shard as zeros: the reader names the array whose chunk is gone, as verify does, not a
    checksum mismatch; a lost crc shard is the one fault of its views (their arrays cannot be checked without it)."""
    copy = tmp_path / "c.zarr"
    shutil.copytree(cache_path, copy)
    (copy / BUCKET / gone).unlink()
    cache = TeacherCache(str(copy))
    with pytest.raises(CacheFormatError, match=rf"\(bucket 64x64, row 8\): {named} is missing: its chunk is not in "
                                                r"the store \(frs cache verify .* --resume repairs it\)"):
        cache.read(_first_view_of_row(cache, 8))
    faults = verify_cache(str(copy)).faults
    assert [(f.row, f.problems) for f in faults] == [(row, ((named, MISSING),)) for row in (8, 9, 10, 11)]


def test_a_deleted_scale_shard_of_an_int8_cache_is_named_missing(synth_root, teacher_ckpt, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)), ["cache.dtype='int8'"])
    path = tmp_path / "c.zarr"
    write_teacher_cache(recipe, str(path), ctx=setup("cpu"))
    (path / BUCKET / "P4" / "scale" / "c.1.0").unlink()
    cache = TeacherCache(str(path))
    with pytest.raises(CacheFormatError, match=r"\(bucket 64x64, row 5\): P4/scale is missing: its chunk is not"):
        cache.read(_first_view_of_row(cache, 5))
    assert cache.read(_first_view_of_row(cache, 8)).features[1].dtype == torch.float16  # other batches read


def test_resume_repairs_a_cache_whose_teacher_has_no_weights(synth_root, tmp_path):
    """A teacher without weights is built from a fixed seed: the resumed run builds the same teacher (fingerprint
    ``state:…``) and rewrites the lost views to the values they had."""
    recipe = write_recipe(tmp_path / "r.toml", synth_root, weights="")
    path = tmp_path / "c.zarr"
    assert runner.invoke(app, ["teacher-cache", "--pipeline", recipe, "--out", path, "--device", "cpu"]).exit_code == 0
    reference = tmp_path / "reference.zarr"
    shutil.copytree(path, reference)
    assert TeacherCache(str(path)).attrs["fingerprints"]["teacher"].startswith("state:")
    (path / BUCKET / "P5" / "mask" / "c.2.0.0").unlink()
    result = runner.invoke(app, ["teacher-cache", "--pipeline", recipe, "--out", path, "--resume", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "rewrote 4 written views that were missing or corrupt" in result.stdout
    assert verify_cache(str(path)).ok
    assert_same_cache_arrays(path, reference)
