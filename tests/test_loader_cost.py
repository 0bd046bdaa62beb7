"""bench/loader_cost.py (issue 13): its smoke run on the CPU times every variant, split into phases that add up."""

from __future__ import annotations

import json

from conftest import load_bench


def test_loader_cost_smoke_writes_every_variant_with_phases_that_add_up_to_the_step(tmp_path):
    bench = load_bench("loader_cost")
    argv = ["--smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--variants", ",".join(bench.VARIANTS + bench.OPTIONAL)]
    res = bench.run(bench.parse_args(argv), argv)
    on_disk = json.loads((tmp_path / "out" / "loader_cost.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["device"] == "cpu" and on_disk["command"].startswith("python3 bench/loader_cost.py --smoke")
    assert len(on_disk["rounds"]) == 1
    row = on_disk["rounds"][0]
    assert list(row) == list(bench.VARIANTS + bench.OPTIONAL)
    for name, v in row.items():
        assert v["steps"] == 2, name
        assert all(v[f"{p}_ms"] >= 0 for p in bench.PHASES), name
        assert v["issue_ms"] > 0 and v["step_ms"] > 0
        # medians of the phases need not add up exactly; with two steps each is within the step's range
        assert max(v[f"{p}_ms"] for p in bench.PHASES) <= v["step_ms_mean"] * 2
    assert row["resident_plain"]["wait_ms"] < row["loader_plain"]["wait_ms"] + 1.0


def test_step_ops_counts_the_operations_of_each_step_and_what_frs_adds(tmp_path):
    bench = load_bench("step_ops")
    args = bench.parse_args(["--out", str(tmp_path / "ops.json"), "--work", str(tmp_path / "work"),
                             "--pair", "tiny-tiny", "--images", "4", "--image-size", "64", "--batch", "2",
                             "--label", "test"])
    res = bench.run(args)
    ops = res["ops"]
    assert res["label"] == "test" and res["levels"] == 5 and len(res["canvas"]) == 2
    assert 0 < ops["teacher_side"] < ops["plain"] < ops["cached"]
    assert ops["frs_extra"] == ops["cached"] - ops["plain"] - ops["teacher_side"] > 0
    assert bench.count(lambda: None) == 0
    import torch

    assert bench.count(lambda: torch.ones(3).add(1).sum()) == 3
