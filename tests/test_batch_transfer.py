"""bench/batch_transfer.py: a batch's hand-over from a worker, measured per size on the CPU."""

from __future__ import annotations

import json

import pytest
from conftest import load_bench


def test_batch_transfer_measures_each_kind_in_turn_and_writes_its_figures(tmp_path):
    bench = load_bench("batch_transfer")
    argv = ["--out", str(tmp_path / "bt.json"), "--kinds", "plain:0,big:1.5", "--views", "2", "--image-mb", "0.5",
            "--workers", "1", "--batches", "3", "--step-ms", "1", "--rounds", "2"]
    res = bench.run(bench.parse_args(argv), argv)
    assert json.loads((tmp_path / "bt.json").read_text()) == json.loads(json.dumps(res))
    assert res["command"].startswith("python3 bench/batch_transfer.py --out") and res["cpu_cores"] >= 1
    assert [list(r) for r in res["rounds"]] == [["plain", "big"], ["big", "plain"]]  # in turn
    for row in res["rounds"]:
        assert row["plain"]["mb"] == pytest.approx(2 * 0.5) and row["big"]["mb"] == pytest.approx(2 * 2.0)
        assert row["plain"]["worker_hold"] is None  # the package's own
        for figures in row.values():
            parts = [figures[f"{k}_ms"] for k in ("receive", "read", "drop")]
            assert all(p > 0 for p in parts) and figures["thread_ms"] == pytest.approx(sum(parts))
            assert figures["user_ms"] >= 0 and figures["sys_ms"] >= 0 and figures["minor_faults"] >= 0


def test_batch_transfer_names_a_kind_it_cannot_read():
    bench = load_bench("batch_transfer")
    with pytest.raises(SystemExit, match=r"expected --kinds as name:MB per view, got 'int8:x'"):
        bench.parse_kinds("plain:0,int8:x")


def test_batch_transfer_measures_each_worker_hold_in_turn(tmp_path, monkeypatch):
    bench = load_bench("batch_transfer")
    seen = []
    real = bench.measure

    def spy(nbytes, workers, batches, step_s, hold=None):
        seen.append((nbytes, hold))
        return real(nbytes, workers, batches, step_s, hold)

    monkeypatch.setattr(bench, "measure", spy)
    argv = ["--kinds", "plain:0", "--views", "1", "--image-mb", "0.25", "--workers", "1", "--batches", "2",
            "--step-ms", "1", "--rounds", "2", "--holds", "0,2"]
    res = bench.run(bench.parse_args(argv), argv)
    assert [list(r) for r in res["rounds"]] == [["plain hold 0", "plain hold 2"], ["plain hold 2", "plain hold 0"]]
    assert [h for _, h in seen] == [0, 2, 2, 0] and {n for n, _ in seen} == {2**18}
    assert res["rounds"][0]["plain hold 2"]["worker_hold"] == 2 and res["rounds"][0]["plain hold 0"]["drop_ms"] > 0
