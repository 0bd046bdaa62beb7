"""Multi-scale training (the paper's FCOS: short side 640 or 800 per image): views at other short sides, the cache
that holds them, and the runs that train on them. Here at the tiny scale: short side 32 or 64."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import zarr
from conftest import assert_one_line_error, write_recipe
from PIL import Image
from typer.testing import CliRunner

from frs_cli.cache.export import export_hdf5
from frs_cli.cache.reader import CachedViews, TeacherCache
from frs_cli.cache.schema import FORMAT_VERSION, view_name
from frs_cli.cache.verify import verify_cache
from frs_cli.cache.writer import write_teacher_cache
from frs_cli.cli.app import app
from frs_cli.config import load_recipe
from frs_cli.data.coco import CocoViews, collate
from frs_cli.dist import setup
from frs_cli.errors import CacheMismatchError
from frs_cli.losses import frs_masks
from frs_cli.models import build_detector
from frs_cli.models.fold import fold_batchnorm

FOUR = ["orig", "hflip", "orig@32", "hflip@32"]
TWO_SCALES = ["train.min_sizes=[32, 64]", f"cache.views={FOUR}".replace("'", '"')]


@pytest.fixture(scope="module")
def scales(tmp_path_factory, synth_root, teacher_ckpt):
    """(recipe, cache path): the tiny teacher cached over the train split at short sides 64 and 32, both flips."""
    d = tmp_path_factory.mktemp("scales")
    recipe = load_recipe(write_recipe(d / "recipe.toml", synth_root, str(teacher_ckpt)), TWO_SCALES)
    path = str(d / "cache.zarr")
    write_teacher_cache(recipe, path, ctx=setup("cpu"))
    return recipe, path


def test_a_cache_of_two_scales_holds_every_view_as_the_teacher_sees_it(scales, tmp_path):
    recipe, path = scales
    root = zarr.open_group(path, mode="r")
    a = dict(root.attrs)
    # version 3: an older frs knows view codes 0 and 1 only, and refuses the cache in one line
    assert a["format_version"] == 3 == FORMAT_VERSION and a["state"] == "complete"
    assert a["views"] == FOUR and a["num_views"] == 96
    assert [b["name"] for b in a["buckets"]] == ["32x32", "64x64"]
    ids, codes = root["index/image_id"][...], root["index/view"][...]
    # orig 0, hflip 1 (as in every cache); a view at another short side: 2 + its place in the views attribute
    assert sorted(zip(ids.tolist(), codes.tolist())) == sorted((i, c) for i in range(1, 25) for c in (0, 1, 4, 5))
    assert [view_name(c, FOUR) for c in range(6)] == ["orig", "hflip", "view code 2", "view code 3", "orig@32",
                                                     "hflip@32"]  # 2 and 3 are the plain views' places: never stored
    reordered = dataclasses.replace(recipe, cache=dataclasses.replace(recipe.cache, views=tuple(FOUR[::-1])))
    with pytest.raises(CacheMismatchError, match=r"this recipe asks for \['hflip@32', 'orig@32', 'hflip', 'orig'\] "
                                                 r"\(the same views in another order: list them in the cache's order\)"):
        write_teacher_cache(reordered, path, resume=True, ctx=setup("cpu"))
    cache = TeacherCache(path)
    ds = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    teacher = build_detector(recipe.teacher, 5).eval()
    fold_batchnorm(teacher)  # as teacher-cache runs it
    keys = [(3, v) for v in FOUR]
    batches = {}
    for size in (32, 64):  # one forward per canvas, as the writer's batches are
        mine = [k for k in keys if ds.geometry_of(*k).padded_h == size]
        with torch.no_grad():
            out = teacher(collate([ds[k] for k in mine]).images, [ds.geometry_of(*k).valid_size for k in mine],
                          detect=False)
        batches.update({k: (out, j) for j, k in enumerate(mine)})
    for key in keys:
        k = cache.find(4, key[1])  # position 3 is image id 4
        geom = cache.view_geometry(k)
        assert cache.view_name(k) == key[1] and geom == ds.geometry_of(*key)
        assert geom.resized_h == (32 if key[1].endswith("@32") else 64) and geom.hflip == key[1].startswith("hflip")
        out, j = batches[key]
        got = cache.read(k)
        for f_ref, f, m_ref, m in zip(out.features, got.features, frs_masks(out.cls_logits), got.masks):
            assert f.shape == f_ref.shape[1:]
            torch.testing.assert_close(f.float(), f_ref[j].half().float(), rtol=0, atol=0)
            torch.testing.assert_close(m.float(), m_ref[j].half().float(), rtol=0, atol=0)
    assert verify_cache(path).ok
    # the HDF5 export keeps the views' names and codes: the scaled view reads back from it
    h5 = tmp_path / "cache.h5"
    export_hdf5(path, h5)
    exported = TeacherCache(str(h5))
    k = exported.find(4, "hflip@32")
    assert exported.view_name(k) == "hflip@32"
    np.testing.assert_array_equal(exported.read(k).masks[0].numpy(), cache.read(cache.find(4, "hflip@32")).masks[0])
    with pytest.raises(Exception, match="holds no view 'orig@48' of image 4"):
        cache.find(4, "orig@48")


def test_every_run_trains_on_the_recipes_scales_and_distill_reads_each_cached_one(scales, tmp_path, monkeypatch):
    """``train``, ``distill --online`` and ``distill --cache`` hand the trainer the views of both short sides; a
    distillation from the two-scale cache reads views of each scale and finishes."""
    from frs_cli.train import run

    recipe, path = scales
    asked = []
    real_fit = run.fit
    monkeypatch.setattr(run, "fit", lambda *a, **kw: asked.append(kw["views"]))
    run.train_detector(recipe, "student", tmp_path / "t", evaluate=False)
    run.distill_student(recipe, tmp_path / "o", online=True, evaluate=False)
    run.distill_student(recipe, tmp_path / "c", cache=path, evaluate=False)
    assert asked == [("orig@32", "hflip@32", "orig", "hflip")] * 3  # the cached run in the online order

    monkeypatch.setattr(run, "fit", real_fit)
    seen = []
    real_get = CachedViews.__getitem__
    monkeypatch.setattr(CachedViews, "__getitem__", lambda self, key: seen.append(key[1]) or real_get(self, key))
    summary = run.distill_student(recipe, tmp_path / "run", cache=path, evaluate=False)
    assert (tmp_path / "run" / "model_final.pt").is_file() and summary.fit.iterations == 6
    assert len(seen) == 24 and set(seen) <= set(FOUR)
    assert {"orig@32", "hflip@32"} & set(seen) and {"orig", "hflip"} & set(seen)


def test_visualize_and_info_name_a_view_at_another_short_side(scales, tmp_path):
    """``frs visualize --view hflip@32`` draws that view (its own pixels: another picture than ``hflip``'s); a view
    the cache does not hold is one line naming it."""
    _, path = scales
    runner = CliRunner()
    pictures = {}
    for view in ("hflip", "hflip@32"):
        out = tmp_path / f"{view}.png"
        result = runner.invoke(app, ["visualize", "--cache", path, "--view", view, "--image-id", "4", "--out", str(out)])
        assert result.exit_code == 0, result.output
        pictures[view] = np.asarray(Image.open(out).convert("RGB"))
    assert pictures["hflip"].shape != pictures["hflip@32"].shape or (pictures["hflip"] != pictures["hflip@32"]).any()
    result = runner.invoke(app, ["visualize", "--cache", path, "--view", "orig@48", "--out", str(tmp_path / "x.png")])
    assert_one_line_error(result, "holds no view 'orig@48' of image 1")
    assert not (tmp_path / "x.png").exists()
    result = runner.invoke(app, ["cache", "info", path])
    assert result.exit_code == 0 and "orig@32" in result.output, result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_two_scale_cache_written_on_the_gpu_matches_the_cpu_one_view_by_view_and_distills(scales, tmp_path):
    """On a GPU the loader only decodes and the device resizes each file once per short side (``resize_batch``):
    every view of the GPU cache has the CPU cache's geometry and its features within bf16; distillation from it,
    with the step replayed as CUDA graphs per canvas of both scales, runs its whole epoch."""
    from frs_cli.train.run import distill_student

    recipe, path = scales
    gpu_path = str(tmp_path / "gpu.zarr")
    write_teacher_cache(recipe, gpu_path, ctx=setup("cuda"))
    gpu, cpu = TeacherCache(gpu_path), TeacherCache(path)
    assert gpu.views == FOUR and gpu.fingerprints == cpu.fingerprints
    for image_id in (1, 7, 24):
        for view in FOUR:
            i, j = gpu.find(image_id, view), cpu.find(image_id, view)
            assert gpu.view_geometry(i) == cpu.view_geometry(j)
            for fa, fb in zip(gpu.read(i).features, cpu.read(j).features):
                rel = (fa.float() - fb.float()).norm() / fb.float().norm()
                assert rel < 3e-2, (image_id, view, rel)  # bf16 autocast in the teacher vs fp32
    summary = distill_student(recipe, tmp_path / "run", cache=gpu_path, evaluate=False, ctx=setup("cuda"))
    assert summary.fit.iterations == 6 and (tmp_path / "run" / "model_final.pt").is_file()


def test_commands_refuse_views_the_student_does_not_train_on_and_a_resume_refuses_new_scales(scales, tmp_path):
    """teacher-cache and distill --cache refuse, in one line and before writing anything, a recipe whose cache views
    are not the student's training views (here: scales 32 and 64, views at 64 only); a run resumed with scales it did
    not start with is refused, also when its recipe.json predates ``min_sizes`` (it trained at one scale); every
    spelling of a view finds it."""
    import json

    from frs_cli.errors import ConfigError
    from frs_cli.train.run import train_detector

    recipe, path = scales
    recipe_file = write_recipe(tmp_path / "r.toml", recipe.data.root, recipe.teacher.weights)
    runner = CliRunner()
    wanted = "expected orig and hflip at each of the student's training short sides [32, 64]"
    for args, out in ((["teacher-cache", "--out", str(tmp_path / "c.zarr")], tmp_path / "c.zarr"),
                      (["distill", "--cache", path, "--out", str(tmp_path / "d")], tmp_path / "d")):
        result = runner.invoke(app, [*args, "-p", str(recipe_file), "--set", "train.min_sizes=[32, 64]",
                                     "--device", "cpu"])
        assert_one_line_error(result, wanted, "set cache.views = ['orig', 'hflip', 'orig@32', 'hflip@32']")
        assert not out.exists()

    one_scale = load_recipe(recipe_file)
    train_detector(one_scale, "student", tmp_path / "run", evaluate=False, ctx=setup("cpu"))
    recorded = json.loads((tmp_path / "run" / "recipe.json").read_text())
    del recorded["train"]["min_sizes"]  # as an frs before multi-scale wrote it
    (tmp_path / "run" / "recipe.json").write_text(json.dumps(recorded))
    more = load_recipe(recipe_file, ["train.epochs=2", *TWO_SCALES])
    with pytest.raises(ConfigError, match=r"train\.min_sizes = \[\], now \[32, 64\]"):
        train_detector(more, "student", tmp_path / "run", resume=True, evaluate=False, ctx=setup("cpu"))
    summary = train_detector(load_recipe(recipe_file, ["train.epochs=2"]), "student", tmp_path / "run", resume=True,
                             evaluate=False, ctx=setup("cpu"))
    assert summary.fit.epochs == 2

    cache = TeacherCache(path)
    assert cache.find(4, "orig@64") == cache.find(4, "orig") and cache.find(4, "hflip@32") != cache.find(4, "hflip")
    with pytest.raises(ConfigError, match="view: expected orig or hflip"):
        cache.find(4, "hflip@032")


def test_a_cache_without_the_plain_views_is_drawn_in_its_first_view(tmp_path, synth_root, teacher_ckpt):
    """A student trained at short side 32 alone (geometry.min_size 64 for evaluation) caches ``orig@32`` and
    ``hflip@32``: ``frs visualize`` without ``--view`` and distill's TensorBoard mask picture draw its first view."""
    recipe_file = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    only32 = ["--set", "train.min_sizes=[32]", "--set", 'cache.views=["orig@32", "hflip@32"]']
    runner = CliRunner()
    path = tmp_path / "c.zarr"
    result = runner.invoke(app, ["teacher-cache", "-p", str(recipe_file), "--out", str(path), "--device", "cpu", *only32])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["visualize", "--cache", str(path), "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output
    from frs_cli.viz.cache_view import render_cached_view

    cache = TeacherCache(str(path))
    drawn = render_cached_view(cache, cache.dataset(), view="orig@32", level="all")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png").convert("RGB")),
                                  np.asarray(drawn.convert("RGB")))
    result = runner.invoke(app, ["distill", "-p", str(recipe_file), "--cache", str(path), "--out", str(tmp_path / "d"),
                                 "--device", "cpu", "--no-eval", "--set", "train.tensorboard=true", *only32])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "d" / "tensorboard").glob("events.*"))
