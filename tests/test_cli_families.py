"""Every detector family through the same commands: teacher-cache -> distill -> eval -> visualize, and a
teacher/student pair of two families refused with one line before anything is written."""

import json

import pytest
import zarr
from conftest import FAMILY_ARCHS, save_random_model, write_recipe
from typer.testing import CliRunner

from frs_cli.cli.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("family,levels", [
    ("fcos", ["P3", "P4", "P5", "P6", "P7"]),
    ("faster_rcnn", ["P2", "P3", "P4", "P5", "P6"]),
    ("gfl", ["P3", "P4", "P5", "P6", "P7"]),
])
def test_teacher_cache_distill_eval_visualize_for_every_family(tmp_path, synth_root, family, levels):
    teacher, _, anchor_size = FAMILY_ARCHS[family]
    ckpt = save_random_model(tmp_path / "teacher.pt", teacher, synth_root, anchor_size)
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(ckpt), family=family)
    cache = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe, "--out", cache, "--device", "cpu")
    assert result.exit_code == 0, result.output
    attrs = zarr.open_group(str(cache), mode="r").attrs
    assert attrs["state"] == "complete" and [lv["name"] for lv in attrs["levels"]] == levels
    assert attrs["teacher"]["head_spec"]["family"] == family
    sizes = attrs["buckets"][0]["level_sizes"]  # 64 x 64 views
    assert sizes[0] == ([16, 16] if family == "faster_rcnn" else [8, 8])  # P2 holds 4x the positions of P3

    result = run("distill", "--pipeline", recipe, "--cache", cache, "--out", tmp_path / "s", "--device", "cpu",
                 "--no-eval")  # the eval command below scores the student
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "model_final.pt").is_file() and (tmp_path / "s" / "adapters.pt").is_file()
    lines = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert any("frs_head" in x.get("losses", x) for x in lines)

    result = run("eval", "--checkpoint", tmp_path / "s" / "model_final.pt", "--data", synth_root,
                 "--metrics", tmp_path / "m.json", "--workers", 0)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}

    result = run("visualize", "--cache", cache, "--level", levels[0], "--out", tmp_path / "mask.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mask.png").stat().st_size > 0


def test_a_teacher_of_another_family_is_refused_before_the_cache_is_written(tmp_path, synth_root):
    ckpt = save_random_model(tmp_path / "teacher.pt", "fcos_small_fpn", synth_root)
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(ckpt))  # RetinaNet student
    result = run("teacher-cache", "--pipeline", recipe, "--out", tmp_path / "c.zarr", "--device", "cpu",
                 "--set", "teacher.arch=fcos_small_fpn", "--set", "teacher.anchor_size=0")
    assert result.exit_code == 1
    # the command the user ran is the one named (it said "distill:")
    assert result.stderr.startswith("error: teacher-cache: the teacher is a fcos detector, the student a retinanet")
    assert result.stderr.strip().count("\n") == 0 and not (tmp_path / "c.zarr").exists()
