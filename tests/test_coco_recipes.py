"""The COCO recipes' own settings end to end on a COCO-shaped tiny set: the README's flow (teacher-cache with its
teacher check, distill from the cache, eval) under every COCO recipe shipped, its models swapped for the family's
tiny ones and its sizes for 64 px, everything else (label map, splits, schedule keys, multi-scale views) as the
recipe says. No COCO and no weights here: the folders are COCO's names and the category ids COCO-like (gaps,
no 0), so `data.label_map = "category_id"` meets labels that are no category."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAMILY_ARCHS
from typer.testing import CliRunner

from frs_cli.cli.app import app

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
RECIPES = sorted(p.name for p in PIPELINES.glob("coco_*.toml"))  # every COCO recipe shipped
MULTI_SCALE = ["train.min_sizes=[48, 64]", 'cache.views=["orig", "hflip", "orig@48", "hflip@48"]']  # 640/800 at 64 px


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory, synth_root) -> Path:
    """The synthetic set in COCO's layout (train2017, val2017), category id k renumbered 3k + 1."""
    root = tmp_path_factory.mktemp("coco") / "coco"
    for split in ("train", "val"):
        shutil.copytree(synth_root / split, root / f"{split}2017")
        doc = json.loads((synth_root / "annotations" / f"instances_{split}.json").read_text())
        for c in doc["categories"]:
            c["id"] = 3 * c["id"] + 1
        for a in doc["annotations"]:
            a["category_id"] = 3 * a["category_id"] + 1
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return root


def _teacher(path: Path, arch: str, anchor_size: int, root: Path, label_map: str) -> Path:
    from frs_cli.data.coco import CocoIndex
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, anchor_size=anchor_size)
    index = CocoIndex(root / "annotations" / "instances_train2017.json", label_map)
    save_model(path, build_detector(cfg, index.num_classes), cfg, index, GeometryConfig(64, 64, 32))
    return path


def test_every_coco_recipe_is_here():
    assert len(RECIPES) >= 9 and {"coco_retinanet_r50v2_to_r18.toml", "coco_fcos_r50_to_r18.toml"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_coco_recipe_runs_teacher_cache_distill_and_eval_on_a_coco_shaped_set(recipe, coco_like, tmp_path):
    from frs_cli.config import load_recipe
    from frs_cli.models import arch_spec

    shipped = load_recipe(PIPELINES / recipe)
    extra = MULTI_SCALE if shipped.train.min_sizes else []
    teacher_arch, student_arch, anchor_size = FAMILY_ARCHS[arch_spec(shipped.teacher.arch).family]
    teacher = _teacher(tmp_path / "teacher.pt", teacher_arch, anchor_size, coco_like, shipped.data.label_map)
    sets = [f"data.root={json.dumps(str(coco_like))}", "geometry.min_size=64", "geometry.max_size=64",
            f"teacher.arch={teacher_arch}", f"teacher.weights={json.dumps(str(teacher))}",
            f"student.arch={student_arch}", 'student.weights_backbone=""', "student.trainable_backbone_layers=5",
            "train.epochs=1", "train.batch_size=4", "train.workers=0", "train.warmup_iters=5", "train.lr_steps=[1]",
            "train.eval_every=0", "train.amp=false", "distill.warmup_iters=5", "cache.batch_size=4",
            "cache.workers=0", "cache.write_processes=0", "cache.check_teacher_images=4", "cache.min_teacher_map=0",
            *extra]
    if anchor_size:
        sets += [f"teacher.anchor_size={anchor_size}", f"student.anchor_size={anchor_size}"]
    common = ["--pipeline", PIPELINES / recipe, "--device", "cpu", *[a for s in sets for a in ("--set", s)]]
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    cache = tmp_path / "cache.zarr"
    result = run("teacher-cache", "--out", cache, *common)
    assert "teacher check: AP" in result.stdout
    run("distill", "--cache", cache, "--out", tmp_path / "student", *common)
    assert (tmp_path / "student" / "model_final.pt").is_file()
    records = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "eval" in r] == [1]  # evaluated after its one epoch, label map and all
    run("eval", "--checkpoint", tmp_path / "student" / "model_final.pt", "--data", coco_like, "--split", "val2017",
        "--device", "cpu", "--workers", 0, "--metrics", tmp_path / "m.json", "--detections-out", tmp_path / "d.json")
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    categories = {c["id"] for c in json.loads((coco_like / "annotations" / "instances_val2017.json").read_text())[
        "categories"]}
    assert {d["category_id"] for d in json.loads((tmp_path / "d.json").read_text())} <= categories
