"""bench/trainer_step.py: the trainer's own step, as it is (one step ahead), waiting for each step, and with the old
mid-step wait, in turn."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    return runpy.run_path(str(ROOT / "bench" / "trainer_step.py"), run_name="not_main")


def test_trainer_step_times_every_mode_and_variant_over_the_same_epochs(tmp_path):
    res = _bench()["main"](["--smoke", "--out", str(tmp_path / "out.json"), "--work", str(tmp_path / "work")])
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["rows"] == res["rows"]
    assert set(saved["rows"]) == {f"{m}/{v}" for m in ("plain", "cached") for v in ("now", "sync", "mid_check", "no_readback")}
    # 8 images, one view each per epoch, batches of 2: 4 steps an epoch, 2 epochs (blocks) each, none skipped
    assert all(r["steps"] == 8 and r["step_ms"] > 0 and 0 <= r["data_wait_share"] < 1 for r in saved["rows"].values())
    assert saved["checks"] == {"plain": 8, "cached": 8}  # the old check ran once a step, in those variants only
    assert [k for k, r in rows_of(saved).items() if r["last_loss"] == 0.0] == ["plain/no_readback", "cached/no_readback"]
    rows = saved["rows"]
    assert saved["ratios"]["plain: sync / now"] == pytest.approx(rows["plain/sync"]["step_ms"] / rows["plain/now"]["step_ms"])
    assert saved["ratios"]["cached: mid_check / now"] == pytest.approx(
        rows["cached/mid_check"]["step_ms"] / rows["cached/now"]["step_ms"])
    assert saved["ratios"]["plain: no_readback / now"] == pytest.approx(
        rows["plain/no_readback"]["step_ms"] / rows["plain/now"]["step_ms"])
    assert saved["ratios"]["now: cached / plain"] == pytest.approx(rows["cached/now"]["step_ms"] / rows["plain/now"]["step_ms"])


def rows_of(saved: dict) -> dict:
    return dict(sorted(saved["rows"].items(), key=lambda kv: kv[0].startswith("cached")))


def test_step_times_leave_out_the_first_steps_of_every_epoch():
    times = _bench()["StepTimes"](skip=2)
    for step in (1, 2, 3, 4, 1, 2, 3):  # two epochs
        times.after_step(SimpleNamespace(step=step, last=SimpleNamespace(seconds=0.1 * step, data_seconds=0.01)))
    assert times.seconds == pytest.approx([0.3, 0.4, 0.3])


def test_the_old_check_stops_a_non_finite_loss_before_the_backward_pass():
    import torch

    wrapped = _bench()["mid_step_check"](lambda batch, step: {"a": torch.tensor(1.0), "b": torch.tensor(float("nan"))})
    with pytest.raises(FloatingPointError, match="iteration 3"):
        wrapped(None, 3)
    assert wrapped.checks == 0
