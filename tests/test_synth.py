"""The embedded synthetic dataset: determinism, COCO validity, box conventions, content spread, errors."""

import json
import os
from itertools import combinations

import pytest
from PIL import Image
from pycocotools.coco import COCO

from frs_cli.data.synth import CATEGORIES, LOOKALIKES, SynthConfig, generate
from frs_cli.errors import ConfigError

SMALL = SynthConfig(train=12, val=4, size=96, seed=3)


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    calls = []
    summary = generate(out, SynthConfig(train=60, val=10, size=192, seed=7), progress=calls.append)
    return out, summary, calls


def test_same_seed_gives_byte_identical_annotations_and_another_seed_differs(tmp_path):
    generate(tmp_path / "a", SMALL)
    generate(tmp_path / "b", SMALL)
    generate(tmp_path / "c", SynthConfig(train=12, val=4, size=96, seed=4))
    for split in ("train", "val"):
        name = f"annotations/instances_{split}.json"
        a, b, c = ((tmp_path / d / name).read_bytes() for d in "abc")
        assert a == b
        assert a != c
    image = "train/000000000005.jpg"
    assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()


def test_summary_progress_and_counts_match_the_config(dataset):
    out, summary, calls = dataset
    assert summary["train"] == 60 and summary["val"] == 10
    assert summary["categories"] == ["circle", "square", "triangle", "star", "cross"]
    assert sum(calls) == 70
    for split, n in (("train", 60), ("val", 10)):
        data = _load(out / "annotations" / f"instances_{split}.json")
        assert list(data) == ["info", "images", "annotations", "categories"]
        assert len(data["images"]) == n
        assert len(os.listdir(out / split)) == n
        assert summary["annotations"][split] == len(data["annotations"]) > 0
        assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    assert not [p for p in (out / "annotations").iterdir() if p.name.endswith(".tmp")]


def test_every_image_entry_has_a_file_of_the_recorded_size(dataset):
    out, _, _ = dataset
    ids = []
    for split in ("train", "val"):
        for entry in _load(out / "annotations" / f"instances_{split}.json")["images"]:
            assert entry["file_name"] == f"{entry['id']:012d}.jpg"
            with Image.open(out / split / entry["file_name"]) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert img.size == (entry["width"], entry["height"]) == (192, 192)
            ids.append(entry["id"])
    assert sorted(ids) == list(range(1, 71))


def test_pycocotools_loads_both_files_and_boxes_are_valid(dataset):
    out, _, _ = dataset
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5]
        assert [c["name"] for c in coco.loadCats([1, 2, 3, 4, 5])] == [c["name"] for c in CATEGORIES]
        names = {c["name"] for c in coco.loadCats(coco.getCatIds())}
        assert not names & set(LOOKALIKES)
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] == w * h
            assert ann["iscrowd"] == 0
            assert ann["category_id"] in (1, 2, 3, 4, 5)


def test_box_sizes_span_small_and_medium(dataset):
    out, _, _ = dataset
    areas = [a["area"] for a in _load(out / "annotations/instances_train.json")["annotations"]]
    assert sum(a < 32**2 for a in areas) >= 10
    assert sum(a >= 32**2 for a in areas) >= 10
    assert min(areas) < 16**2 and max(areas) > 64**2


def test_all_five_categories_occur(dataset):
    out, _, _ = dataset
    used = {a["category_id"] for a in _load(out / "annotations/instances_train.json")["annotations"]}
    assert used == {1, 2, 3, 4, 5}


def test_some_annotated_boxes_overlap(dataset):
    out, _, _ = dataset
    data = _load(out / "annotations/instances_train.json")
    boxes = {}
    for a in data["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a["bbox"])
    overlapping = [i for i, bs in boxes.items() if any(_iou(a, b) > 0 for a, b in combinations(bs, 2))]
    assert len(overlapping) >= 3


def test_aspect_jitter_gives_several_image_sizes(tmp_path):
    generate(tmp_path / "d", SynthConfig(train=20, val=0, size=96, aspect_jitter=True))
    data = _load(tmp_path / "d/annotations/instances_train.json")
    sizes = {(e["width"], e["height"]) for e in data["images"]}
    assert len(sizes) > 1
    assert sizes <= {(96, 96), (96, 72), (72, 96)}
    for entry in data["images"]:
        with Image.open(tmp_path / "d/train" / entry["file_name"]) as img:
            assert img.size == (entry["width"], entry["height"])


def test_object_count_range_is_respected(tmp_path):
    cfg = SynthConfig(train=10, val=0, size=96, min_objects=2, max_objects=2, lookalike_prob=0)
    generate(tmp_path / "d", cfg)
    data = _load(tmp_path / "d/annotations/instances_train.json")
    per_image = [sum(a["image_id"] == e["id"] for a in data["annotations"]) for e in data["images"]]
    assert max(per_image) == 2 and sum(per_image) >= 16  # a placement may rarely be skipped


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"size": 32}, "size"),
        ({"size": 100000}, "size"),  # before: accepted, and the process ran out of memory drawing the first image
        ({"train": -1}, "train"),
        ({"val": -5}, "val"),
        ({"seed": -1}, "seed"),
        ({"min_objects": 4, "max_objects": 2}, "max_objects"),
        ({"lookalike_prob": 1.5}, "lookalike_prob"),
        ({"size": 128.0}, "size"),
        ({"aspect_jitter": "yes"}, "aspect_jitter"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        SynthConfig(**kwargs)
    assert f"synth.{field}:" in str(err.value)
    assert "\n" not in str(err.value)


def test_non_empty_out_dir_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ConfigError) as err:
        generate(tmp_path, SMALL)
    assert str(tmp_path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_refused_output_is_one_line_with_no_progress_bar_before_it(tmp_path):
    """data synth into a folder of other files: the line alone (before: a 0 % progress line, then the error)."""
    from typer.testing import CliRunner

    from frs_cli.cli.app import app

    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = CliRunner().invoke(app, ["data", "synth", str(out), "--train", "2", "--val", "1"])
    assert result.exit_code == 1 and result.stdout == ""
    line = f"error: synth output: expected a missing or empty directory, got non-empty {str(out)!r}"
    assert result.stderr.strip().splitlines() == [line]


def test_a_folder_another_run_filled_meanwhile_is_named_so_and_nothing_is_left(tmp_path):
    """Two runs for one output: the one that finishes second was told to free space (its rename failing with
    'Directory not empty'). Now the line says what happened, the other run's set stays, no hidden folder is left."""
    out = tmp_path / "set"

    def the_other_run_finishes(n):
        if not out.exists():
            out.mkdir()
            (out / "theirs.txt").write_text("x")

    with pytest.raises(ConfigError) as err:
        generate(out, SynthConfig(train=2, val=1, size=64), progress=the_other_run_finishes)
    assert err.value.message == (f"synth output {str(out)!r}: expected a missing or empty folder to put the set in, "
                                 "but another run filled it meanwhile; nothing was written")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and not list(tmp_path.glob(".*.partial"))


def test_empty_existing_out_dir_is_accepted(tmp_path):
    summary = generate(tmp_path, SynthConfig(train=2, val=1, size=64))
    assert summary["train"] == 2 and summary["val"] == 1
    assert (tmp_path / "annotations/instances_val.json").is_file()


def test_a_stopped_synth_leaves_nothing_at_out_and_a_second_run_writes_it(tmp_path, monkeypatch):
    """Ctrl-C part way: exit 130, nothing at OUT (the images went to a hidden folder beside it, removed), so the
    same command then writes the dataset (before: OUT held the images written so far, and the second run was
    refused: "expected a missing or empty directory")."""
    from typer.testing import CliRunner

    from frs_cli.cli.app import app
    from frs_cli.data import synth

    render = synth.render

    def stopped(cfg, code, index):
        if index == 3:
            raise KeyboardInterrupt
        return render(cfg, code, index)

    monkeypatch.setattr(synth, "render", stopped)
    out = tmp_path / "d"
    args = ["data", "synth", str(out), "--train", "8", "--val", "2", "--size", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synth, "render", render)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "train", "val"]
    assert len(list((out / "train").iterdir())) == 8 and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_sigterm_stops_synth_with_one_line_and_removes_its_hidden_folder(tmp_path):
    """SIGTERM (kill, timeout, a scheduler's cancel) part way: the usual ``interrupted:`` line, exit 143, and the
    hidden folder the images went to is removed (before: killed at once, exit 143 with no message, and
    ``.d.<pid>.partial`` left beside OUT for good)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "frs_cli", "data", "synth", "d", "--train", "3000", "--val", "1",
                             "--size", "64"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    partial = tmp_path / f".d.{proc.pid}.partial" / "train"
    deadline = time.monotonic() + 120
    while not (partial.is_dir() and any(partial.iterdir())) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and any(partial.iterdir())  # stopped part way, images written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("interrupted: data synth stopped; the images made so far were removed, "
                                            "nothing was written to 'd' (run the same command again)"), err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_synth_removes_the_hidden_folders_of_its_output_that_dead_runs_left(tmp_path):
    """A run killed outright (SIGKILL: nothing of it runs) leaves ``.d.<pid>.partial``; the next run for ``d``
    removes those of processes that are gone, and leaves a live process's and other outputs' (before: they stayed
    for good)."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        left = [tmp_path / f".d.{dead}.partial", tmp_path / f".d.{live.pid}.partial",
                tmp_path / f".other.{dead}.partial", tmp_path / f".d.x{dead}.partial"]
        for folder in left:
            (folder / "train").mkdir(parents=True)
            (folder / "train" / "000000000001.jpg").write_bytes(b"jpeg")
        out = generate(tmp_path / "d", SynthConfig(train=2, val=1, size=64))
        assert out["train"] == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["d", *(p.name for p in left[1:])])
        live.kill()
        live.wait()
        from frs_cli.data.synth import remove_stale_partials

        assert remove_stale_partials(tmp_path / "d") == [left[1]] and not left[1].exists()
    finally:
        live.kill()
        live.wait()
