"""Cached teacher targets as one typed value (``data.targets.CachedTargets``): its collate (zero padding to the
batch grid, scales stacked), pinning and moving, and the batches of ``data.coco.collate`` carrying it."""

from __future__ import annotations

import pytest
import torch

from frs_cli.data.coco import Batch, Sample, collate
from frs_cli.data.geometry import GeometryConfig, view_geometry
from frs_cli.data.targets import CachedTargets
from frs_cli.errors import DataError

GRIDS = (((3, 5), (2, 3)), ((6, 2), (3, 1)), ((4, 4), (2, 2)))  # per view: the grids of its two levels


def _view(k: int, grids, scaled: bool = True) -> CachedTargets:
    """View ``k``'s targets: int8 codes (4 channels) and float16 masks, none of them zero (so padding is told
    from data), and float32 scales (4 channels) when ``scaled``."""
    g = torch.Generator().manual_seed(k)
    features = [torch.randint(1, 100, (4, h, w), generator=g, dtype=torch.int8) for h, w in grids]
    masks = [(torch.rand(h, w, generator=g) + 0.5).half() for h, w in grids]
    scales = [torch.rand(4, generator=g) + k for _ in grids] if scaled else None
    return CachedTargets(features, masks, scales)


def test_collate_pads_three_grid_sizes_with_zeros_and_stacks_the_scales():
    views = [_view(k, grids) for k, grids in enumerate(GRIDS)]
    batch = CachedTargets.collate(views)
    assert [f.shape for f in batch.features] == [(3, 4, 6, 5), (3, 4, 3, 3)]
    assert [m.shape for m in batch.masks] == [(3, 6, 5), (3, 3, 3)]
    assert [s.shape for s in batch.scales] == [(3, 4), (3, 4)]
    assert [f.dtype for f in batch.features] == [torch.int8] * 2
    assert [m.dtype for m in batch.masks] == [torch.float16] * 2
    assert [s.dtype for s in batch.scales] == [torch.float32] * 2
    for lv in range(2):
        for i, (view, grids) in enumerate(zip(views, GRIDS)):
            h, w = grids[lv]
            assert torch.equal(batch.features[lv][i, :, :h, :w], view.features[lv])
            assert torch.equal(batch.masks[lv][i, :h, :w], view.masks[lv])
            padding = torch.ones(batch.masks[lv].shape[-2:], dtype=torch.bool)
            padding[:h, :w] = False
            assert (batch.features[lv][i][:, padding] == 0).all() and (batch.masks[lv][i][padding] == 0).all()
        assert torch.equal(batch.scales[lv], torch.stack([v.scales[lv] for v in views]))
    assert (batch.features[0] == 0).sum() == 4 * (3 * 30 - (15 + 12 + 16))  # the padding, and nothing else


def test_collate_without_scales_keeps_none_and_the_features_dtype():
    views = [CachedTargets([torch.randn(2, h, w).to(torch.bfloat16)], [torch.ones(h, w, dtype=torch.float16)])
             for h, w in ((2, 3), (3, 2))]
    batch = CachedTargets.collate(views)
    f = batch.features[0]
    assert batch.scales is None and f.dtype == torch.bfloat16 and f.shape == (2, 2, 3, 3)
    assert torch.equal(f[1, :, :3, :2], views[1].features[0]) and (f[1, :, :, 2] == 0).all()
    assert torch.equal(f[0, :, :2, :3], views[0].features[0]) and (f[0, :, 2] == 0).all()


def test_collate_refuses_views_with_and_without_scales():
    with pytest.raises(DataError, match="^cached targets: expected every view of a batch with per-channel scales or "
                                        "none, got a mix$"):
        CachedTargets.collate([_view(0, GRIDS[0]), _view(1, GRIDS[1], scaled=False)])


def _tensors(t: CachedTargets) -> list[torch.Tensor]:
    return [*t.features, *t.masks, *(t.scales or [])]


def test_to_moves_every_tensor_and_leaves_the_original_where_it_was():
    batch = CachedTargets.collate([_view(k, grids) for k, grids in enumerate(GRIDS)])
    moved = batch.to(torch.device("meta"))
    assert len(_tensors(moved)) == 6
    assert all(t.device.type == "meta" for t in _tensors(moved))
    assert [(t.shape, t.dtype) for t in _tensors(moved)] == [(t.shape, t.dtype) for t in _tensors(batch)]
    assert all(t.device.type == "cpu" for t in _tensors(batch))


def test_pin_memory_pins_every_tensor(monkeypatch):
    """Pinned memory needs a CUDA driver; here pinning is recorded, so that what is pinned can be checked."""
    pinned = []

    def pin(t):
        pinned.append(t)
        return t.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = CachedTargets.collate([_view(k, grids) for k, grids in enumerate(GRIDS)])
    out = batch.pin_memory()
    assert [id(t) for t in pinned] == [id(t) for t in _tensors(batch)]  # features, masks and scales, each once
    assert all(a is not b and torch.equal(a, b) for a, b in zip(_tensors(out), _tensors(batch), strict=True))


def _sample(k: int, size: tuple[int, int], teacher: CachedTargets | None) -> Sample:
    geometry = view_geometry(*size, GeometryConfig(min_size=size[0], max_size=64, size_divisible=8), "orig")
    return Sample(image=torch.full((3, *geometry.valid_size), k, dtype=torch.uint8),
                  boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), image_id=k, geometry=geometry,
                  teacher=teacher)


def test_a_batch_of_the_data_collate_carries_the_views_cached_targets(monkeypatch):
    views = [_view(k, grids) for k, grids in enumerate(GRIDS)]
    batch = collate([_sample(k, (16, 16 + 8 * k), v) for k, v in enumerate(views)])
    assert isinstance(batch, Batch) and isinstance(batch.teacher, CachedTargets)
    expected = CachedTargets.collate(views)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(batch.teacher), _tensors(expected), strict=True))
    moved = batch.to(torch.device("meta"))
    assert isinstance(moved.teacher, CachedTargets) and all(t.is_meta for t in _tensors(moved.teacher))
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t.clone())
    images, before = batch.images, batch.teacher
    assert batch.pin_memory() is batch and isinstance(batch.teacher, CachedTargets) and batch.teacher is not before
    assert [id(t) for t in pinned] == [id(images)] + [id(t) for t in _tensors(before)]
    assert collate([_sample(k, (16, 16), None) for k in range(2)]).teacher is None
