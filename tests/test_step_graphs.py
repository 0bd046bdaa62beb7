"""train.cuda_graphs on the CPU: the tensor-only step a CUDA graph captures (``graph_inputs`` / ``graph_terms`` /
``term_weights`` and ``StepGraphs._run``) gives the eager step's terms, sum and gradients. The capture and replay
themselves are in tests/test_gpu.py."""

from dataclasses import replace

import pytest
import torch
from conftest import one_canvas_batches

from frs_cli.models import ModelConfig, build_detector
from frs_cli.models.retinanet_loss import PaddedTargets, pad_targets
from frs_cli.train.objectives import (
    CachedTeacher,
    FRSObjective,
    GTObjective,
    OnlineTeacher,
    box_rows,
    image_sizes_on,
)
from frs_cli.train.step_graphs import StepGraphs


def test_box_rows_are_powers_of_two_from_eight():
    assert [box_rows(n) for n in (0, 1, 7, 8, 9, 16, 17, 33, 100)] == [8, 8, 8, 8, 16, 16, 32, 64, 128]


@pytest.mark.parametrize("norm", ["imagenet_rgb", "detectron_bgr"])
def test_normalize_within_gives_normalizes_values_from_a_sizes_tensor(norm):
    d = build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 3)
    d.set_pixel_norm(norm)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8)
    sizes = [(64, 96), (40, 96), (50, 70)]
    within = d.normalize_within(images, image_sizes_on(sizes, images.device))
    torch.testing.assert_close(within, d.normalize(images, sizes), rtol=0, atol=0)
    assert float(within[2, :, 50:].abs().sum()) == 0.0 and float(within[2, :, :, 70:].abs().sum()) == 0.0


@pytest.mark.parametrize("arch", ["retinanet_tiny_fpn", "retinanet_resnet18_fpn"])  # GIoU and L1 box losses
def test_padding_the_boxes_beyond_the_largest_count_changes_no_gt_term(arch):
    torch.manual_seed(0)
    d = build_detector(ModelConfig(arch=arch, anchor_size=16), 3).train()
    images = torch.rand(2, 3, 128, 160)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 90.0], [40.0, 20.0, 120.0, 100.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    padded = pad_targets(targets, images.device, rows=16)
    assert isinstance(padded, PaddedTargets) and padded.boxes.shape == (2, 16, 4)
    assert padded.valid.sum(1).tolist() == [2, 0]
    with torch.no_grad():
        a = d(images, [(128, 160), (120, 150)], targets).losses
        b = d(images, [(128, 160), (120, 150)], padded).losses
    assert set(a) == set(b) == {"classification", "bbox_regression"}
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)


def _objective(kind: str, recipe, cache, seed: int = 0):
    torch.manual_seed(seed)
    student = build_detector(recipe.student, 5)
    cfg = replace(recipe.distill, warmup_iters=10)  # step 3: the FRS weights 0.3 of alpha and beta
    if kind == "plain":
        return GTObjective(student)
    if kind == "online":
        return FRSObjective(student, cache.signature, OnlineTeacher(build_detector(recipe.teacher, 5), autocast=False),
                            cfg)
    return FRSObjective(student, cache.signature, CachedTeacher.from_cache(cache), cfg)


@pytest.mark.parametrize("kind", ["plain", "cached", "online"])
def test_the_step_a_graph_captures_gives_the_eager_steps_terms_sum_and_gradients(kind, mixed_cache):
    """``StepGraphs._run`` (what a capture records) on ``graph_inputs``' tensors against ``forward`` and the
    trainer's sum and backward, for the GT objective and FRS with the cached and the live teacher; batch norms
    train (the student from scratch) and their running statistics move as in the eager step."""
    from frs_cli.cache.reader import TeacherCache

    recipe, path, _ = mixed_cache("retinanet")
    cache = TeacherCache(path)
    batches, mixed = one_canvas_batches(recipe, cache)
    assert len(batches) == 3
    eager, graphed = _objective(kind, recipe, cache), _objective(kind, recipe, cache)
    graphed.load_state_dict(eager.state_dict())
    eager.train(), graphed.train()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in eager.student.modules())
    steps = StepGraphs(graphed)
    for batch in batches:
        if kind == "plain":
            batch = replace(batch, teacher=None)
        losses = eager(batch, 3)
        loss = sum(losses.values())
        eager.zero_grad(set_to_none=True)
        loss.backward()

        inputs = graphed.graph_inputs(batch)
        assert inputs is not None and inputs[3].shape[1] == 8  # the boxes padded to 8 rows
        weights = graphed.term_weights(3)
        statics = [*inputs, torch.tensor(list(weights.values()), dtype=torch.float32)]
        names, terms, total, has_grad = steps._run(statics, list(weights), (False, torch.bfloat16), steps._stand_ins())
        assert names == list(losses)
        if kind != "plain":
            assert names[-2:] == ["frs_feature", "frs_head"] and weights["frs_feature"] == 0.3 * recipe.distill.alpha
        for name, term in zip(names, terms):
            torch.testing.assert_close(term, losses[name], rtol=1e-6, atol=0)
        torch.testing.assert_close(total, loss, rtol=1e-6, atol=0)
        eager_params = dict(eager.named_parameters())
        for (name, p), grad, has in zip(steps._named, steps._grads, has_grad):
            ref = eager_params[name].grad
            assert has == (ref is not None), name
            if has:
                torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-7)
        for (name, a), b in zip(eager.named_buffers(), graphed.buffers()):
            torch.testing.assert_close(b, a, rtol=0, atol=0)  # running statistics moved alike
    if kind != "plain":
        assert graphed.graph_inputs(mixed) is None  # a batch of several canvases runs eagerly


def test_only_one_canvas_retinanet_batches_with_frs_masks_take_the_graph_path(mixed_cache):
    from frs_cli.cache.reader import TeacherCache

    recipe, path, _ = mixed_cache("retinanet")
    cache = TeacherCache(path)
    batches, mixed = one_canvas_batches(recipe, cache)
    obj = _objective("cached", recipe, cache)
    assert obj.graph_inputs(batches[0]) is not None and obj.graph_inputs(mixed) is None
    gt_masks = FRSObjective(obj.student, cache.signature, CachedTeacher.from_cache(cache),
                            replace(recipe.distill, mask="gt"))
    assert gt_masks.graph_inputs(batches[0]) is None
    assert GTObjective(obj.student).graph_inputs(batches[0]) is not None
    assert GTObjective(build_detector(ModelConfig(arch="fcos_tiny_fpn"), 5)).graph_inputs(batches[0]) is None
    steps = StepGraphs(GTObjective(obj.student).train())
    assert steps.step(batches[0], 0) is None and steps.captured == 0  # not on CUDA: eager


@pytest.mark.parametrize("kind", ["plain", "cached"])
def test_the_trainers_step_through_step_graphs_sets_the_gradients_and_updates_as_the_eager_step(kind, mixed_cache):
    """``Trainer.run_step`` with ``StepGraphs`` (here run eagerly: ``capture=False``) against the trainer without:
    the same terms and sum at every step (the FRS weights ramping up over the warm-up), the same ``.grad`` of every
    parameter and the same weights and batch-norm statistics after the SGD updates."""
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.data.coco import CocoViews
    from frs_cli.dist import setup
    from frs_cli.train.loop import PendingLosses, Trainer

    recipe, path, _ = mixed_cache("retinanet")
    cache = TeacherCache(path)
    batches, _ = one_canvas_batches(recipe, cache)
    if kind == "plain":
        batches = [replace(b, teacher=None) for b in batches]
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    cfg = replace(recipe.train, batch_size=2, warmup_iters=3, lr=0.01)
    trainers = [Trainer(_objective(kind, recipe, cache), coco, cfg, setup("cpu"), ("orig", "hflip")) for _ in range(2)]
    graphed, eager = trainers
    eager.objective.load_state_dict(graphed.objective.state_dict())
    assert graphed.graphs is None  # not on CUDA
    graphed.graphs = StepGraphs(graphed.objective, capture=False)
    held = [id(p) for p in graphed.objective.parameters()]
    for it, batch in enumerate(batches + batches[::-1]):
        read = []
        for trainer in trainers:
            trainer.objective.train()
            losses, loss = trainer.run_step(batch, it)
            read.append((PendingLosses(losses, loss).read(), [p.grad for p in trainer.objective.parameters()]))
        ((lg, tg), grads_g), ((le, te), grads_e) = read
        assert lg == pytest.approx(le, rel=1e-5) and tg == pytest.approx(te, rel=1e-5)
        assert list(lg) == list(le)
        names = [n for n, _ in graphed.objective.named_parameters()]
        for name, a, b in zip(names, grads_g, grads_e, strict=True):
            assert (a is None) == (b is None), (it, name)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the stand-ins a step runs on are gone after it: the modules hold their own parameters (the classification
    # head, reached by two paths, too), which the optimizer updates
    assert [id(p) for p in graphed.objective.parameters()] == held
    assert all(type(p) is torch.nn.Parameter for p in graphed.objective.parameters())
    for (name, a), b in zip(graphed.objective.state_dict().items(), eager.objective.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("graphs", [False, True])
def test_train_channels_last_lays_out_what_trains_channels_last_and_steps_as_before(graphs, mixed_cache):
    """train.channels_last: the student's and the adapters' 4-D weights (and so their gradients, and the step graphs'
    shared gradient buffers) are channels-last, the teacher's side is left as built, and the steps give the terms
    and weights of the same trainer without it, to float32's rounding (the convolutions sum in another order)."""
    # two threads, as the suite runs by default: this tiny student's heads normalise P7's 1x1 map in groups of two
    # values, which amplifies the two layouts' rounding; on one thread their CPU kernels round apart (1e-5 in the
    # first gradients), and six steps later tensors differ by up to 7 % of their largest value (a batch norm's bias); on two they agree
    # to 1e-6, so the weights are compared to float32's rounding here
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _steps_channels_last_and_not(graphs, mixed_cache)
    finally:
        torch.set_num_threads(threads)


def _steps_channels_last_and_not(graphs, mixed_cache):
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.data.coco import CocoViews
    from frs_cli.dist import setup
    from frs_cli.train.loop import PendingLosses, Trainer

    recipe, path, _ = mixed_cache("retinanet")
    cache = TeacherCache(path)
    batches, _ = one_canvas_batches(recipe, cache)
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    trainers = []
    for channels_last in (True, False):
        cfg = replace(recipe.train, batch_size=2, warmup_iters=3, lr=0.01, channels_last=channels_last)
        trainers.append(Trainer(_objective("cached", recipe, cache), coco, cfg, setup("cpu"), ("orig", "hflip")))
    nhwc, nchw = trainers
    nhwc.objective.load_state_dict(nchw.objective.state_dict())
    four_d = [p for p in nhwc.objective.parameters() if p.dim() == 4 and p.requires_grad]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    head = [p for p in nhwc.objective.teacher_side.parameters() if p.dim() == 4]
    assert head and all(p.is_contiguous() for p in head)  # the cached teacher's head as built
    if graphs:
        nhwc.graphs = StepGraphs(nhwc.objective, capture=False)
    for it, batch in enumerate(batches):
        read = []
        for trainer in trainers:
            trainer.objective.train()
            losses, loss = trainer.run_step(batch, it)
            read.append(PendingLosses(losses, loss).read())
        assert read[0][0] == pytest.approx(read[1][0], rel=1e-4) and read[0][1] == pytest.approx(read[1][1], rel=1e-4)
    assert all(p.grad.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    for (name, a), b in zip(nhwc.objective.state_dict().items(), nchw.objective.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["cached", "online"])
def test_the_graphed_terms_run_the_teacher_side_once_through_the_side_stream_and_read_what_it_returned(
        kind, mixed_cache, monkeypatch):
    """``FRSObjective.graph_terms`` (what a step graph captures) starts the teacher's side through its ``SideStream``
    (``distill.teacher_beside``) before the student's pass, joins it on what it returned, and hands that to
    ``graph_frs``: the teacher's side runs once a step. Off CUDA the stream is no stream: ``start`` calls the
    function where it stands and ``join`` does nothing."""
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.streams import SideStream
    from frs_cli.train import objectives

    recipe, path, _ = mixed_cache("retinanet")
    cache = TeacherCache(path)
    batches, _ = one_canvas_batches(recipe, cache)
    obj = _objective(kind, recipe, cache).train()
    side = obj.teacher_side
    calls = []
    targets_of, frs_of, pass_of = side.graph_targets, side.graph_frs, objectives.student_pass
    start, join = SideStream.start, SideStream.join

    def graph_targets(*a):
        calls.append("targets")
        calls.append(out := targets_of(*a))
        return out

    monkeypatch.setattr(side, "graph_targets", graph_targets)
    monkeypatch.setattr(side, "graph_frs", lambda *a: (calls.append(("frs", a[-1])), frs_of(*a))[1])
    monkeypatch.setattr(objectives, "student_pass", lambda *a: (calls.append("pass"), pass_of(*a))[1])
    monkeypatch.setattr(SideStream, "start", lambda self, *a: (calls.append(("start", self)), start(self, *a))[1])
    monkeypatch.setattr(SideStream, "join", lambda self, t: (calls.append(("join", t)), join(self, t))[1])
    terms = obj.graph_terms(*obj.graph_inputs(batches[0]))
    assert {"frs_feature", "frs_head"} <= set(terms) and all(torch.isfinite(t) for t in terms.values())
    returned = calls[2]
    assert isinstance(returned, list) and len(returned) == (10 if kind == "cached" else 15)  # features, logits[, masks]
    assert calls[0] == ("start", obj._beside) and calls[1] == "targets" and calls[3] == "pass"
    assert calls[4][0] == "join" and calls[4][1] is returned
    assert calls[5][0] == "frs" and calls[5][1] is returned and len(calls) == 6  # the side ran once

    second = SideStream()
    assert second.start(torch.device("cpu"), lambda x: x + 1, 1) == 2 and second._pending is None
    second.join([torch.ones(1)])  # nothing to wait for
    assert SideStream(enabled=False).start(torch.device("cuda"), lambda: "ran here") == "ran here"
