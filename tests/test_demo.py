import json

import pytest
from PIL import Image

from frs_cli.demo import DemoConfig, demo_recipe_path, run_demo
from frs_cli.errors import ConfigError


def test_demo_runs_every_stage_and_writes_its_summary(tmp_path):
    out = tmp_path / "demo"
    s = run_demo(out, DemoConfig(train_images=16, val_images=8, size=64, min_object=12.0))
    assert set(s.metrics) == {"teacher", "student + FRS (cache)", "student alone"}
    for m in s.metrics.values():
        assert set(m) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert m["APl"] is None  # 64 px images hold no large object: undefined, not 0.0
        assert all(0.0 <= v <= 1.0 for k, v in m.items() if k != "APl")
    assert set(s.seconds) == {"synth", "teacher", "teacher-cache", "distill", "baseline", "visualize", "report"}
    for f in s.files:
        assert (out / f).exists(), f
    # every output is listed: each top-level entry, and each file of the three run folders (their recipe.json,
    # metrics.jsonl and last.pt too: before, model_final.pt and adapters.pt alone), run folders first
    listed = {f.rstrip("/").split("/")[0] for f in s.files}
    assert listed == {p.name for p in out.iterdir()}, listed
    for run in ("teacher", "student_frs", "student_plain"):
        held = [f.split("/")[1] for f in s.files if f.startswith(f"{run}/")]
        assert sorted(held) == sorted(p.name for p in (out / run).iterdir()), (run, held)
        assert held[0] == "model_final.pt"
    assert s.files.index("student_plain/last.pt") < s.files.index("cache.zarr")
    assert json.loads((out / "summary.json").read_text())["files"] == s.files
    assert json.loads((out / "summary.json").read_text())["metrics"] == s.metrics
    # 16 images, 2 views: fp16 P3-P7 features of 64 channels plus masks at 128x128
    per_view = (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1) * (64 + 1) * 2
    assert 2 * per_view / 1e6 <= s.cache_mb_per_image < 2 * per_view / 1e6 * 1.2
    with Image.open(out / "masks.png") as im:
        assert im.width > 5 * 128
    with Image.open(out / "report.png") as im:
        assert im.format == "PNG" and im.width > 800
    rows = (out / "report.md").read_text().splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| teacher", "| student_frs", "| student_plain"]
    assert all(" | \u2013 | " in r for r in rows)  # APl undefined in the table too


def test_demo_refuses_a_used_directory(tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        run_demo(tmp_path, DemoConfig(train_images=4, val_images=2, size=64))


def test_demo_refuses_a_file_as_out_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from frs_cli.cli.app import app

    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "afile")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        f"error: demo --out '{tmp_path / 'afile'}': expected a new or empty directory, got a file"]


@pytest.mark.parametrize("option", ["--train-images", "--val-images"])
def test_demo_refuses_no_images_before_writing_anything(tmp_path, option):
    from typer.testing import CliRunner

    from frs_cli.cli.app import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), option, "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: demo {option}: expected an integer >= 1, got 0"]
    assert not (tmp_path / "d").exists()


def test_a_demo_stopped_in_its_distill_stage_resumes_to_the_uninterrupted_demos_numbers(tmp_path, monkeypatch):
    """Ctrl-C in the distill stage: exit 130 and the hint ``frs demo --out D --resume``; that command keeps the
    finished stages (the teacher's model file byte for byte, the set's annotations), continues the rest and ends
    with the metrics of a demo never stopped. A resume with other options is one line; a second resume of the
    finished demo changes nothing the stages wrote."""
    import hashlib

    from typer.testing import CliRunner

    from frs_cli.cli.app import app
    from frs_cli.errors import Interrupted
    from frs_cli.train import run

    opts = ["--train-images", "8", "--val-images", "4", "--no-baseline"]
    ref = tmp_path / "ref"
    done = CliRunner().invoke(app, ["demo", "--out", str(ref), *opts])
    assert done.exit_code == 0, done.output
    # its last line names every output, each run folder once with what it holds (README's "After the demo")
    assert done.stdout.splitlines()[-1] == (
        f"files: {ref}/teacher/, {ref}/student_frs/ (each holds model_final.pt, recipe.json, metrics.jsonl, last.pt; "
        f"student_frs/ also adapters.pt), {ref}/cache.zarr, {ref}/data/, {ref}/masks.png, {ref}/report.png, "
        f"{ref}/report.md, {ref}/summary.json, {ref}/demo.json")
    distill = run.distill_student

    def stopped(*args, **kwargs):
        raise Interrupted("stopped at epoch 1, iteration 2; state saved to x/last.pt",
                          hint="run the same command with --resume to continue")

    monkeypatch.setattr(run, "distill_student", stopped)
    out = tmp_path / "d"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *opts])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"interrupted: demo stopped; what it wrote so far is in {out} (run frs demo --out {out} --resume to "
        "continue it)")
    digest = hashlib.sha256((out / "teacher" / "model_final.pt").read_bytes()).hexdigest()
    monkeypatch.setattr(run, "distill_student", distill)
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *opts])
    assert result.exit_code == 1 and "add --resume to continue the demo stopped there" in result.stderr
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--train-images", "9", "--val-images", "4",
                                      "--no-baseline", "--resume"])
    assert result.exit_code == 1 and "started with other options: train_images = 8, now 9" in result.stderr
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *opts, "--resume"])
    assert result.exit_code == 0, result.output
    assert "--resume:" not in result.output  # the stages not begun start afresh, without the commands' warning
    assert "time (this session, which resumed the demo): synth " in result.output
    assert json.loads((out / "summary.json").read_text())["resumed"] is True
    assert json.loads((ref / "summary.json").read_text())["resumed"] is False
    assert hashlib.sha256((out / "teacher" / "model_final.pt").read_bytes()).hexdigest() == digest
    got, want = (json.loads((d / "summary.json").read_text())["metrics"] for d in (out, ref))
    assert got == want and set(got) == {"teacher", "student + FRS (cache)"}
    again = CliRunner().invoke(app, ["demo", "--out", str(out), *opts, "--resume"])
    assert again.exit_code == 0 and json.loads((out / "summary.json").read_text())["metrics"] == want
    assert hashlib.sha256((out / "student_frs" / "model_final.pt").read_bytes()).hexdigest() == hashlib.sha256(
        (ref / "student_frs" / "model_final.pt").read_bytes()).hexdigest()


def test_packaged_demo_recipe_is_the_pipelines_one():
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent / "pipelines" / "demo.toml"
    assert demo_recipe_path().read_text() == here.read_text()
