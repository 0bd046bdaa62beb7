"""Faults and bad input end to end: each fails with exit code 1, one line on stderr, no traceback, and leaves
nothing half-written marked complete; what can be resumed is resumed to the uninterrupted result."""

import errno
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from conftest import assert_one_line_error, assert_same_cache_arrays, cache_arrays
from typer.testing import CliRunner

from frs_cli.cache.reader import TeacherCache
from frs_cli.cli.app import app
from frs_cli.errors import CacheFormatError

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_disk_full_mid_write_is_one_line_and_resume_completes_the_cache(monkeypatch, recipe_path, cache_path,
                                                                          tmp_path):
    original = zarr.storage.LocalStore.set
    feature_writes = []

    async def full_after_20_feature_shards(self, key, value):
        if "/features/c." in key:
            feature_writes.append(key)
            if len(feature_writes) > 20:  # 60 shard files in all (12 batches x 5 levels)
                raise OSError(errno.ENOSPC, "No space left on device", f"{self.root}/{key}")
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_after_20_feature_shards)
    out = tmp_path / "full.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu")
    assert_one_line_error(result, f"cache {out}: the disk is full (no space left on device) at {out}/buckets/",
                          "--resume")
    partial = TeacherCache(str(out), require_complete=False)
    assert partial.attrs["state"] == "writing" and 0 < partial.done().sum() < 48
    with pytest.raises(CacheFormatError, match="incomplete"):
        TeacherCache(str(out))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)  # space freed
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert_same_cache_arrays(out, cache_path)
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"


def test_a_cache_the_disk_cannot_hold_is_refused_before_any_work_and_a_resume_counts_what_is_left(
        monkeypatch, recipe_path, cache_path, tmp_path):
    """teacher-cache sizes the views still to write from its plan (the store's bytes without a codec) and refuses,
    in one line before the teacher check or any write, what the disk cannot hold, naming int8's and int5's sizes;
    with a compressing codec the size is an upper bound and only a warning; a resume counts only the views not done."""
    from frs_cli.cache import writer
    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.cache.schema import view_bytes
    from frs_cli.files import size_text

    cache = TeacherCache(cache_path)
    plan = writer.make_plan(cache.dataset(), ("orig", "hflip"), [lv.stride for lv in cache.levels])
    channels = [lv.channels for lv in cache.levels]
    per_view = view_bytes(plan, channels, FeatureEncoding("float16"))
    assert len(set(per_view.tolist())) == 1 and len(per_view) == 48  # one 64x64 bucket
    # the stored bytes of a view: its chunks as written (features, masks), within the checksums and flags counted
    stored = sum(a.nbytes for a in cache.read(0).features) + sum(a.nbytes for a in cache.read(0).masks)
    assert 0 <= per_view[0] - stored <= 4 * 2 * len(channels) + 1
    monkeypatch.setattr(writer, "free_bytes", lambda path: 100_000)
    out = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu")
    int8 = size_text(view_bytes(plan, channels, FeatureEncoding("int8")).sum())
    int5 = size_text(view_bytes(plan, channels, FeatureEncoding("int5")).sum())
    assert_one_line_error(result, f"teacher-cache --out '{out}': the 48 views still to write need about "
                                  f"{size_text(per_view.sum())} (float16, no codec), the disk there has 100.0 kB free",
                          f"free space or write elsewhere; cache.dtype int8 about {int8}, int5 about {int5}")
    assert not out.exists()
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--set", 'cache.codec="zstd"')
    assert result.exit_code == 0, result.output
    assert "with codec zstd it may fit" in result.stderr and TeacherCache(str(out)).attrs["state"] == "complete"

    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_path, copy)
    root = zarr.open_group(str(copy), mode="r+")
    done = root["buckets/64x64/done"]
    done[4:8] = 0  # one batch to write again
    root.attrs["state"] = "writing"
    monkeypatch.setattr(writer, "free_bytes", lambda path: int(4 * per_view[0]) - 1)
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    line = assert_one_line_error(result, "the 4 views still to write need about", "(free space)")
    assert "elsewhere" not in line and "cache.dtype" not in line  # a started cache continues where it is, as it is
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume",
                 "--set", 'cache.dtype="int8"')  # its arrays hold float16: refused, not a traceback
    assert_one_line_error(result, f"cache '{copy}': holds float16 features, this recipe asks for cache.dtype = 'int8'",
                          "set cache.dtype = 'float16' to continue it")
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume",
                 "--set", 'cache.codec="zstd"')  # its arrays store uncompressed: refused, not continued without zstd
    assert_one_line_error(result, f"cache '{copy}': is stored with codec 'none', this recipe asks for cache.codec = "
                          "'zstd' (write to a new path, or set cache.codec = 'none' to continue it)")
    assert not TeacherCache(str(copy), require_complete=False).done()[4:8].any()  # nothing written
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", f"file://{tmp_path}/url.zarr", "--device", "cpu")
    assert_one_line_error(result, "the 48 views still to write need about")  # a file:// URL is a local disk too
    monkeypatch.setattr(writer, "free_bytes", lambda path: int(4 * per_view[0]))
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert_same_cache_arrays(copy, cache_path)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory, synth_root):
    """The small teacher after 2 epochs of GT training on the 24 train images (a few seconds on CPU)."""
    from conftest import write_recipe

    from frs_cli.config import load_recipe
    from frs_cli.dist import setup
    from frs_cli.train.run import train_detector

    d = tmp_path_factory.mktemp("trained")
    r = load_recipe(write_recipe(d / "r.toml", synth_root), ["teacher_train.epochs=2", "teacher_train.lr=0.02",
                                                              "teacher_train.lr_steps=[2]", "teacher_train.hflip_prob=0.0"])
    return train_detector(r, "teacher", d / "run", ctx=setup("cpu"), evaluate=False).model_file


def test_resume_removes_the_half_written_files_a_killed_writer_left(recipe_path, cache_path, tmp_path):
    """A writer killed mid-shard leaves zarr's temporary ``<name>.<32 hex>.partial`` file: ``--resume`` deletes
    it (before: kept for good, its bytes counted by ``cache info``), keeps other files, and completes the cache."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_path, copy)  # tmp_path made as needed
    root = zarr.open_group(str(copy), mode="r+")
    root["buckets/64x64/done"][4:8] = 0
    root.attrs["state"] = "writing"
    folder = copy / "buckets" / "64x64" / "P3" / "features"
    left = folder / "c.1.0.0.6958bc4e2f1a4b7c9d0e1f2a3b4c5d6e.partial"
    left.write_bytes(b"\0" * 4096)
    mine = folder / "notes.partial"  # not zarr's name: not the writer's to remove
    mine.write_text("kept")
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert not left.exists() and mine.read_text() == "kept"
    assert not list(copy.rglob("*.*.partial"))
    assert_same_cache_arrays(copy, cache_path)


def _partial_copy(cache_path, tmp_path, **teacher_attrs) -> Path:
    """A copy of ``cache_path`` whose views 4-7 are not written, its ``teacher`` attributes updated (a None value
    removes the key)."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_path, copy)  # tmp_path made as needed
    root = zarr.open_group(str(copy), mode="r+")
    root["buckets/64x64/done"][4:8] = 0
    teacher = dict(root.attrs["teacher"])
    for key, value in teacher_attrs.items():
        teacher.pop(key) if value is None else teacher.update({key: value})
    root.attrs.update({"state": "writing", "teacher": teacher})
    return copy


def test_a_resume_in_another_teacher_precision_is_refused_before_anything_changes(recipe_path, cache_path, tmp_path):
    """A cache begun on a GPU (bf16 autocast) and resumed on the CPU (float32) held views of two precisions while
    recording one, and its cached head ran in the recorded one: now refused, the cache as it was."""
    for recorded in ("bfloat16", None):  # None: not recorded (an older frs), read as bf16 as readers read it
        copy = _partial_copy(cache_path, tmp_path / str(recorded), autocast=recorded)
        before = cache_arrays(copy)
        result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
        assert_one_line_error(result, f"cache '{copy}': its views were computed in bfloat16 autocast, this run would "
                                      "compute in float32: one cache holds one teacher precision",
                              "resume it on a CUDA device with cache.amp = true (frs cache verify checks it")
        after = cache_arrays(copy)
        assert set(after) == set(before) and all((after[k] == before[k]).all() for k in before)
        assert zarr.open_group(str(copy), mode="r").attrs["state"] == "writing"
    copy = _partial_copy(cache_path, tmp_path / "damaged", **{"pass": "channels_last"})  # edited by hand
    assert_one_line_error(run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume"),
                          f"cache '{copy}': its attributes are damaged (teacher.autocast None, teacher.pass "
                          "'channels_last'", "write the cache again")


def test_a_resume_under_another_label_map_names_both_maps_not_the_teacher(recipe_path, tmp_path):
    """A cache of a teacher with no weights (identified by its built state) resumed under another data.label_map was
    blamed on the teacher ("written for another teacher (teacher.weights '' in the cache, '' here ..."): the map
    gives the teacher another head. Now the classes are named, as distill names them, and nothing is written."""
    out = tmp_path / "c.zarr"
    base = ["teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--set", 'teacher.weights=""']
    first = run(*base)
    assert first.exit_code == 0, first.output
    before = (out / "zarr.json").read_bytes()
    result = run(*base, "--resume", "--set", "data.label_map=category_id")
    assert_one_line_error(result, f"cache {str(out)!r}: was written for other classes (its teacher has 5 classes for "
                                  "category ids [1, 2, 3, 4, 5] (data.label_map 'contiguous'), this recipe gives 6 "
                                  "classes for category ids [0, 1, 2, 3, 4, 5] (data.label_map 'category_id'))",
                          "(set data.label_map as the cache was written, or write to a new path)")
    assert (out / "zarr.json").read_bytes() == before


def test_a_cache_with_no_view_written_takes_the_resumed_runs_pass_without_a_word(recipe_path, cache_path, tmp_path):
    """Nothing written yet, nothing to mix: a resume in another precision or layout goes on, says nothing of views
    "already written", and records its own pass."""
    copy = _partial_copy(cache_path, tmp_path, autocast="bfloat16", **{"pass": {"batchnorm_folded": True,
                                                                                  "channels_last": True}})
    zarr.open_group(str(copy), mode="r+")["buckets/64x64/done"][...] = 0
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert "wrote 48 of 48 views" in result.output and "warning:" not in result.stderr, result.stderr
    teacher = zarr.open_group(str(copy), mode="r").attrs["teacher"]
    assert teacher["autocast"] is None and teacher["pass"] == {"batchnorm_folded": True, "channels_last": False}
    assert_same_cache_arrays(copy, cache_path)


def test_a_resumed_cache_adds_views_in_the_layout_its_written_ones_were_computed_in(recipe_path, cache_path, tmp_path,
                                                                                   monkeypatch):
    """The cache records its teacher pass; a resume runs the teacher in the recorded layout, not the one the
    recipe and the device would choose (the two round apart), and says so."""
    assert zarr.open_group(cache_path, mode="r").attrs["teacher"]["pass"] == {"batchnorm_folded": True,
                                                                              "channels_last": False}
    from frs_cli.cache import writer

    used = []

    class Spy(writer.TeacherPass):
        def prepare(self):
            used.append(self.options)
            return super().prepare()

    monkeypatch.setattr(writer, "TeacherPass", Spy)
    copy = _partial_copy(cache_path, tmp_path, **{"pass": {"batchnorm_folded": True, "channels_last": True}})
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert "wrote 4 of 48 views" in result.output
    assert f"cache '{copy}': the teacher runs channels-last, as for the views already written, not NCHW as this run " \
           "would have" in " ".join(result.output.split())
    assert [o.channels_last for o in used] == [True]
    assert run("cache", "verify", copy).exit_code == 0
    got, ref = cache_arrays(copy), cache_arrays(cache_path)
    for name in (n for n in ref if not n.endswith("/crc")):  # float32 on the CPU: the layouts agree to fp16 rounding
        np.testing.assert_allclose(got[name].astype(np.float64), ref[name].astype(np.float64), rtol=2e-3, atol=2e-3,
                                   err_msg=name)


def test_a_cache_an_older_frs_began_is_resumed_with_a_warning_that_its_views_may_round_apart(recipe_path, cache_path,
                                                                                             tmp_path):
    """Caches begun before the pass was recorded were computed with the teacher's batch norms unfolded: the views a
    resume adds agree with theirs to fp16 rounding only, which is said when views are added, and only then."""
    copy = _partial_copy(cache_path, tmp_path, **{"pass": None})
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.count(f"cache '{copy}': was begun by an older frs, which did not record how its teacher ran") == 1
    assert "write the cache anew" in said and "wrote 4 of 48 views" in said
    assert_same_cache_arrays(copy, cache_path)  # this frs's pass, as the reference cache was written
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    assert result.exit_code == 0 and "already complete" in result.output, result.output
    assert "older frs" not in result.output


def test_a_complete_cache_that_lost_a_done_flag_chunk_is_refused_by_readers_and_rewritten_by_resume(
        recipe_path, cache_path, tmp_path):
    """A lost chunk of a bucket's done flags reads as "not written" (zarr's fill value) in a cache marked complete:
    before, ``--resume`` said "already complete" and distill read those views' missing targets as zeros."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_path, copy)
    flags = sorted((copy / "buckets" / "64x64" / "done").glob("c*"))
    flags[0].unlink()
    lost = 48 - int(zarr.open_group(str(copy), mode="r")["buckets/64x64/done"][...].sum())
    assert lost > 0
    result = run("distill", "--pipeline", recipe_path, "--cache", copy, "--out", tmp_path / "s", "--device", "cpu")
    assert_one_line_error(result, f"cache '{copy}': is marked complete, but {lost} of its 48 views are not marked "
                                  "written (a done-flag chunk is lost)", "--resume repairs it")
    assert not (tmp_path / "s").exists()
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", copy, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert f"wrote {lost} of 48 views" in result.output and "already complete" not in result.output
    assert_same_cache_arrays(copy, cache_path)
    assert run("cache", "verify", copy).exit_code == 0


def test_eval_cache_of_a_cache_missing_an_arrays_metadata_is_one_line(cache_path, tmp_path):
    """``eval --cache`` reads incomplete caches for what they hold; an array of the format whose zarr.json is gone
    was a KeyError traceback there (``cache verify`` and ``export`` already said it in one line)."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_path, copy)
    (copy / "buckets" / "64x64" / "P5" / "mask" / "zarr.json").unlink()
    assert_one_line_error(run("eval", "--cache", copy), f"cache '{copy}': expected the array buckets/64x64/P5/mask of "
                                                        "the cache format, but it is missing", "--resume repairs it")


def test_teacher_check_refuses_a_randomly_initialised_teacher_and_writes_nothing(recipe_path, tmp_path):
    out = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--check-teacher", 8)
    assert_one_line_error(result, "the teacher scores AP 0.0000 on the first 8 val images, below the minimum 0.0100",
                          "is it the trained teacher (weights fingerprint ", "nothing was cached")
    assert not out.exists()


def test_teacher_check_passes_the_trained_teacher_and_records_its_score(synth_root, trained_teacher, tmp_path):
    from conftest import write_recipe

    # a 2-epoch teacher is barely trained: scored on 8 of the images it trained on, its AP is about 0.01
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(trained_teacher),
                          extra="check_teacher_images = 8\nmin_teacher_map = 0.005\n")
    out = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe, "--out", out, "--device", "cpu", "--set", "data.val=train")
    assert result.exit_code == 0, result.output
    assert "teacher check: AP 0.0" in result.stdout and "on the first 8 train images (minimum 0.0050)" in result.stdout
    check = TeacherCache(str(out)).teacher["check"]
    assert check["images"] == 8 and check["split"] == "train" and check["min_AP"] == 0.005
    assert check["AP"] >= 0.005 and 0.0 < check["AP50"] <= 1.0


# --- bad input through the command line ------------------------------------------------------------------------

def _copy_data(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    return root


def _edit_annotations(root, edit):
    path = root / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _copy_cache(cache_path, tmp_path, **attrs):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_path, copy)
    zarr.open_group(str(copy), mode="r+").attrs.update(attrs)
    return str(copy)


def _missing_dataset(t):
    return ["teacher-cache", "--set", f"data.root={t.tmp / 'nowhere'}"], \
        ["annotations: expected a COCO JSON file at", "nowhere"]


def _missing_image_dir(t):
    root = _copy_data(t.synth_root, t.tmp)
    shutil.rmtree(root / "train")
    return ["teacher-cache", "--set", f"data.root={root}"], ["images: expected a directory at", "train"]


def _malformed_json(t):
    root = _copy_data(t.synth_root, t.tmp)
    (root / "annotations" / "instances_train.json").write_text('{"images": [')
    return ["teacher-cache", "--set", f"data.root={root}"], ["instances_train.json': expected JSON, got a parse error"]


def _annotation_of_a_missing_image(t):
    root = _copy_data(t.synth_root, t.tmp)
    _edit_annotations(root, lambda doc: doc["annotations"].append({**doc["annotations"][0], "id": 10**6,
                                                                    "image_id": 999}))
    return ["teacher-cache", "--set", f"data.root={root}"], [f"annotation {10**6} names image 999, which is not among"]


def _image_file_missing(t):  # found before the teacher is built (CocoViews.check_files)
    root = _copy_data(t.synth_root, t.tmp)
    (root / "train" / "000000000013.jpg").unlink()
    return ["teacher-cache", "--set", f"data.root={root}", "--set", "cache.workers=1"], \
        ["image: expected a file at", "000000000013.jpg', but it does not exist", "1 of the 24 image files of"]


def _image_file_corrupt(t):
    root = _copy_data(t.synth_root, t.tmp)
    (root / "train" / "000000000013.jpg").write_bytes(b"not a jpeg")
    return ["teacher-cache", "--set", f"data.root={root}", "--set", "cache.workers=1"], \
        ["000000000013.jpg': could not be decoded", "(replace the file with the image, or remove the image from"]


def _category_ids_far_beyond_the_categories(t):
    """5 categories of ids up to 2000 under label_map 'category_id': a model of 2001 classes (before: trained as
    one; ids in the millions were an out-of-memory kill)."""
    root = _copy_data(t.synth_root, t.tmp)
    ids = {1: 3, 2: 5, 3: 1000, 4: 1500, 5: 2000}

    def far(doc):
        for c in doc["categories"]:
            c["id"] = ids[c["id"]]
        for a in doc["annotations"]:
            a["category_id"] = ids[a["category_id"]]
    _edit_annotations(root, far)
    return ["train", "--role", "student", "--no-eval", "--set", f"data.root={root}", "--set",
            "data.label_map=category_id"], \
        ["data.label_map 'category_id' gives 2001 classes (the largest category id is 2000) for 5 categories",
         "set data.label_map = 'contiguous'"]


def _checkpoint_of_another_arch(t):
    return ["teacher-cache", "--set", "teacher.arch=retinanet_tiny_fpn"], \
        ["holds a retinanet_small_fpn, expected retinanet_tiny_fpn"]


def _wrong_type_in_recipe(t):
    return ["teacher-cache", "--set", "cache.batch_size=four"], \
        ["recipe key 'cache.batch_size': expected an integer, got str 'four'"]


def _not_a_cache(t):
    (t.tmp / "plain").mkdir()
    return ["distill", "--cache", t.tmp / "plain"], ["expected an frs teacher cache, found something else"]


def _cache_of_another_geometry(t):
    return ["distill", "--cache", t.cache, "--set", "geometry.min_size=48", "--set", "geometry.max_size=48"], \
        ["was written for another geometry (geometry.min_size 64 in the cache, 48 here; geometry.max_size"]


def _cache_of_another_dataset(t):
    """A category renamed: the teacher's class channel 3 would stand for another class (a box edited is no other
    dataset: ``test_identity.py``)."""
    root = _copy_data(t.synth_root, t.tmp)
    _edit_annotations(root, lambda doc: doc["categories"][2].update(name="hexagon"))
    return ["distill", "--cache", t.cache, "--set", f"data.root={root}"], \
        [f"was written for another dataset (split 'train': 24 images of {t.synth_root / 'annotations'}",
         (f"in the cache, 24 images of {root / 'annotations' / 'instances_train.json'} here; 5 categories in the "
          "cache, 5 here, the first that differs (in id order) 'triangle' in the cache, 'hexagon' here)")]


def _cache_of_another_label_map(t):
    """The same annotations under another data.label_map: the dataset fingerprint matches, the classes do not (was
    refused only as a head mismatch, 45 channels against 54, naming neither map)."""
    return ["distill", "--cache", t.cache, "--set", "data.label_map=category_id"], \
        [(f"cache '{t.cache}': was written for other classes (its teacher has 5 classes for category ids [1, 2, 3, "
          "4, 5] (data.label_map 'contiguous'), this recipe gives 6 classes for category ids [0, 1, 2, 3, 4, 5] "
          "(data.label_map 'category_id'))"),
         "(set data.label_map as the cache was written, or write a cache for this recipe with frs teacher-cache)"]


def _cache_of_a_newer_format(t):
    return ["distill", "--cache", _copy_cache(t.cache, t.tmp, format_version=4)], \
        ["format version 4 is newer than this frs reads (3)", "upgrade frs"]


def _levels_that_do_not_line_up(t):
    attrs = zarr.open_group(t.cache, mode="r").attrs  # a teacher of levels P3-P6 only, as its cache records it
    four = {"levels": attrs["levels"][:4], "buckets": [{**b, "level_sizes": b["level_sizes"][:4]} for b in attrs["buckets"]]}
    return ["distill", "--cache", _copy_cache(t.cache, t.tmp, **four)], \
        ["student FPN levels", "do not line up with the teacher's"]


def _cache_of_another_teacher_arch(t):
    return ["distill", "--cache", t.cache, "--set", 'teacher.arch="retinanet_tiny_fpn"'], \
        [(f"distill: the cache '{t.cache}' holds a retinanet_small_fpn teacher, the recipe names teacher.arch = "
          "'retinanet_tiny_fpn'"), "set teacher.arch = 'retinanet_small_fpn' (the cache's)"]


def _non_finite_loss(t):
    return ["train", "--role", "student", "--set", "train.lr=1e12", "--no-eval"], \
        ["train: non-finite loss at epoch 1, iteration 1: classification=nan"]


BAD_INPUT = {f.__name__.lstrip("_"): f for f in (
    _missing_dataset, _missing_image_dir, _malformed_json, _annotation_of_a_missing_image, _image_file_missing,
    _image_file_corrupt, _category_ids_far_beyond_the_categories, _checkpoint_of_another_arch, _wrong_type_in_recipe, _not_a_cache, _cache_of_another_geometry,
    _cache_of_another_dataset, _cache_of_another_label_map, _cache_of_a_newer_format, _levels_that_do_not_line_up, _non_finite_loss,
    _cache_of_another_teacher_arch)}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line_and_leaves_nothing_marked_complete(case, recipe_path, synth_root, cache_path,
                                                                        tmp_path):
    t = SimpleNamespace(tmp=tmp_path, synth_root=synth_root, cache=cache_path)
    args, fragments = BAD_INPUT[case](t)
    out = tmp_path / "out"
    result = run(args[0], "--pipeline", recipe_path, "--out", out, "--device", "cpu", *args[1:])
    assert_one_line_error(result, *fragments)
    if args[0] == "teacher-cache" and out.exists():  # a writer that failed halfway leaves state "writing"
        assert zarr.open_group(str(out), mode="r").attrs["state"] != "complete"
    if args[0] != "teacher-cache":  # no model file, no training state from a run that failed
        assert not (out / "model_final.pt").exists() and not (out / "last.pt").exists()


def _val_image_missing(root):
    (root / "val" / "000000000030.jpg").unlink()
    return ["000000000030.jpg', but it does not exist", "1 of the 8 image files of"]


def _val_box_of_negative_width(root):
    path = root / "annotations" / "instances_val.json"
    doc = json.loads(path.read_text())
    doc["annotations"][2]["bbox"][2] = -5.0
    path.write_text(json.dumps(doc))
    ann = doc["annotations"][2]["id"]
    return [f"instances_val.json': annotation {ann}: expected bbox width and height >= 0 in a split that is scored"]


def _val_image_corrupt(root):
    (root / "val" / "000000000027.jpg").write_bytes(b"not a jpeg")
    return ["000000000027.jpg': could not be decoded", "(replace the file with the image, or remove the image from"]


def _val_image_of_another_size(root):
    from PIL import Image

    Image.new("RGB", (48, 64)).save(root / "val" / "000000000027.jpg", format="JPEG")  # 48 wide, annotated 64x64
    return ["000000000027.jpg': annotations say 64x64 (height x width), the file is 64x48"]


def _val_image_of_16_bits(root):
    from PIL import Image

    Image.new("I;16", (64, 64)).save(root / "val" / "000000000027.jpg", format="PNG")  # a 16-bit grey PNG
    return ["000000000027.jpg': expected 8 bits a channel", "convert the images to 8 bits a channel"]


@pytest.mark.parametrize("make", [_val_image_missing, _val_box_of_negative_width, _val_image_corrupt,
                                  _val_image_of_another_size, _val_image_of_16_bits], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("command", ["train", "distill", "eval"])
def test_a_val_split_evaluation_would_refuse_is_refused_before_training(command, make, recipe_path, synth_root,
                                                                         cache_path, teacher_ckpt, tmp_path):
    """What would stop the evaluation after the last epoch (a missing image file, ground truth pycocotools
    scoring refuses, an image file whose header shows it cannot be read or is not of its annotated size) stops the
    run before its first step, in one line, with no run directory; ``eval`` stops before it predicts."""
    root = _copy_data(synth_root, tmp_path)
    fragments = make(root)
    out = tmp_path / "out"
    if command == "eval":
        result = run("eval", "--checkpoint", teacher_ckpt, "--data", root, "--split", "val", "--device", "cpu",
                     "--detections-out", out)
    else:
        args = ["--role", "student"] if command == "train" else ["--cache", cache_path]
        result = run(command, "--pipeline", recipe_path, "--out", out, "--device", "cpu", *args,
                     "--set", f"data.root={root}")
    assert_one_line_error(result, *fragments)
    assert not out.exists() and "epoch 1/1" not in result.stderr and "evaluate" not in result.stderr
    assert "dropped" not in result.stderr  # before: a negative-size box's warning, then its refusal: two lines


def test_zero_and_negative_size_boxes_are_dropped_with_a_warning_not_fatal(recipe_path, synth_root, tmp_path):
    root = _copy_data(synth_root, tmp_path)

    def degenerate(doc):
        doc["annotations"][0]["bbox"][2] = 0.0
        doc["annotations"][1]["bbox"][3] = -3.0
    _edit_annotations(root, degenerate)
    out = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--set",
                 f"data.root={root}", "--set", 'cache.views=["orig"]')
    assert result.exit_code == 0, result.output
    assert "dropped 2 boxes of zero or negative size" in " ".join(result.stderr.split())
    assert TeacherCache(str(out)).attrs["state"] == "complete"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to make writes fail as on a full disk")
def test_disk_full_while_saving_a_checkpoint_is_one_line_and_resume_continues(monkeypatch, recipe_path, tmp_path):
    import torch

    from frs_cli.train.checkpoint import FINAL, LAST

    original, saves = torch.save, []

    def second_save_hits_a_full_disk(obj, f, *args, **kwargs):
        saves.append(f)
        return original(obj, "/dev/full" if len(saves) == 2 else f, *args, **kwargs)

    sets = ["--set", "train.epochs=2", "--set", "train.hflip_prob=0.0", "--no-eval", "--device", "cpu"]
    run("train", "--pipeline", recipe_path, "--role", "student", "--out", tmp_path / "straight", *sets)
    monkeypatch.setattr(torch, "save", second_save_hits_a_full_disk)
    out = tmp_path / "run"
    result = run("train", "--pipeline", recipe_path, "--role", "student", "--out", out, *sets)
    assert_one_line_error(result, f"{out / LAST}: writing failed", "MB free on its disk", "the previous file is kept")
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "metrics.jsonl", "recipe.json"]  # no temp file
    assert torch.load(out / LAST, weights_only=False)["epoch"] == 1  # epoch 1's state, intact
    monkeypatch.setattr(torch, "save", original)
    result = run("train", "--pipeline", recipe_path, "--role", "student", "--out", out, "--resume", *sets)
    assert result.exit_code == 0, result.output
    a = torch.load(tmp_path / "straight" / FINAL, weights_only=True)["model"]
    b = torch.load(out / FINAL, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("make", [_val_image_missing, _val_box_of_negative_width], ids=lambda f: f.__name__[1:])
def test_eval_of_a_model_refuses_such_a_split_before_running_the_model(make, synth_root, teacher_ckpt, tmp_path):
    root = _copy_data(synth_root, tmp_path)
    fragments = make(root)
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", root, "--device", "cpu", "--workers", 0,
                 "--metrics", tmp_path / "m.json")
    assert_one_line_error(result, *fragments)
    assert "evaluate " not in result.stderr and not (tmp_path / "m.json").exists()  # no image went through the model


@pytest.mark.parametrize("broken", ["000000000001.jpg", "000000000024.jpg"])
def test_an_image_that_does_not_decode_leaves_no_cache_unless_views_were_written(broken, recipe_path, synth_root,
                                                                                 tmp_path):
    """Found when the writer reads it: with no view written yet (the first image), the cache this run created is
    removed, so the run after the file is replaced is a plain one (before: a folder of index and teacher head,
    'exists and is incomplete'); with views written (the last image), the cache stays, state writing, and
    --resume completes it once the file is replaced."""
    root = _copy_data(synth_root, tmp_path)
    image = root / "train" / broken
    good = image.read_bytes()
    image.write_bytes(b"not a jpeg")
    out = tmp_path / "c.zarr"
    args = ("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--set", f"data.root={root}",
            "--set", "cache.workers=0")
    assert_one_line_error(run(*args), f"{broken}': could not be decoded")
    image.write_bytes(good)
    if broken.endswith("01.jpg"):
        assert not out.exists()
        result = run(*args)
    else:
        assert zarr.open_group(str(out), mode="r").attrs["state"] == "writing"
        result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"


def test_a_bad_image_in_an_empty_folder_given_as_out_leaves_the_folder_empty(recipe_path, synth_root, tmp_path):
    root = _copy_data(synth_root, tmp_path)
    for image in (root / "train").iterdir():
        image.write_bytes(b"not a jpeg")
    out = tmp_path / "given"
    out.mkdir()
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--set",
                 f"data.root={root}", "--set", "cache.workers=0")
    assert_one_line_error(result, "could not be decoded")
    assert out.is_dir() and not any(out.iterdir())
