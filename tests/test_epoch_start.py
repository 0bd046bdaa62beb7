"""bench/epoch_start.py: whole training runs with one loader for the run, as the trainer runs them, and with a new
loader every epoch, in turns."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_epoch_start_times_runs_with_one_loader_and_with_one_every_epoch(tmp_path):
    res = runpy.run_path(str(ROOT / "bench" / "epoch_start.py"), run_name="not_main")["main"](
        ["--smoke", "--out", str(tmp_path / "out.json"), "--work", str(tmp_path / "work")])
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["rows"] == res["rows"]
    assert set(saved["runs"]) == {f"{m}/{v}" for m in ("plain", "cached") for v in ("run", "per_epoch")}
    for key, runs in saved["runs"].items():
        assert [r["turn"] for r in runs] == [0, 1]  # two turns, two epochs of 4 steps (8 images, batch 2) each
        assert all(len(r["epoch_s"]) == 2 and len(r["first_wait_s"]) == 2 and r["fit_s"] > 0 for r in runs)
        # the trainer keeps one loader (one set of workers) for a run; the other variant starts one every epoch
        assert [r["loaders"] for r in runs] == ([1, 1] if key.endswith("/run") else [2, 2])
    rows = saved["rows"]
    later = [r["epoch_s"][1] for r in saved["runs"]["plain/run"]]  # each run's second epoch
    assert rows["plain/run"]["later_epoch_s"] == pytest.approx(sum(later) / 2)  # the median of two
    assert saved["ratios"]["cached: per_epoch / run, fit_s"] == pytest.approx(
        rows["cached/per_epoch"]["fit_s"] / rows["cached/run"]["fit_s"])
