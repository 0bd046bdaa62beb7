import json

import pytest
import torch

from frs_cli.config import load_recipe
from frs_cli.data.coco import CocoViews, collate
from frs_cli.dist import setup
from frs_cli.errors import ConfigError, TrainingError
from frs_cli.models import build_detector
from frs_cli.train.checkpoint import FINAL, LAST, load_detector
from frs_cli.train.run import ADAPTERS, distill_student, train_detector


def _fixed_batch_loss(detector, recipe) -> float:
    ds = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    batch = collate([ds[(i, "orig")] for i in range(8)])
    detector.train()
    with torch.no_grad():
        return float(sum(detector(batch.images, batch.image_sizes, batch.targets).losses.values()))


def test_training_on_a_tiny_set_lowers_the_loss(recipe_path, tmp_path):
    r = load_recipe(recipe_path, ["train.epochs=8", "train.lr=0.02", "train.lr_steps=[8]", "train.hflip_prob=0.0"])
    torch.manual_seed(r.train.seed)
    before = _fixed_batch_loss(build_detector(r.student, 5), r)
    summary = train_detector(r, "student", tmp_path / "run", ctx=setup("cpu"), evaluate=False)
    after = _fixed_batch_loss(load_detector(summary.model_file)[0], r)
    assert after < 0.8 * before, (before, after)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"classification", "bbox_regression", "lr", "img_s", "data_wait"} <= set(lines[0])
    assert lines[-1]["epoch"] == 8


def test_training_writes_checkpoint_state_and_evaluates(recipe_path, tmp_path):
    r = load_recipe(recipe_path, ["train.epochs=2", "train.eval_every=1"])
    out = tmp_path / "run"
    s = train_detector(r, "student", out, ctx=setup("cpu"))
    assert (out / FINAL).is_file() and (out / LAST).is_file() and (out / "recipe.json").is_file()
    state = torch.load(out / LAST, weights_only=False)
    assert state["epoch"] == 2 and state["epoch_step"] == 0 and state["iters_per_epoch"] == 6
    evals = [json.loads(x)["eval"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 2 and set(evals[0]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert s.fit.eval_metrics == evals[-1]
    _detector, ckpt = load_detector(out / FINAL)
    assert ckpt["arch"] == "retinanet_tiny_fpn" and ckpt["label_to_category"] == [1, 2, 3, 4, 5]


def test_resumed_training_matches_an_uninterrupted_run(recipe_path, tmp_path):
    full = load_recipe(recipe_path, ["train.epochs=2"])
    train_detector(full, "student", tmp_path / "full", ctx=setup("cpu"), evaluate=False)
    first = load_recipe(recipe_path, ["train.epochs=1"])
    train_detector(first, "student", tmp_path / "split", ctx=setup("cpu"), evaluate=False)
    train_detector(full, "student", tmp_path / "split", ctx=setup("cpu"), evaluate=False, resume=True)
    a = torch.load(tmp_path / "full" / FINAL, weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / FINAL, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_output_directory_holding_other_files_is_refused_with_or_without_resume(recipe_path, tmp_path):
    r = load_recipe(recipe_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    for resume in (False, True):
        with pytest.raises(ConfigError, match="exists and is not empty \\(it holds something, and no saved run state"):
            train_detector(r, "student", tmp_path / "run", ctx=setup("cpu"), resume=resume)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["something"]


def test_batch_larger_than_the_dataset_is_a_clear_error(recipe_path, tmp_path):
    r = load_recipe(recipe_path, ["train.batch_size=64"])
    with pytest.raises(TrainingError, match="fewer than one batch of 64"):
        train_detector(r, "student", tmp_path / "run", ctx=setup("cpu"))


def test_distill_from_cache_saves_student_and_adapters(recipe, cache_path, tmp_path):
    s = distill_student(recipe, tmp_path / "run", cache=cache_path, ctx=setup("cpu"), evaluate=False)
    assert set(s.fit.last_losses) == {"classification", "bbox_regression", "frs_feature", "frs_head"}
    assert all(v > 0 for v in s.fit.last_losses.values())
    _student, ckpt = load_detector(tmp_path / "run" / FINAL)
    assert ckpt["arch"] == recipe.student.arch
    adapters = torch.load(tmp_path / "run" / ADAPTERS, weights_only=True)
    assert [lv["name"] for lv in adapters["levels"]] == ["P3", "P4", "P5", "P6", "P7"]
    assert adapters["adapters"]["convs.0.weight"].shape == (64, 64, 3, 3)  # student 64 ch -> teacher 64 ch


def test_distill_with_gt_box_masks_has_no_head_loss(recipe_path, cache_path, tmp_path):
    r = load_recipe(recipe_path, ['distill.mask="gt"'])
    s = distill_student(r, tmp_path / "run", cache=cache_path, ctx=setup("cpu"), evaluate=False)
    assert set(s.fit.last_losses) == {"classification", "bbox_regression", "frs_feature"}


def test_distill_online_runs_the_teacher(recipe, tmp_path):
    s = distill_student(recipe, tmp_path / "run", online=True, ctx=setup("cpu"), evaluate=False)
    assert set(s.fit.last_losses) == {"classification", "bbox_regression", "frs_feature", "frs_head"}


def test_distill_needs_exactly_one_teacher_source(recipe, cache_path, tmp_path):
    with pytest.raises(ConfigError, match="exactly one teacher source"):
        distill_student(recipe, tmp_path / "a", ctx=setup("cpu"))
    with pytest.raises(ConfigError, match="exactly one teacher source"):
        distill_student(recipe, tmp_path / "b", cache=cache_path, online=True, ctx=setup("cpu"))


def test_unknown_view_is_refused_by_the_recipe(recipe_path):
    with pytest.raises(ConfigError, match="recipe key 'cache.views': expected orig or hflip, optionally with a short side in px after '@' "
                                         r"\(e.g. hflip@640\), got 'vflip'"):
        load_recipe(recipe_path, ['cache.views=["orig", "vflip"]'])


def test_student_and_teacher_levels_that_do_not_line_up_fail_before_training():
    from frs_cli.errors import FrsError
    from frs_cli.models import FrsSignature, LevelSpec
    from frs_cli.train.objectives import check_compatible

    levels = tuple(LevelSpec(f"P{i}", 2**i, 64) for i in range(3, 8))
    student = FrsSignature("retinanet", levels, 45)
    with pytest.raises(FrsError, match="do not line up"):
        check_compatible(student, FrsSignature("retinanet", levels[:4], 45))
    with pytest.raises(FrsError, match="do not line up"):
        check_compatible(student, FrsSignature("retinanet", tuple(LevelSpec(lv.name, lv.stride * 2, 64) for lv in levels), 45))
    with pytest.raises(FrsError, match="teacher's retinanet classification output has 27 channels per position, "
                                       "the student's 45"):
        check_compatible(student, FrsSignature("retinanet", levels, 27))
    # channels may differ
    check_compatible(student, FrsSignature("retinanet", tuple(LevelSpec(lv.name, lv.stride, 256) for lv in levels), 45))


class _Fails(torch.nn.Module):
    """Wraps an objective; raises or returns NaN at a chosen iteration."""

    def __init__(self, inner, at: int, what: str):
        super().__init__()
        self.student, self.at, self.what = inner.student, at, what
        self.inner = inner
        self.last_step = -1  # the latest iteration launched

    def checkpointed(self):
        return self.inner.checkpointed()

    def forward(self, batch, step):
        self.last_step = step
        losses = self.inner(batch, step)
        if step == self.at:
            if self.what == "interrupt":  # Ctrl-C arriving in the middle of a step
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)
            else:
                losses["classification"] = losses["classification"] * float("nan")
        return losses


def _fit(recipe_path, out, wrap=None, resume=False, epochs=2):
    from frs_cli.train.loop import fit
    from frs_cli.train.objectives import GTObjective

    r = load_recipe(recipe_path, [f"train.epochs={epochs}"])
    torch.manual_seed(0)
    ds = CocoViews.from_config(r.data, "train", r.geometry)
    objective = GTObjective(build_detector(r.student, 5))
    if wrap:
        objective = wrap(objective)
    out.mkdir(exist_ok=True)
    return fit(objective, ds, r.train, setup("cpu"), out, resume=resume), objective


def test_non_finite_loss_stops_with_the_step_and_the_term(recipe_path, tmp_path):
    with pytest.raises(TrainingError, match="non-finite loss at epoch 1, iteration 2: classification=nan"):
        _fit(recipe_path, tmp_path / "run", wrap=lambda o: _Fails(o, 2, "nan"))


@pytest.mark.parametrize("every, nan_at", [(1, 2), (2, 2), (2, 3)])
def test_the_non_finite_check_follows_the_update_and_no_state_of_that_step_is_saved(recipe_path, tmp_path, every,
                                                                                    nan_at):
    """The loss is read back once, after the optimizer step (the host never waits for the forward pass before
    launching the backward one). The update a NaN loss made is never saved: the state on disk is the last one
    before it. With a checkpoint every step the trainer waits for each step; every 2 steps, a NaN at iteration 2
    is read only once iteration 3 was launched (nothing is saved after 3 steps), and one at iteration 3 is read
    before the checkpoint due after it."""
    from frs_cli.train.loop import fit
    from frs_cli.train.objectives import GTObjective

    r = load_recipe(recipe_path, ["train.epochs=1", f"train.checkpoint_every={every}"])
    torch.manual_seed(0)
    objective = _Fails(GTObjective(build_detector(r.student, 5)), nan_at, "nan")
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(TrainingError, match=f"non-finite loss at epoch 1, iteration {nan_at}: classification=nan"):
        fit(objective, CocoViews.from_config(r.data, "train", r.geometry), r.train, setup("cpu"), out)
    assert objective.last_step == (3 if (every, nan_at) == (2, 2) else nan_at)  # where the trainer ran ahead
    weights = list(objective.student.core().state_dict().values())
    assert any(not torch.isfinite(w).all() for w in weights if w.is_floating_point())  # the NaN step did update
    state = torch.load(out / LAST, weights_only=False)
    assert (state["epoch"], state["epoch_step"]) == (0, 2)  # saved after iterations 0 and 1 only
    saved = [t for t in _tensors(state) if t.is_floating_point()]
    assert saved and all(torch.isfinite(t).all() for t in saved)
    assert not (out / FINAL).exists()


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_ctrl_c_saves_state_and_resume_matches_an_uninterrupted_run(recipe_path, tmp_path):
    from frs_cli.errors import Interrupted

    # the signal arrives inside iteration 2 of epoch 2; that step completes, then the loop saves and stops
    with pytest.raises(Interrupted, match="stopped at epoch 2, iteration 3.*--resume"):
        _fit(recipe_path, tmp_path / "cut", wrap=lambda o: _Fails(o, 6 + 2, "interrupt"))
    state = torch.load(tmp_path / "cut" / LAST, weights_only=False)
    assert (state["epoch"], state["epoch_step"]) == (1, 3)
    _, resumed = _fit(recipe_path, tmp_path / "cut", resume=True)
    _, straight = _fit(recipe_path, tmp_path / "straight")
    for (k, a), b in zip(resumed.student.core().state_dict().items(), straight.student.core().state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_distill_killed_mid_epoch_resumes_from_its_last_checkpoint_to_the_uninterrupted_weights(
        recipe_path, cache_path, tmp_path):
    """SIGKILL ``frs distill`` in epoch 2 (6 iterations per epoch, state saved every 2): ``--resume`` restores
    student, adapters, optimizer, schedule, scaler, RNG and the position in the epoch's view order."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = ["train.epochs=2", "train.checkpoint_every=2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed process runs on one thread too: the same numbers
    try:
        distill_student(load_recipe(recipe_path, sets), tmp_path / "straight", cache=cache_path, ctx=setup("cpu"),
                        evaluate=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "frs_cli", "distill", "--pipeline", str(recipe_path), "--cache", cache_path,
           "--out", str(out), "--device", "cpu", "--no-eval", *(x for s in sets for x in ("--set", s))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"iter"') >= 9:  # iteration 9 logged: epoch 2, step 3
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "distill finished before it was killed"
    state = torch.load(out / LAST, weights_only=False)
    assert state["epoch"] == 1 and state["epoch_step"] in (2, 4)  # a mid-epoch checkpoint of epoch 2
    assert not (out / FINAL).exists()
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    for name, key in ((FINAL, "model"), (ADAPTERS, "adapters")):
        a = torch.load(tmp_path / "straight" / name, weights_only=True)[key]
        b = torch.load(out / name, weights_only=True)[key]
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{name}: {k}")


@pytest.mark.parametrize("prob, views", [(0.0, ("orig",)), (0.5, ("orig", "hflip")), (1.0, ("hflip",)),
                                         (0.25, ("orig", "orig", "orig", "hflip")), (0.3, ("orig",) * 7 + ("hflip",) * 3)])
def test_hflip_prob_is_the_share_of_flipped_views(prob, views):
    from frs_cli.data.coco import ViewSampler
    from frs_cli.train.loop import flip_views

    assert flip_views(prob) == views
    picked = [v for _, v in ViewSampler(4000, flip_views(prob), seed=3)]
    assert abs(picked.count("hflip") / 4000 - prob) < 0.025


def test_hflip_prob_reaches_the_sampler_of_training_and_online_distillation(recipe_path, tmp_path, monkeypatch):
    from frs_cli.train import run

    class Stop(Exception):
        pass

    seen = []

    def stand_in_fit(*args, views, **kwargs):
        seen.append(views)
        raise Stop

    monkeypatch.setattr(run, "fit", stand_in_fit)
    r = load_recipe(recipe_path, ["train.hflip_prob=0.25"])
    with pytest.raises(Stop):
        train_detector(r, "student", tmp_path / "train", ctx=setup("cpu"), evaluate=False)
    with pytest.raises(Stop):
        distill_student(r, tmp_path / "distill", online=True, ctx=setup("cpu"), evaluate=False)
    assert seen == [("orig", "orig", "orig", "hflip")] * 2


def test_each_logged_rate_is_images_over_the_time_they_took_also_at_an_epoch_end(recipe_path, tmp_path, monkeypatch):
    """Every step takes at least PAUSE seconds, so no logged step may claim more than batch / PAUSE img/s; the
    epoch's last step (read at once after its launch) once got a time near zero and a rate in the tens of
    thousands. The logged times add up to no more than the run took."""
    import time

    from frs_cli.train.loop import Trainer

    pause = 0.05
    run_step = Trainer.run_step

    def slow_step(self, batch, it):
        time.sleep(pause)
        return run_step(self, batch, it)

    monkeypatch.setattr(Trainer, "run_step", slow_step)
    r = load_recipe(recipe_path, ["train.epochs=2", "train.log_every=1"])
    summary = train_detector(r, "student", tmp_path / "run", ctx=setup("cpu"), evaluate=False)
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["iter"] for s in steps] == list(range(12))  # 6 steps an epoch, every one logged
    for s in steps:
        assert 0 < s["img_s"] <= r.train.batch_size / pause, s
        assert 0 <= s["data_wait"] <= 1, s
    assert sum(r.train.batch_size / s["img_s"] for s in steps) <= summary.fit.seconds


def test_equal_models_saved_by_two_processes_are_equal_bytes(recipe, synth_root, tmp_path, monkeypatch):
    """A teacher cache fingerprints its teacher by the model file's bytes: writing the same model again (a resumed
    run, another process) must give the same file. torch.save names the archive's folder after the file it writes,
    and the temporary file's name holds the process id."""
    import os

    from frs_cli.data.coco import CocoIndex
    from frs_cli.train.checkpoint import save_model

    torch.manual_seed(0)
    detector = build_detector(recipe.student, 5)
    index = CocoIndex(synth_root / "annotations" / "instances_train.json")
    save_model(tmp_path / "a" / FINAL, detector, recipe.student, index, recipe.geometry)
    monkeypatch.setattr(os, "getpid", lambda: 4242)  # another process
    save_model(tmp_path / "b" / FINAL, detector, recipe.student, index, recipe.geometry)
    assert (tmp_path / "a" / FINAL).read_bytes() == (tmp_path / "b" / FINAL).read_bytes()
