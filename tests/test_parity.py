"""Distillation losses from the cache equal those from the live teacher on the same batch (fp16 rounding aside),
for every detector family."""

import pytest
import torch

from frs_cli.cache.reader import CachedViews, TeacherCache
from frs_cli.data.coco import CocoViews, collate
from frs_cli.models import build_detector
from frs_cli.train.objectives import CachedTeacher, FRSObjective, OnlineTeacher


def _losses(recipe, cache_path, batch_keys, mask="frs"):
    from dataclasses import replace

    cache = TeacherCache(cache_path)
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    cached_batch = collate([CachedViews(coco, cache)[k] for k in batch_keys])
    plain_batch = collate([coco[k] for k in batch_keys])
    assert torch.equal(cached_batch.images, plain_batch.images)  # the student sees identical pixels either way
    torch.manual_seed(0)
    student = build_detector(recipe.student, 5)
    cfg = replace(recipe.distill, warmup_iters=0, mask=mask)
    from_cache = FRSObjective(student, cache.signature, CachedTeacher(cache.build_head(), cache.dtype), cfg)
    online = FRSObjective(student, cache.signature, OnlineTeacher(build_detector(recipe.teacher, 5)), cfg)
    online.adapters.load_state_dict(from_cache.adapters.state_dict())
    student.eval()  # BN statistics fixed: both objectives see exactly the same student output
    with torch.no_grad():
        torch.manual_seed(1)  # Faster R-CNN samples anchors and proposals at random: the same draws for both
        cached = from_cache(cached_batch, 0)
        torch.manual_seed(1)
        return cached, online(plain_batch, 0)


@pytest.mark.parametrize("mask", ["frs", "gt"])
def test_cached_and_online_losses_agree_within_fp16_rounding(recipe, cache_path, mask):
    keys = [(0, "orig"), (5, "hflip"), (11, "orig"), (17, "hflip")]
    cached, online = _losses(recipe, cache_path, keys, mask)
    assert set(cached) == set(online)
    assert ("frs_head" in cached) == (mask == "frs")
    for name in cached:
        a, b = float(cached[name]), float(online[name])
        rel = abs(a - b) / abs(b)
        print(f"parity mask={mask} {name}: cached {a:.7g} online {b:.7g} relative difference {rel:.2e}")
        # features are stored in fp16 (relative rounding <= 2**-11 ~ 4.9e-4 per value)
        assert rel < 1e-3, f"{name}: cached {a:.6g} vs online {b:.6g}, relative difference {rel:.2e}"
        if not name.startswith("frs_"):
            assert a == b  # GT losses do not touch the teacher at all


@pytest.mark.parametrize("family", ["fcos", "faster_rcnn", "gfl"])
def test_cached_and_online_losses_agree_for_every_family(family, family_cache):
    from frs_cli.config import load_recipe

    recipe_path, path = family_cache(family)
    cached, online = _losses(load_recipe(recipe_path), path, [(0, "orig"), (5, "hflip"), (11, "orig")])
    assert set(cached) == set(online) and {"frs_feature", "frs_head"} <= set(cached)
    for name in cached:
        a, b = float(cached[name]), float(online[name])
        rel = abs(a - b) / abs(b)
        print(f"parity {family} {name}: cached {a:.7g} online {b:.7g} relative difference {rel:.2e}")
        assert rel < 1e-3, f"{family} {name}: cached {a:.6g} vs online {b:.6g}, relative difference {rel:.2e}"
        if not name.startswith("frs_"):
            assert a == b
