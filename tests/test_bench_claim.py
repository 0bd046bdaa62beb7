"""The claim benchmark's plan parsing and its verdict script (bench/frs_claim.py, bench/claim_verdicts.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import load_bench

claim = load_bench("frs_claim")
verdicts = load_bench("claim_verdicts")


def test_plan_runs_round_robin_or_in_order_with_named_variants():
    variants = claim.parse_variants(["lr02=train.lr=0.02;train.epochs=4"])
    assert variants == {"lr02": ["train.lr=0.02", "train.epochs=4"]}
    assert claim.parse_plan("b=0,1 c=0,1") == [("b_frs_cache", 0), ("c_frs_online", 0),
                                                 ("b_frs_cache", 1), ("c_frs_online", 1)]
    assert claim.parse_plan("a=0,1 d+lr02=3", variants, in_order=True) == [
        ("a_alone", 0), ("a_alone", 1), ("d_gt_boxes+lr02", 3)]
    with pytest.raises(SystemExit, match="expected a --variant named 'fw'"):
        claim.parse_plan("b+fw=1", variants)
    with pytest.raises(SystemExit, match="expected NAME=KEY=VALUE"):
        claim.parse_variants(["lr02"])


def _metrics(path: Path, feature: list[float], lr: float = 0.04) -> None:
    path.write_text("".join(json.dumps({"epoch": 1, "iter": i, "lr": lr, "classification": 1.0, "bbox_regression": 0.5,
                                        "frs_feature": f, "frs_head": 0.1}) + "\n" for i, f in enumerate(feature)))


def _run_dir(root: Path, teacher_ap: float, aps: dict[str, float]) -> Path:
    root.mkdir()
    (root / "metrics").mkdir()
    runs = {"teacher": {"final": {"AP": teacher_ap}}}
    for name, ap in aps.items():
        runs[name] = {"final": {"AP": ap / 100}, "history": [{"AP": ap / 200}, {"AP": ap / 100}]}
        _metrics(root / "metrics" / f"{name}.metrics.jsonl", [10.0] * 80)
    (root / "summary.json").write_text(json.dumps({"runs": runs, "device": ["cpu"], "date": "2026-12-02"}))
    return root


def test_verdicts_pool_one_teachers_runs_and_compute_the_paired_interval(tmp_path, capsys):
    b = {0: 38.0, 1: 37.0, 2: 36.0}
    c = {0: 37.5, 1: 37.25, 2: 36.5}
    first = _run_dir(tmp_path / "one", 0.32, {f"b_frs_cache_s{s}": v for s, v in b.items()}
                     | {f"c_frs_online_s{s}": v for s, v in c.items()})
    second = _run_dir(tmp_path / "two", 0.32, {"d_gt_boxes_s0": 30.0, "d_gt_boxes_s1": 37.5, "b_frs_cache+x_s1": 20.0})
    spiky = [10.0] * 60 + [40.0] + [10.0] * 19  # 4x the median of the 50 before
    _metrics(second / "metrics" / "d_gt_boxes_s1.metrics.jsonl", spiky)
    probe = second / "metrics" / "b_frs_cache+x_s1.sharpness.jsonl"
    probe.write_text("".join(json.dumps({"iter": i, "alpha": 0.005, "w": min(1.0, i / 50), "lo": [10.0, 30.0],
                                         "hi": [100.0, 50.0 + i]}) + "\n" for i in range(80)))
    result = verdicts.main([first, second])

    diffs = [b[s] - c[s] for s in (0, 1, 2)]
    half = 4.303 * statistics.stdev(diffs) / 3 ** 0.5
    assert result["cached_minus_online"]["mean"] == pytest.approx(statistics.mean(diffs))
    assert result["cached_minus_online"]["ci95"] == pytest.approx([statistics.mean(diffs) - half,
                                                                   statistics.mean(diffs) + half])
    assert result["ap"]["d_gt_boxes"]["seeds"] == {0: pytest.approx(30.0), 1: pytest.approx(37.5)}
    assert result["spiked"] == ["d_gt_boxes_s1"]
    v = result["verdicts"]
    assert v["cached - online: mean within 0.5 AP, 95 % interval holds 0"] == "met"  # +0.25, interval holds 0
    assert v["FRS from cache: worst seed within 3 AP of the mean"] == "met"
    assert v["FRS from cache >= GT-box imitation on every paired seed"] == "missed"  # seed 1: 37.0 < 37.5
    assert v["no spike in at least 10 FRS runs"] == "missed"
    sharp = result["variants"]["b_frs_cache+x_s1"]["sharpness"]
    # lr * 2 * w * alpha * the largest level bound, largest over the logged iterations (w = 1 from iteration 50)
    assert sharp["lr_lambda_lo_max"] == pytest.approx(0.04 * 2 * 0.005 * 30.0)
    assert sharp["lr_lambda_hi_max"] == pytest.approx(0.04 * 2 * 0.005 * (50.0 + 79))
    assert sharp["first_iter_hi_above_bound"] is None  # 0.0516 at most, far below 3.8
    assert json.loads((second / "verdicts.json").read_text())["verdicts"] == v
    assert "| b_frs_cache+x_s1 | 10.0, 20.0 |" in capsys.readouterr().out


def test_verdicts_refuse_directories_of_different_teachers(tmp_path):
    first = _run_dir(tmp_path / "one", 0.32, {"b_frs_cache_s0": 30.0})
    second = _run_dir(tmp_path / "two", 0.31, {"c_frs_online_s0": 30.0})
    with pytest.raises(SystemExit, match="expected one teacher"):
        verdicts.main([first, second])


def test_classification_bump_is_the_peak_after_the_warmup_over_the_low_before_it(tmp_path):
    cls = [1.0 - 0.004 * i for i in range(60)] + [0.9, 1.1, 0.95] + [0.8] * 37  # low 0.824 at 59, peak 1.1 at 61
    path = tmp_path / "c_frs_online_s1.metrics.jsonl"
    path.write_text("".join(json.dumps({"iter": i, "classification": c}) + "\n" for i, c in enumerate(cls)))
    bump = verdicts.classification_bump(path, warmup=60)
    assert bump["iter"] == 61 and bump["peak"] == pytest.approx(1.1)
    assert bump["ratio"] == pytest.approx(1.1 / (1.0 - 0.004 * 59))
    assert verdicts.classification_bump(path, warmup=200) is None  # no iterations after a warm-up that long
    (tmp_path / "claim.toml").write_text("[train]\nwarmup_iters = 60\n")
    assert verdicts.warmup_of(tmp_path) == 60
    assert verdicts.warmup_of(tmp_path / "elsewhere") == 100


def test_judging_a_variant_takes_its_frs_runs_in_place_of_the_plain_ones_against_the_plain_baselines(tmp_path):
    plain = {f"b_frs_cache_s{s}": 31.0 for s in range(3)} | {"c_frs_online_s0": 31.0, "c_frs_online_s1": 26.0,
                                                             "c_frs_online_s2": 31.0}
    fw = {f"b_frs_cache+fw_s{s}": 30.5 + 0.1 * s for s in range(3)} | {f"c_frs_online+fw_s{s}": 30.4 + 0.1 * s
                                                                       for s in range(3)}
    base = {"d_gt_boxes_s0": 27.0, "d_gt_boxes_s1": 30.7, "a_alone_s0": 9.0}
    root = _run_dir(tmp_path / "one", 0.32, plain | fw | base)

    judged = verdicts.main([root], judge="fw")
    assert judged["judged_variant"] == "fw"
    assert judged["ap"]["c_frs_online"]["seeds"] == {s: pytest.approx(30.4 + 0.1 * s) for s in range(3)}
    assert judged["ap"]["d_gt_boxes"]["seeds"] == {0: pytest.approx(27.0), 1: pytest.approx(30.7)}  # plain
    assert judged["ap"]["a_alone"]["n"] == 1
    assert judged["cached_minus_online"]["values"] == pytest.approx([0.1, 0.1, 0.1])
    assert sorted(judged["fresh_runs_checked_for_spikes"]) == sorted([*fw, "d_gt_boxes_s0", "d_gt_boxes_s1"])
    v = judged["verdicts"]
    assert v["FRS online: worst seed within 3 AP of the mean"] == "met"
    assert v["FRS from cache >= GT-box imitation on every paired seed"] == "missed"  # seed 1: 30.6 < 30.7
    assert (root / "verdicts_fw.json").exists()

    plain_result = verdicts.main([root])
    assert plain_result["ap"]["c_frs_online"]["seeds"][1] == pytest.approx(26.0)
    assert plain_result["verdicts"]["FRS online: worst seed within 3 AP of the mean"] == "missed"  # 26 vs 29.3
    assert plain_result["verdicts"]["FRS from cache >= GT-box imitation on every paired seed"] == "met"  # 31 >= 30.7
    assert json.loads((root / "verdicts.json").read_text())["judged_variant"] is None


def test_each_variant_is_compared_with_its_kinds_plain_runs_seed_by_seed(tmp_path, capsys):
    plain = {0: 20.0, 1: 21.0, 2: 19.0}
    layout = {0: 20.5, 1: 20.0, 2: 19.5}  # differences +0.5, -1.0, +0.5
    aps = ({f"a_alone_s{s}": v for s, v in plain.items()} | {f"a_alone+cl_s{s}": v for s, v in layout.items()}
           | {"b_frs_cache_s0": 30.0, "b_frs_cache+cl_s0": 31.0, "b_frs_cache+cl_s5": 29.0})
    root = _run_dir(tmp_path / "one", 0.32, aps)
    for f in (root / "metrics").glob("a_alone*.metrics.jsonl"):  # a student alone logs no FRS term
        f.write_text("".join(json.dumps({"epoch": 1, "iter": i, "lr": 0.04, "classification": 1.0 + (i == 100),
                                         "bbox_regression": 0.5}) + "\n" for i in range(120)))
    result = verdicts.main([root])

    assert result["variants"]["a_alone+cl_s0"]["peak_90_140"] == {"classification": 2.0}
    assert "frs_feature_max" not in result["variants"]["a_alone+cl_s0"]
    assert result["variants"]["a_alone+cl_s0"]["identical_iterations_with"] == {"a_alone_s0": 120}
    assert result["variants"]["b_frs_cache+cl_s0"]["frs_feature_max"] == 10.0
    a = result["variant_minus_plain"]["cl"]["a_alone"]
    assert a["seeds"] == [0, 1, 2] and a["values"] == pytest.approx([0.5, -1.0, 0.5])
    half = 4.303 * statistics.stdev([0.5, -1.0, 0.5]) / 3 ** 0.5
    assert a["mean"] == pytest.approx(0.0) and a["ci95"] == pytest.approx([-half, half])
    b = result["variant_minus_plain"]["cl"]["b_frs_cache"]
    assert b["seeds"] == [0] and b["values"] == pytest.approx([1.0]) and "ci95" not in b  # seed 5 has no plain run
    assert result["variant_verdicts"] == {"student alone +cl - plain: mean within 0.5 AP, 95 % interval holds 0": "met"}
    # the plain runs' own statistics leave the variant's runs out
    assert result["ap"]["a_alone"]["seeds"] == {0: pytest.approx(20.0), 1: pytest.approx(21.0), 2: pytest.approx(19.0)}
    out = capsys.readouterr().out
    assert "student alone +cl − plain, seed by seed (0: 20.5 vs 20.0, 1: 20.0 vs 21.0, 2: 19.5 vs 19.0): +0.00 AP" in out
    assert "FRS from cache +cl − plain, seed by seed (0: 31.0 vs 30.0): fewer than two pairs" in out

    shifted = {s: v - 1.0 for s, v in layout.items()}  # mean -1.0: beyond 0.5 AP
    result = verdicts.main([_run_dir(tmp_path / "two", 0.32, {f"a_alone_s{s}": v for s, v in plain.items()}
                                     | {f"a_alone+cl_s{s}": v for s, v in shifted.items()})])
    assert result["variant_verdicts"] == {"student alone +cl - plain: mean within 0.5 AP, 95 % interval holds 0": "missed"}


layout = load_bench("layout_verdict")


def _layout_dir(path: Path, nchw: dict[int, float], cl: dict[int, float], teacher: float = layout.TEACHER_AP) -> Path:
    runs = {"teacher": {"final": {"AP": teacher}}, "a_alone_s100": {"final": {"AP": 0.1}},
            "b_frs_cache_s99": {"final": {"AP": 0.5}}, "b_frs_cache+cl_s99": {"final": {"AP": 0.1}}}
    runs |= {f"b_frs_cache_s{s}": {"final": {"AP": v / 100}} for s, v in nchw.items()}
    runs |= {f"b_frs_cache+cl_s{s}": {"final": {"AP": v / 100}} for s, v in cl.items()}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"runs": runs}))
    return path


def test_the_layout_verdict_waits_for_every_declared_pair_then_applies_the_declared_rule(tmp_path, capsys):
    seeds = list(layout.SEEDS)
    assert len(seeds) == 30 and layout.MARGIN == 0.5
    nchw = {s: 28.0 + (s % 3) * 0.1 for s in seeds}
    small = {s: nchw[s] + (-0.3 if s % 2 else 0.2) for s in seeds}  # mean -0.05: no cost shown
    first = _layout_dir(tmp_path / "one", {s: nchw[s] for s in seeds[:16]}, {s: small[s] for s in seeds[:15]})
    assert layout.main([str(first)]) == 0
    assert "15 of 30 declared pairs in" in capsys.readouterr().out
    assert layout.judge(layout.collect([first]))["verdict"] == "incomplete"

    second = _layout_dir(tmp_path / "two", {s: nchw[s] for s in seeds[15:]}, {s: small[s] for s in seeds[15:]})
    out = tmp_path / "v.json"
    assert layout.main([str(first), str(second), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    d = [small[s] - nchw[s] for s in seeds]  # seed 99 (outside the declared set) and the student alone ignored
    half = 2.045 * statistics.stdev(d) / 30 ** 0.5
    assert result["pairs"] == 30 and result["mean"] == pytest.approx(statistics.mean(d))
    assert result["interval"] == pytest.approx([statistics.mean(d) - half, statistics.mean(d) + half])
    assert result["verdict"] == "channels-last on by default"
    assert "-> channels-last on by default" in capsys.readouterr().out

    # a cost: every pair 0.3 lower, with spread: the interval excludes 0, so it stays off
    costly = {s: nchw[s] - 0.3 + (0.1 if s % 2 else -0.1) for s in seeds}
    third = _layout_dir(tmp_path / "three", nchw, costly)
    assert layout.judge(layout.collect([third]))["verdict"] == "channels-last stays off"
    # no cost shown, but an interval reaching below -0.5: stays off
    wide = {s: nchw[s] + (1.5 if s % 2 else -1.7) for s in seeds}
    fourth = _layout_dir(tmp_path / "four", nchw, wide)
    result = layout.judge(layout.collect([fourth]))
    assert result["interval"][0] < -0.5 < 0 < result["interval"][1] and result["verdict"] == "channels-last stays off"


def test_the_layout_verdict_refuses_another_teacher_and_a_pair_that_disagrees_with_itself(tmp_path):
    with pytest.raises(SystemExit, match="expected the teacher"):
        layout.collect([_layout_dir(tmp_path / "t", {100: 28.0}, {100: 28.0}, teacher=0.25)])
    one = _layout_dir(tmp_path / "one", {100: 28.0}, {100: 27.0})
    two = _layout_dir(tmp_path / "two", {100: 28.5}, {})
    with pytest.raises(SystemExit, match="appears twice with different AP"):
        layout.collect([one, two])
