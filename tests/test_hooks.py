"""The trainer's hooks: when each call comes, what the built-in hooks have done by then, a failing hook, Ctrl-C.

The tiny recipe: 24 training images, batch 4, so 6 steps per epoch; ``log_every = 1``.
"""

import json
import os
import signal

import pytest
import torch

from frs_cli.config import load_recipe
from frs_cli.data.coco import CocoViews
from frs_cli.dist import setup
from frs_cli.errors import Interrupted
from frs_cli.models import build_detector
from frs_cli.train.checkpoint import FINAL, LAST
from frs_cli.train.hooks import Hook
from frs_cli.train.loop import fit
from frs_cli.train.objectives import GTObjective
from frs_cli.train.schedule import lr_factor

STEPS = 6  # per epoch


class Recorder(Hook):
    """Records every call; at each call also what the built-in hooks (which run first) have left on disk."""

    def __init__(self, out):
        self.out, self.calls = out, []

    def _saved(self):
        path = self.out / LAST
        return None if not path.is_file() else tuple(torch.load(path, weights_only=True)[k] for k in ("epoch", "epoch_step"))

    def _logged(self):
        path = self.out / "metrics.jsonl"
        return sum('"iter"' in x for x in path.read_text().splitlines())

    def before_train(self, t):
        self.calls.append(("before_train",))

    def before_epoch(self, t):
        self.calls.append(("before_epoch", t.epoch, t.step))

    def after_step(self, t):
        self.calls.append(("after_step", t.epoch, t.step, t.last.iteration, self._logged(), self._saved()))

    def after_epoch(self, t):
        self.calls.append(("after_epoch", t.epoch, self._saved()))

    def after_train(self, t):
        self.calls.append(("after_train", t.finished, (self.out / FINAL).is_file()))


class Raises(Hook):
    def __init__(self, stage, at=None):
        self.stage, self.at = stage, at

    def after_step(self, t):
        if self.stage == "after_step" and t.last.iteration == self.at:
            raise RuntimeError(f"hook failed at iteration {t.last.iteration}")

    def after_train(self, t):
        if self.stage == "after_train":
            raise RuntimeError("hook failed in after_train")


class CtrlC(Hook):
    """A Ctrl-C arriving while the hooks of one step run: the trainer honours it after the next step."""

    def __init__(self, at):
        self.at = at

    def after_step(self, t):
        if t.last.iteration == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def _fit(recipe_path, out, hooks=(), sets=(), resume=False):
    r = load_recipe(recipe_path, ["train.epochs=2", *sets])
    torch.manual_seed(0)
    ds = CocoViews.from_config(r.data, "train", r.geometry)
    objective = GTObjective(build_detector(r.student, 5))
    out.mkdir(exist_ok=True)

    def save(obj, out_dir):
        torch.save({"model": obj.student.core().state_dict()}, out_dir / FINAL)

    result = fit(objective, ds, r.train, setup("cpu"), out, resume=resume, save_outputs=save, hooks=hooks)
    return result, objective


@pytest.mark.parametrize("every", [4, 3])  # 3 divides the epoch: its last step is saved by after_epoch alone
def test_hooks_are_called_in_order_after_the_built_in_ones(recipe_path, tmp_path, every):
    out = tmp_path / "run"
    rec = Recorder(out)
    _fit(recipe_path, out, [rec], sets=[f"train.checkpoint_every={every}"])
    expected = [("before_train",)]
    for epoch in range(2):
        expected.append(("before_epoch", epoch, 0))
        for step in range(1, STEPS + 1):
            it = epoch * STEPS + step - 1
            # logged before the hook sees the step; the state every `every` steps inside an epoch, and at its end
            inside = (step // every) * every if step < STEPS else (STEPS - 1) // every * every
            saved = (epoch, inside) if inside else ((epoch, 0) if epoch else None)
            expected.append(("after_step", epoch, step, it, it + 1, saved))
        expected.append(("after_epoch", epoch, (epoch + 1, 0)))
    expected.append(("after_train", True, True))  # the final model file is written before user hooks let go
    assert rec.calls == expected


def test_a_failing_hook_stops_training_with_its_error_and_every_hook_still_lets_go(recipe_path, tmp_path):
    out = tmp_path / "run"
    rec = Recorder(out)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="^hook failed at iteration 3$"):
        _fit(recipe_path, out, [Raises("after_step", at=3), rec], sets=["train.checkpoint_every=2"])
    # the failing hook runs before the recorder: the recorder saw iterations 0..2 only, then after_train
    assert [c[3] for c in rec.calls if c[0] == "after_step"] == [0, 1, 2]
    assert rec.calls[-1] == ("after_train", False, False)  # not finished: no final model file
    assert signal.getsignal(signal.SIGINT) is previous  # the Ctrl-C handler is gone again
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in lines] == [0, 1, 2, 3]  # iteration 3 was logged before the failing hook ran
    state = torch.load(out / LAST, weights_only=True)
    assert (state["epoch"], state["epoch_step"]) == (0, 4)  # ... and checkpointed (every 2 steps)
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "metrics.jsonl"]


def test_a_hook_failing_as_it_lets_go_does_not_keep_the_others_from_letting_go(recipe_path, tmp_path):
    out = tmp_path / "run"
    rec = Recorder(out)
    previous = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs as a background job
    with pytest.raises(RuntimeError, match="^hook failed in after_train$"):
        _fit(recipe_path, out, [Raises("after_train"), rec], sets=["train.epochs=1"])
    assert rec.calls[-1] == ("after_train", True, True)
    assert signal.getsignal(signal.SIGINT) is previous


def test_ctrl_c_during_a_hook_leaves_a_state_that_resumes_to_the_uninterrupted_weights(recipe_path, tmp_path):
    out = tmp_path / "cut"
    previous = signal.getsignal(signal.SIGINT)
    # the signal arrives during the hooks of iteration 8 (epoch 2, step 3), after the Ctrl-C check of that step:
    # step 4 completes, then the state is saved and the run stops
    with pytest.raises(Interrupted, match=r"^stopped at epoch 2, iteration 4; state saved to .*cut/last\.pt \(run the same command with --resume"):
        _fit(recipe_path, out, [CtrlC(at=8)])
    state = torch.load(out / LAST, weights_only=True)
    assert (state["epoch"], state["epoch_step"]) == (1, 4)
    assert not (out / FINAL).exists()
    assert signal.getsignal(signal.SIGINT) is previous
    rec = Recorder(out)
    result, resumed = _fit(recipe_path, out, [rec], resume=True)
    assert rec.calls[1] == ("before_epoch", 1, 4)  # the resumed run starts where the state was saved
    assert [c[3] for c in rec.calls if c[0] == "after_step"] == [10, 11]
    assert result.iterations == 2 * STEPS
    _, straight = _fit(recipe_path, tmp_path / "straight")
    a, b = resumed.student.core().state_dict(), straight.student.core().state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


class Launches(torch.nn.Module):
    """The objective, counting the steps launched (its forward calls)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.launched = inner, 0

    def checkpointed(self):
        return self.inner.checkpointed()

    def forward(self, batch, step):
        self.launched += 1
        return self.inner(batch, step)


class SeesLaunched(Hook):
    """Reads only ``trainer.last``: records, per step it sees, how many steps had been launched by then."""

    def __init__(self, objective):
        self.objective, self.seen = objective, []

    def wants_state(self, t, step):
        return False

    def after_step(self, t):
        self.seen.append((t.last.iteration, self.objective.launched))


def _fit_counting(recipe_path, out, hooks):
    r = load_recipe(recipe_path, ["train.epochs=2", "train.checkpoint_every=4"])
    torch.manual_seed(0)
    objective = Launches(GTObjective(build_detector(r.student, 5)))
    out.mkdir()
    seen = SeesLaunched(objective)
    fit(objective, CocoViews.from_config(r.data, "train", r.geometry), r.train, setup("cpu"), out,
        hooks=[seen, *hooks])
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [{k: v for k, v in x.items() if k not in ("img_s", "data_wait")} for x in lines]
    return seen.seen, logged, objective.inner.student.core().state_dict()


def test_the_trainer_runs_one_step_ahead_of_the_hooks_unless_one_wants_the_state(recipe_path, tmp_path):
    """With the built-in hooks alone, step k+1 is launched before step k's losses are read and its hooks run,
    except where a hook wants the state (the checkpoint after 4 steps) and at an epoch's end. A hook that does
    not say otherwise (``Hook``) makes every step wait. The numbers logged and the weights are the same."""
    ahead, logged_ahead, weights_ahead = _fit_counting(recipe_path, tmp_path / "ahead", [])
    expected = []
    for epoch in range(2):
        for step in range(1, STEPS + 1):
            waits = step % 4 == 0 or step == STEPS  # the checkpoint inside the epoch, and the epoch's end
            expected.append((epoch * STEPS + step - 1, epoch * STEPS + step + (0 if waits else 1)))
    assert ahead == expected
    waiting, logged_waiting, weights_waiting = _fit_counting(recipe_path, tmp_path / "waits", [Hook()])
    assert waiting == [(it, it + 1) for it in range(2 * STEPS)]
    # each step's own losses and learning rate, not the next step's
    assert [x["iter"] for x in logged_ahead] == list(range(2 * STEPS))
    assert len({x["loss"] for x in logged_ahead}) == 2 * STEPS
    assert logged_ahead == logged_waiting
    assert len({x["lr"] for x in logged_ahead}) > 1  # the warm-up moves it: a lagged read would show
    cfg = load_recipe(recipe_path, ["train.epochs=2"]).train
    schedule = [cfg.lr * lr_factor(it, STEPS, cfg.warmup_iters, cfg.warmup_factor, cfg.lr_steps, cfg.lr_gamma,
                                   cfg.warmup) for it in range(2 * STEPS)]
    assert [x["lr"] for x in logged_ahead] == pytest.approx(schedule, rel=1e-12)  # the LR the step ran at
    for k in weights_ahead:
        torch.testing.assert_close(weights_ahead[k], weights_waiting[k], rtol=0, atol=0, msg=k)
    state = torch.load(tmp_path / "ahead" / LAST, weights_only=True)
    assert (state["epoch"], state["epoch_step"]) == (2, 0)


def test_pending_losses_keep_the_values_of_their_step_when_the_tensors_are_reused():
    from frs_cli.train.loop import PendingLosses

    a, b = torch.tensor(1.5), torch.tensor(2.0, dtype=torch.bfloat16)
    pending = PendingLosses({"a": a, "b": b}, a + b)
    a.fill_(7.0)  # as a CUDA graph's next replay overwrites its outputs
    b.fill_(9.0)
    assert pending.read() == ({"a": 1.5, "b": 2.0}, 3.5)


def _record_worker_start(folder, hold_in_worker, count, worker_id):
    """A loader worker's start, recorded as a file named by its process id, before the trainer's own init."""
    (folder / str(os.getpid())).touch()
    hold_in_worker(count, worker_id)


def test_the_loaders_workers_start_once_per_run_serve_every_epoch_and_are_gone_after_it(recipe_path, tmp_path,
                                                                                         monkeypatch):
    """Two loader workers over three epochs of 6 steps: a run stopped by Ctrl-C in its second epoch started two
    worker processes (not two per epoch) and left none; its resumed run starts two of its own and leaves none; the
    weights are those of the same three epochs loaded in the main process (the same batches in the same order)."""
    import functools
    import multiprocessing

    from frs_cli.train import loop

    starts = tmp_path / "starts"
    starts.mkdir()
    monkeypatch.setattr(loop, "hold_in_worker", functools.partial(_record_worker_start, starts, loop.hold_in_worker))
    sets = ["train.epochs=3", "train.workers=2"]
    with pytest.raises(Interrupted, match="stopped at epoch 2, iteration 4") as stopped:
        _fit(recipe_path, tmp_path / "workers", [CtrlC(at=8)], sets=sets)
    assert len(list(starts.iterdir())) == 2
    # gone while the error is still held (its traceback holds the trainer's frames, as an interactive session's
    # last traceback does)
    assert stopped.tb is not None and multiprocessing.active_children() == []
    result, loaded = _fit(recipe_path, tmp_path / "workers", sets=sets, resume=True)
    assert result.iterations == 3 * STEPS
    assert len(list(starts.iterdir())) == 4
    assert multiprocessing.active_children() == []
    _, main = _fit(recipe_path, tmp_path / "main", sets=["train.epochs=3", "train.workers=0"])
    a, b = loaded.student.core().state_dict(), main.student.core().state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
