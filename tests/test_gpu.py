"""GPU paths: bf16 autocast in the teacher, the cache and distillation. Skipped without CUDA."""

import contextlib
from dataclasses import replace

import pytest
import torch
from conftest import one_canvas_batches

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cache_written_on_gpu_matches_the_cpu_cache_within_bf16(cache_path, synth_root, teacher_ckpt, tmp_path):
    from conftest import write_recipe

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.dist import setup

    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    path = str(tmp_path / "gpu.zarr")
    write_teacher_cache(r, path, ctx=setup("cuda"))
    gpu, cpu = TeacherCache(path), TeacherCache(cache_path)
    assert gpu.fingerprints == cpu.fingerprints
    for k in range(0, len(cpu), 7):
        a, b = gpu.read(k), cpu.read(k)
        for fa, fb in zip(a.features, b.features):
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
    a = FRSObjective(student, cache.signature, CachedTeacher.from_cache(cache), cfg).cuda()
    b = FRSObjective(student, cache.signature, OnlineTeacher(build_detector(recipe.teacher, 5)), cfg).cuda()
    b.adapters.load_state_dict(a.adapters.state_dict())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        la, lb = a(cb, 0), b(pb, 0)
    for name in ("frs_feature", "frs_head"):
        rel = abs(float(la[name]) - float(lb[name])) / abs(float(lb[name]))
        assert rel < 2e-2, (name, rel)


@pytest.mark.parametrize(("dtype", "processes"), [("float32", 0), ("float32", 2), ("int5", 2), ("bfloat16", 0),
                                                  ("bfloat16", 2)])
def test_gpu_writer_stores_each_batch_whole_after_its_side_stream_copy(synth_root, teacher_ckpt, tmp_path, dtype,
                                                                       processes, monkeypatch):
    """The writer copies a batch on a side stream while the next batch runs: to pinned memory, or with writer
    processes straight into their shared-memory slots, registered with CUDA (``WriterProcesses.pin``). Every
    stored view must equal the teacher's output for that view (a copy read
    too early would hold zeros or another batch)."""
    import dataclasses

    from conftest import write_recipe

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.data.coco import CocoViews, collate
    from frs_cli.dist import setup
    from frs_cli.train.checkpoint import load_detector

    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    r = dataclasses.replace(r, cache=dataclasses.replace(r.cache, dtype=dtype, amp=False, batch_size=4))
    path = str(tmp_path / "gpu.zarr")
    from frs_cli.cache.shard_writer import WriterProcesses

    pinned, pin = [], WriterProcesses.pin
    monkeypatch.setattr(WriterProcesses, "pin", lambda self: pinned.append(pin(self)) or pinned[-1])
    s = write_teacher_cache(r, path, ctx=setup("cuda"), write_threads=1, write_processes=processes)  # short queues
    assert s.complete and s.stage_seconds["write"] > 0
    assert pinned == ([True] if processes else [])  # the slots were registered: the direct copy was taken
    cache = TeacherCache(path)
    teacher, _ = load_detector(teacher_ckpt)
    teacher = teacher.cuda().eval()
    coco = CocoViews.from_config(r.data, "train", r.geometry)
    for k in range(len(cache)):
        view = "hflip" if int(cache.view[k]) else "orig"
        batch = collate([coco[(coco.index.image_ids.index(int(cache.image_id[k])), view)]]).to("cuda")
        with torch.no_grad():
            want = teacher(batch.images, batch.image_sizes, detect=False).features
        got = cache.read(k).features
        for g, w in zip(got, want):
            w = w[0].float().cpu()
            # float32 stores the value, bfloat16 within 2**-9 of it, int5 within half its step (max|x_c| / 15 / 2);
            # on top, TF32 convolutions of a batch of 4 and of 1 differ by ~1e-3 (garbage, zeros or another view
            # differ by ~1)
            amax = w.abs().amax(dim=(-2, -1))[:, None, None]
            tol = 1e-2 * w.abs().max() + (amax / 30 if dtype == "int5" else 0)
            err = (g.float() - w).abs()
            assert (err <= tol).all(), (k, dtype, float(err.max()), float(w.abs().max()))


def test_resizing_on_the_gpu_matches_the_cpu_pipeline_to_one_level(jitter_root):
    """teacher-cache on a GPU decodes in workers and resizes there: the batch must be the CPU pipeline's."""
    from frs_cli.data.coco import CocoViews, OriginalViews, collate, resize_batch
    from frs_cli.data.config import DataConfig
    from frs_cli.data.geometry import GeometryConfig

    ds = CocoViews.from_config(DataConfig(root=str(jitter_root)), "train", GeometryConfig(40, 72, 8))
    keys = [(p, v) for p in range(8) for v in ("orig", "hflip")]
    cpu = collate([ds[k] for k in keys])
    images, sizes = resize_batch([OriginalViews(ds)[k] for k in keys], "cuda")
    assert sizes == cpu.image_sizes and images.shape == cpu.images.shape and images.dtype == torch.uint8
    diff = (images.cpu().int() - cpu.images.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float32 rounding ties only


@pytest.mark.parametrize("family", ["retinanet", "fcos", "faster_rcnn", "gfl"])
def test_gpu_cache_and_live_teacher_agree_on_batches_of_three_canvases(family, mixed_cache, tmp_path):
    """On the GPU both teacher sides run the teacher in bf16 autocast on each view's own canvas: a cache written on
    the GPU and the live teacher give the same FRS terms for a batch of three canvases, orig and hflip."""
    from dataclasses import replace

    from frs_cli.cache.reader import CachedViews, TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.data.coco import CocoViews, collate
    from frs_cli.dist import setup
    from frs_cli.models import build_detector
    from frs_cli.train.objectives import CachedTeacher, FRSObjective, OnlineTeacher

    recipe, _, keys = mixed_cache(family)
    path = str(tmp_path / "gpu.zarr")
    write_teacher_cache(recipe, path, ctx=setup("cuda"), write_processes=0)
    cache = TeacherCache(path)
    assert cache.teacher_autocast
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    cb = collate([CachedViews(coco, cache)[k] for k in keys]).to("cuda")
    pb = collate([coco[k] for k in keys]).to("cuda")
    assert len({g.padded_size for g in pb.geometries}) == 3
    torch.manual_seed(0)
    student = build_detector(recipe.student, 5).cuda().eval()
    cfg = replace(recipe.distill, warmup_iters=0)
    a = FRSObjective(student, cache.signature, CachedTeacher.from_cache(cache), cfg).cuda()
    teacher = build_detector(recipe.teacher, 5)
    b = FRSObjective(student, cache.signature, OnlineTeacher(teacher, autocast=True), cfg).cuda()
    b.adapters.load_state_dict(a.adapters.state_dict())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.manual_seed(1)
        la = a(cb, 0)
        torch.manual_seed(1)
        lb = b(pb, 0)
    for name in ("frs_feature", "frs_head"):
        rel = abs(float(la[name]) - float(lb[name])) / abs(float(lb[name]))
        print(f"gpu mixed-canvas parity {family} {name}: cached {float(la[name]):.7g} online {float(lb[name]):.7g} "
              f"relative difference {rel:.2e}")
        assert rel < 1e-3, (family, name, rel)


def _one_canvas_batches(recipe, cache, per_batch: int = 2):
    """Per canvas of the split, one batch of ``per_batch`` of its views, on the GPU."""
    return one_canvas_batches(recipe, cache, per_batch, "cuda")[0]


def _cache_of(mixed_cache, tmp_path, dtype: str):
    """``(recipe, TeacherCache)`` of the RetinaNet split of three canvases, its cache written in ``dtype`` (the
    fixture's own for float16)."""
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.dist import setup

    recipe, path, _ = mixed_cache("retinanet")
    if dtype != "float16":
        recipe = replace(recipe, cache=replace(recipe.cache, dtype=dtype))
        path = str(tmp_path / f"{dtype}.zarr")
        write_teacher_cache(recipe, path, ctx=setup("cpu"))
    return recipe, TeacherCache(path)


def _step_batches(mixed_cache, tmp_path, dtype: str, kind: str):
    """``(recipe, cache, batches)``: ``_cache_of``'s, and one batch per canvas, which carries the cached targets only
    for the ``cached`` kind."""
    recipe, cache = _cache_of(mixed_cache, tmp_path, dtype)
    batches = _one_canvas_batches(recipe, cache)
    if kind != "cached":
        batches = [replace(b, teacher=None) for b in batches]
    return recipe, cache, batches


@contextlib.contextmanager
def _tf32(enabled: bool):
    """cuDNN's and the matmuls' TF32 ``enabled`` inside, as they were after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_frs_terms_replayed_as_cuda_graphs_equal_the_eager_ones_with_their_gradients(mixed_cache, tmp_path, dtype):
    """distill.cuda_graphs: per batch shape the first batch runs eagerly and is captured (the cached side, the
    adapters and both terms, forward and backward), later ones replay. Over three canvases, in and out of order
    and twice in a row (a replay over the previous one's memory), the FRS terms and the gradients of the adapters
    and of the student equal the eager objective's, and every shape has its graph."""
    from dataclasses import replace

    from frs_cli.models import build_detector
    from frs_cli.train.objectives import CachedTeacher, FRSObjective

    recipe, cache = _cache_of(mixed_cache, tmp_path, dtype)
    batches = _one_canvas_batches(recipe, cache)
    assert len(batches) == 3 and (batches[0].teacher.scales is not None) == (dtype == "int8")
    cfg = replace(recipe.distill, warmup_iters=0)
    objectives = []
    for graphs in (True, False):
        torch.manual_seed(0)
        student = build_detector(recipe.student, 5).cuda().eval()
        objectives.append(FRSObjective(student, cache.signature, CachedTeacher.from_cache(cache, cuda_graphs=graphs),
                                       cfg).cuda())
    a, b = objectives
    b.adapters.load_state_dict(a.adapters.state_dict())
    for batch in batches + batches[:1] + batches[::-1]:
        assert a.teacher_side.graphed(batch) and not b.teacher_side.graphed(batch)
        terms = []
        for obj in (a, b):
            obj.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                losses = obj(batch, 0)
            (losses["frs_feature"] + losses["frs_head"]).backward()
            terms.append((losses, [p.grad.clone() for p in [*obj.adapters.parameters(), *obj.student.parameters()]
                                   if p.grad is not None]))
        (la, ga), (lb, gb) = terms
        assert len(ga) == len(gb) > len(list(a.adapters.parameters()))
        for name in ("frs_feature", "frs_head"):
            torch.testing.assert_close(la[name], lb[name], rtol=1e-5, atol=0.0)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-6)
    assert len(a._graphs._graphs) == 3 and all(v is not None for v in a._graphs._graphs.values())


class _OnDevice:
    """A batch of one tensor, as ``DevicePrefetcher`` takes it."""

    def __init__(self, images):
        self.images = images

    def to(self, device, non_blocking: bool = False):
        return _OnDevice(self.images.to(device, non_blocking=non_blocking))

    def tensors(self):
        return [self.images]


def test_the_device_prefetcher_copies_beside_the_step_and_keeps_each_batch_until_the_step_read_it():
    """Each step first waits ~10 ms on its stream, then reads its batch and lets go of it. The step must see its
    batch whole (its stream waited for the copy) and unchanged (a later batch's copy, on the side stream, did not
    reuse its memory before the step read it)."""
    from frs_cli.data.prefetch import DevicePrefetcher

    host = [_OnDevice(torch.full((4, 256, 1024), k, dtype=torch.float32).pin_memory()) for k in range(12)]
    pf = DevicePrefetcher(iter(host), "cuda")
    sums = []
    for _ in range(12):
        batch = next(pf)
        torch.cuda._sleep(20_000_000)  # the step's own work before it reads the batch
        sums.append(batch.images.sum())
        del batch
    assert [float(s) for s in sums] == [float(k * 4 * 256 * 1024) for k in range(12)]
    assert next(pf, None) is None


def test_a_steps_losses_and_the_stop_agreement_are_read_without_waiting_for_the_step_in_flight():
    """The trainer runs one step ahead: reading step k's losses, and under torchrun the processes' agreement on
    Ctrl-C, must not wait for work queued after them (here a long sleep kernel standing for step k+1)."""
    import os
    import socket

    import torch.distributed as dist

    from frs_cli.dist import DistContext
    from frs_cli.train.hooks import StopRequest
    from frs_cli.train.loop import PendingLosses

    stream = torch.cuda.current_stream()
    a = torch.tensor(1.5, device="cuda")
    pending = PendingLosses({"a": a, "b": a * 2}, a * 3)
    a.fill_(7.0)  # the next step overwrites the outputs, as a graph's replay does
    torch.cuda._sleep(2_000_000_000)  # the next step, about a second of device time
    assert pending.read() == ({"a": 1.5, "b": 3.0}, 4.5)
    assert not stream.query()  # read while the device still sleeps
    torch.cuda.synchronize()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        ctx = DistContext(rank=0, world_size=2, device=torch.device("cuda", 0))  # "distributed": agree through NCCL
        stop = StopRequest()
        assert stop.agreed(ctx) is False  # nothing agreed before the first call
        stop.requested = True
        torch.cuda._sleep(2_000_000_000)
        assert stop.agreed(ctx) is False  # the agreement of the call before, read without waiting for the sleep
        assert not stream.query()
        assert stop.agreed(ctx) is True  # the request, one call later
    finally:
        torch.cuda.synchronize()
        dist.destroy_process_group()


# RetinaNet with the L1 and with the GIoU box loss, GFL (FCOS and Faster R-CNN train with torchvision's own losses,
# which loop over the images and index with boolean masks)
@pytest.mark.parametrize("arch", ["retinanet_resnet18_fpn", "retinanet_tiny_fpn", "gfl_tiny_fpn"])
def test_a_students_training_step_never_makes_the_host_wait_for_the_device(arch):
    """The trainer runs one step ahead of the device; a step that waits for the device mid-way (torchvision's box
    coder copied its weights from the host at every step; GFL found each image's positives with ``nonzero``)
    cannot. After a first step, forward with the GT loss, backward and the optimizer step run under CUDA's sync
    debug mode set to raise."""
    from frs_cli.models import ModelConfig, build_detector

    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch=arch, anchor_size=16), 3).cuda().train()
    opt = torch.optim.SGD(d.parameters(), lr=1e-4, momentum=0.9)
    boxes = torch.tensor([[8.0, 8.0, 60.0, 90.0], [40.0, 20.0, 120.0, 100.0]], device="cuda")
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2], device="cuda")},
               {"boxes": boxes[:1], "labels": torch.tensor([0], device="cuda")}]
    images = torch.rand(2, 3, 128, 160, device="cuda")
    for step in range(3):
        if step >= 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = sum(d(images, [(128, 160), (120, 150)], targets).losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


def test_a_cached_frs_step_with_graphs_never_makes_the_host_wait_for_the_device(mixed_cache):
    """The cached FRS step as distill runs it (the student's GT loss, the cached side and both terms replayed as
    CUDA graphs, backward, optimizer step): once every batch shape has its graphs, a pass over the batches runs
    under CUDA's sync debug mode set to raise."""
    from dataclasses import replace

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.models import build_detector
    from frs_cli.train.objectives import CachedTeacher, FRSObjective

    recipe, path, _ = mixed_cache("retinanet")
    cache = TeacherCache(path)
    batches = _one_canvas_batches(recipe, cache)
    torch.manual_seed(0)
    student = build_detector(recipe.student, 5).cuda().train()
    obj = FRSObjective(student, cache.signature, CachedTeacher.from_cache(cache, cuda_graphs=True),
                       replace(recipe.distill, warmup_iters=0)).cuda()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    for watched in (False, True):
        for batch in batches:
            torch.cuda.synchronize()
            if watched:
                torch.cuda.set_sync_debug_mode("error")
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    losses = obj(batch, 0)
                opt.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert {"frs_feature", "frs_head", "classification", "bbox_regression"} <= set(losses)
    assert len(obj._graphs._graphs) == len(batches) == 3
    assert all(g is not None for g in obj._graphs._graphs.values())


def _trainer(recipe, cache, kind: str, graphs: bool, arch: str | None, amp: bool, beside: bool = True,
             channels_last: bool = False):
    from frs_cli.data.coco import CocoViews
    from frs_cli.dist import setup
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.loop import Trainer
    from frs_cli.train.objectives import CachedTeacher, FRSObjective, GTObjective, OnlineTeacher

    torch.manual_seed(0)
    student = build_detector(ModelConfig(arch=arch, anchor_size=16) if arch else recipe.student, 5)
    distill = replace(recipe.distill, warmup_iters=4, teacher_beside=beside)
    if kind == "plain":
        obj = GTObjective(student)
    elif kind == "online":
        obj = FRSObjective(student, cache.signature, OnlineTeacher(build_detector(recipe.teacher, 5), autocast=amp),
                           distill)
    else:
        obj = FRSObjective(student, cache.signature, CachedTeacher.from_cache(cache, cuda_graphs=True), distill)
    cfg = replace(recipe.train, batch_size=2, amp=amp, amp_dtype="bfloat16", cuda_graphs=graphs, warmup_iters=3,
                  lr=0.01, channels_last=channels_last)
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    return Trainer(obj, coco, cfg, setup("cuda"), ("orig", "hflip"))


def _copy_weights(to, source) -> None:
    """``source`` trainer's objective's weights and buffers copied in place into ``to``'s (the same modules)."""
    with torch.no_grad():
        for a, b in zip(to.objective.state_dict().values(), source.objective.state_dict().values(), strict=True):
            a.copy_(b)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize(("kind", "dtype", "arch", "amp"), [
    ("plain", "float16", None, True), ("plain", "float16", "retinanet_resnet18_fpn", True),
    ("cached", "float16", None, True), ("cached", "int8", None, True), ("online", "float16", None, True),
    ("plain", "float16", "retinanet_resnet18_fpn", False), ("cached", "int8", None, False),
    ("online", "float16", None, False)])
def test_a_training_step_replayed_as_one_cuda_graph_equals_the_eager_step(mixed_cache, tmp_path, kind, dtype, arch,
                                                                          amp):
    """train.cuda_graphs: ``Trainer.run_step`` on batches of three canvases, in and out of order and twice in a row,
    with the step captured per batch shape and replayed, against the same trainer stepping eagerly. Before each step
    the graphed trainer's weights are set in place to the eager one's (so that the comparison is per step, not of
    two training paths that drift apart by rounding, and so that a graph must read the weights as they are now):
    the same terms and sum (the FRS weights ramping up), the same gradients, the same batch-norm statistics after
    it; every shape captured once; then a pass of replays that never makes the host wait. In float32 (TF32 off)
    the two agree to float32's rounding; in bf16 autocast to bf16's, so there the gradients are compared by the
    norm of their difference."""
    from frs_cli.train.loop import PendingLosses

    recipe, cache, batches = _step_batches(mixed_cache, tmp_path, dtype, kind)
    loss_tol, grad_tol = (2e-3, 2e-2) if amp else (1e-5, 1e-4)
    with _tf32(amp):
        graphed, eager = (_trainer(recipe, cache, kind, g, arch, amp) for g in (True, False))
        eager.objective.load_state_dict(graphed.objective.state_dict())
        assert graphed.graphs is not None and eager.graphs is None
        graphed.objective.train(), eager.objective.train()
        order = batches + batches[:1] + batches[::-1]
        for it, batch in enumerate(order):
            _copy_weights(graphed, eager)
            read = []
            for trainer in (graphed, eager):
                losses, loss = trainer.run_step(batch, it)
                read.append(PendingLosses(losses, loss).read())
                read.append([p.grad.clone() if p.grad is not None else None for p in trainer.objective.parameters()])
            (lg, tg), grads_g, (le, te), grads_e = read
            assert list(lg) == list(le) and len(lg) == (2 if kind == "plain" else 4)
            for name in le:
                assert lg[name] == pytest.approx(le[name], rel=loss_tol, abs=1e-6), (it, name)
            assert tg == pytest.approx(te, rel=loss_tol)
            for k, (a, b) in enumerate(zip(grads_g, grads_e, strict=True)):
                assert (a is None) == (b is None)
                if a is not None:
                    assert _relative(a, b) < grad_tol, (it, k, _relative(a, b))
            for (name, a), b in zip(graphed.objective.named_buffers(), eager.objective.buffers(), strict=True):
                if a.is_floating_point():
                    assert _relative(a, b) < grad_tol, (it, name)
                else:
                    assert torch.equal(a, b), (it, name)  # batch norms counted this step once, as eagerly
        assert graphed.graphs.captured == 3
        for it, batch in enumerate(batches, start=len(order)):
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                graphed.run_step(batch, it)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert graphed.graphs.captured == 3


@pytest.mark.parametrize(("kind", "amp"), [("cached", False), ("plain", False), ("cached", True), ("online", True),
                                           ("plain", True)])
def test_a_channels_last_training_step_on_the_gpu_equals_the_nchw_step(mixed_cache, tmp_path, kind, amp):
    """train.channels_last on the GPU, the step replayed as one CUDA graph (the default): the student's and the
    adapters' weights and gradients NHWC, and per step, from the same weights (copied in before each), the terms,
    sum and gradients of the NCHW trainer to the precision's rounding, the convolutions summing in another order.
    All the gradients are compared as one vector: a parameter whose gradient is a small sum of large terms of both
    signs (P6's and P7's, on grids of a few positions) differs more, relatively, however right both are. In float32
    (TF32 off) the two agree to float32's rounding in every step. In bf16 autocast they agree to bf16's in most
    steps; in a few (up to 2 of 6 in one run of session 24) the losses differed by up to 2e-3 and the gradients by up to
    0.15, so there the median step is held to bf16's tolerance and every step to a bound far below what a gradient
    laid out wrong gives (about 1.4)."""
    from frs_cli.train.loop import PendingLosses

    recipe, cache, batches = _step_batches(mixed_cache, tmp_path, "int8", kind)
    loss_tol, grad_tol = (5e-3, 2e-2) if amp else (1e-5, 1e-5)
    with _tf32(False):
        nhwc, nchw = (_trainer(recipe, cache, kind, True, None, amp, channels_last=c) for c in (True, False))
        nhwc.objective.load_state_dict(nchw.objective.state_dict())
        four_d = [p for p in nhwc.objective.parameters() if p.dim() == 4 and p.requires_grad]
        spatial = [p for p in nchw.objective.parameters() if p.dim() == 4 and p.requires_grad and p.shape[-1] > 1]
        assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
        assert spatial and not any(p.is_contiguous(memory_format=torch.channels_last) for p in spatial)
        differences = []
        for it, batch in enumerate(batches + batches[::-1]):
            _copy_weights(nhwc, nchw)
            read = []
            for trainer in (nhwc, nchw):
                losses, loss = trainer.run_step(batch, it)
                read.append(PendingLosses(losses, loss).read())
                read.append([p.grad.clone() for p in trainer.objective.parameters() if p.grad is not None])
            (ln, tn), gn, (lc, tc), gc = read
            assert list(ln) == list(lc) and len(ln) == (2 if kind == "plain" else 4)
            for name in lc:
                assert ln[name] == pytest.approx(lc[name], rel=loss_tol, abs=1e-6), (it, name)
            assert tn == pytest.approx(tc, rel=loss_tol)
            assert len(gn) == len(gc) > 0 and all(a.shape == b.shape for a, b in zip(gn, gc, strict=True))
            differences.append(_relative(torch.cat([a.float().flatten() for a in gn]),
                                         torch.cat([b.float().flatten() for b in gc])))
        if amp:
            assert sorted(differences)[len(differences) // 2] < grad_tol and max(differences) < 0.5, differences
        else:
            assert max(differences) < grad_tol, differences
        assert all(p.grad.is_contiguous(memory_format=torch.channels_last) for p in four_d)
        assert nhwc.graphs.captured == nchw.graphs.captured == 3


@pytest.mark.parametrize("kind", ["cached", "online"])
def test_the_teacher_side_of_a_graphed_step_runs_on_a_second_stream_and_gives_the_one_stream_numbers(
        mixed_cache, tmp_path, kind, monkeypatch):
    """distill.teacher_beside: in a step captured as one CUDA graph the teacher's side (the cached head on the
    decoded features, or the live teacher) runs on a stream of its own, beside the student's pass, and the step
    gives what it gives with both on one stream: the same terms and gradients (float32, TF32 off), captured and
    replayed over three batch shapes, in and out of order."""
    from frs_cli.train import objectives
    from frs_cli.train.loop import PendingLosses
    from frs_cli.train.objectives import student_pass

    recipe, cache, batches = _step_batches(mixed_cache, tmp_path, "int8", kind)
    with _tf32(False):
        two, one = (_trainer(recipe, cache, kind, True, None, False, beside=b) for b in (True, False))
        one.objective.load_state_dict(two.objective.state_dict())
        streams = {id(two): [], id(one): []}
        for trainer in (two, one):
            side, seen = trainer.objective.teacher_side, streams[id(trainer)]
            targets = side.graph_targets
            side.graph_targets = lambda *a, _t=targets, _s=seen: (_s.append(torch.cuda.current_stream()), _t(*a))[1]
        pass_streams = []

        def recorded_pass(*a):
            pass_streams.append(torch.cuda.current_stream())
            return student_pass(*a)

        monkeypatch.setattr(objectives, "student_pass", recorded_pass)
        for it, batch in enumerate(batches + batches[::-1] + batches):
            _copy_weights(two, one)
            read = []
            for trainer in (two, one):
                pass_streams.clear()
                losses, loss = trainer.run_step(batch, it)
                read.append(PendingLosses(losses, loss).read())
                read.append([p.grad.clone() for p in trainer.objective.parameters() if p.grad is not None])
                if pass_streams:  # captured now: the pass ran on the capture's stream
                    side = streams[id(trainer)][-1]
                    assert (side != pass_streams[-1]) is (trainer is two), it
            (l2, t2), g2, (l1, t1), g1 = read
            assert list(l2) == list(l1) and len(l2) == 4
            assert t2 == pytest.approx(t1, rel=1e-5)
            for name in l1:
                assert l2[name] == pytest.approx(l1[name], rel=1e-5, abs=1e-7), (it, name)
            assert len(g2) == len(g1) > 0
            for k, (a, b) in enumerate(zip(g2, g1, strict=True)):
                assert _relative(a, b) < 1e-5, (it, k, _relative(a, b))
        assert two.graphs.captured == one.graphs.captured == 3
        assert len(streams[id(two)]) >= 3 and len(streams[id(one)]) >= 3  # each capture ran the teacher's side


def test_distill_with_the_step_as_cuda_graphs_runs_whole_and_trains_as_the_eager_run(mixed_cache, tmp_path, monkeypatch):
    """``distill_student`` on the GPU, two epochs with evaluation and the model files, float32 (TF32 off): with
    train.cuda_graphs the one-canvas batches are replayed (some shapes captured, replays beyond them), the run
    ends whole, and its last losses and final weights are near those of the same run with every step eager. Near,
    not equal: two from-scratch runs whose steps differ in their last bits drift apart over the steps; step by step
    the two are equal to float32's rounding (``test_a_training_step_replayed_as_one_cuda_graph_equals_the_eager_step``).
    How far, measured (session 32, one H100): the eager run against a second eager run (its atomic sums make it
    differ from itself) 3.2 % in the last classification loss and 3.5 % in the feature term, 0.98 % in all weights
    as one vector; the graphed run against the eager one 1.8 %, 1.9 % and 0.96 % (0.3-0.8 % in the losses on an
    H200 earlier; one batch norm's bias alone by 8 %). A graph replaying stale weights or inputs is off by far more."""
    from frs_cli.dist import setup
    from frs_cli.train.run import distill_student
    from frs_cli.train.step_graphs import StepGraphs

    recipe, path, _ = mixed_cache("retinanet")
    counts = {"captures": 0, "replays": 0}
    capture, step = StepGraphs._capture, StepGraphs.step

    def counted_capture(self, *args):
        counts["captures"] += 1
        return capture(self, *args)

    def counted_step(self, *args):
        out = step(self, *args)
        counts["replays"] += out is not None
        return out

    monkeypatch.setattr(StepGraphs, "_capture", counted_capture)
    monkeypatch.setattr(StepGraphs, "step", counted_step)
    runs = {}
    with _tf32(False):
        for graphs in (True, False):
            r = replace(recipe, train=replace(recipe.train, epochs=2, batch_size=2, amp=False, cuda_graphs=graphs,
                                              lr_steps=(2,)))
            runs[graphs] = distill_student(r, tmp_path / f"graphs_{graphs}", cache=path, ctx=setup("cuda"))
            if graphs:
                seen = dict(counts)
    assert seen["captures"] >= 1 and seen["replays"] > seen["captures"], seen
    assert counts == seen  # the eager run made no StepGraphs step
    a, b = runs[True].fit, runs[False].fit
    assert a.iterations == b.iterations and a.eval_metrics is not None
    assert a.last_losses == pytest.approx(b.last_losses, rel=0.1)  # one batch's losses: eager vs eager differ by 3 %
    wa = torch.load(runs[True].model_file, map_location="cpu", weights_only=False)
    wb = torch.load(runs[False].model_file, map_location="cpu", weights_only=False)
    sa, sb = wa["model"], wb["model"]
    floats = [k for k, v in sb.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert floats
    # all weights as one vector: a small tensor alone (a batch norm's bias near zero) drifts by more (8 % once)
    assert _relative(torch.cat([sa[k].flatten() for k in floats]), torch.cat([sb[k].flatten() for k in floats])) < 3e-2


@pytest.mark.parametrize("name", ["int4", "int5", "int6"])
def test_packed_codes_unpack_on_the_gpu_as_on_the_cpu(name):
    """The cached step decodes packed codes on the device with int16 shifts: every byte value in every byte of a
    group gives the codes the CPU gives, and packed codes come back unchanged."""
    from frs_cli.cache.encoding import FeatureEncoding

    enc = FeatureEncoding(name)
    torch.manual_seed(0)
    a = torch.randint(0, 256, (3, enc.bits * 4, 16, 16), dtype=torch.uint8)
    for v in range(256):
        a[1, :, v // 16, v % 16] = v
    assert torch.equal(enc.unpack(a.cuda()).cpu(), enc.unpack(a))
    q = torch.randint(-(2 ** (enc.bits - 1)), 2 ** (enc.bits - 1), (2, 64, 5, 7), dtype=torch.int8)
    assert torch.equal(enc.unpack(enc.pack(q.cuda())).cpu(), q)


@pytest.mark.parametrize("name", ["int8", "int5"])
def test_the_one_pass_decode_on_the_gpu_gives_the_two_pass_numbers_and_the_head_takes_them_as_through_float32(name):
    """The cached step's decode (codes times scales straight into float16) gives, on the device, the bits of
    ``(codes.float() * scale).half()``; and the cached head under the teacher's bf16 autocast gives the same logits
    on those float16 features as on them cast to float32 first (what it did before)."""
    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.models import ModelConfig, build_cls_head, build_detector
    from frs_cli.train.objectives import CachedTeacher

    enc = FeatureEncoding(name)
    torch.manual_seed(0)
    x = torch.randn(2, 256, 24, 40, device="cuda") * torch.logspace(-2, 1, 256, device="cuda").view(1, 256, 1, 1)
    data, scale = enc.encode(x)
    codes = (enc.unpack(data) if enc.packed else data).float()
    y = enc.decode(data, scale)
    assert y.dtype == torch.float16 and torch.equal(y, (codes * scale[..., None, None]).half())
    detector = build_detector(ModelConfig(arch="retinanet_resnet50_fpn"), 80, load_weights=False)
    head = build_cls_head(detector.cls_head_spec())
    head.load_state_dict(detector.cls_head().state_dict())
    teacher = CachedTeacher(head, [8], enc).cuda()
    with torch.no_grad():
        got = teacher.head_logits([y])[0]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            want = teacher.cls_head([y.float()])[0]
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "view"])
def test_the_fused_frs_terms_on_the_gpu_equal_the_pytorch_form(layout, monkeypatch):
    """On CUDA ``losses.frs_losses`` runs the fused Triton terms: the same values (float32 rounding) and
    gradients (within a step of bfloat16) as the PyTorch form, at a RetinaNet's shapes (720 logits, 256
    channels, five levels of a 512 x 640 canvas), the student bf16, the teacher's logits bf16 and its cached
    features float16, in either layout, and the student's logits as views with gaps between the images (``view``:
    each level's rows of one ``(B, sum H*W*9, 80)`` tensor, the layout torchvision's heads hand their logits on in)."""
    from frs_cli import fused_losses, losses

    torch.manual_seed(0)
    grids = [(64, 80), (32, 40), (16, 20), (8, 10), (4, 5)]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format

    def levels(channels, dtype, scale, grad=False):
        return [(torch.randn(2, channels, h, w, device="cuda") * scale).to(dtype).contiguous(memory_format=fmt)
                .requires_grad_(grad) for h, w in grids]

    s_logits, t_logits = levels(720, torch.bfloat16, 3.0, True), levels(720, torch.bfloat16, 3.0)
    leaves = s_logits
    if layout == "view":  # the flat (B, sum H*W*9, 80) tensor is the leaf
        flat = (torch.randn(2, sum(h * w * 9 for h, w in grids), 80, device="cuda") * 3.0).to(torch.bfloat16)
        leaves = [flat.requires_grad_()]
        rows = flat.split([h * w * 9 for h, w in grids], dim=1)
        s_logits = [r.view(2, h, w, 720).permute(0, 3, 1, 2) for r, (h, w) in zip(rows, grids)]
        assert all(x.stride(0) == flat.stride(0) for x in s_logits)
    adapted, t_feats = levels(256, torch.bfloat16, 1.0, True), levels(256, torch.float16, 1.0)
    masks = [torch.rand(2, h, w, device="cuda") for h, w in grids]
    valid = [torch.rand(2, h, w, device="cuda") > 0.2 for h, w in grids]

    def run(enabled: bool):
        monkeypatch.setattr(fused_losses, "ENABLED", enabled)
        for x in (*leaves, *adapted):
            x.grad = None
        feature, head = losses.frs_losses(adapted, t_feats, s_logits, t_logits, masks, valid)
        (0.7 * feature + 1.3 * head).backward()
        return feature.item(), head.item(), [x.grad.clone() for x in (*leaves, *adapted)]

    assert fused_losses.usable(*s_logits, *t_logits)
    f_want, h_want, g_want = run(False)
    f_got, h_got, g_got = run(True)
    assert f_got == pytest.approx(f_want, rel=1e-5) and h_got == pytest.approx(h_want, rel=1e-5)
    for got, want in zip(g_got, g_want):
        assert got.dtype == want.dtype and got.stride() == want.stride()
        assert (got.float() - want.float()).abs().max() <= want.float().abs().max() * torch.finfo(torch.bfloat16).eps


@pytest.mark.parametrize("name", ["int8", "int6", "int5", "int4"])
def test_teacher_features_encode_on_the_gpu_in_one_kernel_to_the_bytes_the_cpu_gives(name, monkeypatch):
    """On CUDA ``FeatureEncoding.encode`` of a scaled encoding runs ``fused_encode``'s kernel (teacher-cache's last
    work on the device per level): from float32, bfloat16 and float16 features, the codes and bytes and scales the
    CPU gives, bit for bit, with exact ties between two codes, an all-zero channel and a level of 7x9 positions."""
    from frs_cli import fused_encode
    from frs_cli.cache.encoding import FeatureEncoding

    enc = FeatureEncoding(name)
    qmax = 2 ** (enc.bits - 1) - 1
    launched, kernel = [], fused_encode.encode_scaled
    monkeypatch.setattr(fused_encode, "encode_scaled", lambda *a: launched.append(a[2]) or kernel(*a))
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for h, w in ((100, 136), (7, 9)):
            x = torch.randn(3, 256, h, w) * 4
            x[0, 5] = 0
            steps = (torch.arange(-qmax, qmax).float() + 0.5) * 2.0 ** -4  # the half steps between codes
            x[1, 7] = 0
            x[1, 7].view(-1)[: min(steps.numel(), h * w - 1)] = steps[: h * w - 1]
            x[1, 7, -1, -1] = qmax * 2.0 ** -4
            x = x.to(dtype)
            want, want_scale = enc.encode(x)
            got, scale = enc.encode(x.cuda())
            assert got.dtype == want.dtype and got.is_contiguous()
            assert torch.equal(scale.cpu(), want_scale) and torch.equal(got.cpu(), want), (dtype, h, w)
    assert launched == [enc.bits] * 6 and fused_encode.usable(torch.zeros(1, device="cuda"))


@pytest.mark.parametrize("name", ["int4", "int5", "int6"])
def test_packed_codes_decode_on_the_gpu_in_one_kernel_to_the_bits_the_cpu_gives(name):
    """On CUDA ``FeatureEncoding.decode`` of packed codes runs ``fused_decode``'s kernel: every byte value in every
    byte of a group gives the float16 features the CPU gives, bit for bit, contiguous and channels-last, for a
    batch and for one view; bytes that do not fill whole groups get the CPU's error."""
    from frs_cli import fused_decode
    from frs_cli.cache.encoding import FeatureEncoding

    enc = FeatureEncoding(name)
    torch.manual_seed(0)
    a = torch.randint(0, 256, (3, enc.bits * 32, 20, 23), dtype=torch.uint8)
    for v in range(256):
        a[1, :, v // 23, v % 23] = v
    scale = torch.rand(3, 256) * 0.3 + 1e-3
    want = enc.decode(a, scale)
    assert fused_decode.usable(a.cuda())
    for channels_last in (False, True):
        got = enc.decode(a.cuda(), scale.cuda(), channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert got.dtype == torch.float16 and got.is_contiguous(memory_format=fmt)
        assert torch.equal(got.cpu(), want)
    assert torch.equal(enc.decode(a[2].cuda(), scale[2].cuda()).cpu(), want[2])
    from frs_cli.errors import CacheFormatError

    short = a[:, : enc.bits * 32 - 1].cuda()  # a byte short of whole groups: the CPU's message
    with pytest.raises(CacheFormatError, match=f"^cache unpack: expected a multiple of {enc.bits} bytes per position"):
        enc.decode(short, scale.cuda())
