"""The loop's metrics writer: metrics.jsonl always, TensorBoard scalars and mask images with train.tensorboard."""

import json

import pytest

from frs_cli.train.metrics_log import METRICS_FILE, TENSORBOARD_DIR, MetricsLog


def events(run_dir):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'frs[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_every_term_lr_rate_wait_and_defined_val_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'frs[tensorboard]')")
    log = MetricsLog(tmp_path, tensorboard=True)
    for it in (0, 10):
        log.step({"epoch": 1, "iter": it, "lr": 0.01 * (it + 1), "classification": 1.0 / (it + 1), "frs_feature": 2.0,
                  "frs_head": 0.5, "loss": 3.5, "img_s": 100.0, "data_wait": 0.25})
    log.eval(1, {"AP": 0.25, "AP50": 0.5, "APl": None}, iteration=20)
    log.close()
    acc = events(tmp_path)
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert set(scalars) == {"loss/classification", "loss/frs_feature", "loss/frs_head", "loss/total", "train/lr",
                            "train/img_s", "train/data_wait", "val/AP", "val/AP50", "val/epoch"}  # no val/APl
    assert scalars["loss/classification"] == [(0, 1.0), (10, pytest.approx(1 / 11))]
    assert scalars["train/lr"] == [(0, pytest.approx(0.01)), (10, pytest.approx(0.11))]
    assert scalars["val/AP"] == [(20, 0.25)]
    lines = [json.loads(x) for x in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [x.get("iter") for x in lines] == [0, 10, None] and lines[2] == {"epoch": 1, "eval": {"AP": 0.25, "AP50": 0.5,
                                                                                                 "APl": None}}


def test_without_tensorboard_only_metrics_jsonl_is_written(tmp_path):
    log = MetricsLog(tmp_path)
    log.step({"epoch": 1, "iter": 0, "loss": 1.0})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]


def test_distill_with_tensorboard_logs_losses_and_the_teacher_mask_image(tmp_path, recipe, cache_path):
    import dataclasses

    from frs_cli.dist import setup
    from frs_cli.train.run import distill_student

    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'frs[tensorboard]')")
    r = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=1, tensorboard=True, log_every=1))
    distill_student(r, tmp_path / "run", cache=cache_path, ctx=setup("cpu"), evaluate=False)
    acc = events(tmp_path / "run")
    tags = acc.Tags()
    assert {"loss/frs_feature", "loss/frs_head", "loss/total", "train/lr", "train/img_s"} <= set(tags["scalars"])
    assert tags["images"] == ["frs/teacher_masks"]
    image = acc.Images("frs/teacher_masks")[0]
    assert image.width > 5 * 256 and image.height > 256  # five levels, each panel enlarged to >= 256 px
    steps = [json.loads(x)["iter"] for x in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [e.step for e in acc.Scalars("loss/total")] == steps


def test_tensorboard_missing_is_one_line_before_the_run_starts(tmp_path, recipe, monkeypatch):
    import dataclasses
    import sys

    from frs_cli.dist import setup
    from frs_cli.errors import ConfigError
    from frs_cli.train.run import train_detector

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not importable, as when it is not installed
    r = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, tensorboard=True))
    expected = r"^train.tensorboard = true: expected the Python package 'tensorboard' to be installed, got ImportError"
    with pytest.raises(ConfigError, match=expected) as caught:
        train_detector(r, "student", tmp_path / "run", ctx=setup("cpu"))
    assert caught.value.hint == "pip install 'frs[tensorboard]', or set train.tensorboard = false"
    assert not (tmp_path / "run").exists()  # nothing started


def test_teacher_mask_picture_draws_the_live_teachers_masks(synth_root, teacher_ckpt):
    import numpy as np

    from frs_cli.data.coco import CocoIndex, CocoViews
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.train.checkpoint import load_detector
    from frs_cli.train.metrics_log import teacher_mask_picture

    teacher, _ = load_detector(teacher_ckpt)
    teacher.train()
    views = CocoViews(CocoIndex(synth_root / "annotations" / "instances_train.json"), synth_root / "train",
                      GeometryConfig(64, 64, 32))
    picture = teacher_mask_picture(teacher, views)
    assert teacher.training  # put back as it was
    assert picture.height > 256 and picture.width > 5 * 256
    colours = np.unique(np.asarray(picture).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # a real picture, not one flat colour
