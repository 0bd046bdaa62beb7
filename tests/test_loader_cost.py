"""bench/loader_cost.py (issue 13): its smoke run on the CPU times every variant, split into phases that add up."""

from __future__ import annotations

import json

import pytest
import torch
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


def test_loader_cost_profile_labels_the_regions_of_each_step_and_restores_them(tmp_path):
    from frs_cli.train import graphed, objectives

    bench = load_bench("loader_cost")
    originals = {(h, n): (getattr(objectives, h) if h else objectives).__dict__[n]
                 for m, h, n, _ in bench.REGIONS if m.endswith("objectives")}
    argv = ["--smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--variants", "resident_plain", "--profile-variants", "resident_plain,resident_cached"]
    args = bench.parse_args(argv)
    args.profile = True  # the smoke turns it off
    res = bench.run(args, argv)
    plain, cached = (res["profiles"][v]["regions"] for v in ("resident_plain", "resident_cached"))
    assert set(plain) == {"objective_forward", "student_forward"}
    # on the CPU the FRS side runs eagerly: its checks and valid positions are labelled, no graph is replayed
    assert set(cached) == {"objective_forward", "student_forward", "valid_positions", "image_sizes",
                           "graphed_check", "check_batch"}
    for regions in (plain, cached):
        assert 0 < regions["student_forward"] < regions["objective_forward"]
    assert cached["valid_positions"] < cached["objective_forward"] - cached["student_forward"]
    text = (tmp_path / "out" / "profile_resident_cached.txt").read_text()
    assert "valid_positions: " in text and "ms per step (host)" in text and "Self CPU" in text
    on_disk = json.loads((tmp_path / "out" / "loader_cost.json").read_text())
    assert on_disk["profiles"]["resident_cached"]["regions"] == pytest.approx(cached)
    # every function is itself again once the profile ends
    for (h, n), fn in originals.items():
        assert (getattr(objectives, h) if h else objectives).__dict__[n] is fn
    assert graphed.GraphedTerms.__dict__["__call__"].__name__ == "__call__"


def test_loader_cost_clocked_times_the_regions_of_every_variant_and_restores_what_it_patched(tmp_path):
    """``--clocked``: every variant's timed steps report the host ms per step inside each region it ran (on the CPU
    the FRS side runs eagerly: no graph region). Static methods stay static while patched, and every patched
    attribute is itself again after."""
    from torch.cuda import CUDAGraph

    from frs_cli.train import graphed, objectives

    bench = load_bench("loader_cost")
    before = {(h, n): vars(getattr(graphed, h)).get(n) for m, h, n, _ in bench.REGIONS if m.endswith("graphed")}
    replay = vars(CUDAGraph).get("replay")
    argv = ["--smoke", "--clocked", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--variants", "resident_plain,resident_cached"]
    res = bench.run(bench.parse_args(argv), argv)
    row = res["rounds"][0]
    assert set(row["resident_plain"]["regions_ms"]) == {"objective_forward", "student_forward"}
    regions = row["resident_cached"]["regions_ms"]
    assert set(regions) == {"objective_forward", "student_forward", "valid_positions", "image_sizes", "graphed_check",
                            "check_batch"}
    assert 0 < regions["valid_positions"] < regions["objective_forward"] - regions["student_forward"]
    text = bench.table(res)
    assert "Host ms per step in each region" in text and "| resident_plain | 0 | - | - |" in text
    assert {(h, n): vars(getattr(graphed, h)).get(n) for (h, n) in before} == before
    assert vars(CUDAGraph).get("replay") is replay

    totals = {}
    with bench.clocked_regions(_Student(), totals):
        assert isinstance(vars(graphed._Replay)["forward"], staticmethod)
        valid = objectives.valid_positions([(32, 40)], [(4, 6)], [8], torch.device("cpu"))
    assert valid.sum() == 4 * 5 and set(totals) == {"valid_positions", "image_sizes"}
    assert totals["valid_positions"] > totals["image_sizes"] > 0  # the sizes' copy is part of the valid positions


class _Student(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.student = torch.nn.Identity()


def test_loader_cost_sync_points_record_where_a_step_waits_for_the_device_per_step(tmp_path, monkeypatch):
    """``--sync-points``: the steps after the timed ones run with CUDA's sync debug mode (on the CPU nothing
    synchronises, so a wrapper of the cached side's sizes copy emits the mode's warning as CUDA would); each warning
    counts once for the innermost frames that raised it, per watched step. Other warnings are not counted, the plain
    step records none, and the timed steps' figures do not include the watched ones."""
    import warnings

    from frs_cli.train import objectives

    bench = load_bench("loader_cost")
    original = objectives.image_sizes_on

    def waiting_sizes_copy(sizes, device):
        warnings.warn(f"{bench.SYNC_WARNING} at this copy", UserWarning, stacklevel=1)
        warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
        return original(sizes, device)

    monkeypatch.setattr(objectives, "image_sizes_on", waiting_sizes_copy)
    argv = ["--smoke", "--sync-points", "--sync-steps", "3", "--out", str(tmp_path / "out"), "--work",
            str(tmp_path / "work"), "--variants", "resident_plain,resident_cached"]
    with pytest.warns(UserWarning, match="an unrelated warning"):
        res = bench.run(bench.parse_args(argv), argv)
    row = json.loads((tmp_path / "out" / "loader_cost.json").read_text())["rounds"][0]
    assert row == json.loads(json.dumps(res["rounds"][0]))
    assert row["resident_plain"]["sync_points"] == {} and row["resident_plain"]["sync_steps"] == 3
    cached = row["resident_cached"]
    assert cached["steps"] == 2 and cached["sync_steps"] == 3
    (chain, per_step), = cached["sync_points"].items()
    assert per_step == 1.0  # once in each of the 3 watched steps
    frames = chain.split(" < ")
    assert len(frames) == 4
    assert frames[0].startswith("tests/test_loader_cost.py:") and frames[0].endswith(" waiting_sizes_copy")
    assert frames[1].startswith("frs_cli/train/objectives.py:") and frames[1].endswith(" valid_positions")
    text = bench.table(res)
    assert "Where the host waited for the device" in text
    assert f"| resident_cached | 0 | 1 | `{chain}` |" in text and "| resident_plain | 0 | 0 | `(none)` |" in text


def test_loader_cost_variant_switches_parse_in_any_order_and_last_for_their_variant_alone(tmp_path, monkeypatch):
    """A variant's name is a base name and ``SWITCHES`` in any order; the process-wide ones (cuDNN's benchmark mode,
    the fused kernels) hold while that variant runs and are as before after it, and a kernel turned off in the
    environment stays off. A switched variant runs whole in the smoke run."""
    from frs_cli import fused_decode, fused_losses

    bench = load_bench("loader_cost")
    assert bench.parse_variant("resident_cached_sg_tnc_nf") == ("resident_cached", {"_sg", "_tnc", "_nf"})
    assert bench.parse_variant("resident_cached_nf_tnc_sg") == ("resident_cached", {"_sg", "_tnc", "_nf"})
    assert bench.parse_variant("loader_cached_eager_sg_acl") == ("loader_cached_eager", {"_sg", "_acl"})
    assert bench.parse_variant("resident_online_nb") == ("resident_online", {"_nb"})
    assert bench.parse_variant("loader_cached_w4") == ("loader_cached_w4", set())

    monkeypatch.setattr(fused_losses, "ENABLED", True)
    monkeypatch.setattr(fused_decode, "ENABLED", False)  # as FRS_FUSED_DECODE=0 leaves it
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with bench.process_switches(frozenset({"_nf", "_cb"})):
        assert (fused_losses.ENABLED, fused_decode.ENABLED, torch.backends.cudnn.benchmark) == (False, False, True)
    with bench.process_switches(frozenset()):
        assert (fused_losses.ENABLED, fused_decode.ENABLED, torch.backends.cudnn.benchmark) == (True, False, False)
    assert (fused_losses.ENABLED, fused_decode.ENABLED, torch.backends.cudnn.benchmark) == (True, False, False)
    monkeypatch.setattr(fused_losses, "ENABLED", False)  # as FRS_FUSED_LOSSES=0 leaves it
    monkeypatch.setattr(fused_decode, "ENABLED", True)
    with bench.process_switches(frozenset({"_nf"})):
        assert (fused_losses.ENABLED, fused_decode.ENABLED) == (False, True)
    with bench.process_switches(frozenset({"_nd"})):
        assert (fused_losses.ENABLED, fused_decode.ENABLED) == (False, False)
    assert (fused_losses.ENABLED, fused_decode.ENABLED) == (False, True)
    monkeypatch.setattr(fused_losses, "ENABLED", True)
    product = fused_losses._forward, fused_losses.FORWARD_TILE, fused_losses.BACKWARD_TILE
    with bench.process_switches(frozenset({"_ot"})):  # the earlier kernel and tiles, both ways
        assert fused_losses._forward is not product[0] and fused_losses._forward.__name__ == "_forward_acc1d"
        assert fused_losses.FORWARD_TILE == fused_losses.BACKWARD_TILE == (32, 64, 4)
    assert (fused_losses._forward, fused_losses.FORWARD_TILE, fused_losses.BACKWARD_TILE) == product

    seen = []
    real = bench._run_variant

    def spy(name, on, *a):
        seen.append((name, on, fused_losses.ENABLED, torch.backends.cudnn.benchmark))
        return real(name, on, *a)

    monkeypatch.setattr(bench, "_run_variant", spy)
    name = "resident_cached_sg_nf_cb_nb_acl"
    argv = ["--smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--variants", name]
    row = bench.run(bench.parse_args(argv), argv)["rounds"][0][name]
    assert row["steps"] == 2 and row["step_ms"] > 0 and row["step_graphs_captured"] == 0  # no capture off CUDA
    assert seen == [("resident_cached", {"_sg", "_nf", "_cb", "_nb", "_acl"}, False, True)]
    assert (fused_losses.ENABLED, torch.backends.cudnn.benchmark) == (True, False)
