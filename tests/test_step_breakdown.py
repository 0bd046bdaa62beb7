"""bench/step_breakdown.py (issue 13): its smoke run on the CPU writes every figure, and its cumulative variants
compute the losses ``FRSObjective`` computes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_bench as _bench

from frs_cli.models import ModelConfig, build_detector
from frs_cli.train.objectives import CachedTeacher, FRSObjective


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run: (bench module, its result, its setup, the out folder, what it printed)."""
    bd = _bench("step_breakdown")
    root = tmp_path_factory.mktemp("breakdown")
    argv = ["--smoke", "--out", str(root / "out"), "--work", str(root / "work")]
    res, setup = bd.run(bd.parse_args(argv), argv)
    return bd, res, setup, root / "out"


def test_step_breakdown_smoke_writes_every_variant_and_part_with_positive_times(smoke):
    bd, res, setup, out = smoke
    on_disk = json.loads((out / "breakdown.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["device"] == "cpu" and on_disk["torch"] == torch.__version__
    assert on_disk["command"].startswith("python3 bench/step_breakdown.py --smoke --out ")
    assert on_disk["args"]["pair"] == "tiny-tiny" and on_disk["args"]["dtype"] == "int8"
    assert set(on_disk["steps"]) == {"plain", "teacher", "feature", "full", "online"}
    for row in on_disk["steps"].values():
        assert row["steps"] == 2 and 0 < row["step_ms_min"] <= row["step_ms"] <= row["step_ms_max"]
        assert row["step_ms_min"] <= row["step_ms_mean"] <= row["step_ms_max"]
    assert set(on_disk["parts"]) == {"decode", "cached_head", "cached_teacher_side", "valid_masks", "mask_sums",
                                     "adapters_fwd_bwd", "feature_loss_fwd_bwd", "head_loss_fwd_bwd",
                                     "online_teacher_side"}
    for row in on_disk["parts"].values():
        assert row["ms"] > 0 and row["gpu_ms"] is None  # no CUDA events on the CPU
    steps, brk = on_disk["steps"], on_disk["breakdown"]
    extra = steps["full"]["step_ms"] - steps["plain"]["step_ms"]
    assert brk["extra_ms"] == pytest.approx(extra)
    assert brk["full_over_plain"] == pytest.approx(steps["full"]["step_ms"] / steps["plain"]["step_ms"])
    inc = brk["increments"]
    assert inc["teacher_side"]["ms"] == pytest.approx(steps["teacher"]["step_ms"] - steps["plain"]["step_ms"])
    assert inc["adapters_feature_loss"]["ms"] == pytest.approx(steps["feature"]["step_ms"] - steps["teacher"]["step_ms"])
    assert inc["head_loss"]["ms"] == pytest.approx(steps["full"]["step_ms"] - steps["feature"]["step_ms"])
    assert sum(r["ms"] for r in inc.values()) == pytest.approx(extra)
    for row in (*inc.values(), *(r for k, r in on_disk["parts"].items() if k != "online_teacher_side")):
        assert row["share"] == (pytest.approx(row["ms"] / extra) if extra > 0 else None)
    # the smoke's batches: 24 views of two canvases (18 and 6) in batches of 4 make six, one of them mixing
    # canvases and left out; each one canvas, alternating so that a short warm-up sees both
    canvases = [b.geometries[0].padded_size for b in setup.batches]
    assert on_disk["batches"] == len(setup.batches) == 5 and len(on_disk["canvases"]) == 2
    assert all({g.padded_size for g in b.geometries} == {c} for b, c in zip(setup.batches, canvases))
    assert canvases[0] != canvases[1]
    printed = bd.table(res)
    assert "| (d) full |" in printed and "| alone: head_loss_fwd_bwd |" in printed


def test_step_breakdown_variants_compute_the_objectives_losses(smoke):
    _, res, setup, _ = smoke
    torch.manual_seed(0)  # the bench builds every variant's student from seed 0
    student = build_detector(ModelConfig(arch="retinanet_tiny_fpn"), setup.num_classes)
    ref = FRSObjective(student, setup.store.signature, CachedTeacher.from_cache(setup.store), setup.recipe.distill)
    with torch.no_grad():
        want = {k: float(v) for k, v in ref.train()(setup.batches[0], 10_000).items()}
    losses = res["losses"]
    assert set(want) == {"classification", "bbox_regression", "frs_feature", "frs_head"}
    assert want["frs_feature"] > 0 and want["frs_head"] > 0
    assert losses["full"] == pytest.approx(want, rel=1e-5)
    gt = {k: want[k] for k in ("classification", "bbox_regression")}
    assert losses["plain"] == pytest.approx(gt, rel=1e-5)
    assert losses["teacher"] == pytest.approx({**gt, "teacher_probe": 0.0}, rel=1e-5)
    assert losses["feature"] == pytest.approx({**gt, "teacher_probe": 0.0, "frs_feature": want["frs_feature"]},
                                              rel=1e-5)
    # the live teacher: the same student loss; its own adapters' init and unquantised features differ
    assert {k: losses["online"][k] for k in gt} == pytest.approx(gt, rel=1e-5)
    assert set(losses["online"]) == set(want)
