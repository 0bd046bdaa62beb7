"""The command line: exit codes, one-line errors, and the files each command writes."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from frs_cli.cli.app import app

runner = CliRunner()
COMMANDS = ["teacher-cache", "train", "distill", "eval", "visualize", "demo", "models", "data", "cache", "report",
            "export", "recipe"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_plain_progress_line(stderr: str, task: str, done: int, unit: str) -> None:
    """A run outside a terminal prints plain progress lines (rate, elapsed, ETA), never a bar's control codes."""
    pattern = rf"^{re.escape(task)} {done}/{done} \(100%\) [\d.,]+ {unit}/s elapsed \d:\d\d:\d\d eta 0:00:00"
    assert re.search(pattern, stderr, re.MULTILINE), (pattern, stderr)
    assert "\x1b" not in stderr and "\r" not in stderr and "\u2501" not in stderr


def _commands():
    """Every command and group of the app but ``frs`` itself, as (its words, its click command)."""
    import typer.main

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))[1:]


def test_help_lists_every_command_with_a_purpose_and_each_help_ends_with_an_example():
    result = run("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    # every command and group, found by walking the app (before: a list kept by hand, which missed convert mmdet,
    # and the groups data, cache, recipe and convert had no example)
    paths = [path for path, _ in _commands()]
    assert ["convert", "mmdet"] in paths and ["cache"] in paths and ["recipe", "list"] in paths and len(paths) == 20
    for args in paths:
        out = run(*args, "--help").output
        assert "Example: frs " in out.strip().splitlines()[-1] or "Example: frs " in out.strip()[-200:], args


def test_the_recipes_the_help_examples_name_load_from_any_folder(tmp_path, monkeypatch):
    """A user who installed frs runs the examples from their own folder: the recipes they name are installed ones
    (``--pipeline demo``), which load anywhere (before: ``pipelines/demo.toml``, a path of the source checkout)."""
    import re

    from frs_cli.config import load_recipe

    monkeypatch.chdir(tmp_path)
    named = [m for _, command in _commands()
             for m in re.findall(r"(?:--pipeline|-p|recipe show) (\S+)", command.epilog or "")]
    assert "demo" in named and "coco_fcos_r50_to_r18" in named and len(named) >= 5, named
    for name in named:
        assert load_recipe(name).name, name


@pytest.mark.parametrize("group", [[], ["data"], ["cache"], ["recipe"], ["convert"]], ids=lambda g: " ".join(["frs", *g]))
def test_a_group_given_no_command_prints_its_help_and_exits_0(group):
    """A newcomer's bare ``frs`` (or ``frs data``) is no mistake: the help, as --help prints it, and exit 0 (before:
    the same help and exit 2, click's no_args_is_help). A command that does not exist is still the parser's usage
    error, exit 2."""
    result = run(*group)
    assert result.exit_code == 0, result.output
    assert result.stdout == run(*group, "--help").stdout and "Commands" in result.stdout
    wrong = run(*group, "unknown-command")
    assert wrong.exit_code == 2 and "No such command 'unknown-command'" in wrong.output, wrong.output


def test_help_texts_render_as_written_no_word_dropped_as_markup_no_sentence_broken():
    """Typer renders help through rich, which takes ``[train]`` for a style tag and prints nothing for it
    (``frs train --help`` once read "takes its schedule from , --role student from .")."""
    import typer.main
    from rich.text import Text

    def texts(command, path):
        yield path, command.help or ""
        for param in command.params:
            yield f"{path} {param.name}", getattr(param, "help", None) or ""
        for name, sub in getattr(command, "commands", {}).items():
            yield from texts(sub, f"{path} {name}")

    def words(text):
        return Counter(re.findall(r"[A-Za-z_]+", text))

    def dropped_words(text):  # the words of the text (an escaped \[ is a bracket) that rich does not print
        return words(text.replace("\\[", "[")) - words(Text.from_markup(text).plain)

    found = list(texts(typer.main.get_command(app), "frs"))
    assert len(found) > 60
    assert {where: text for where, text in found if dropped_words(text)} == {}
    # rich keeps a line break inside a paragraph: a sentence broken across source lines is broken on screen
    broken = {where: para for where, text in found for para in text.split("\n\n") if "\n" in para.strip()}
    assert broken == {}
    assert dropped_words("from [train], pip install 'frs\\[faster-eval]'") == Counter({"train": 1})


def test_an_error_line_carries_no_control_codes_from_a_library_message(capsys):
    """torch's unpickling errors bold words with ANSI codes; the one error line is plain text."""
    import typer

    from frs_cli.cli.common import handle_errors
    from frs_cli.errors import ModelError

    @handle_errors
    def command():
        raise ModelError("checkpoint 'x.pth': \x1b[1mWeights only load failed\x1b[0m (Unsupported global)")

    with pytest.raises(typer.Exit):
        command()
    assert capsys.readouterr().err == "error: checkpoint 'x.pth': Weights only load failed (Unsupported global)\n"


def test_a_ctrl_c_leaves_the_interrupted_line_alone_not_asyncios_pending_task_reports(capsys, caplog, request):
    """Ctrl-C during ``cache export`` dropped zarr's scheduled reads, and asyncio logged "Task was destroyed but it
    is pending!" for each at exit (19 pairs of lines after ``interrupted``, found by a QA pass)."""
    import asyncio
    import functools
    import gc
    import logging

    import typer

    from frs_cli.cli.common import handle_errors

    asyncio_log = logging.getLogger("asyncio")
    request.addfinalizer(functools.partial(asyncio_log.setLevel, asyncio_log.level))  # as the test found it
    loop, scheduled = asyncio.new_event_loop(), []

    @handle_errors
    def command():
        scheduled.append(loop.create_task(asyncio.sleep(3600)))  # a read still scheduled when the Ctrl-C lands
        loop.run_until_complete(asyncio.sleep(0))
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 130 and capsys.readouterr().err == "interrupted\n"
    with caplog.at_level(logging.DEBUG):
        loop.close()
        scheduled.clear()  # the pending task destroyed, as at exit
        gc.collect()
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_counts_in_closing_lines_agree_with_their_number():
    from types import SimpleNamespace

    from frs_cli.cli.cache_cmd import _per_image
    from frs_cli.cli.common import iterations_run

    assert iterations_run(SimpleNamespace(iterations=1, iterations_run=1)) == "1 iteration"
    assert iterations_run(SimpleNamespace(iterations=4, iterations_run=4)) == "4 iterations"
    assert iterations_run(SimpleNamespace(iterations=4, iterations_run=1)) == "1 of its 4 iterations"
    assert (_per_image(24, 24), _per_image(48, 24)) == ("1 view per image", "2 views per image")


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from frs_cli.cli.app import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("argv, shows", [
    (["models"], "retinanet_resnet50_fpn_v2"),
    (["recipe", "list"], "coco_retinanet_r50v2_to_r18"),
    (["recipe", "show", "coco_fcos_r50_to_r18"], "anchor_size = 0  # 0: fcos_resnet50_fpn's own, 8 px"),
], ids=["models", "recipe_list", "recipe_show"])
def test_commands_that_read_only_recipes_and_the_arch_table_import_neither_torch_nor_numpy(argv, shows):
    """``frs models`` and ``frs recipe`` read the arch declarations (``frs_cli.archs``) and recipes alone: they answer
    without importing torch, torchvision or numpy (before: 3.9-4.3 s on a 2-core machine, now 0.23-0.29 s:
    docs/results/cli_start_2026-12-07_s40.txt), and what they print is whole, the anchor size a 0 means included
    (the family's declaration, not its built module's)."""
    code = ("import sys\nfrom frs_cli.cli.app import main\nsys.argv = ['frs', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
            "print(sorted({'torch', 'torchvision', 'numpy'} & set(sys.modules)), code, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"COLUMNS": "200"}, check=False)
    assert out.stderr.strip().splitlines()[-1] == "[] 0", out.stderr
    assert shows in out.stdout


def test_synth_writes_a_coco_dataset(tmp_path):
    result = run("data", "synth", tmp_path / "d", "--train", 4, "--val", 2, "--size", 64)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "d" / "train").glob("*.jpg"))) == 4
    doc = json.loads((tmp_path / "d" / "annotations" / "instances_val.json").read_text())
    assert len(doc["images"]) == 2 and len(doc["categories"]) == 5


def test_bad_input_is_one_line_on_stderr_and_exit_1(tmp_path, recipe_path):
    result = run("data", "synth", tmp_path / "d", "--size", 10)
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "synth.size" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(recipe_path.read_text().replace("[train]", "[train]\nepochz = 3"))
    result = run("train", "--pipeline", bad, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "recipe key 'train.epochz': unknown key" in result.stderr and result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()
    result = run("train", "--pipeline", recipe_path, "--out", tmp_path / "run2", "--set", "teacher.arch=resnet9")
    assert result.exit_code == 1 and "unknown arch 'resnet9'" in result.stderr and "retinanet_tiny_fpn" in result.stderr
    assert not (tmp_path / "run2").exists()


def test_train_then_eval_checkpoint_writes_metrics_and_detections(tmp_path, recipe_path, synth_root):
    result = run("train", "--pipeline", recipe_path, "--role", "student", "--out", tmp_path / "run",
                 "--set", "train.epochs=2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model_final.pt").is_file()
    assert_plain_progress_line(result.stderr, "epoch 2/2", 24, "img")  # each image once per epoch, in one view
    assert_plain_progress_line(result.stderr, "evaluate", 8, "img")  # the run's evaluation has its bar too
    # the val metrics after the last epoch in percent, as the tables show them (metrics.jsonl keeps fractions)
    assert re.search(r"^epoch 2, val box mAP \(%\): AP \d+\.\d  AP50 \d+\.\d  .*APl \u2013$", result.stderr,
                     re.MULTILINE), result.stderr
    done = [line for line in result.stdout.splitlines() if " iterations in " in line]  # one line, however long
    assert len(done) == 1 and len(done[0]) > 80 and done[0].endswith(f" -> {tmp_path / 'run' / 'model_final.pt'}")
    result = run("eval", "--checkpoint", tmp_path / "run" / "model_final.pt", "--data", synth_root,
                 "--metrics", tmp_path / "m.json", "--detections-out", tmp_path / "dets.json", "--workers", 0)
    assert result.exit_code == 0, result.output
    assert_plain_progress_line(result.stderr, "evaluate", 8, "img")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["APl"] is None  # 64 px images hold no large object: undefined, null in the JSON
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "APl")
    dets = json.loads((tmp_path / "dets.json").read_text())
    assert isinstance(dets, list) and {d["image_id"] for d in dets} <= set(range(25, 33))
    # the detections file scores to the same numbers
    result = run("eval", "--detections", tmp_path / "dets.json", "--data", synth_root, "--metrics", tmp_path / "m2.json")
    assert result.exit_code == 0
    assert json.loads((tmp_path / "m2.json").read_text()) == pytest.approx(metrics)


def test_label_map_category_id_on_coco_style_ids_trains_and_evaluates(tmp_path, recipe_path, synth_root):
    """Category ids with gaps and no 0 (as COCO's 1..90 for 80 classes) under data.label_map = 'category_id' (the
    COCO recipes'): the labels 0..max id include background and the skipped ids, training ends with the model file
    and its metrics, and `frs eval` scores it; detections carry only categories of the ground truth."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    for split in ("train", "val"):
        ann = root / "annotations" / f"instances_{split}.json"
        doc = json.loads(ann.read_text())
        for c in doc["categories"]:
            c["id"] = 3 * c["id"] + 1
        for a in doc["annotations"]:
            a["category_id"] = 3 * a["category_id"] + 1
        ann.write_text(json.dumps(doc))
    ids = {3 * c["id"] + 1 for c in json.loads((synth_root / "annotations" / "instances_val.json").read_text())[
        "categories"]}
    result = run("train", "--pipeline", recipe_path, "--role", "student", "--out", tmp_path / "run", "--device", "cpu",
                 "--set", f"data.root={json.dumps(str(root))}", "--set", "data.label_map=category_id")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model_final.pt").is_file()
    assert "AP50" in result.stdout  # the val table
    result = run("eval", "--checkpoint", tmp_path / "run" / "model_final.pt", "--data", root, "--workers", 0,
                 "--metrics", tmp_path / "m.json", "--detections-out", tmp_path / "dets.json")
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert {d["category_id"] for d in json.loads((tmp_path / "dets.json").read_text())} <= ids
    assert "trained on other categories" not in result.stderr
    # the same model on the set of ids 1..5 (which its labels 0..16 cover): scored, with one warning naming the ids
    result = run("eval", "--checkpoint", tmp_path / "run" / "model_final.pt", "--data", synth_root, "--workers", 0)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "trained on other categories" in line]
    assert len(warned) == 1 and "id 1 ('circle') is no category of the model" in warned[0], result.stderr


def test_eval_of_ground_truth_as_detections_is_perfect(tmp_path, synth_root):
    gt = json.loads((synth_root / "annotations" / "instances_val.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"]]
    (tmp_path / "gt.json").write_text(json.dumps(dets))
    result = run("eval", "--detections", tmp_path / "gt.json", "--data", synth_root, "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["AP"] == 1.0 and m["AP50"] == 1.0 and m["AP75"] == 1.0
    (tmp_path / "none.json").write_text("[]")
    run("eval", "--detections", tmp_path / "none.json", "--data", synth_root, "--metrics", tmp_path / "z.json")
    zero = json.loads((tmp_path / "z.json").read_text())
    assert zero == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": None}


def test_eval_table_shows_undefined_as_a_dash_and_faster_backend_agrees(tmp_path, synth_root):
    gt = json.loads((synth_root / "annotations" / "instances_val.json").read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + 1.5, a["bbox"][1], a["bbox"][2], a["bbox"][3]]} for a in gt["annotations"]]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    result = run("eval", "--detections", tmp_path / "d.json", "--data", synth_root, "--metrics", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    assert_plain_progress_line(result.stderr, "COCO eval (pycocotools)", 3, "stage")
    row = next(line for line in result.stdout.splitlines() if "d.json" in line)
    assert row.rstrip(" │").endswith("\u2013")  # APl, the last column: no large objects in 64 px images
    ref = json.loads((tmp_path / "p.json").read_text())
    assert ref["APl"] is None and 0.0 < ref["AP"] < 1.0
    result = run("eval", "--detections", tmp_path / "d.json", "--data", synth_root, "--backend", "nope")
    assert result.exit_code == 1 and "expected pycocotools or faster, got 'nope'" in result.stderr
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed (pip install 'frs[faster-eval]')")
    result = run("eval", "--detections", tmp_path / "d.json", "--data", synth_root, "--backend", "faster",
                 "--metrics", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f.json").read_text()) == pytest.approx(ref, abs=1e-6)


def test_eval_needs_exactly_one_source(synth_root):
    result = run("eval", "--data", synth_root)
    assert result.exit_code == 1 and "exactly one of --checkpoint, --pipeline, --detections or --cache" in result.stderr


def test_eval_of_a_recipes_teacher_scores_it_as_its_model_file_does(tmp_path, recipe_path, synth_root, teacher_ckpt):
    """``eval --pipeline R --role teacher``: the teacher as the recipe builds it (here its weights file, an frs model
    file) on the recipe's val split, the same numbers as ``eval --checkpoint`` of that file on that split (FRS.md's
    trap: check the teacher is the trained one before caching it); --split and --data override the recipe's."""
    by_file, by_recipe = tmp_path / "file.json", tmp_path / "recipe.json"
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--split", "val", "--metrics", by_file,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = run("eval", "--pipeline", recipe_path, "--role", "teacher", "--metrics", by_recipe, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "retinanet_small_fpn (teacher of recipe.toml)" in result.stdout and f"val split, {synth_root}" in result.stdout
    assert json.loads(by_recipe.read_text()) == json.loads(by_file.read_text())
    moved = tmp_path / "moved"
    shutil.copytree(synth_root, moved)
    result = run("eval", "-p", recipe_path, "--data", moved, "--split", "train", "--set", "teacher.score_thresh=0.9",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"train split, {moved}" in result.stdout
    for args, line in [(["--role", "teacher_x"], "eval --role: expected teacher or student, got 'teacher_x'"),
                       (["--high", "0.3"], "eval --high: expected it with --cache, got it with --pipeline")]:
        result = run("eval", "--pipeline", recipe_path, *args, "--device", "cpu")
        assert result.exit_code == 1 and line in result.stderr, result.output
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--role", "student")
    assert result.exit_code == 1
    assert "eval --role: expected it with --pipeline, got it with --checkpoint" in result.stderr
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--set", "train.lr=1")
    assert result.exit_code == 1 and "eval --set: expected it with --pipeline, got it with --checkpoint" in result.stderr
    result = run("eval", "--pipeline", recipe_path, "--set", f"data.root={json.dumps(str(tmp_path / 'none'))}")
    assert result.exit_code == 1
    assert (f"eval --pipeline: expected a dataset folder at data.root {str(tmp_path / 'none')!r}, found none (give it "
            "with --data DIR, or --set data.root=DIR)") in " ".join(result.stderr.split())
    result = run("eval", "--pipeline", recipe_path, "--role", "student", "--device", "cpu",
                 "--detections-out", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    assert "student.weights is empty, so the student (retinanet_tiny_fpn) is scored untrained" in \
        " ".join(result.stderr.split())
    assert f"wrote {tmp_path / 'd.json'}" in " ".join(result.stdout.split()) and (tmp_path / "d.json").is_file()


def test_teacher_cache_info_distill_visualize_and_mask_stats(tmp_path, recipe_path, synth_root):
    cache = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", cache, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_plain_progress_line(result.stderr, "teacher-cache", 48, "view")
    assert "teacher.weights is empty" not in result.stderr  # the recipe names the trained teacher's file
    assert zarr.open_group(str(cache), mode="r").attrs["state"] == "complete"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", cache, "--device", "cpu")
    assert result.exit_code == 0
    assert f"cache {str(cache)!r} is already complete (48 views); nothing written" in " ".join(result.stdout.split())

    result = run("cache", "info", cache)
    assert result.exit_code == 0, result.output
    megabytes = sum(f.stat().st_size for f in (synth_root / "train").iterdir()) / 1e6
    for word in ("complete (48/48 views written)", f"24  (image files as completed: 24, {megabytes:,.2f} MB)",
                 "P3/s8/64ch", "MB per view", "teacher", "fingerprints",
                 "float32, NCHW, batch norms folded"):  # the teacher pass a resume keeps (on the CPU: float32)
        assert word in result.output, word

    result = run("distill", "--pipeline", recipe_path, "--cache", cache, "--out", tmp_path / "s", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_plain_progress_line(result.stderr, "epoch 1/1", 24, "img")
    assert_plain_progress_line(result.stderr, "evaluate", 8, "img")
    assert (tmp_path / "s" / "model_final.pt").is_file() and (tmp_path / "s" / "adapters.pt").is_file()

    result = run("visualize", "--cache", cache, "--level", "all", "--out", tmp_path / "all.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "all.png") as im:
        one_w = im.width
    result = run("visualize", "--cache", cache, "--level", "P4", "--image-id", 3, "--view", "hflip",
                 "--out", tmp_path / "p4.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "p4.png") as im:
        p4_w, p4_h = im.size
    # five panels of >= 256 px vs one; both carry a colour bar (its width follows its tick labels, +-30 px)
    assert 4 * 260 - 30 <= one_w - p4_w <= 4 * 260 + 30 and p4_w < 2 * 260
    result = run("visualize", "--cache", cache, "--level", "P4", "--image-id", 3, "--view", "hflip",
                 "--compare", cache, "--out", tmp_path / "p4x2.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "p4x2.png") as im:
        assert im.height > 2 * p4_h - 40  # a second row of the other cache's masks
    result = run("visualize", "--cache", cache, "--level", "P9", "--out", tmp_path / "x.png")
    assert result.exit_code == 1 and "expected 'all' or one of P3, P4, P5, P6, P7, got 'P9'" in result.stderr
    result = run("visualize", "--cache", cache, "--image-id", 9999, "--out", tmp_path / "x.png")
    assert result.exit_code == 1 and "holds no image 9999 (it holds the 24 images" in result.stderr
    assert not (tmp_path / "x.png").exists()

    result = run("eval", "--cache", cache, "--metrics", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "stats.json").read_text())["levels"]
    assert [s["level"] for s in stats] == ["P3", "P4", "P5", "P6", "P7"]
    assert stats[0]["positions"] == 48 * 8 * 8
    for s in stats:
        assert 0.0 <= s["outside_mass"] <= 1.0 and 0.0 < s["mean_outside"] < 1.0



def test_teacher_cache_names_the_knob_when_the_loader_or_the_writers_held_it_back(tmp_path, recipe_path, monkeypatch):
    from frs_cli.cache import writer
    from frs_cli.cache.config import CacheConfig
    from frs_cli.cache.writer import CacheWriteSummary

    def summary(loader: float, writers: float, seconds: float = 10.0):
        stages = {"loader_wait": loader, "backpressure": writers, "gpu_wait": 9.0, "device_wait": 0.0, "write": 0.0}
        return CacheWriteSummary("c.zarr", 48, 48, seconds, 4.8, True, stage_seconds=stages)

    def returning(result):
        return lambda *args, **kwargs: result

    out = str(tmp_path / "c.zarr")
    for loader, writers, seconds, expected in ((0.6, 0.6, 1.2, []),  # a second's run: its waits are no bound
                                               (0.5, 2.4, 10.0, []), (3.0, 0.0, 10.0, ["cache.workers=N, now 0"]),
                                               (0.0, 6.0, 10.0, ["cache.write_processes=N, now 2"])):
        monkeypatch.setattr(writer, "write_teacher_cache", returning(summary(loader, writers, seconds)))
        result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu",
                     "--set", "cache.write_processes=2")
        assert result.exit_code == 0, result.output
        hints = [line for line in result.stdout.splitlines() if line.startswith("waited")]
        assert [h.split("(--set ")[1].rstrip(")") for h in hints] == expected, result.stdout
    assert "waited 6.0 of 10.0 s for the writers" in result.stdout  # 9 s waiting for the GPU: no hint
    monkeypatch.setattr(writer, "write_teacher_cache", returning(summary(0.0, 6.0)))
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu",
                 "--set", "cache.write_processes=auto")
    auto = CacheConfig().writer_processes()  # this host's, when the summary does not say
    assert f"(--set cache.write_processes=N, now auto = {auto})" in result.stdout, result.stdout
    ran = replace(summary(0.0, 6.0), write_processes=3)  # as many as this process ran (auto: per GPU process)
    monkeypatch.setattr(writer, "write_teacher_cache", returning(ran))
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu",
                 "--set", "cache.write_processes=auto")
    assert "(--set cache.write_processes=N, now auto = 3)" in result.stdout, result.stdout
    # a write that counted its bytes gives its rate, and the fewer bits a value a new cache could store
    counted = replace(summary(0.0, 6.0), write_processes=3, bytes_written=17_760_000_000)
    monkeypatch.setattr(writer, "write_teacher_cache", returning(counted))
    fewer_bits = ", and a new cache with fewer bits a value writes less (cache.dtype "
    for dtype, fewer in (("float16", fewer_bits + "int8 (8 bits a value) or int5 (5 bits a value), now float16: 16);"),
                         ("int8", fewer_bits + "int5 (5 bits a value), now int8: 8);"),
                         ("int5", ";")):
        result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu",
                     "--set", f"cache.dtype={dtype}")
        text = " ".join(result.stdout.split())  # the hint as one line, however the console wrapped it
        assert "(4.8 views/s per process, 1,776 MB/s in all)" in text, result.stdout
        assert (f"waited 6.0 of 10.0 s for the writers, which wrote 1,776 MB/s: if the disk writes no faster, it is "
                f"the bound{fewer} if it writes faster, more writer processes may help (--set "
                f"cache.write_processes=N, now 3)") in text, result.stdout

def test_distill_refuses_a_cache_that_is_not_one(tmp_path, recipe_path):
    result = run("distill", "--pipeline", recipe_path, "--cache", tmp_path / "nothing", "--out", tmp_path / "s")
    assert result.exit_code == 1 and "found nothing there" in result.stderr


def models_table(stdout: str) -> tuple[list[str], str]:
    """The arch names of ``frs models``'s table, and the characters of its about column but spaces, row after row (a
    description wraps, a word longer than the column folds, onto the lines that follow in its cell)."""
    rows = [line.split("\u2502")[1:-1] for line in stdout.splitlines() if line.startswith("\u2502")]
    return [r[0].strip() for r in rows if r[0].strip()], unspaced(" ".join(r[3] for r in rows))


def unspaced(text: str) -> str:
    return "".join(text.split())


def test_models_lists_the_architectures():
    from frs_cli.models import ARCHS

    result = run("models")  # 80 columns: one entry per arch, each its name first
    assert result.exit_code == 0 and "retinanet_resnet50_fpn_v2" in result.output
    starts = [line.split()[0] for line in result.stdout.splitlines() if line.split() and line.split()[0] in ARCHS]
    assert starts == list(ARCHS) and "\u2026" not in result.stdout


@pytest.mark.parametrize("columns", [None, "100", "60", "140"], ids=["default", "COLUMNS=100", "COLUMNS=60",
                                                                    "COLUMNS=140"])
def test_frs_models_in_a_pipe_fits_its_width_and_splits_no_word(columns):
    """Piped (to a file, ``| less``, no terminal anywhere), ``frs models`` lays its list out at rich's own width: 80
    columns, or COLUMNS when set, never cut with '…' (before: 145 columns wide, the width other results may take in a
    pipe so that a path stays whole). A table when every word of every description fits its about column whole,
    else one entry per arch, wrapped at that width (before: at 80 and 100 columns a table whose about column, 14
    wide at 80, split mmdetection's config names mid-name)."""
    from frs_cli.cli.models_cmd import table_width
    from frs_cli.models import ARCHS

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "frs_cli", "models"], stdin=subprocess.DEVNULL, capture_output=True,
                          env=env | ({"COLUMNS": columns} if columns else {}), encoding="utf-8", timeout=120,
                          check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    width, lines = int(columns or 80), proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= width and "\u2026" not in proc.stdout
    words = {w for spec in ARCHS.values() for w in spec.summary.split()}
    whole = [w for w in words if len(w) <= width]  # a word wider than the screen folds wherever it is
    if width < table_width(ARCHS):
        assert not proc.stdout.startswith("\u250f")  # no table
        entries = [f"{name} {spec.family}, FPN {spec.fpn_channels} ch: {spec.summary}" for name, spec in ARCHS.items()]
        assert unspaced(proc.stdout) == unspaced(" ".join(entries))
        assert all(any(w in line.split() for line in lines) for w in whole)
    else:
        names, about = models_table(proc.stdout)
        assert names == list(ARCHS) and about == unspaced(" ".join(spec.summary for spec in ARCHS.values()))
        cells = [line.split("\u2502")[4] for line in lines if line.startswith("\u2502")]
        assert all(any(w in cell.split() for cell in cells) for w in whole)  # each word whole in one line of its cell
    assert width >= 80 or len(whole) < len(words)  # the 60-column case folds a word and still passes


def test_a_stopped_run_exits_130_with_the_resume_hint(tmp_path, recipe_path, monkeypatch):
    import frs_cli.train.run
    from frs_cli.errors import Interrupted

    def stopped(*args, **kwargs):
        raise Interrupted("stopped at epoch 1, iteration 3; state saved to x/last.pt", hint="run again with --resume")

    monkeypatch.setattr(frs_cli.train.run, "train_detector", stopped)
    result = run("train", "--pipeline", recipe_path, "--out", tmp_path / "run")
    assert result.exit_code == 130
    assert "stopped at epoch 1, iteration 3" in result.stderr and "--resume" in result.stderr


def test_line_progress_prints_plain_lines_every_interval_and_at_the_end():
    import io

    from rich.console import Console

    from frs_cli.cli.progress import LineProgress

    now = [100.0]
    out = io.StringIO()
    p = LineProgress(console=Console(file=out, width=300), every_s=30.0, clock=lambda: now[0])
    p.start("epoch 1/2", total=10, unit="img")
    for _ in range(4):
        now[0] += 10.0
        p.update(1, loss=0.5, img_s=3.0)
    p.stop()
    lines = out.getvalue().splitlines()
    # one line when 30 s had passed (after step 3), one at the end; img_s is shown as the rate, not repeated
    assert lines == ["epoch 1/2 3/10 (30%) 0.1 img/s elapsed 0:00:30 eta 0:01:10  loss 0.500",
                     "epoch 1/2 4/10 (40%) 0.1 img/s elapsed 0:00:40 eta 0:01:00  loss 0.500"]


@pytest.mark.parametrize("width", [80, 120])
def test_the_terminal_bar_keeps_count_rate_and_eta_and_cuts_the_running_values(width):
    """On a terminal of 80 or 120 columns a training bar's losses once crowded out its count, rate and ETA."""
    from rich.console import Console

    from frs_cli.cli.progress import RichProgress

    now = [0.0]
    bar = RichProgress(console=Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None),
                       clock=lambda: now[0])
    bar.start("epoch 1/12", 24, unit="img")
    now[0] = 6.0
    bar.update(12, classification=1.119, bbox_regression=0.605, frs_feature=0.755, frs_head=0.512, loss=3.0)
    lines = bar_lines(bar, width)
    bar.stop()
    assert len(lines) == 1 and len(lines[0]) <= width, lines
    assert re.match(r"epoch 1/12 \u2501+ +12/24 2\.0 img/s 0:00:06 eta 0:00:06 loss 3\.000 ", lines[0]), lines
    assert lines[0].rstrip().endswith("\u2026")  # the other values cut short where the terminal ends
    assert ("classification 1.119" in lines[0]) == (width == 120)


@pytest.mark.parametrize("width", [44, 60])
def test_a_narrow_terminals_bar_drops_the_bar_and_elapsed_time_before_the_count_rate_and_eta(width):
    """At 40-79 columns the bar and the elapsed time give way, so the task, count, rate and ETA stay whole (before:
    at 40 columns every piece was cut: ``epo… ━━━━━╺━━━━━━━━━ … 39.1… 0:… eta 0…``)."""
    from rich.console import Console

    from frs_cli.cli.progress import RichProgress

    now = [0.0]
    bar = RichProgress(console=Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None),
                       clock=lambda: now[0])
    bar.start("epoch 1/12", 240, unit="img")
    now[0] = 6.0
    bar.update(12, classification=1.119, loss=3.0)
    lines = bar_lines(bar, width)
    bar.stop()
    assert len(lines) == 1 and len(lines[0]) <= width, lines
    assert re.match(r"epoch 1/12 +12/240 2\.0 img/s eta 0:01:54", lines[0]), lines
    assert "\u2501" not in lines[0] and "\u2026" not in lines[0].split("eta 0:01:54")[0]


def bar_lines(bar, width=120):
    """The terminal bar's lines as rich draws them."""
    from rich.console import Console

    out = Console(file=io.StringIO(), width=width, color_system=None)
    with out.capture() as captured:
        out.print(bar.bar.make_tasks_table(bar.bar.tasks))
    return captured.get().rstrip("\n").splitlines()


def test_the_terminal_bars_rate_and_eta_count_from_the_start_not_from_the_first_update():
    """Two steps of a second each, their updates arriving back to back (the loop reads a step's losses one step
    late): rich's own estimate, timed from the first update, said 1000 it/s."""
    from rich.console import Console

    from frs_cli.cli.progress import WINDOW_S, RichProgress

    now = [100.0]
    bar = RichProgress(console=Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None),
                       clock=lambda: now[0])
    bar.start("epoch 1/2", 4)
    assert re.search(r" 0/4 -- it/s 0:00:00 eta -:--:-- ", bar_lines(bar)[0])
    for t in (101.999, 102.0):
        now[0] = t
        bar.update(1, loss=1.0)
    assert re.search(r" 2/4 1\.0 it/s 0:00:02 eta 0:00:02 loss 1\.000", bar_lines(bar)[0]), bar_lines(bar)
    now[0] = 104.0
    bar.update(2)
    assert re.search(r" 4/4 1\.0 it/s 0:00:04 eta 0:00:00 ", bar_lines(bar)[0]), bar_lines(bar)
    bar.start("epoch 2/2", 40, completed=10)  # a resumed run: its rate counts this call's steps only
    for k in range(1, 10):
        now[0] = 104.0 + k
        bar.update(1)
    assert re.search(r" 19/40 1\.0 it/s 0:00:09 eta 0:00:21 ", bar_lines(bar)[0]), bar_lines(bar)
    now[0] = 200.0
    bar.start("epoch 1/1", 1000)  # a long task: past WINDOW_S, the rate is the last WINDOW_S seconds
    for t in range(1, 41):
        now[0] = 200.0 + t
        bar.update(1)
    for t in range(41, 41 + int(WINDOW_S)):  # then twice as fast
        now[0] = 200.0 + t
        bar.update(2)
    assert re.search(r" 100/1000 2\.0 it/s 0:01:10 eta 0:07:30 ", bar_lines(bar)[0]), bar_lines(bar)
    bar.stop()


def test_progress_in_a_log_file_is_plain_lines_not_a_truncated_bar(tmp_path):
    out = subprocess.run([sys.executable, "-m", "frs_cli", "data", "synth", str(tmp_path / "d"), "--train", "4",
                          "--val", "2", "--size", "64"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^synth 6/6 \(100%\) [\d.,]+ img/s elapsed 0:00:\d\d eta 0:00:00$", out.stderr, re.MULTILINE), out.stderr
    assert "━" not in out.stderr and "…" not in out.stderr


def test_distill_records_the_caches_dtype_and_codec_and_warns_when_the_recipe_said_others(tmp_path, recipe_path,
                                                                                          cache_path):
    """A cache is read as it was written: ``--set cache.dtype="int5"`` on a float16 cache trains as float16, so
    the run's recipe.json says float16 and one warning names the setting (before: int5 recorded, silently); a
    --resume of the same command is not refused as a changed recipe."""
    out = tmp_path / "s"
    args = ("distill", "--pipeline", recipe_path, "--cache", cache_path, "--out", out, "--device", "cpu", "--no-eval",
            "--set", 'cache.dtype="int5"', "--set", 'cache.codec="zstd"')
    result = run(*args)
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: distill: cache.")]
    assert lines == [("warning: distill: cache.dtype = 'int5' (the cache's: 'float16'), cache.codec = 'zstd' (the "
                      "cache's: 'none'): a cache is read as it was written, so the run uses and records the cache's")]
    recorded = json.loads((out / "recipe.json").read_text())["cache"]
    assert (recorded["dtype"], recorded["codec"]) == ("float16", "none")
    result = run(*args, "--resume")
    assert result.exit_code == 0 and "already complete" in result.output, result.output
    assert "warning: distill: cache." not in result.stderr  # said when the run started
    result = run("distill", "--pipeline", recipe_path, "--cache", cache_path, "--out", tmp_path / "s2", "--device",
                 "cpu", "--no-eval", "--set", "train.epochs=1")
    assert result.exit_code == 0 and "warning: distill: cache." not in result.stderr, result.output


def test_a_teacher_without_weights_is_named_in_one_warning_by_teacher_cache_and_distill_online(tmp_path, synth_root):
    """FRS.md's known trap: distilling from a teacher that is not the trained one. A recipe whose teacher.weights is
    empty builds a random head; teacher-cache and distill --online still run (tests and timing benches do this)
    but say so in one warning line naming the arch and the key to set."""
    from conftest import write_recipe

    recipe = write_recipe(tmp_path / "r.toml", synth_root, weights="")
    result = run("teacher-cache", "--pipeline", recipe, "--out", tmp_path / "c.zarr", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if "teacher.weights is empty" in ln]
    # outside a terminal a warning is one plain line, as the progress lines there
    assert len(lines) == 1 and lines[0].startswith("warning: teacher-cache: teacher.weights is empty"), result.stderr
    assert "(retinanet_small_fpn)" in lines[0] and lines[0].endswith("or a checkpoint path")
    result = run("distill", "--pipeline", recipe, "--online", "--out", tmp_path / "s", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: distill --online: teacher.weights is empty")
    # every student of that cache is told too, not only the run that wrote it
    result = run("distill", "--pipeline", recipe, "--cache", tmp_path / "c.zarr", "--out", tmp_path / "s2",
                 "--device", "cpu", "--no-eval")
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if "teach nothing" in ln]
    expected = (f"warning: distill: the cache {tmp_path / 'c.zarr'} was written by a teacher with no weights "
                "(teacher.weights was empty: a random detection head), so its FRS masks and targets teach nothing; "
                "write the cache again with teacher.weights set")
    assert lines == [expected], result.stderr


@pytest.mark.parametrize("source", ["cache", "online"])
def test_a_student_with_other_anchors_than_the_teacher_is_named_in_one_warning(tmp_path, recipe_path, cache_path,
                                                                               source):
    """The head term pairs each anchor's classification output with the teacher's of the same index: a student whose
    anchors are of another size (the tiny recipe's are 16 px at P3) gets one warning naming both sizes and the
    keys to set; none with distill.beta = 0 or with the teacher's anchors. From a cache, the teacher's anchors are
    the cache's (its recorded model config), whatever the recipe's teacher table says."""
    teacher = ("--cache", cache_path) if source == "cache" else ("--online",)
    base = ("distill", "--pipeline", recipe_path, *teacher, "--device", "cpu", "--no-eval", "--set", "train.epochs=1")

    def warnings(*extra) -> list[str]:
        result = run(*base, "--out", tmp_path / str(len(list(tmp_path.iterdir()))), *extra)
        assert result.exit_code == 0, result.output
        return [ln for ln in result.stderr.splitlines() if ln.startswith("warning: distill: the student's anchors")]

    other = ("--set", "student.anchor_size=32") + (("--set", "teacher.anchor_size=32") if source == "cache" else ())
    assert warnings(*other) == [
        ("warning: distill: the student's anchors are 32 px at the finest level (student.anchor_size), the teacher's "
        "16 px: the head term pairs each anchor's classification output with the teacher's of the same index, which "
        "stands for boxes of another size; set student.anchor_size = 16, or distill.beta = 0 to distil the features "
        "alone")]
    assert warnings(*other, "--set", "distill.beta=0") == []
    assert warnings() == []


def test_a_training_split_without_any_object_is_named_in_one_warning(tmp_path, recipe_path, synth_root):
    """Every image without a box (an annotation file of the wrong split, or boxes all dropped): train and distill
    still run, with one warning naming the file; none on the usual data."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    ann = root / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    doc["annotations"] = []
    ann.write_text(json.dumps(doc))
    common = ("--device", "cpu", "--no-eval", "--set", "train.epochs=1", "--set", "teacher_train.epochs=1")

    def warned(*args) -> list[str]:
        result = run(*args, "--pipeline", recipe_path, "--out", tmp_path / str(len(list(tmp_path.iterdir()))),
                     *common)
        assert result.exit_code == 0, result.output
        return [ln for ln in result.stderr.splitlines() if "no image of the training split has an object" in ln]

    empty = ("--set", f"data.root={root}")
    assert warned("train", "--role", "student", *empty) == [
        (f"warning: train --role student: no image of the training split has an object (24 images: {ann}), so the "
        "detector learns background alone; check data.train and the annotation file")]
    assert len(warned("distill", "--online", *empty)) == 1
    assert warned("train", "--role", "student") == []


def test_a_teacher_trained_on_other_categories_is_named_in_one_warning_by_teacher_cache_and_distill_online(
        tmp_path, recipe_path, synth_root):
    """The same count of categories under other names: the teacher's class channels stand for other classes. eval
    warned of it; teacher-cache and distill --online, which make the FRS targets from those channels, said nothing."""
    root = tmp_path / "renamed"
    shutil.copytree(synth_root, root)
    for split in ("train", "val"):
        ann = root / "annotations" / f"instances_{split}.json"
        doc = json.loads(ann.read_text())
        first = doc["categories"][0]
        first["name"] = "renamed"
        ann.write_text(json.dumps(doc))
    expected = (f"the teacher was trained on other categories than the data has: id {first['id']} is ")

    def warned(*args) -> list[str]:
        result = run(*args, "--pipeline", recipe_path, "--out", tmp_path / str(len(list(tmp_path.iterdir()))),
                     "--device", "cpu", "--set", "train.epochs=1", *(("--no-eval",) if args[0] == "distill" else ()))
        assert result.exit_code == 0, result.output
        return [ln for ln in result.stderr.splitlines() if expected in ln]

    renamed = ("--set", f"data.root={root}")
    lines = warned("teacher-cache", *renamed)
    assert len(lines) == 1 and lines[0].startswith("warning: teacher-cache: ") and "'renamed' in the data" in lines[0]
    assert "(is teacher.weights the teacher of this dataset?)" in lines[0]
    assert len(warned("distill", "--online", *renamed)) == 1
    assert warned("teacher-cache") == []


def _one_epoch_from_the_cache(recipe_path, cache_path) -> tuple:
    return ("distill", "--pipeline", recipe_path, "--cache", cache_path, "--device", "cpu", "--no-eval", "--set",
            "train.epochs=1")


def _warnings_of_a_run(tmp_path, args, fragment: str, *extra) -> list[str]:
    """The stderr lines holding ``fragment`` of ``args`` run to a new folder under ``tmp_path`` (exit 0 asserted)."""
    result = run(*args, "--out", tmp_path / str(len(list(tmp_path.iterdir()))), *extra)
    assert result.exit_code == 0, result.output
    return [ln for ln in result.stderr.splitlines() if fragment in ln]


def test_distill_from_a_cache_names_a_flip_setting_it_cannot_follow_and_how_to_get_other_views(tmp_path, recipe_path,
                                                                                              cache_path):
    """From a cache each image is shown in one of its views, drawn uniformly: train.hflip_prob = 0 trained with
    flips anyway, and recipe.json recorded 0, without a word. A recipe asking for views the cache does not hold is
    told to write a cache of them (setting cache.views alone cannot work)."""
    base = _one_epoch_from_the_cache(recipe_path, cache_path)

    def flip_warnings(*extra) -> list[str]:
        return _warnings_of_a_run(tmp_path, base, "train.hflip_prob", *extra)

    assert flip_warnings("--set", "train.hflip_prob=0") == [
        ("warning: distill: train.hflip_prob = 0 has no effect from a cache: each image is shown in one of the views "
        "['orig', 'hflip'], drawn uniformly (flipped in 0.5 of them); for another share, cache other views "
        '(cache.views = ["orig"]: no flips)')]
    assert flip_warnings() == []
    assert flip_warnings("--set", 'cache.views=["orig"]', "--set", "train.hflip_prob=0") == []
    result = run(*base, "--out", tmp_path / "v", "--set", 'cache.views=["orig@48", "hflip@48"]', "--set",
                 "train.min_sizes=[48]")
    assert result.exit_code == 1, result.output
    assert "the cache holds ['orig', 'hflip'] (write a cache of those views (frs teacher-cache with cache.views = " \
           "['orig@48', 'hflip@48']), or set cache.views to views this cache holds)" in result.stderr, result.stderr


def test_a_warm_up_longer_than_the_whole_run_is_named_in_one_warning(tmp_path, recipe_path, cache_path):
    """train.warmup_iters = 1000 on a run of a few steps: the LR never reaches train.lr (1 % of it here), and
    distill.warmup_iters likewise keeps the FRS terms near zero, both without a word before."""
    base = _one_epoch_from_the_cache(recipe_path, cache_path)

    def warned(*extra) -> list[str]:
        return _warnings_of_a_run(tmp_path, base, "longer than the whole run", *extra)

    lines = warned("--set", "train.warmup_iters=1000", "--set", "distill.warmup_iters=2000")
    assert [re.sub(r"\(\d+ steps\)", "(N steps)", ln) for ln in lines] == [
        "warning: train.warmup_iters = 1000 is longer than the whole run (N steps), so the LR never reaches train.lr",
        ("warning: distill.warmup_iters = 2000 is longer than the whole run (N steps), so the FRS terms never reach "
         "their full weight")]
    assert warned() == []


def test_version_and_a_closed_pipe():
    """``frs --version`` prints frs's, torch's and torchvision's versions, exit 0. A reader that closed the pipe
    before frs wrote (``frs --help | true``) ends frs as it ends other tools, by SIGPIPE (the shell's 141), with no
    message: before, frs exited 1, which scripts with ``pipefail`` read as a failure of frs, as for bad input."""
    import torch
    import torchvision

    import frs_cli

    result = run("--version")
    assert result.exit_code == 0
    expected = f"frs {frs_cli.__version__} (torch {torch.__version__}, torchvision {torchvision.__version__})"
    assert result.stdout.strip() == expected
    proc = subprocess.Popen([sys.executable, "-m", "frs_cli", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before frs has imported anything, so its first write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -13 and err == b"", (proc.returncode, err)


@pytest.mark.parametrize("width", [40, 120, 160])
def test_frs_models_on_a_narrow_terminal_lists_each_arch_whole(width, monkeypatch):
    """On a terminal too narrow for the table with every description's words whole, ``frs models`` lists one entry
    per architecture (before: at 40 columns the table kept the arch column only, the others shrunk to nothing; at
    80 to 132 its about column split names mid-name); wide enough, the table, its family column whole."""
    from rich.console import Console

    from frs_cli.cli import models_cmd
    from frs_cli.cli.models_cmd import table_width
    from frs_cli.models import ARCHS

    out = io.StringIO()
    monkeypatch.setattr(models_cmd, "console", Console(file=out, width=width, color_system=None))
    assert run("models").exit_code == 0
    lines = out.getvalue().splitlines()
    if width < table_width(ARCHS):  # each entry whole, wrapped (a long name folded) at the terminal's width
        entries = [f"{name} {spec.family}, FPN {spec.fpn_channels} ch: {spec.summary}" for name, spec in ARCHS.items()]
        assert "".join(out.getvalue().split()) == "".join("".join(entries).split())
        assert max(len(ln) for ln in lines) <= width
    else:
        assert lines[1].split("\u2503")[1:4] == [" arch" + " " * (len(lines[1].split("\u2503")[1]) - 5),
                                               " family      ", " FPN ch "]
        for name, spec in ARCHS.items():
            assert any(name in ln and spec.family in ln for ln in lines), name
