"""One cache identity: fingerprints built in frs_cli.cache.identity, and `distill --cache` without the teacher."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
import zarr
from conftest import assert_one_line_error, write_recipe
from typer.testing import CliRunner

from frs_cli.cache import identity
from frs_cli.cache.identity import comparable_teacher, recipe_fingerprints, teacher_fingerprint
from frs_cli.cli.app import app
from frs_cli.data.coco import CocoIndex
from frs_cli.data.geometry import GeometryConfig
from frs_cli.models import ModelConfig, build_detector, model_fingerprint
from frs_cli.models import weights as weights_mod
from frs_cli.models.weights import Published
from frs_cli.train import run as run_mod
from frs_cli.train.checkpoint import LAST

runner = CliRunner()


def _sha16(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]


def _builds(monkeypatch) -> list[str]:
    """Record the arch of every detector the distill job builds."""
    built, real = [], run_mod.build_detector

    def recording(cfg, num_classes, **kwargs):
        built.append(cfg.arch)
        return real(cfg, num_classes, **kwargs)

    monkeypatch.setattr(run_mod, "build_detector", recording)
    return built


def test_torchvision_enum_teacher_is_its_name_and_published_hash_without_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    cfg = ModelConfig(arch="retinanet_resnet50_fpn_v2", weights="RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1")
    assert teacher_fingerprint(cfg) == "torchvision:RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1@5905b1c5"


def test_a_local_copy_of_the_published_file_is_the_same_teacher_as_its_enum(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"published bytes")
    prefix = _sha16(path)[:8]
    name = "RetinaNet_ResNet18_FPN_Weights.COCO_V1"
    monkeypatch.setattr(weights_mod, "published_weights",
                        lambda builder: [Published(name, f"r18-{prefix}.pth", prefix, 91)]
                        if builder == "retinanet_resnet18_fpn" else [])
    assert teacher_fingerprint(ModelConfig(arch="retinanet_resnet18_fpn", weights=str(path))) == \
        f"torchvision:{name}@{prefix}"
    assert teacher_fingerprint(ModelConfig(arch="retinanet_resnet34_fpn", weights=str(path))) == f"file:{_sha16(path)}"


def test_a_checkpoint_teacher_is_its_file_and_a_teacher_without_weights_its_built_state(tmp_path, teacher_ckpt):
    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16, weights=str(teacher_ckpt))
    assert teacher_fingerprint(cfg) == f"file:{_sha16(teacher_ckpt)}"
    altered = tmp_path / "altered.pt"
    altered.write_bytes(teacher_ckpt.read_bytes() + b"\0")
    assert teacher_fingerprint(ModelConfig(arch=cfg.arch, weights=str(altered))) == f"file:{_sha16(altered)}"
    assert _sha16(altered) != _sha16(teacher_ckpt)
    assert teacher_fingerprint(ModelConfig(arch=cfg.arch, weights=str(tmp_path / "gone.pt"))) is None

    random_init = ModelConfig(arch="retinanet_tiny_fpn")
    assert teacher_fingerprint(random_init) is None  # nothing names it without building it
    built = build_detector(random_init, 5)
    assert teacher_fingerprint(random_init, built) == f"state:{model_fingerprint(built)}"


def test_caches_written_before_keep_their_bare_state_fingerprint(teacher_ckpt):
    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16, weights=str(teacher_ckpt))
    teacher = build_detector(cfg, 5)
    legacy = model_fingerprint(teacher)
    assert comparable_teacher(legacy, cfg) == legacy  # the frs checkpoint records it: read, nothing built
    assert comparable_teacher(legacy, ModelConfig(arch=cfg.arch), teacher) == legacy
    enum = ModelConfig(arch="retinanet_resnet50_fpn_v2", weights="RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1")
    assert comparable_teacher(legacy, enum) is None  # would need the download: not compared


def test_recipe_fingerprints_leave_out_a_teacher_that_is_not_at_hand(synth_root, tmp_path):
    index = CocoIndex(synth_root / "annotations" / "instances_train.json")
    geometry = GeometryConfig(64, 64, 32)
    stored = {"teacher": "file:0123456789abcdef"}
    got = recipe_fingerprints(stored, ModelConfig(weights=str(tmp_path / "gone.pt")), index, geometry)
    assert got == {"dataset": identity.dataset_fingerprint(index), "geometry": identity.geometry_fingerprint(geometry)}
    assert len(got["dataset"]) == len("split:") + 16 and len(got["geometry"]) == 16


def test_distill_from_a_cache_after_the_teachers_checkpoint_is_deleted(tmp_path, synth_root, teacher_ckpt,
                                                                       monkeypatch):
    teacher = tmp_path / "teacher.pt"
    shutil.copyfile(teacher_ckpt, teacher)
    recipe = write_recipe(tmp_path / "recipe.toml", synth_root, str(teacher))
    cache = tmp_path / "cache.zarr"
    one_view = ["--set", 'cache.views=["orig"]']  # half the views: the test is about the teacher, not the views
    result = runner.invoke(app, ["teacher-cache", "-p", str(recipe), "--out", str(cache), "--device", "cpu", *one_view])
    assert result.exit_code == 0, result.output
    attrs = zarr.open_group(str(cache), mode="r").attrs
    assert attrs["fingerprints"]["teacher"] == f"file:{_sha16(teacher)}" and attrs["num_views"] == 24
    teacher.unlink()

    built = _builds(monkeypatch)
    out = tmp_path / "student"
    result = runner.invoke(app, ["distill", "-p", str(recipe), "--cache", str(cache), "--out", str(out),
                                 "--device", "cpu", "--no-eval", *one_view])
    assert result.exit_code == 0, result.output
    # allowed, but said: a mistyped teacher.weights would look the same
    assert (f"warning: the recipe's teacher (weights '{teacher}') is not a file here: the cache's own (fingerprint "
            f"file:{attrs['fingerprints']['teacher'][5:]}) is used as recorded") in result.stderr
    assert built == ["retinanet_tiny_fpn"]  # the student, once; never the teacher
    assert (out / "model_final.pt").is_file() and (out / "adapters.pt").is_file()
    saved = torch.load(out / "model_final.pt", map_location="cpu", weights_only=False)
    assert saved["arch"] == "retinanet_tiny_fpn" and saved["num_classes"] == 5


def _cache_copy(cache_path, tmp_path, **attrs) -> str:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cache_path, copy)
    root = zarr.open_group(str(copy), mode="r+")
    for key, edit in attrs.items():  # key "": the edit returns several attributes
        root.attrs.update(edit(dict(root.attrs)) if key == "" else {key: edit(dict(root.attrs))})
    return str(copy)


def _other_strides(attrs):
    return [{**lv, "stride": 2 * lv["stride"]} for lv in attrs["levels"]]


def _other_head(attrs):
    return {**attrs["teacher"], "head_spec": {**attrs["teacher"]["head_spec"], "cls_channels": 27}}


def _four_levels(attrs):
    """The attributes of a teacher with levels P3-P6 only, as its cache records them (arrays of P7 are left, unread):
    a cache consistent with its arrays, of levels the student's do not match."""
    return {"levels": attrs["levels"][:4],
            "buckets": [{**b, "level_sizes": b["level_sizes"][:4]} for b in attrs["buckets"]]}


INCOMPATIBLE = {
    "family_and_levels": ({}, ["student.arch=fasterrcnn_tiny_fpn"],
                          "the teacher is a retinanet detector, the student a faster_rcnn"),
    "levels": ({"": _four_levels}, [],
               "do not line up with the teacher's [('P3', 8), ('P4', 16), ('P5', 32), ('P6', 64)]"),
    # class channels and strides edited alone contradict the cache's own anchors and classes, and its arrays' grids:
    # refused as the damage they are (the student-side messages:
    # tests/test_train.py::test_student_and_teacher_levels_that_do_not_line_up_fail_before_training)
    "class_channels": ({"teacher": _other_head}, [],
                       ("its attributes do not match its arrays (teacher.head_spec.cls_channels 27 against 45 (9 "
                        "anchors x 5 classes")),
    "strides": ({"levels": _other_strides}, [], "its attributes do not match its arrays (bucket 64x64 P3: level_sizes"),
}


@pytest.mark.parametrize("case", list(INCOMPATIBLE))
def test_a_student_the_cache_does_not_fit_is_refused_before_anything_is_built(case, cache_path, synth_root, tmp_path,
                                                                             monkeypatch):
    attrs, sets, message = INCOMPATIBLE[case]
    cache = _cache_copy(cache_path, tmp_path, **attrs)
    recipe = write_recipe(tmp_path / "recipe.toml", synth_root, str(tmp_path / "no_teacher_here.pt"))
    built = _builds(monkeypatch)
    out = tmp_path / "student"
    args = ["distill", "-p", str(recipe), "--cache", cache, "--out", str(out), "--device", "cpu", "--no-eval"]
    result = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert_one_line_error(result, message)
    assert built == []  # neither teacher nor student
    assert not (out / "model_final.pt").exists() and not (out / "last.pt").exists()


def _store_files(path) -> dict:
    """Every file of a store by relative path: its bytes' SHA-256 and mtime."""
    from pathlib import Path

    return {str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in sorted(Path(path).rglob("*")) if f.is_file()}


def _one_image_saved_again(synth_root, cache_path, tmp_path):
    """A copy of the set whose first train image is saved again (another JPEG quality, the same width and height),
    and a copy of the cache: ``(data root, that image, its size before, cache)``."""
    import json

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    first = min(json.loads((root / "annotations" / "instances_train.json").read_text())["images"],
                key=lambda im: im["id"])
    image = root / "train" / first["file_name"]
    size = image.stat().st_size
    Image.open(image).convert("RGB").save(image, format="JPEG", quality=40)
    assert image.stat().st_size != size and Image.open(image).size == (first["width"], first["height"])
    cache = tmp_path / "c.zarr"
    shutil.copytree(cache_path, cache)
    return root, image, size, cache


@pytest.mark.parametrize("command", ["distill", "eval", "visualize", "teacher-cache --resume"])
def test_an_image_file_changed_since_the_cache_was_written_is_refused_in_one_line(command, cache_path, synth_root,
                                                                                   teacher_ckpt, tmp_path):
    """A train image saved again, as a curated dataset's files are: the annotations, and so the dataset
    fingerprint, are unchanged. Before, every command used the cache, its targets the teacher's on the old pixels,
    with no word; now each refuses in one line naming the file, the cache untouched."""
    root, image, size, cache = _one_image_saved_again(synth_root, cache_path, tmp_path)
    before = _store_files(cache)
    recipe = write_recipe(tmp_path / "r.toml", root, str(teacher_ckpt))
    out = tmp_path / ("m.png" if command == "visualize" else "out")
    args = {"distill": ["distill", "-p", str(recipe), "--cache", str(cache), "--out", str(out), "--no-eval"],
            "eval": ["eval", "--cache", str(cache), "--data", str(root)],
            "visualize": ["visualize", "--cache", str(cache), "--level", "P3", "--data", str(root), "--out",
                          str(out)],
            "teacher-cache --resume": ["teacher-cache", "-p", str(recipe), "--out", str(cache), "--resume"]}[command]
    result = runner.invoke(app, [*args, "--device", "cpu"] if command != "visualize" else args)
    line = assert_one_line_error(result, f"cache '{cache}': was written from other image files than "
                                         f"'{root / 'train'}' holds now (1 of 24 files changed size, the first "
                                         f"'{image}': {size} bytes then, {image.stat().st_size} now), so its targets "
                                         "are not the teacher's")
    assert "restore the image files the cache was written from" in result.stderr, line
    assert not out.exists() and _store_files(cache) == before


def test_a_cache_of_an_older_frs_records_no_image_files_and_is_read_as_before(cache_path, synth_root, tmp_path):
    """A cache written before ``dataset.image_files`` was recorded is not checked: read, its images as they are."""
    root, _, _, cache = _one_image_saved_again(synth_root, cache_path, tmp_path)
    group = zarr.open_group(str(cache), mode="r+")
    group.attrs["dataset"] = {k: v for k, v in group.attrs["dataset"].items() if k != "image_files"}
    result = runner.invoke(app, ["eval", "--cache", str(cache), "--data", str(root)])
    assert result.exit_code == 0, result.output
    assert "image files" not in result.stderr


def test_a_cache_without_the_files_sizes_names_their_totals(cache_path, synth_root, tmp_path):
    """A cache whose ``index/file_bytes`` is gone (an export or a copy that left it out) still refuses changed
    files, by the totals its attributes record."""
    from frs_cli.cache.schema import FILE_BYTES

    root, _, _, cache = _one_image_saved_again(synth_root, cache_path, tmp_path)
    shutil.rmtree(cache / FILE_BYTES)
    record = zarr.open_group(str(cache), mode="r").attrs["dataset"]["image_files"]
    now = sum(p.stat().st_size for p in (root / "train").iterdir())
    result = runner.invoke(app, ["eval", "--cache", str(cache), "--data", str(root)])
    assert_one_line_error(result, f"(the files' sizes differ: 24 files of {record['bytes']} bytes then, 24 of {now} "
                                  "now)")


def test_stored_sizes_that_agree_with_the_files_leave_the_totals_named(cache_path, synth_root, tmp_path):
    """When the record's digest differs but ``index/file_bytes`` names no file that changed (the array written again
    from the files as they are now), the line names the record's totals, never "0 of 24 files changed"."""
    from frs_cli.cache.schema import FILE_BYTES

    root, _, _, cache = _one_image_saved_again(synth_root, cache_path, tmp_path)
    group = zarr.open_group(str(cache), mode="r+")
    record = group.attrs["dataset"]["image_files"]
    records = CocoIndex(root / "annotations" / "instances_train.json").records  # the split's image order
    group[FILE_BYTES][...] = [(root / "train" / r.file_name).stat().st_size for r in records]
    now = sum(p.stat().st_size for p in (root / "train").iterdir())
    result = runner.invoke(app, ["eval", "--cache", str(cache), "--data", str(root)])
    line = assert_one_line_error(result, f"(the files' sizes differ: 24 files of {record['bytes']} bytes then, 24 of "
                                         f"{now} now)")
    assert "changed size" not in line


def test_the_image_files_are_statted_once_for_check_files_and_the_record(synth_root, monkeypatch):
    """``check_files`` (which every command runs on its split) and the cache's image-files record share one stat of
    each file: on a network file system a stat waits on its server, and COCO train is 118,287 files."""
    from pathlib import Path

    from frs_cli.data.coco import CocoIndex, CocoViews
    from frs_cli.data.geometry import GeometryConfig

    calls, stat = [], Path.stat

    def counted(path, *args, **kwargs):
        if path.parent == synth_root / "train":
            calls.append(path)
        return stat(path, *args, **kwargs)
    monkeypatch.setattr(Path, "stat", counted)
    views = CocoViews(CocoIndex(synth_root / "annotations" / "instances_train.json"), synth_root / "train",
                      GeometryConfig(min_size=64, max_size=64))
    views.check_files()
    record = identity.image_files_record(views)
    assert sorted(calls) == sorted(synth_root / "train" / r.file_name for r in views.index.records)
    assert record["files"] == 24 and record["bytes"] == sum(p.stat().st_size for p in (synth_root / "train").iterdir())


def _annotations_rewritten(synth_root, tmp_path, edit, name="data", **dump) -> tuple:
    """A copy of the set whose train annotations are edited by ``edit`` and written with ``json.dumps(**dump)``:
    ``(data root, its CocoIndex)``."""
    import json

    root = tmp_path / name
    shutil.copytree(synth_root, root)
    path = root / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, **dump))
    return root, CocoIndex(path)


def _box_corrected(doc):
    doc["annotations"][0]["bbox"] = [1.0, 1.0, 20.0, 20.0]


def _keys_reversed(doc):
    doc["images"] = [dict(reversed(im.items())) for im in doc["images"]]
    doc["info"] = {"description": "written again by another tool"}


@pytest.mark.parametrize("edit, same", [
    (_box_corrected, True),
    (_keys_reversed, True),
    (lambda doc: doc["categories"][2].update(name="hexagon"), False),
    (lambda doc: doc["images"][3].update(height=doc["images"][3]["height"] + 1), False),
    (lambda doc: doc["images"][0].update(file_name=doc["images"][1]["file_name"]), False),
    (lambda doc: doc.update(images=doc["images"][1:], annotations=[a for a in doc["annotations"]
                                                                   if a["image_id"] != doc["images"][0]["id"]]), False),
], ids=["box_corrected", "reserialised", "category_renamed", "image_height", "file_name", "image_removed"])
def test_the_dataset_fingerprint_is_the_images_and_categories_not_the_files_bytes(edit, same, synth_root, tmp_path):
    """What a cache's targets take from the annotation file: each image's id, file name and size and the categories.
    A corrected box, or the file written again (indented, keys in another order, a field added) is the same dataset;
    the older fingerprint (the file's bytes) changed with any of them."""
    before = CocoIndex(synth_root / "annotations" / "instances_train.json")
    _, after = _annotations_rewritten(synth_root, tmp_path, edit, indent=2)
    ours = identity.dataset_fingerprint(before)
    assert ours.startswith("split:") and len(ours) == len("split:") + 16
    assert (identity.dataset_fingerprint(after) == ours) is same
    assert identity.file_fingerprint(after) != identity.file_fingerprint(before)  # the bytes changed every time


@pytest.mark.parametrize("command", ["distill", "eval", "visualize"])
def test_a_corrected_box_or_a_file_written_again_keeps_the_cache(command, cache_path, synth_root, teacher_ckpt,
                                                                 tmp_path):
    """Before, any byte of the annotation file changed made a cache "another dataset": a box corrected, or the file
    indented by another tool, meant teacher-cache again (hours at COCO scale) though the teacher never reads boxes.
    Now each reader of the cache takes it; the student and the mask statistics read the corrected boxes."""
    root, _ = _annotations_rewritten(synth_root, tmp_path, lambda doc: (_box_corrected(doc), _keys_reversed(doc)),
                                     indent=1)
    recipe = write_recipe(tmp_path / "r.toml", root, str(teacher_ckpt))
    out = tmp_path / ("m.png" if command == "visualize" else "out")
    args = {"distill": ["distill", "-p", str(recipe), "--cache", str(cache_path), "--out", str(out), "--no-eval",
                        "--device", "cpu"],
            "eval": ["eval", "--cache", str(cache_path), "--data", str(root), "--device", "cpu"],
            "visualize": ["visualize", "--cache", str(cache_path), "--level", "P3", "--data", str(root), "--out",
                          str(out)]}[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "another dataset" not in result.output
    if command == "distill":
        assert (out / "model_final.pt").is_file()
    elif command == "visualize":
        assert out.is_file()


def test_a_distill_from_a_cache_resumed_after_a_box_is_corrected_says_so_and_goes_on(cache_path, synth_root,
                                                                                  teacher_ckpt, tmp_path):
    """The cache is still the teacher's on these images, so the resume is not refused; the run's own record of
    its annotations tells the change once, as a ``train`` resume does, and the run finishes its next epoch."""
    import json

    root, _ = _annotations_rewritten(synth_root, tmp_path, lambda doc: None)
    recipe, out = write_recipe(tmp_path / "r.toml", root, str(teacher_ckpt)), tmp_path / "run"
    args = ["distill", "-p", str(recipe), "--cache", str(cache_path), "--out", str(out), "--no-eval", "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    ann = root / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    _box_corrected(doc)
    ann.write_text(json.dumps(doc))
    result = runner.invoke(app, [*args, "--resume", "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert said.count(f"--resume: the training split's annotation file {ann} is not the one the run started with") == 1
    assert "another dataset" not in said
    assert torch.load(out / LAST, weights_only=True)["epoch"] == 2


def test_a_cache_of_the_older_fingerprint_is_still_compared_by_the_files_bytes(cache_path, synth_root, teacher_ckpt,
                                                                               tmp_path):
    """A cache written before 2026-12-07 holds the annotation file's bytes as its dataset fingerprint (16 hex, no
    prefix): it is compared in that scheme, so its own file is its dataset and a file with a box corrected is not,
    by the readers of the cache and by a resumed teacher-cache alike."""
    cache = _cache_copy(cache_path, tmp_path, fingerprints=lambda a: {
        **a["fingerprints"], "dataset": identity.file_fingerprint(CocoIndex(synth_root / "annotations" /
                                                                              "instances_train.json"))})
    result = runner.invoke(app, ["eval", "--cache", cache, "--data", str(synth_root), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    resume = ["teacher-cache", "--out", cache, "--resume", "--device", "cpu", "-p"]
    result = runner.invoke(app, [*resume, str(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))])
    assert result.exit_code == 0, result.output
    root, _ = _annotations_rewritten(synth_root, tmp_path, _box_corrected)
    result = runner.invoke(app, ["eval", "--cache", cache, "--data", str(root), "--device", "cpu"])
    assert_one_line_error(result, f"cache '{cache}': was written for another dataset (cache ")
    result = runner.invoke(app, [*resume, str(write_recipe(tmp_path / "edited.toml", root, str(teacher_ckpt)))])
    assert_one_line_error(result, f"cache '{cache}': was written for another dataset (split 'train': 24 images of "
                                  f"{synth_root / 'annotations' / 'instances_train.json'} in the cache, 24 images of "
                                  f"{root / 'annotations' / 'instances_train.json'} here)")
