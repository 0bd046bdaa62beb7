"""The objective's wiring: what ``FRSObjective`` returns is L_GT + w(t) * (alpha * L_FPN + beta * L_head), computed
here independently from the public loss functions and the configured numbers."""

from dataclasses import replace

import pytest
import torch

from frs_cli.data.coco import CocoViews, collate
from frs_cli.losses import feature_loss, frs_masks, head_loss
from frs_cli.models import build_detector
from frs_cli.train.objectives import FRSObjective, OnlineTeacher, valid_masks

ALPHA, BETA, WARMUP = 0.007, 0.03, 10  # alpha != beta, so swapping them shows


@pytest.mark.parametrize("step", [0, 3, 9, 10, 25])
def test_objective_is_gt_loss_plus_warmed_up_alpha_feature_plus_beta_head_loss(recipe, step):
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    batch = collate([coco[k] for k in [(0, "orig"), (4, "hflip"), (7, "orig")]])
    torch.manual_seed(0)
    student = build_detector(recipe.student, coco.index.num_classes).eval()  # fixed BN: two passes agree
    teacher = build_detector(recipe.teacher, coco.index.num_classes).eval()
    cfg = replace(recipe.distill, alpha=ALPHA, beta=BETA, warmup_iters=WARMUP, mask="frs")
    objective = FRSObjective(student, teacher.signature, OnlineTeacher(teacher), cfg)
    with torch.no_grad():
        got = objective(batch, step)

        s = student(batch.images, batch.image_sizes, batch.targets)
        t = teacher(batch.images, batch.image_sizes, detect=False)
        masks = frs_masks(t.cls_logits)
        valid = valid_masks(batch.image_sizes, s.features, student.strides)
        l_fpn = feature_loss(objective.adapters(s.features), t.features, masks, valid)
        l_head = head_loss(s.cls_logits, t.cls_logits, masks, valid)
    w = min(1.0, step / WARMUP)  # the official code's t / 500, here t / 10
    l_gt = sum(float(v) for v in s.losses.values())
    expected = l_gt + w * (ALPHA * float(l_fpn) + BETA * float(l_head))
    assert float(l_fpn) > 0 and float(l_head) > 0 and l_gt > 0
    assert set(got) == set(s.losses) | {"frs_feature", "frs_head"}
    torch.testing.assert_close(float(sum(got.values())), expected, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(float(got["frs_feature"]), w * ALPHA * float(l_fpn), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(float(got["frs_head"]), w * BETA * float(l_head), rtol=1e-6, atol=0.0)


def test_valid_masks_mark_each_images_own_positions_on_every_level():
    """Per image and level exactly the positions over its real pixels (ceil of size / stride, capped by the grid)."""
    sizes = [(64, 40), (33, 64), (17, 9)]
    features = [torch.zeros(3, 2, 8, 8), torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 1, 1)]
    masks = valid_masks(sizes, features, [8, 16, 64])
    for m, f, s in zip(masks, features, [8, 16, 64]):
        assert m.dtype == torch.bool and m.shape == (3, *f.shape[-2:])
        for i, (h, w) in enumerate(sizes):
            expected = torch.zeros(f.shape[-2:], dtype=torch.bool)
            expected[: min(-(-h // s), f.shape[-2]), : min(-(-w // s), f.shape[-1])] = True
            assert torch.equal(m[i], expected), (s, i)


def test_distill_builds_the_cached_head_with_the_recipes_cuda_graphs_switch(recipe, cache_path, tmp_path, monkeypatch):
    """distill.cuda_graphs reaches the cached teacher side (default on; it only changes how CUDA launches it)."""
    from frs_cli.train import run
    from frs_cli.train.objectives import CachedTeacher

    seen = []

    class Built(Exception):
        pass

    def from_cache(cache, cuda_graphs=False):
        seen.append(cuda_graphs)
        raise Built

    monkeypatch.setattr(CachedTeacher, "from_cache", staticmethod(from_cache))
    assert recipe.distill.cuda_graphs is True
    for value, out in ((True, "on"), (False, "off")):
        r = replace(recipe, distill=replace(recipe.distill, cuda_graphs=value))
        with pytest.raises(Built):
            run.distill_student(r, tmp_path / out, cache=cache_path)
    assert seen == [True, False]


def _cached_objective(recipe, cache_path, cuda_graphs: bool):
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.train.objectives import CachedTeacher

    cache = TeacherCache(cache_path)
    torch.manual_seed(0)
    student = build_detector(recipe.student, CocoViews.from_config(recipe.data, "train", recipe.geometry).index.num_classes).eval()
    cfg = replace(recipe.distill, alpha=ALPHA, beta=BETA, warmup_iters=0, mask="frs")
    return FRSObjective(student, cache.signature, CachedTeacher.from_cache(cache, cuda_graphs=cuda_graphs), cfg)


def _one_canvas_batch(recipe, cache_path):
    """Two cached views of one canvas (the batches ``distill.cuda_graphs`` replays)."""
    from frs_cli.cache.reader import CachedViews, TeacherCache

    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    keys = [(p, v) for p in range(len(coco)) for v in ("orig", "hflip")]
    size = coco.geometry_of(*keys[0]).padded_size
    same = [k for k in keys if coco.geometry_of(*k).padded_size == size][:2]
    assert len(same) == 2
    return collate([CachedViews(coco, TeacherCache(cache_path))[k] for k in same])


def _terms_and_grads(objective, batch):
    objective.zero_grad(set_to_none=True)
    losses = objective(batch, 10)
    (losses["frs_feature"] + losses["frs_head"]).backward()
    grads = [p.grad.clone() for p in [*objective.adapters.parameters(), *objective.student.parameters()]
             if p.grad is not None]
    return [losses["frs_feature"].detach(), losses["frs_head"].detach()], grads


def test_cached_side_runs_eagerly_on_the_cpu_even_with_cuda_graphs(recipe, cache_path):
    batch = _one_canvas_batch(recipe, cache_path)
    graphed, eager = _cached_objective(recipe, cache_path, True), _cached_objective(recipe, cache_path, False)
    assert not graphed.teacher_side.graphed(batch) and graphed._graphs is not None and eager._graphs is None
    (ta, ga), (tb, gb) = _terms_and_grads(graphed, batch), _terms_and_grads(eager, batch)
    for x, y in zip(ta + ga, tb + gb):
        assert torch.equal(x, y)
    assert graphed._graphs._graphs == {}


def test_the_captured_function_is_the_eager_cached_objective_in_value_and_gradient(recipe, cache_path, monkeypatch):
    """What ``distill.cuda_graphs`` captures (``frs_terms``: decode, cached head, adapters from explicit weights,
    both terms) against the eager objective: the same terms and the same gradients of the adapters and the
    student. The capture itself is faked on the CPU (a graph of ``fn`` replays ``fn``); the first batch of a shape
    runs eagerly and captures, the second goes through the capture with the inputs in the same order."""
    import frs_cli.train.graphed as graphed_module

    batch = _one_canvas_batch(recipe, cache_path)
    eager = _cached_objective(recipe, cache_path, False)
    graphed = _cached_objective(recipe, cache_path, True)
    graphed.adapters.load_state_dict(eager.adapters.state_dict())
    captured, examples_bytes = [], []

    class FakeGraph:  # on the CPU: a "graph" of fn that replays fn on the inputs it is handed
        def __init__(self, fn, examples, pool):
            captured.append([tuple(t.shape) for t in examples])
            examples_bytes.append([t.numel() * t.element_size() for t in examples])
            self.fn, self.count = fn, len(examples)

        def __call__(self, *xs):
            assert len(xs) == self.count
            return self.fn(*xs)

    monkeypatch.setattr(graphed_module, "_TrainingGraph", FakeGraph)
    monkeypatch.setattr(graphed_module.torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(graphed_module.torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(type(graphed.teacher_side), "graphed", lambda self, b: True)
    want_terms, want_grads = _terms_and_grads(eager, batch)
    assert want_terms[0] > 0 and want_terms[1] > 0
    for call in range(2):
        terms, grads = _terms_and_grads(graphed, batch)
        assert len(captured) == 1  # captured once, on the first batch of the shape
        assert len(grads) == len(want_grads)
        for x, y in zip(terms + grads, want_terms + want_grads):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    n, scaled = len(graphed.adapters.convs), batch.teacher.scales is not None
    # student features and logits, cached features (and scales), masks, the image sizes, adapter weights
    assert len(captured[0]) == (4 + scaled) * n + 1 + 2 * n
    assert captured[0][(4 + scaled) * n] == (len(batch.image_sizes), 2)  # the sizes; the graph makes the positions
    # the graph holds the per-layout constants it reads, the very tensors the losses' caches hand out
    from frs_cli.losses import position_grid, position_pixels

    graph, = graphed._graphs._graphs.values()
    grids = tuple(tuple(int(x) for x in m.shape[-2:]) for m in batch.teacher.masks)
    held = [*graph.constants[0], *graph.constants[1]]
    assert len(held) == 5 and all(a is b for a, b in zip(held, [*position_grid(grids, torch.device("cpu")),
                                                               *position_pixels(grids, (8, 16, 32, 64, 128),
                                                                                torch.device("cpu"))]))
    # the capture's memory, with memory_reserved reading 0 here, is at least its own inputs (not the parameters)
    assert graphed._graphs._graph_bytes == sum(examples_bytes[0][: -2 * n]) > 0


def test_feature_graphs_stop_at_their_count_and_memory_limits(recipe, cache_path):
    """Each graph keeps its inputs, intermediates and gradients allocated: past MAX_GRAPHS graphs or
    MAX_GRAPH_BYTES, shapes run eagerly."""
    objective = _cached_objective(recipe, cache_path, True)
    terms = objective._graphs
    terms.MAX_GRAPHS, terms.MAX_GRAPH_BYTES = 2, 1000
    assert terms.may_capture()
    terms._graphs, terms._graph_bytes = {("a",): object(), ("b",): None}, 600
    assert terms.may_capture()  # the failed capture (None) holds nothing
    terms._graph_bytes = 1000
    assert not terms.may_capture()  # the memory is spent
    terms._graphs[("c",)], terms._graph_bytes = object(), 0
    assert not terms.may_capture()  # two graphs: the count is reached


def test_positions_within_the_image_sizes_are_the_level_valid_sizes_for_any_size_and_stride():
    """``positions_within`` (what the graph computes from the sizes): ``r * s < h`` against ``r <
    min(grid, ceil(h / s))`` by loops, for sizes of every remainder by the strides, up to each grid's full extent."""
    from frs_cli.data.geometry import level_grid_size, level_valid_size
    from frs_cli.losses import positions_within

    gen = torch.Generator().manual_seed(0)
    canvas, strides = (200, 136), [8, 16, 32, 64, 128]
    grids = [level_grid_size(canvas, s.bit_length() - 1) for s in strides]
    sizes = [(int(h), int(w)) for h, w in torch.randint(1, 201, (12, 2), generator=gen)]
    sizes = [(min(h, canvas[0]), min(w, canvas[1])) for h, w in sizes] + [canvas, (1, 1), (129, 65)]
    got = positions_within(torch.tensor(sizes), grids, strides)
    want = torch.cat([torch.tensor([[[r < level_valid_size(size, s, g)[0] and c < level_valid_size(size, s, g)[1]
                                      for c in range(g[1])] for r in range(g[0])] for size in sizes]).flatten(1)
                      for g, s in zip(grids, strides)], 1)
    assert got.shape == want.shape == (len(sizes), sum(h * w for h, w in grids))
    assert torch.equal(got, want) and 0 < int(got.sum()) < got.numel()


def test_valid_positions_are_the_valid_masks_side_by_side():
    from frs_cli.train.objectives import valid_positions

    sizes = [(64, 40), (33, 64), (17, 9), (64, 64)]
    grids = [(8, 8), (4, 4), (2, 2), (1, 1)]
    strides = [8, 16, 32, 64]
    flat = valid_positions(sizes, grids, strides, torch.device("cpu"))
    per_level = valid_masks(sizes, [torch.zeros(4, 1, *g) for g in grids], strides)
    assert flat.dtype == torch.bool and flat.shape == (4, 64 + 16 + 4 + 1)
    assert torch.equal(flat, torch.cat([m.flatten(1) for m in per_level], 1))
    expected = torch.zeros(4, 64 + 16 + 4 + 1, dtype=torch.bool)  # by loops: level, row, column, image
    start = 0
    for (gh, gw), s in zip(grids, strides):
        for r in range(gh):
            for c in range(gw):
                for i, (h, w) in enumerate(sizes):
                    expected[i, start + r * gw + c] = r < min(-(-h // s), gh) and c < min(-(-w // s), gw)
        start += gh * gw
    assert torch.equal(flat, expected)
    assert not flat[2].all() and flat[3].all()


def test_losses_take_valid_positions_side_by_side_or_per_level_alike():
    from frs_cli.losses import frs_losses
    from frs_cli.train.objectives import valid_positions

    g = torch.Generator().manual_seed(3)
    grids, strides, sizes = [(6, 4), (3, 2)], [8, 16], [(48, 20), (30, 32)]
    s = [torch.randn(2, 3, *x, generator=g) for x in grids]
    t = [torch.randn(2, 3, *x, generator=g) for x in grids]
    m = [torch.rand(2, *x, generator=g) for x in grids]
    z = [torch.randn(2, 5, *x, generator=g) for x in grids]
    zt = [torch.randn(2, 5, *x, generator=g) for x in grids]
    per_level = valid_masks(sizes, s, strides)
    flat = valid_positions(sizes, grids, strides, torch.device("cpu"))
    a, b = frs_losses(s, t, z, zt, m, per_level), frs_losses(s, t, z, zt, m, flat)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0], feature_loss(s, t, m, per_level))
    with pytest.raises(Exception, match="valid positions"):
        frs_losses(s, t, z, zt, m, flat[:, :-1])
