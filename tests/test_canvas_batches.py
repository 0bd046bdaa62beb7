"""Batches of one canvas (``frs_cli.data.canvas_batches``) and ``train.group_by_canvas`` in train and distill."""

import dataclasses
import json
import os
import signal
from collections import Counter
from itertools import pairwise

import pytest
import torch
from conftest import MIXED_GEOMETRY, save_random_model, write_recipe
from typer.testing import CliRunner

from frs_cli.cli.app import app
from frs_cli.config import load_recipe
from frs_cli.data.canvas_batches import CanvasBatchSampler, canvas_batches, view_canvases
from frs_cli.data.coco import CocoViews, ViewSampler
from frs_cli.dist import setup
from frs_cli.errors import DataError, Interrupted
from frs_cli.models import build_detector
from frs_cli.train.hooks import Hook
from frs_cli.train.loop import fit, flip_views
from frs_cli.train.objectives import GTObjective
from frs_cli.train.run import distill_student, train_detector

VIEWS = ("orig", "hflip")
SIZES = [(64, 64), (96, 64), (64, 96), (128, 96)]


def _table(n: int, seed: int = 0) -> dict:
    """A hand-built canvas per (position, view) of ``n`` images: four canvases of uneven shares, flips alike."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(torch.tensor([0.5, 0.3, 0.15, 0.05]), n, replacement=True, generator=g).tolist()
    return {(p, v): SIZES[k] for p, k in enumerate(picks) for v in VIEWS}


def _epoch_items(n, epoch, seed=0, rank=0, world_size=1, views=VIEWS):
    s = ViewSampler(n, views, seed=seed, rank=rank, world_size=world_size)
    s.set_epoch(epoch)
    return list(s)


def _plain(n, batch_size, epoch, seed=0, start=0, rank=0, world_size=1, views=VIEWS):
    """What the trainer's DataLoader(sampler=ViewSampler, batch_size, drop_last=True) gave before grouping."""
    s = ViewSampler(n, views, seed=seed, rank=rank, world_size=world_size)
    s.set_epoch(epoch, start=start)
    return [list(b) for b in torch.utils.data.BatchSampler(s, batch_size, drop_last=True)]


def _sampler(n, batch_size, canvases, seed=0, rank=0, world_size=1, views=VIEWS):
    return CanvasBatchSampler(ViewSampler(n, views, seed=seed, rank=rank, world_size=world_size), batch_size, canvases)


def _one_canvas_batches(items, canvas_of, batch_size) -> int:
    """How many batches the per-canvas queues fill in an epoch of ``items``: sum over canvases of count // B."""
    return sum(c // batch_size for c in Counter(canvas_of(k) for k in items).values())


# ----------------------------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("batch_size", [2, 8, 16])
@pytest.mark.parametrize("epoch", [0, 3])
def test_every_batch_but_the_leftovers_holds_one_canvas_and_the_count_is_len_over_batch(batch_size, epoch):
    n, table = 203, _table(203)
    s = _sampler(n, batch_size, table)
    s.set_epoch(epoch)
    batches = list(s)
    items = _epoch_items(n, epoch)
    assert len(batches) == len(s) == n // batch_size
    assert all(len(b) == batch_size for b in batches)
    grouped = _one_canvas_batches(items, table.get, batch_size)
    assert all(len({table[k] for k in b}) == 1 for b in batches[:grouped])
    # the leftovers: fewer than a batch of each canvas, chained canvas by canvas, so a canvas runs contiguously
    tail = [table[k] for b in batches[grouped:] for k in b]
    assert all(c < batch_size for c in Counter(tail).values())
    assert sum(a != b for a, b in pairwise(tail)) <= len(set(tail)) - 1
    assert len(batches) - grouped <= len(SIZES) - 1  # at most (canvases - 1) batches cut from the leftovers


@pytest.mark.parametrize("batch_size", [4, 8, 16])
def test_each_key_appears_once_and_the_union_is_the_epoch_less_the_dropped_tail(batch_size):
    n, table = 203, _table(203, seed=1)
    s = _sampler(n, batch_size, table)
    s.set_epoch(1)
    keys = [k for b in s for k in b]
    items = _epoch_items(n, 1)
    assert len(keys) == len(set(keys)) == (n // batch_size) * batch_size
    assert set(keys) <= set(items)
    # the dropped keys are the end of the leftovers: per canvas (in the order canvases first appear) its last
    # count % B keys of the epoch, chained
    order = list(dict.fromkeys(table[k] for k in items))
    chained = []
    for size in order:
        mine = [k for k in items if table[k] == size]
        chained += mine[len(mine) - len(mine) % batch_size :]
    assert set(items) - set(keys) == set(chained[len(chained) - n % batch_size :])
    assert n % batch_size > 0  # 203 is odd: something is dropped


def test_the_order_follows_the_view_sampler_within_each_canvas():
    n, table = 120, _table(120, seed=2)
    s = _sampler(n, 8, table)
    s.set_epoch(2)
    batches = list(s)
    grouped = _one_canvas_batches(_epoch_items(n, 2), table.get, 8)
    rank = {k: i for i, k in enumerate(_epoch_items(n, 2))}
    for size in SIZES:
        seq = [rank[k] for b in batches[:grouped] for k in b if table[k] == size]
        assert seq == sorted(seq), size  # each queue keeps the epoch's order


def test_batches_are_determined_by_seed_and_epoch():
    n, table = 150, _table(150)

    def epoch_of(seed, epoch):
        s = _sampler(n, 8, table, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert epoch_of(3, 2) == epoch_of(3, 2)
    assert epoch_of(3, 2) != epoch_of(3, 1)
    assert epoch_of(3, 2) != epoch_of(4, 2)
    s = _sampler(n, 8, table, seed=3)
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(5)
    list(s)
    s.set_epoch(2)
    assert list(s) == first  # no state carried from one epoch to the next


def test_ranks_of_two_processes_get_disjoint_batches_of_their_own_items():
    n, table = 200, _table(200, seed=4)  # even: no wrap padding, so the two ranks share no item
    per_rank = []
    for rank in range(2):
        s = _sampler(n, 8, table, rank=rank, world_size=2)
        s.set_epoch(1)
        batches = list(s)
        own = _epoch_items(n, 1, rank=rank, world_size=2)
        assert len(batches) == len(s) == len(own) // 8 == 12
        assert {k for b in batches for k in b} <= set(own)
        grouped = _one_canvas_batches(own, table.get, 8)
        assert all(len({table[k] for k in b}) == 1 for b in batches[:grouped])
        per_rank.append({k for b in batches for k in b})
    assert not per_rank[0] & per_rank[1]
    odd = [len(_sampler(201, 8, _table(201), rank=r, world_size=2)) for r in range(2)]
    assert odd == [12, 12]  # both ranks step the same number of times (101 items each, wrapped)


@pytest.mark.parametrize("world_size", [1, 2])
def test_one_canvas_gives_exactly_the_plain_batches_from_any_start(world_size):
    n = 97
    table = {(p, v): (64, 64) for p in range(n) for v in VIEWS}
    for rank in range(world_size):
        s = _sampler(n, 8, table, seed=7, rank=rank, world_size=world_size)
        for epoch in (0, 1, 4):
            for start in (0, 8, 24):
                s.set_epoch(epoch, start=start)
                assert list(s) == _plain(n, 8, epoch, seed=7, start=start, rank=rank, world_size=world_size)


def test_the_switch_off_gives_the_plain_batches_of_a_mixed_set():
    n = 203
    s = _sampler(n, 8, None)
    s.set_epoch(3)
    assert list(s) == _plain(n, 8, 3)
    grouped = _sampler(n, 8, _table(n))
    grouped.set_epoch(3)
    assert list(grouped) != list(s)  # the mixed set is one where grouping changes the batches


def test_start_skips_whole_batches_so_a_resumed_epoch_sees_the_batches_it_had_not_seen():
    n, table = 150, _table(150)
    s = _sampler(n, 8, table)
    s.set_epoch(2)
    full = list(s)
    for steps in (0, 1, 7, 18):
        s.set_epoch(2, start=steps * 8)
        assert list(s) == full[steps:]
    with pytest.raises(DataError, match=r"^start: expected a whole number of batches of 8 items, got 12$"):
        s.set_epoch(2, start=12)


def test_canvas_batches_of_hand_made_items():
    items = [(0, "orig"), (1, "orig"), (2, "orig"), (3, "orig"), (4, "orig"), (5, "orig"), (6, "orig")]
    canvas = {0: "a", 1: "b", 2: "a", 3: "c", 4: "b", 5: "a", 6: "b"}
    got = canvas_batches(items, lambda k: canvas[k[0]], 2)
    # queues fill a:[0,2] b:[1,4]; leftovers a:[5] b:[6] c:[3] chained a, b, c (first seen order) -> [5,6]; 3 dropped
    assert got == [[(0, "orig"), (2, "orig")], [(1, "orig"), (4, "orig")], [(5, "orig"), (6, "orig")]]


def test_the_sampler_refuses_a_table_without_a_key_and_a_batch_of_zero():
    table = _table(10)
    del table[(4, "hflip")]
    with pytest.raises(DataError, match=r"^canvases: expected one for every view the sampler yields, \(4, 'hflip'\) has none$"):
        _sampler(10, 2, table)
    with pytest.raises(DataError, match=r"^batch size: expected an integer >= 1, got 0$"):
        _sampler(10, 0, _table(10))


# ------------------------------------------------------------------------------------------- on a real set


@pytest.fixture(scope="module")
def mixed_recipe(tmp_path_factory):
    """24 training images of 96 px, aspect-jittered, seen at three canvases (64x64, 96x64, 64x96); a random small
    teacher; batch 4, so 6 steps per epoch."""
    from frs_cli.data.synth import SynthConfig, generate

    d = tmp_path_factory.mktemp("canvas_batches")
    root = d / "data"
    generate(root, SynthConfig(train=24, val=2, size=96, seed=5, min_object=12, max_objects=3, aspect_jitter=True))
    ckpt = save_random_model(d / "teacher.pt", "retinanet_small_fpn", root, 16, seed=3)
    path = write_recipe(d / "recipe.toml", root, str(ckpt))
    text = path.read_text()
    path.write_text(text[: text.index("[geometry]")] + MIXED_GEOMETRY.lstrip() + text[text.index("[teacher]"):])
    return path


def test_view_canvases_are_the_padded_sizes_and_decode_no_image(mixed_recipe, monkeypatch):
    import frs_cli.data.coco

    r = load_recipe(mixed_recipe)
    coco = CocoViews.from_config(r.data, "train", r.geometry)

    def no_decode(path, size=None):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(frs_cli.data.coco, "read_image", no_decode)
    table = view_canvases(coco, ("orig", "orig", "hflip"))
    assert len(table) == 2 * len(coco) == 48
    for (p, v), size in table.items():
        rec = coco.index.records[p]
        assert size == coco.geometry_of(p, v).padded_size
        # 96x96 -> 64x64; 96 wide x 72 high -> 64x85, padded 64x96; 72 wide x 96 high -> 85x64, padded 96x64
        assert size == {(96, 96): (64, 64), (72, 96): (64, 96), (96, 72): (96, 64)}[(rec.height, rec.width)]
    assert set(table.values()) == {(64, 64), (96, 64), (64, 96)}


class _Records(torch.nn.Module):
    """Wraps an objective; records each step's image ids and canvases."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.student, self.steps = inner, inner.student, []

    def checkpointed(self):
        return self.inner.checkpointed()

    def forward(self, batch, step):
        self.steps.append((step, batch.image_ids, [g.padded_size for g in batch.geometries]))
        return self.inner(batch, step)


class _CtrlC(Hook):
    def __init__(self, at):
        self.at = at

    def after_step(self, t):
        if t.last.iteration == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def _fit_mixed(recipe_path, out, hooks=(), resume=False):
    r = load_recipe(recipe_path, ["train.epochs=2"])
    torch.manual_seed(0)
    ds = CocoViews.from_config(r.data, "train", r.geometry)
    objective = _Records(GTObjective(build_detector(r.student, 5)))
    out.mkdir(exist_ok=True)
    fit(objective, ds, r.train, setup("cpu"), out, resume=resume, hooks=hooks)
    return objective


def test_a_run_resumed_mid_epoch_steps_through_the_batches_of_an_uninterrupted_run(mixed_recipe, tmp_path):
    straight = _fit_mixed(mixed_recipe, tmp_path / "straight")
    assert [s[0] for s in straight.steps] == list(range(12))
    assert any(len(set(c)) > 1 for *_, c in straight.steps)  # leftovers mix canvases: the order is not trivial
    # Ctrl-C during the hooks of iteration 8 (epoch 2, step 3): step 4 runs, then the state is saved at (1, 4)
    with pytest.raises(Interrupted, match="stopped at epoch 2, iteration 4"):
        _fit_mixed(mixed_recipe, tmp_path / "cut", hooks=[_CtrlC(at=8)])
    resumed = _fit_mixed(mixed_recipe, tmp_path / "cut", resume=True)
    assert [s[0] for s in resumed.steps] == [10, 11]
    assert resumed.steps == straight.steps[10:]
    a, b = resumed.student.core().state_dict(), straight.student.core().state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_resume_may_not_change_the_switch(mixed_recipe, tmp_path):
    from frs_cli.errors import ConfigError

    out = tmp_path / "run"
    train_detector(load_recipe(mixed_recipe), "student", out, ctx=setup("cpu"), evaluate=False)
    off = load_recipe(mixed_recipe, ["train.epochs=2", "train.group_by_canvas=false"])
    with pytest.raises(ConfigError, match=r"started with another recipe: train.group_by_canvas = true, now false"):
        train_detector(off, "student", out, ctx=setup("cpu"), evaluate=False, resume=True)


def _expected_batches(recipe, coco, views, grouped: bool, epochs: int) -> list[list[int]]:
    """The image ids of every batch the run should step through, from the sampler alone."""
    s = CanvasBatchSampler(ViewSampler(len(coco), views, seed=recipe.train.seed), recipe.train.batch_size,
                           view_canvases(coco, views) if grouped else None)
    out = []
    for epoch in range(epochs):
        s.set_epoch(epoch)
        out += [[coco.index.records[p].image_id for p, _ in b] for b in s]
    return out


def _recording_collate(monkeypatch) -> list:
    import frs_cli.train.loop

    seen = []
    original = frs_cli.train.loop.collate

    def collate(samples):
        seen.append(([s.image_id for s in samples], [s.geometry.padded_size for s in samples]))
        return original(samples)

    monkeypatch.setattr(frs_cli.train.loop, "collate", collate)
    return seen


@pytest.mark.parametrize("job", ["train", "distill_cache", "distill_online"])
@pytest.mark.parametrize("grouped", [True, False])
def test_train_and_distill_batch_by_canvas_unless_switched_off(job, grouped, mixed_cache, tmp_path, monkeypatch):
    recipe, cache, _ = mixed_cache("retinanet")  # 12 images of three canvases, batch 4
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=2, group_by_canvas=grouped))
    seen = _recording_collate(monkeypatch)
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    if job == "train":
        train_detector(recipe, "student", tmp_path / "run", ctx=setup("cpu"), evaluate=False)
    else:
        distill_student(recipe, tmp_path / "run", cache=cache if job == "distill_cache" else None,
                        online=job == "distill_online", ctx=setup("cpu"), evaluate=False)
    views = tuple(recipe.cache.views) if job == "distill_cache" else flip_views(recipe.train.hflip_prob)
    assert [ids for ids, _ in seen] == _expected_batches(recipe, coco, views, grouped, 2)
    assert _expected_batches(recipe, coco, views, True, 2) != _expected_batches(recipe, coco, views, False, 2)
    one_canvas = [len(set(sizes)) == 1 for _, sizes in seen]
    if grouped:  # 12 images of 5 / 6 / 1 per canvas: per epoch the 64x64 and 96x64 queues fill one batch each
        assert one_canvas == [True, True, False] * 2
    else:
        assert not all(one_canvas)


# --------------------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("command", [["train", "--role", "student"], ["distill", "--online"]])
def test_the_switch_keeps_the_number_of_iterations_logged(command, mixed_recipe, tmp_path, monkeypatch):
    seen = _recording_collate(monkeypatch)
    runner = CliRunner()
    iters, batches = {}, {}
    for grouped in ("true", "false"):
        out = tmp_path / f"run_{grouped}"
        start = len(seen)
        result = runner.invoke(app, [*command, "--pipeline", str(mixed_recipe), "--out", str(out), "--device", "cpu",
                                     "--no-eval", "--set", "train.epochs=2", "--set", f"train.group_by_canvas={grouped}"])
        assert result.exit_code == 0, result.output
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        iters[grouped] = [x["iter"] for x in lines if "iter" in x]
        batches[grouped] = seen[start:]
        assert json.loads((out / "recipe.json").read_text())["train"]["group_by_canvas"] == (grouped == "true")
    assert iters["true"] == iters["false"] == list(range(12))  # 24 images // 4, two epochs, log_every 1
    assert sum(len(set(s)) > 1 for _, s in batches["true"]) < sum(len(set(s)) > 1 for _, s in batches["false"])


def test_a_switch_that_is_no_bool_is_one_line(mixed_recipe, tmp_path):
    from conftest import assert_one_line_error

    result = CliRunner().invoke(app, ["train", "--role", "student", "--pipeline", str(mixed_recipe), "--out",
                                      str(tmp_path / "run"), "--device", "cpu", "--set", "train.group_by_canvas=1"])
    assert_one_line_error(result, "recipe key 'train.group_by_canvas': expected bool, got int 1")
    assert not (tmp_path / "run").exists()


def test_a_run_from_before_the_switch_resumes_only_with_plain_batches(mixed_recipe, tmp_path):
    """A recipe.json without train.group_by_canvas is a run whose batches mixed canvases: resuming it grouped would
    see some views twice in the epoch and others never, so the resume must ask for the plain batches it had."""
    import json

    from frs_cli.errors import ConfigError

    out = tmp_path / "run"
    plain = load_recipe(mixed_recipe, ["train.group_by_canvas=false"])
    train_detector(plain, "student", out, ctx=setup("cpu"), evaluate=False)
    recorded = json.loads((out / "recipe.json").read_text())
    del recorded["train"]["group_by_canvas"]  # as an older frs wrote it
    (out / "recipe.json").write_text(json.dumps(recorded))
    longer = load_recipe(mixed_recipe, ["train.epochs=2"])
    with pytest.raises(ConfigError, match=r"started with another recipe: train.group_by_canvas = false, now true"):
        train_detector(longer, "student", out, ctx=setup("cpu"), evaluate=False, resume=True)
    resumed = load_recipe(mixed_recipe, ["train.epochs=2", "train.group_by_canvas=false"])
    train_detector(resumed, "student", out, ctx=setup("cpu"), evaluate=False, resume=True)
    assert json.loads((out / "recipe.json").read_text())["train"]["group_by_canvas"] is False
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()][-1] == 2


def test_a_runs_stream_is_its_epochs_batches_one_after_the_other_from_the_start_and_leaves_the_epoch_alone():
    """``RunBatches``: epoch 1 from its third batch on, then epochs 2 and 3 whole, exactly the batches each epoch
    gives on its own; its length counts them; reading it changes neither the epoch set on the batch sampler nor
    its view sampler's (the trainer's hooks see the epoch training, while the loader reads ahead)."""
    from frs_cli.data.canvas_batches import RunBatches

    table = _table(50)
    batches = CanvasBatchSampler(ViewSampler(50, VIEWS, seed=3), 4, table)
    batches.set_epoch(1, start=8)
    run = RunBatches(batches, 1, 8, 4)
    expected = []
    for epoch, skip in ((1, 2), (2, 0), (3, 0)):
        own = CanvasBatchSampler(ViewSampler(50, VIEWS, seed=3), 4, table)
        own.set_epoch(epoch)
        expected += list(own)[skip:]
    streamed = list(run)
    assert streamed == expected and len(run) == len(streamed) == 3 * 12 - 2
    assert (batches.epoch, batches.start, batches.sampler.epoch) == (1, 8, 0)
    assert list(batches) == expected[:10]  # its own epoch's batches, from its start, as before
    assert list(RunBatches(batches, 5, 0, 4)) == list(batches.batches_of(5))  # past the last epoch: that one alone
    with pytest.raises(DataError, match="whole number of batches of 4 items, got 6"):
        RunBatches(batches, 1, 6, 4)


def test_whole_canvas_batches_hold_every_key_once_one_canvas_each_in_order():
    """Evaluation's batches: no key dropped, none mixing canvases, each canvas's keys in their order."""
    from frs_cli.data.canvas_batches import whole_canvas_batches

    keys = [(p, "orig") for p in range(11)]
    canvas = {p: (64, 64) if p % 3 else (64, 48) for p in range(11)}.__getitem__
    batches = whole_canvas_batches(keys, lambda k: canvas(k[0]), 3)
    assert [[p for p, _ in b] for b in batches] == [[0, 3, 6], [9], [1, 2, 4], [5, 7, 8], [10]]  # first seen first
    assert whole_canvas_batches([], lambda k: k, 4) == []
