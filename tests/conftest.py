"""Shared fixtures: a tiny generated dataset, recipes for the tiny CPU models, a teacher checkpoint, a cache.

Everything is generated here; no test downloads anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_RECIPE = """
name = "tiny"
[data]
root = {root}
[geometry]
min_size = 64
max_size = {max_size}
size_divisible = 32
[teacher]
arch = "retinanet_small_fpn"
anchor_size = 16
weights = {weights}
[student]
arch = "retinanet_tiny_fpn"
anchor_size = 16
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
"""


def write_recipe(path: Path, root: Path, weights: str = "", max_size: int = 64, extra: str = "") -> Path:
    path.write_text(TINY_RECIPE.format(root=json.dumps(str(root)), weights=json.dumps(weights), max_size=max_size)
                    + extra)
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
    from frs_cli.train.checkpoint import atomic_save, model_payload

    torch.manual_seed(0)
    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16)
    index = CocoIndex(synth_root / "annotations" / "instances_train.json")
    teacher = build_detector(cfg, index.num_classes)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    atomic_save(model_payload(teacher, cfg, index.label_to_category, [c["name"] for c in index.categories],
                              GeometryConfig(64, 64, 32)), path)
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
    from frs_cli.train.dist import setup

    d = tmp_path_factory.mktemp("cache")
    r = load_recipe(write_recipe(d / "recipe.toml", synth_root, str(teacher_ckpt)))
    path = str(d / "cache.zarr")
    write_teacher_cache(r, path, ctx=setup("cpu"))
    return path
