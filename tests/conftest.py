"""Shared fixtures: a tiny generated dataset, recipes for the tiny CPU models, a teacher checkpoint, a cache.

Everything is generated here; no test downloads anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist (``-n N``) each worker takes its share of this machine's cores for torch's threads, and
    the processes its tests start (the CLI, torchrun) inherit it; N workers of all the cores' threads each would
    oversubscribe them (OpenMP threads spin). The share replaces any OMP_NUM_THREADS set before; without xdist
    nothing changes."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_share_the_cores_among_workers()

TINY_RECIPE = """
name = "tiny"
[data]
root = {root}
[geometry]
min_size = 64
max_size = {max_size}
size_divisible = 32
[teacher]
arch = {teacher_arch}
anchor_size = {anchor_size}
weights = {weights}
[student]
arch = {student_arch}
anchor_size = {anchor_size}
[teacher_train]
epochs = 1
batch_size = 4
lr = 0.01
warmup_iters = 5
lr_steps = [1]
workers = 0
[train]
epochs = 1
batch_size = 4
lr = 0.01
warmup_iters = 5
lr_steps = [1]
workers = 0
log_every = 1
[distill]
warmup_iters = 5
[cache]
views = ["orig", "hflip"]
batch_size = 4
workers = 0
write_processes = 0
"""


def assert_one_line_error(result, *fragments) -> str:
    """Exit code 1, exactly one ``error:`` line on stderr, last (a progress bar may precede it), holding every
    fragment; no traceback. Returns the line."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def cache_arrays(path) -> dict:
    """Every array of a Zarr cache, read whole, by its path in the group (``buckets/64x64/P3/features``, ...)."""
    from frs_cli.cache.backend import ZarrBackend

    return {name: arr[...] for name, arr in ZarrBackend(str(path)).walk()}


def assert_same_cache_arrays(got_path, ref_path) -> None:
    """Both caches hold the same arrays, bit for bit."""
    import numpy as np

    ref, got = cache_arrays(ref_path), cache_arrays(got_path)
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def first_batch_features(recipe) -> list:
    """The recipe teacher's fp32 features for the tiny train split's first plan batch (images 0 and 1, both
    views), its batch norms folded as teacher-cache runs it: what a cache's first four rows hold before encoding."""
    from frs_cli.data.coco import CocoViews, collate
    from frs_cli.models import build_detector
    from frs_cli.models.fold import fold_batchnorm

    ds = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    teacher = build_detector(recipe.teacher, ds.index.num_classes).eval()
    fold_batchnorm(teacher)
    batch = collate([ds[(0, "orig")], ds[(0, "hflip")], ds[(1, "orig")], ds[(1, "hflip")]])
    with torch.no_grad():
        return teacher(batch.images, batch.image_sizes, detect=False).features


def write_recipe(path: Path, root: Path, weights: str = "", max_size: int = 64, extra: str = "",
                 family: str = "retinanet") -> Path:
    """The tiny recipe: a small teacher and a tiny student of ``family`` (a key of ``FAMILY_ARCHS``)."""
    teacher, student, anchor_size = FAMILY_ARCHS[family]
    path.write_text(TINY_RECIPE.format(root=json.dumps(str(root)), weights=json.dumps(weights), max_size=max_size,
                                       teacher_arch=json.dumps(teacher), student_arch=json.dumps(student),
                                       anchor_size=anchor_size) + extra)
    return path


# family -> (small teacher, tiny student, anchor size at the finest level for 64 px images; 0: the family's)
FAMILY_ARCHS = {
    "retinanet": ("retinanet_small_fpn", "retinanet_tiny_fpn", 16),
    "fcos": ("fcos_small_fpn", "fcos_tiny_fpn", 0),
    "faster_rcnn": ("fasterrcnn_small_fpn", "fasterrcnn_tiny_fpn", 16),
    "gfl": ("gfl_small_fpn", "gfl_tiny_fpn", 32),
}


def save_random_model(path: Path, arch: str, root: Path, anchor_size: int = 0, seed: int = 0) -> Path:
    """A seeded, randomly initialised model of ``arch`` for the dataset at ``root``, saved as an frs model file."""
    from frs_cli.data.coco import CocoIndex
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, anchor_size=anchor_size)
    index = CocoIndex(root / "annotations" / "instances_train.json")
    model = build_detector(cfg, index.num_classes)
    save_model(path, model, cfg, index, GeometryConfig(64, 64, 32))
    return path


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """24 train / 8 val images of 64x64 px."""
    from frs_cli.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, SynthConfig(train=24, val=8, size=64, seed=0, min_object=12, max_objects=3))
    return root


@pytest.fixture(scope="session")
def jitter_root(tmp_path_factory) -> Path:
    """Images of three sizes (64x64, 64x48, 48x64): several cache buckets."""
    from frs_cli.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("jitter") / "data"
    generate(root, SynthConfig(train=12, val=4, size=64, seed=1, min_object=12, max_objects=3, aspect_jitter=True))
    return root


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory, synth_root) -> Path:
    """A randomly initialised small teacher saved as an frs model file (seeded, so always the same)."""
    from frs_cli.data.coco import CocoIndex
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16)
    index = CocoIndex(synth_root / "annotations" / "instances_train.json")
    teacher = build_detector(cfg, index.num_classes)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model(path, teacher, cfg, index, GeometryConfig(64, 64, 32))
    return path


@pytest.fixture
def recipe_path(tmp_path, synth_root, teacher_ckpt) -> Path:
    return write_recipe(tmp_path / "recipe.toml", synth_root, str(teacher_ckpt))


@pytest.fixture
def recipe(recipe_path):
    from frs_cli.config import load_recipe

    return load_recipe(recipe_path)


@pytest.fixture(scope="session")
def cache_path(tmp_path_factory, synth_root, teacher_ckpt) -> str:
    """A complete cache of the tiny teacher over the train split, both views."""
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.dist import setup

    d = tmp_path_factory.mktemp("cache")
    r = load_recipe(write_recipe(d / "recipe.toml", synth_root, str(teacher_ckpt)))
    path = str(d / "cache.zarr")
    write_teacher_cache(r, path, ctx=setup("cpu"))
    return path


@pytest.fixture(scope="session")
def family_cache(tmp_path_factory, synth_root):
    """``family -> (recipe path, cache path)``: a seeded random small teacher of that family cached over the
    tiny train split (both views), written on first use."""
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.dist import setup

    made = {}

    def get(family: str):
        if family not in made:
            d = tmp_path_factory.mktemp(f"cache_{family}")
            teacher, _, anchor_size = FAMILY_ARCHS[family]
            ckpt = save_random_model(d / "teacher.pt", teacher, synth_root, anchor_size)
            recipe = write_recipe(d / "recipe.toml", synth_root, str(ckpt), family=family)
            write_teacher_cache(load_recipe(recipe), str(d / "cache.zarr"), ctx=setup("cpu"))
            made[family] = (recipe, str(d / "cache.zarr"))
        return made[family]

    return get


# Three canvases in both orientations: 96 px images of 96x96, 96x72 and 72x96 resized to a 64 px short side
# (at most 128) and padded to 32 give 64x64, 96x64 and 64x96 canvases (the bucket names of the cache).
MIXED_GEOMETRY = "\n[geometry]\nmin_size = 64\nmax_size = 128\nsize_divisible = 32\n"


@pytest.fixture(scope="session")
def mixed_cache(tmp_path_factory):
    """``family -> (recipe, cache path, batch keys)``: a seeded random small teacher of that family cached (on the
    CPU) over a split of three canvases, both views; the keys name one batch that holds all three, orig and hflip."""
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.data.synth import SynthConfig, generate
    from frs_cli.dist import setup

    root = tmp_path_factory.mktemp("mixed") / "data"
    generate(root, SynthConfig(train=12, val=2, size=96, seed=5, min_object=12, max_objects=3, aspect_jitter=True))
    made = {}

    def get(family: str):
        if family not in made:
            d = tmp_path_factory.mktemp(f"mixed_{family}")
            teacher, _, anchor_size = FAMILY_ARCHS[family]
            ckpt = save_random_model(d / "teacher.pt", teacher, root, anchor_size, seed=3)
            path = write_recipe(d / "recipe.toml", root, str(ckpt), family=family)
            text = path.read_text()
            start = text.index("[geometry]")
            path.write_text(text[:start] + MIXED_GEOMETRY.lstrip() + text[text.index("[teacher]"):])
            recipe = load_recipe(path)
            write_teacher_cache(recipe, str(d / "cache.zarr"), ctx=setup("cpu"))
            from frs_cli.data.coco import CocoViews

            coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
            keys, seen = [], set()
            for pos in range(len(coco)):
                for view in ("orig", "hflip"):
                    size = coco.geometry_of(pos, view).padded_size
                    if (size, view) not in seen:
                        seen.add((size, view))
                        keys.append((pos, view))
            made[family] = (recipe, str(d / "cache.zarr"), keys)
        return made[family]

    return get


BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str):
    """A script of bench/ as a module (bench/ is no package; its scripts import each other by name)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def one_canvas_batches(recipe, cache, per_batch: int = 2, device: str | None = None):
    """``(batches, mixed)`` of a cache over a split of several canvases (``mixed_cache``): per canvas one batch of
    ``per_batch`` of its views with their cached targets, and one batch of the first view of every canvas; on
    ``device`` when given."""
    from frs_cli.cache.reader import CachedViews
    from frs_cli.data.coco import CocoViews, collate

    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    by_canvas: dict = {}
    for p in range(len(coco)):
        for v in ("orig", "hflip"):
            by_canvas.setdefault(coco.geometry_of(p, v).padded_size, []).append((p, v))
    ds = CachedViews(coco, cache)
    one = [collate([ds[k] for k in keys[:per_batch]]) for keys in by_canvas.values() if len(keys) >= per_batch]
    mixed = collate([ds[keys[0]] for keys in by_canvas.values()])
    if device is not None:
        one, mixed = [b.to(device) for b in one], mixed.to(device)
    return one, mixed
