"""GPU paths: bf16 autocast in the teacher, the cache and distillation. Skipped without CUDA."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cache_written_on_gpu_matches_the_cpu_cache_within_bf16(cache_path, synth_root, teacher_ckpt, tmp_path):
    from conftest import write_recipe

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.train.dist import setup

    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    path = str(tmp_path / "gpu.zarr")
    write_teacher_cache(r, path, ctx=setup("cuda"))
    gpu, cpu = TeacherCache(path), TeacherCache(cache_path)
    assert gpu.fingerprints == cpu.fingerprints
    for k in range(0, len(cpu), 7):
        a, b = gpu.read(k), cpu.read(k)
        for fa, fb in zip(a["features"], b["features"]):
            rel = (fa.float() - fb.float()).norm() / fb.float().norm()
            assert rel < 3e-2, rel  # bf16 autocast in the teacher vs fp32


def test_distill_step_on_gpu_cached_and_online_agree(recipe, cache_path):
    from dataclasses import replace

    from frs_cli.cache.reader import CachedViews, TeacherCache
    from frs_cli.data.coco import CocoViews, collate
    from frs_cli.models import build_detector
    from frs_cli.train.objectives import CachedTeacher, FRSObjective, OnlineTeacher

    cache = TeacherCache(cache_path)
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    keys = [(0, "orig"), (3, "hflip"), (8, "orig"), (9, "orig")]
    cb = collate([CachedViews(coco, cache)[k] for k in keys]).to("cuda")
    pb = collate([coco[k] for k in keys]).to("cuda")
    torch.manual_seed(0)
    student = build_detector(recipe.student, 5).cuda().eval()
    cfg = replace(recipe.distill, warmup_iters=0)
    a = FRSObjective(student, cache.signature, CachedTeacher(cache.build_head(), cache.dtype), cfg).cuda()
    b = FRSObjective(student, cache.signature, OnlineTeacher(build_detector(recipe.teacher, 5)), cfg).cuda()
    b.adapters.load_state_dict(a.adapters.state_dict())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        la, lb = a(cb, 0), b(pb, 0)
    for name in ("frs_feature", "frs_head"):
        rel = abs(float(la[name]) - float(lb[name])) / abs(float(lb[name]))
        assert rel < 2e-2, (name, rel)
