"""Cached teacher targets as one typed value (``data.targets.CachedTargets``): its collate (zero padding to the
batch grid, scales stacked), pinning and moving, and the batches of ``data.coco.collate`` carrying it, every tensor
of a batch a view of one aligned buffer (``data.packed``)."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from frs_cli.data.coco import Batch, Sample, collate
from frs_cli.data.geometry import GeometryConfig, view_geometry
from frs_cli.data.packed import PackedTensors, layout_nbytes, plan_layout, views_of
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


def test_pin_memory_pins_a_collated_batch_once_and_targets_built_directly_tensor_by_tensor(monkeypatch):
    """Pinned memory needs a CUDA driver; here pinning is recorded, so that what is pinned can be checked."""
    pinned = []

    def pin(t):
        pinned.append(t)
        return t.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = CachedTargets.collate([_view(k, grids) for k, grids in enumerate(GRIDS)])
    out = batch.pin_memory()
    assert [id(t) for t in pinned] == [id(batch.packed.buffer)]  # one buffer under all six tensors
    assert out.packed is not None and out.packed.buffer is not batch.packed.buffer
    assert all(a is not b and torch.equal(a, b) for a, b in zip(_tensors(out), _tensors(batch), strict=True))
    assert {t.untyped_storage().data_ptr() for t in _tensors(out)} == {out.packed.buffer.data_ptr()}

    pinned.clear()
    plain = CachedTargets(list(batch.features), list(batch.masks), list(batch.scales))  # built directly: no buffer
    out = plain.pin_memory()
    assert [id(t) for t in pinned] == [id(t) for t in _tensors(plain)]  # features, masks and scales, each once
    assert out.packed is None and all(torch.equal(a, b) for a, b in zip(_tensors(out), _tensors(plain), strict=True))


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
    assert moved.images.is_meta and all(v.is_meta for t in moved.targets for v in t.values())
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t.clone())
    buffer, before = batch.packed.buffer, batch.teacher
    assert batch.pin_memory() is batch and isinstance(batch.teacher, CachedTargets) and batch.teacher is not before
    assert [id(t) for t in pinned] == [id(buffer)]  # images, targets and teacher: one pinning
    assert all(torch.equal(a, b) for a, b in zip(_tensors(batch.teacher), _tensors(expected), strict=True))
    assert collate([_sample(k, (16, 16), None) for k in range(2)]).teacher is None


# -- one buffer per batch -------------------------------------------------------------------------------------------


def _rich_sample(k: int, size: tuple[int, int], boxes: int, teacher: CachedTargets | None) -> Sample:
    """View ``k``: a random image of ``size``, ``boxes`` random float32 boxes and int64 labels (none zero)."""
    g = torch.Generator().manual_seed(100 + k)
    geometry = view_geometry(*size, GeometryConfig(min_size=size[0], max_size=64, size_divisible=8), "orig")
    return Sample(image=torch.randint(1, 256, (3, *geometry.valid_size), generator=g, dtype=torch.uint8),
                  boxes=torch.rand(boxes, 4, generator=g) * 16 + 1, labels=torch.randint(1, 80, (boxes,), generator=g),
                  image_id=k, geometry=geometry, teacher=teacher)


def _rich_samples() -> list[Sample]:
    return [_rich_sample(k, (16, 16 + 8 * k), k + 1, _view(k, grids)) for k, grids in enumerate(GRIDS)]


def _batch_tensors(batch: Batch) -> list[torch.Tensor]:
    return [batch.images, *(t[key] for t in batch.targets for key in ("boxes", "labels")), *_tensors(batch.teacher)]


def _expected_tensors(samples: list[Sample]) -> list[torch.Tensor]:
    """What the old per-tensor collate gave, built here with explicit zeros and slices."""
    h = max(s.geometry.padded_h for s in samples)
    w = max(s.geometry.padded_w for s in samples)
    images = torch.zeros(len(samples), 3, h, w, dtype=torch.uint8)
    for i, s in enumerate(samples):
        images[i, :, : s.image.shape[1], : s.image.shape[2]] = s.image
    out = [images, *(t for s in samples for t in (s.boxes, s.labels))]
    features, masks = [], []
    for lv in range(2):
        gh = max(grids[lv][0] for grids in GRIDS)
        gw = max(grids[lv][1] for grids in GRIDS)
        f = torch.zeros(len(samples), 4, gh, gw, dtype=torch.int8)
        m = torch.zeros(len(samples), gh, gw, dtype=torch.float16)
        for i, s in enumerate(samples):
            fh, fw = s.teacher.features[lv].shape[-2:]
            f[i, :, :fh, :fw] = s.teacher.features[lv]
            m[i, :fh, :fw] = s.teacher.masks[lv]
        features.append(f)
        masks.append(m)
    scales = [torch.stack([s.teacher.scales[lv] for s in samples]) for lv in range(2)]
    return [*out, *features, *masks, *scales]


def _assert_one_aligned_buffer(tensors: list[torch.Tensor], buffer: torch.Tensor) -> None:
    assert {t.untyped_storage().data_ptr() for t in tensors} == {buffer.data_ptr()}
    offsets = [t.storage_offset() * t.element_size() for t in tensors]
    assert all(o % 64 == 0 for o in offsets), offsets
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)  # in order, none on top of another


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in want]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_collate_packs_images_targets_and_teacher_into_one_aligned_buffer_with_the_old_values():
    samples = _rich_samples()
    batch = collate(samples)
    got = _batch_tensors(batch)
    assert len(got) == 1 + 2 * 3 + 3 * 2  # images, boxes and labels of 3 views, features, masks, scales of 2 levels
    _assert_same(got, _expected_tensors(samples))
    _assert_one_aligned_buffer(got, batch.packed.buffer)
    assert batch.packed.buffer.dtype == torch.uint8 and batch.packed.buffer.dim() == 1
    last = got[-1]
    assert batch.packed.buffer.numel() == last.storage_offset() * 4 + last.numel() * 4  # nothing after the last


def test_collate_zeroes_the_image_and_target_padding_of_a_buffer_of_reused_memory(monkeypatch):
    from frs_cli.data import packed

    monkeypatch.setattr(packed, "allocate_buffer", lambda nbytes: torch.full((nbytes,), 7, dtype=torch.uint8))
    samples = _rich_samples()
    _assert_same(_batch_tensors(collate(samples)), _expected_tensors(samples))


def test_collate_in_a_data_loader_worker_hands_over_one_shared_buffer():
    samples = _rich_samples()
    loader = torch.utils.data.DataLoader(samples, batch_size=3, num_workers=1, collate_fn=collate, pin_memory=False)
    (batch,) = list(loader)
    got = _batch_tensors(batch)
    assert batch.packed.buffer.is_shared() and batch.packed.holds(batch.tensors())
    _assert_one_aligned_buffer(got, batch.packed.buffer)
    _assert_same(got, _expected_tensors(samples))


class _Allocating(torch.utils.data.Dataset):
    """Item i makes a buffer of 8 + i bytes as a worker's collate does (``WORKER_HOLD`` set to ``hold`` first),
    and reports whether it is shared and the sizes of the buffers the worker holds then."""

    def __init__(self, hold: int):
        self.hold = hold

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        from frs_cli.data import packed

        packed.WORKER_HOLD = self.hold
        buffer = packed.allocate_buffer(8 + i)
        return buffer.is_shared(), [b.numel() for b in packed._held], bool(packed._held) and packed._held[-1] is buffer


@pytest.mark.parametrize("hold", [2, 0])
def test_a_worker_holds_its_last_buffers_so_the_training_process_does_not_free_their_pages(hold):
    from frs_cli.data import packed

    loader = torch.utils.data.DataLoader(_Allocating(hold), batch_size=None, num_workers=1)
    got = list(loader)
    assert [g[0] for g in got] == [True] * 4  # shared memory, as handed over
    if hold:
        assert [g[1] for g in got] == [[8], [8, 9], [9, 10], [10, 11]] and all(g[2] for g in got)
    else:
        assert [g[1] for g in got] == [[]] * 4
    before = list(packed._held)
    assert not packed.allocate_buffer(16).is_shared() and list(packed._held) == before  # the training process keeps none


class _HeldSizes(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> list[int]:
        from frs_cli.data import packed

        packed.allocate_buffer(8 + i)
        return [b.numel() for b in packed._held]


def test_the_trainers_loader_makes_its_workers_hold_train_worker_hold_buffers():
    import functools

    from frs_cli.data.packed import WORKER_HOLD, hold_in_worker
    from frs_cli.train.loop import make_loader

    loader = make_loader([], [], 2, torch.device("cpu"), hold=3)
    init = loader.worker_init_fn
    assert isinstance(init, functools.partial) and init.func is hold_in_worker and init.args == (3,)
    assert make_loader([], [], 0, torch.device("cpu")).worker_init_fn is None  # no worker, nothing to hold
    assert make_loader([], [], 1, torch.device("cpu")).worker_init_fn.args == (WORKER_HOLD,)
    # a worker started so holds that many of its last buffers
    held = torch.utils.data.DataLoader(_HeldSizes(), batch_size=None, num_workers=1, worker_init_fn=init)
    assert list(held) == [[8], [8, 9], [8, 9, 10], [9, 10, 11], [10, 11, 12]]


def _pickled_tensors(obj) -> tuple[int, bytes]:
    """How many tensors pickling ``obj`` for another process sends (each is rebuilt by the receiving side's
    unpickler, under the GIL, in the DataLoader's pin-memory thread), and the pickle."""
    import io
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # registers the tensor and storage reducers

    count = [0]

    def counted(reduce):
        def reduce_and_count(tensor):
            count[0] += 1
            return reduce(tensor)
        return reduce_and_count

    class Counting(ForkingPickler):
        _extra_reducers: ClassVar[dict] = {cls: counted(fn) if cls is torch.Tensor else fn
                           for cls, fn in ForkingPickler._extra_reducers.items()}

    buf = io.BytesIO()
    Counting(buf).dump(obj)
    return count[0], buf.getvalue()


def test_a_packed_batch_crosses_to_another_process_as_its_buffer_alone_and_arrives_whole():
    import pickle

    samples = _rich_samples()
    batch = collate(samples)
    batch.packed.buffer.share_memory_()
    shared = PackedTensors.on(batch.packed.buffer, batch.packed.slots)  # as a worker's batch: in shared memory
    batch = batch.with_tensors(list(shared.views), shared)
    tensors, data = _pickled_tensors(batch)
    assert tensors == 1  # the buffer; its 13 views are made again on arrival
    arrived = pickle.loads(data)
    got = _batch_tensors(arrived)
    _assert_same(got, _expected_tensors(samples))
    _assert_one_aligned_buffer(got, arrived.packed.buffer)
    assert arrived.packed.holds(arrived.tensors())
    assert [sorted(t) for t in arrived.targets] == [["boxes", "labels"]] * 3
    # a batch whose tensors were replaced after collate sends each of them, as before
    changed = Batch(batch.images.clone(), batch.image_sizes, batch.targets, batch.image_ids, batch.geometries,
                    batch.teacher, batch.packed)
    assert _pickled_tensors(changed)[0] == 14  # the buffer, then the 13 tensors one by one


def test_views_rebuilt_on_a_copy_of_the_buffer_equal_the_batch_and_moving_keeps_values():
    batch = collate(_rich_samples())
    want = [t.clone() for t in _batch_tensors(batch)]
    copy = batch.packed.buffer.clone()
    rebuilt = views_of(copy, batch.packed.slots)
    _assert_same(rebuilt, batch.packed.views)
    _assert_one_aligned_buffer(rebuilt, copy)
    moved = batch.to("cpu")  # already there: the same batch, no copy
    assert moved.packed is batch.packed and moved.images is batch.images
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert pinned.packed.buffer.is_pinned() and all(t.is_pinned() for t in _batch_tensors(pinned))
        back = pinned.to("cuda").to("cpu")
        _assert_one_aligned_buffer(_batch_tensors(back), back.packed.buffer)
        _assert_same(_batch_tensors(back), want)


def test_layout_puts_mixed_dtypes_of_odd_sizes_at_aligned_offsets_and_reads_them_back_exactly():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.tensor([1, 2, 255], dtype=torch.uint8), torch.tensor([1.5, -2.25, 3e38]),
               torch.tensor([-(2**62), 7]), torch.randint(-128, 127, (5,), generator=g, dtype=torch.int8),
               torch.randn(3, generator=g).half(), torch.randn(2, 3, generator=g).to(torch.bfloat16),
               torch.zeros(0, 4), torch.tensor(9.0)]
    slots = plan_layout([(t.dtype, t.shape) for t in tensors])
    assert [s.offset for s in slots] == [0, 64, 128, 192, 256, 320, 384, 384]  # 0 bytes at 384, then the scalar
    assert layout_nbytes(slots) == 388
    packed = PackedTensors.allocate([(t.dtype, t.shape) for t in tensors])
    assert packed.slots == slots and packed.buffer.numel() == 388
    for view, t in zip(packed.views, tensors, strict=True):
        view.copy_(t)
    _assert_same(views_of(packed.buffer.clone(), slots), tensors)


def test_a_batch_changed_after_collate_or_built_directly_moves_tensor_by_tensor():
    batch = collate(_rich_samples())
    batch.teacher = None  # as a benchmark drops the teacher of a cached batch
    moved = batch.to(torch.device("meta"))
    assert moved.teacher is None and moved.packed is None and len(moved.tensors()) == 7
    assert moved.images.is_meta and all(v.is_meta for t in moved.targets for v in t.values())
    direct = Batch(torch.ones(1, 3, 8, 8, dtype=torch.uint8), [(8, 8)], [{"boxes": torch.ones(1, 4),
                   "labels": torch.ones(1, dtype=torch.int64)}], [0], [None])
    again = direct.to("cpu")
    assert again.packed is None and again.images is direct.images
    assert again.targets[0]["boxes"] is direct.targets[0]["boxes"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_packed_batch_reaches_the_gpu_in_one_copy_with_every_tensor_equal():
    batch = collate(_rich_samples()).pin_memory()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        moved = batch.to("cuda")
        torch.cuda.synchronize()
    copies = [e for e in prof.events() if "Memcpy HtoD" in e.name]
    assert len(copies) == 1, [e.name for e in prof.events()]
    got = _batch_tensors(moved)
    assert all(t.is_cuda for t in got)
    _assert_one_aligned_buffer(got, moved.packed.buffer)
    _assert_same([t.cpu() for t in got], _batch_tensors(batch))
