"""Faults of training runs and mistakes on the command line (train, distill, eval), end to end.

Each case: the exit code (1, or 130 for a stop), exactly one ``error:`` (or ``interrupted:``) line, last on
stderr, no traceback, no terminal colour codes, brackets in the message intact, and the run directory left as
the case says. Where a message gives a hint, some cases follow it literally and check that it works.
Runs train the tiny student on the 8 val images (2 iterations an epoch) to stay cheap.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import zarr
from conftest import write_recipe
from typer.testing import CliRunner

from frs_cli.cli.app import app
from frs_cli.train.checkpoint import FINAL, LAST

runner = CliRunner()
SMALL = ["--set", "data.train=val", "--no-eval", "--device", "cpu"]  # 8 images: 2 iterations an epoch


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def train(recipe, out, *extra):
    return run("train", "--pipeline", recipe, "--role", "student", "--out", out, *SMALL, *extra)


def error_line(result, code: int = 1) -> str:
    """The one line a failed command leaves: exit ``code``, the only ``error:`` line (``interrupted:`` for 130),
    the last line on stderr; no traceback, no colour codes anywhere (143: SIGTERM's interruption)."""
    assert result.exit_code == code, result.output
    prefix = "interrupted:" if code in (130, 143) else "error:"
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, result.stderr
    assert lines[0] == result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output and "\x1b" not in result.output
    assert isinstance(result.exception, SystemExit)
    return lines[0]


def warnings_of(result) -> str:
    """stderr with the log handler's line wrapping undone."""
    return " ".join(result.stderr.split())


def files(d: pathlib.Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def snapshot(d: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


# --- settings and data no run can use: refused before anything is written ----------------------------------

def _data_with(t, edit):
    root = t.tmp / "data"
    shutil.copytree(t.synth_root, root)
    path = root / "annotations" / "instances_val.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))  # json writes NaN and Infinity as the bare words Python's reader accepts
    return ["--set", f"data.root={root}"]


def _nan_box(doc):
    doc["annotations"][3]["bbox"] = [float("nan"), 4.0, 10.0, 10.0]


def _inf_box(doc):
    doc["annotations"][0]["bbox"][2] = float("inf")


BAD = {  # case -> (command, arguments, the whole message or a fragment of it)
    "lr_negative": ("train", ["--set", "train.lr=-0.1"], "recipe key 'train.lr': expected a finite number > 0, got -0.1"),
    "lr_nan": ("train", ["--set", "train.lr=nan"], "recipe key 'train.lr': expected a finite number > 0, got nan"),
    "batch_size_zero": ("train", ["--set", "train.batch_size=0"],
                        "recipe key 'train.batch_size': expected an integer >= 1, got 0"),
    "workers_negative": ("train", ["--set", "train.workers=-1"],
                         "recipe key 'train.workers': expected an integer >= 0, got -1"),
    "worker_hold_negative": ("train", ["--set", "train.worker_hold=-1"],
                             "recipe key 'train.worker_hold': expected an integer >= 0, got -1"),
    "epochs_zero": ("train", ["--set", "train.epochs=0"], "recipe key 'train.epochs': expected an integer >= 1, got 0"),
    "momentum_one_or_more": ("train", ["--set", "train.momentum=1.5"],
                             "recipe key 'train.momentum': expected a finite number in [0, 1), got 1.5"),
    "lr_step_negative": ("train", ["--set", "train.lr_steps=[-1]"],
                         "recipe key 'train.lr_steps[0]': expected an integer >= 0, got -1"),
    "teacher_schedule_lr_zero": ("train", ["--role", "teacher", "--set", "teacher_train.lr=0"],
                                 "recipe key 'teacher_train.lr': expected a finite number > 0, got 0.0"),
    "score_thresh_above_one": ("train", ["--set", "student.score_thresh=2.0"],
                               "recipe key 'student.score_thresh': expected a finite number in [0, 1], got 2.0"),
    "alpha_negative": ("distill", ["--set", "distill.alpha=-1"],
                       "recipe key 'distill.alpha': expected a finite number >= 0, got -1.0"),
    "beta_negative": ("distill", ["--set", "distill.beta=-0.5"],
                      "recipe key 'distill.beta': expected a finite number >= 0, got -0.5"),
    "unknown_key": ("train", ["--set", "train.lrate=0.1"], "recipe key 'train.lrate': unknown key (valid keys here: "),
    "wrong_type": ("distill", ["--set", "train.epochs=two"], "recipe key 'train.epochs': expected an integer, got str 'two'"),
    "set_without_value": ("train", ["--set", "train.epochs"],
                          "--set: expected KEY=VALUE (for example train.epochs=2), got 'train.epochs'"),
    "set_below_a_value": ("train", ["--set", "train.lr.x=1"], "--set 'train.lr.x=1': 'lr' is not a table"),
    "unknown_view": ("distill", ["--set", 'cache.views=["orig", "vflip"]'],
                     ("recipe key 'cache.views': expected orig or hflip, optionally with a short side in px after '@' (e.g. hflip@640), "
                     "got 'vflip'")),
    "max_size_below_min_size": ("train", ["--set", "geometry.max_size=32"],
                                "recipe key 'geometry.max_size': expected at least min_size (64), got 32"),
    "unknown_arch": ("train", ["--set", "student.arch=retinanet_huge"], "recipe key 'student.arch': expected an arch `frs models` lists, got unknown arch 'retinanet_huge'"),
    "unknown_role": ("train", ["--role", "pupil"], "--role: expected 'teacher' or 'student', got 'pupil'"),
    "two_teacher_sources": ("distill", lambda t: ["--online", "--cache", t.cache], "distill: expected exactly one teacher source: --cache PATH or --online"),
    "nan_box": ("train", lambda t: _data_with(t, _nan_box),
                "expected bbox [x, y, w, h] of 4 finite numbers, got [NaN, 4.0, 10.0, 10.0]"),
    "infinite_box": ("train", lambda t: _data_with(t, _inf_box), "expected bbox [x, y, w, h] of 4 finite numbers, got ["),
    "missing_dataset": ("train", lambda t: ["--set", f"data.root={t.tmp / 'nowhere'}"],
                        "annotations: expected a COCO JSON file at"),
    "batch_larger_than_the_split_distill": ("distill", ["--online", "--set", "train.batch_size=1000"],
                                            "train: 8 images per process is fewer than one batch of 1000"),
    "batch_larger_than_the_split_train": ("train", ["--set", "train.batch_size=1000"],
                                          "train: 8 images per process is fewer than one batch of 1000"),
    "teacher_weights_a_training_state": ("distill", lambda t: ["--online", "--set", f"teacher.weights={t.state}"],
                                         "got a training state (what --resume continues from, saved after 1 epoch)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_setting_or_annotation_is_one_line_and_creates_no_run(case, recipe_path, synth_root, cache_path,
                                                                    tmp_path, request):
    command, args, message = BAD[case]
    t = SimpleNamespace(tmp=tmp_path, synth_root=synth_root, cache=cache_path,
                        state=request.getfixturevalue("finished").out / LAST if "training_state" in case else None)
    args = args(t) if callable(args) else args
    out = tmp_path / "out"
    if command == "distill":
        source = [] if "--online" in args else ["--cache", cache_path]
    else:
        source = [] if "--role" in args else ["--role", "student"]
    result = run(command, "--pipeline", recipe_path, "--out", out, *SMALL, *source, *args)
    line = error_line(result)
    assert message in line, (message, line)
    assert not out.exists()


def test_the_teachers_batch_larger_than_the_set_names_the_teacher_train_key(recipe_path, tmp_path):
    """The default role trains the teacher on [teacher_train]: the error names that table's key, not train's."""
    line = error_line(run("train", "--pipeline", recipe_path, "--out", tmp_path / "run", *SMALL,
                          "--set", "teacher_train.batch_size=100"))
    assert line == ("error: teacher_train: 8 images per process is fewer than one batch of 100 (lower "
                    "teacher_train.batch_size or use more images)")


def test_set_on_the_schedule_the_role_does_not_read_is_one_warning_naming_the_one_it_reads(recipe_path, tmp_path):
    """--set train.epochs=2 with the default role (the teacher, on [teacher_train]) changes nothing: one warning
    says so and names teacher_train.epochs; the run trains its teacher_train schedule (1 epoch)."""
    result = run("train", "--pipeline", recipe_path, "--out", tmp_path / "teacher", *SMALL, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: --set")]
    assert warned == [("warning: --set train.epochs: frs train --role teacher takes its schedule from "
                       "[teacher_train], not [train]; no effect on this run (set teacher_train.epochs instead)")]
    assert torch.load(tmp_path / "teacher" / LAST, weights_only=True)["epoch"] == 1
    result = train(recipe_path, tmp_path / "student", "--set", "teacher_train.lr=0.5", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert ("warning: --set teacher_train.lr: frs train --role student takes its schedule from [train], not "
            "[teacher_train]; no effect on this run (set train.lr instead)") in result.stderr.splitlines()
    assert "train.epochs" not in result.stderr


def test_the_train_help_example_of_set_is_a_key_the_default_role_reads():
    result = run("train", "--help")
    text = " ".join(result.output.replace("\u2502", " ").split())  # the help's box drawn with rich
    assert "e.g. --set teacher_train.epochs=2" in text and "--set train.epochs" not in text


def test_an_empty_val_split_is_one_line_before_training_and_the_hint_no_eval_works(tmp_path, teacher_ckpt):
    """Evaluation runs after the last epoch: a val split without images is refused before anything is trained or
    written (before: the whole schedule ran, then CocoEvaluator failed), by train and distill alike."""
    from frs_cli.data.synth import SynthConfig, generate

    root = tmp_path / "data"
    generate(root, SynthConfig(train=8, val=0, size=64, seed=0, min_object=12, max_objects=3))
    recipe = write_recipe(tmp_path / "recipe.toml", root, str(teacher_ckpt))
    expected = (f"error: data.val: expected at least one image to evaluate on, got none in the 'val' split "
                f"({root / 'annotations' / 'instances_val.json'}) (add --no-eval to train without evaluation, or set "
                "data.val to a split with images)")
    for command in (["train", "--role", "student"], ["train"], ["distill", "--online"]):
        out = tmp_path / "run"
        assert error_line(run(*command, "--pipeline", recipe, "--out", out, "--device", "cpu")) == expected, command
        assert not out.exists()
    result = run("train", "--role", "student", "--pipeline", recipe, "--out", tmp_path / "run", "--device", "cpu",
                 "--no-eval")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / FINAL).is_file()


def test_an_empty_training_split_is_one_line_naming_the_split_and_its_file_with_no_warning_before(tmp_path,
                                                                                                     teacher_ckpt):
    """A training split whose annotation file lists no image: one line naming the split and the file, as
    teacher-cache's (before: a warning that no image has an object, then 'dataset: expected at least one image,
    found none', naming neither), by train and distill alike; no run directory."""
    from frs_cli.data.synth import SynthConfig, generate

    root = tmp_path / "data"
    generate(root, SynthConfig(train=4, val=4, size=64, seed=0, min_object=12, max_objects=3))
    recipe = write_recipe(tmp_path / "recipe.toml", root, str(teacher_ckpt))
    ann = root / "annotations" / "instances_train.json"
    ann.write_text(json.dumps({**json.loads(ann.read_text()), "images": [], "annotations": []}))
    for command, key in ((["train", "--role", "student"], "data.train"), (["distill", "--online"], "data.train"),
                         (["distill", "--cache", tmp_path / "c.zarr"], "cache.split")):  # distill reads cache.split's
        out = tmp_path / "run"
        result = run(*command, "--pipeline", recipe, "--out", out, "--device", "cpu")
        expected = (f"error: {command[0]}: expected images in split 'train', its annotation file '{ann}' lists none "
                    f"(set {key} to a split with images)")
        assert result.stderr.strip().splitlines() == [expected], command
        assert result.exit_code == 1 and not out.exists()


def test_a_val_split_of_other_categories_than_the_training_split_is_one_warning_at_start(tmp_path, synth_root,
                                                                                         teacher_ckpt):
    """Val's id 1 named 'oval', train's 'circle': train and distill warn once at the start, in eval's words
    (``category_differences``; before: they trained and scored against it without a word), and run."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    val = root / "annotations" / "instances_val.json"
    doc = json.loads(val.read_text())
    doc["categories"][0]["name"] = "oval"
    val.write_text(json.dumps(doc))
    recipe = write_recipe(tmp_path / "recipe.toml", root, str(teacher_ckpt))
    for command in (["train", "--role", "student"], ["distill", "--online"]):
        result = run(*command, "--pipeline", recipe, "--out", tmp_path / command[0], "--device", "cpu")
        assert result.exit_code == 0, result.output
        warned = [line for line in result.stderr.splitlines() if "'oval'" in line]
        assert warned == [(f"warning: {command[0]}: the model learns the categories of "
                           f"{root / 'annotations' / 'instances_train.json'}, {val} has others: id 1 is 'circle' in "
                           "the model, 'oval' in the data (is data.val a split of the training split's dataset?)")]
        assert result.stderr.index(warned[0]) < result.stderr.index("epoch 1/1")


@pytest.mark.parametrize("command", [["train", "--role", "student"], ["distill", "--online"]])
def test_a_final_evaluation_that_failed_is_run_by_resume_with_its_table(command, tmp_path, synth_root, teacher_ckpt):
    """A val image cut short after a sound header passes the start's checks and stops the final evaluation; once it
    is replaced, --resume of the run (every epoch done) runs that evaluation: its line, its table and its record in
    metrics.jsonl, as an uninterrupted run (before: it wrote model_final.pt and evaluated nothing)."""
    args = _run_whose_final_evaluation_failed(command, tmp_path, synth_root, teacher_ckpt, epochs=1)
    out = tmp_path / "run"
    result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "epoch 1, val box mAP (%): AP " in result.stderr and "val split" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "eval" in r] == [1]
    assert (out / FINAL).is_file()
    result = run(*args, "--resume")  # now complete: nothing runs again
    assert result.exit_code == 0 and "already complete" in result.stdout, result.output



def test_a_mid_run_evaluation_that_failed_is_run_by_resume_before_the_next_epoch(tmp_path, synth_root, teacher_ckpt):
    """The evaluation after epoch 1 of 2 (train.eval_every=1) stops on a val image cut short; once it is replaced,
    --resume evaluates epoch 1 first, then trains and evaluates epoch 2: metrics.jsonl holds both, as the run that
    was never stopped (before: the resume went on to epoch 2, and epoch 1 was never scored)."""
    args = _run_whose_final_evaluation_failed(["train", "--role", "student"], tmp_path, synth_root, teacher_ckpt,
                                              extra=("--set", "train.eval_every=1"))
    out = tmp_path / "run"
    result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("epoch 1, val box mAP (%): AP "))
    assert first < next(i for i, line in enumerate(lines) if line.startswith("epoch 2/2")), result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "eval" in r] == [1, 2]
    assert (out / FINAL).is_file()


def _run_whose_final_evaluation_failed(command, tmp_path, synth_root, teacher_ckpt, epochs=2, extra=()):
    """A run of ``epochs`` (``command``, ``extra`` options) whose first evaluation (the final one, unless ``extra``
    asks for more) stopped on a val image cut short after a sound header: last.pt at the end of that epoch, no
    model_final.pt, no evaluation in metrics.jsonl; the image then replaced.
    The command line that ran it."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    image = root / "val" / "000000000027.jpg"
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) // 2])
    recipe = write_recipe(tmp_path / "recipe.toml", root, str(teacher_ckpt))
    out = tmp_path / "run"
    args = [*command, "--pipeline", recipe, "--out", out, "--device", "cpu", "--set", f"train.epochs={epochs}", *extra]
    assert error_line(run(*args)).startswith(f"error: image '{image}': could not be decoded (image file is truncated")
    assert files(out) == ["last.pt", "metrics.jsonl", "recipe.json"]
    image.write_bytes(whole)
    return args


@pytest.mark.parametrize("command", [["train", "--role", "student"], ["distill", "--online"]], ids=["train", "distill"])
def test_a_resume_with_every_epoch_done_says_the_run_finished_them_not_that_it_resumes_past_its_end(
        command, tmp_path, synth_root, teacher_ckpt):
    """--resume of a two-epoch run with both epochs done but its final files not written says that the run already
    finished its 2 epochs and nothing is trained, then evaluates and writes them (before: "resumed from …/last.pt at
    epoch 3, iteration 0", of a run that has no epoch 3)."""
    args = _run_whose_final_evaluation_failed(command, tmp_path, synth_root, teacher_ckpt)
    out = args[args.index("--out") + 1]
    result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    said = f"resumed from {out / LAST}: the run already finished its 2 epochs; nothing to train"
    assert said in lines and "epoch 3" not in result.output, result.stderr
    assert lines.index(said) < next(i for i, line in enumerate(lines) if line.startswith("epoch 2, val box mAP"))
    assert not any(line.startswith(("epoch 1/2", "epoch 2/2")) for line in lines)  # no epoch ran
    assert (out / FINAL).is_file()
    # the closing line says what this call did: no iteration (before: "0 of its 12 iterations in 0 s (0.0 img/s)")
    done = {"train": "trained student retinanet_tiny_fpn", "distill": "distilled retinanet_tiny_fpn from online teacher"}
    wrote = "model_final.pt" + (" and adapters.pt" if command[0] == "distill" else "")
    assert (f"{done[command[0]]}: its 12 iterations ran before this resume, none now; evaluated the model and wrote "
            f"{wrote} -> {out}") in result.stdout.splitlines(), result.stdout
    data = args[args.index("--pipeline") + 1].parent / "data"  # and the state, read as a model, says so ("2 epochs")
    line = error_line(run("eval", "--checkpoint", out / LAST, "--data", data, "--device", "cpu"))
    assert "saved after 2 epochs) (use " in line, line


@pytest.mark.parametrize("command", [["train", "--role", "student"], ["distill", "--online"]], ids=["train", "distill"])
def test_a_resume_with_no_eval_of_a_run_whose_final_evaluation_failed_says_it_skips_it(command, tmp_path, synth_root,
                                                                                        teacher_ckpt):
    """--no-eval skips evaluation, also the final one a resume would otherwise run (its help: "Skip COCO evaluation
    on the val split"): model_final.pt is written without it, as asked, and one warning says so, that the earlier
    attempt left none, and how to score the model (before: the file was written without a word). The hint works;
    the run is then complete, also for a resume without --no-eval."""
    args = _run_whose_final_evaluation_failed(command, tmp_path, synth_root, teacher_ckpt)
    out, data = args[args.index("--out") + 1], tmp_path / "data"
    result = run(*args, "--resume", "--no-eval")
    assert result.exit_code == 0, result.output
    assert ("warning: --no-eval: the final evaluation (after epoch 2) is skipped, and metrics.jsonl holds none from "
            "an earlier attempt (it failed, or that attempt had --no-eval too); model_final.pt is written unevaluated "
            f"(frs eval --checkpoint {out / FINAL} --data {data} scores it)") in warnings_of(result)
    assert "val box mAP" not in result.stderr and "val split" not in result.stdout
    assert result.stdout.splitlines()[-1].endswith(": its 12 iterations ran before this resume, none now; wrote "
                                                   f"model_final.pt{' and adapters.pt' * (command[0] == 'distill')} "
                                                   f"-> {out}"), result.stdout
    assert not any("eval" in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    assert (out / FINAL).is_file()
    scored = run("eval", "--checkpoint", out / FINAL, "--data", data, "--device", "cpu")  # the hint
    assert scored.exit_code == 0 and "retinanet_tiny_fpn (model_final.pt)" in scored.stdout, scored.output
    again = run(*args, "--resume")
    assert again.exit_code == 0 and "already complete" in again.stdout and "--no-eval" not in again.stderr, again.output


def test_a_resume_with_no_eval_of_a_run_that_evaluated_its_last_epoch_warns_of_nothing(saved_run, tmp_path):
    """The warning is for a missing final evaluation only: a run that evaluated after its last epoch, its model file
    lost (removed), is finished again with --no-eval without it."""
    run_dir = saved_run.out
    with (run_dir / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"epoch": 1, "eval": {"AP": 0.0}}) + "\n")
    (run_dir / FINAL).unlink()
    result = train(saved_run.recipe, run_dir, "--resume")  # SMALL holds --no-eval
    assert result.exit_code == 0, result.output
    assert "--no-eval" not in result.stderr and (run_dir / FINAL).is_file(), result.stderr

# --- the run directory -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory, synth_root, teacher_ckpt):
    """A one-epoch run of the tiny student on the 8 val images: recipe.json, metrics.jsonl, last.pt, model_final.pt."""
    d = tmp_path_factory.mktemp("finished")
    recipe = write_recipe(d / "recipe.toml", synth_root, str(teacher_ckpt))
    result = train(recipe, d / "run")
    assert result.exit_code == 0, result.output
    return SimpleNamespace(recipe=recipe, out=d / "run")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, synth_root, teacher_ckpt) -> str:
    """A cache of the 8 images ``SMALL`` trains on (``data.train=val``, so the cache's train role is that folder)."""
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.dist import setup

    d = tmp_path_factory.mktemp("small_cache")
    recipe = load_recipe(write_recipe(d / "recipe.toml", synth_root, str(teacher_ckpt)), ['data.train="val"'])
    write_teacher_cache(recipe, str(d / "cache.zarr"), ctx=setup("cpu"))
    return str(d / "cache.zarr")


@pytest.fixture
def saved_run(finished, tmp_path):
    """A copy of ``finished`` this test may change, in a folder whose name holds brackets (lines name it as it is)."""
    shutil.copytree(finished.out, tmp_path / "run[v2]")
    return SimpleNamespace(recipe=finished.recipe, out=tmp_path / "run[v2]")


def test_out_that_is_a_file_is_one_line_and_the_file_is_kept(recipe_path, cache_path, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    for command in (["train", "--role", "student"], ["distill", "--cache", cache_path]):
        line = error_line(run(*command, "--pipeline", recipe_path, "--out", out, *SMALL))
        assert line == f"error: --out '{out}': expected a run directory, found a file (choose a directory path for --out)"
    assert out.read_text() == "mine"


def test_out_on_a_read_only_disk_is_one_line_and_creates_nothing(recipe_path, tmp_path, monkeypatch):
    disk = tmp_path / "ro"
    disk.mkdir()
    mkdir = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):  # as the kernel answers on a file system mounted read-only
        if str(self).startswith(str(disk)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    out = disk / "run"
    line = error_line(train(recipe_path, out))
    assert line == f"error: --out '{out}': the disk there is read-only at {out} (write to a folder on a writable disk)"
    assert files(disk) == []


def test_out_holding_other_files_is_refused_with_or_without_resume(recipe_path, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--resume"]):
        line = error_line(train(recipe_path, out, *extra))
        assert line == (f"error: --out '{out}': exists and is not empty (it holds notes.txt, and no saved run state "
                        "last.pt) (choose a new directory, or empty this one)")
    assert files(out) == ["notes.txt"]


def test_a_finished_run_without_its_state_is_named_as_such_not_as_a_folder_to_empty(saved_run):
    """last.pt removed from a finished run to save space: with or without --resume, the line says what the folder
    holds and keeps it (before: "exists and is not empty … (choose a new directory, or empty this one)", inviting
    the user to delete a finished model)."""
    (saved_run.out / LAST).unlink()
    before = snapshot(saved_run.out)
    for extra in ([], ["--resume"]):
        line = error_line(train(saved_run.recipe, saved_run.out, *extra))
        assert line == (f"error: --out '{saved_run.out}': holds a finished run (model_final.pt, recipe.json) without "
                        "the saved state last.pt a run continues from (keep it, and give a new run another --out)")
    assert snapshot(saved_run.out) == before


def test_a_saved_run_without_resume_is_refused_and_the_hint_resume_continues_it(saved_run):
    before = snapshot(saved_run.out)
    line = error_line(train(saved_run.recipe, saved_run.out))
    assert line == (f"error: --out '{saved_run.out}': exists and holds a saved run state (last.pt) "
                    "(add --resume to continue that run, or choose a new directory)")
    assert snapshot(saved_run.out) == before
    result = train(saved_run.recipe, saved_run.out, "--resume")  # the hint: the finished run is finished again
    assert result.exit_code == 0, result.output
    assert torch.load(saved_run.out / LAST, weights_only=True)["epoch"] == 1


def test_distill_resume_in_a_teachers_train_run_names_the_train_run(recipe_path, small_cache, tmp_path):
    out = tmp_path / "teacher"
    assert run("train", "--pipeline", recipe_path, "--out", out, *SMALL).exit_code == 0  # --role teacher, the default
    before = snapshot(out)
    result = run("distill", "--pipeline", recipe_path, "--out", out, "--cache", small_cache, "--resume", *SMALL)
    assert error_line(result) == (f"error: --resume: --out '{out}' holds a run of frs train --role teacher (recipe.json "
                                  'records job "train teacher"), not of frs distill (continue it with frs train --role '
                                  "teacher --resume, or give frs distill another --out)")
    assert snapshot(out) == before


def test_resume_of_a_finished_run_says_it_is_complete_and_writes_nothing(saved_run):
    """A cache fingerprints its teacher by the model file's bytes: a finished run resumed keeps model_final.pt as it
    is (bytes and time), like teacher-cache --resume on a complete cache."""
    import hashlib

    before, stamp = snapshot(saved_run.out), (saved_run.out / FINAL).stat().st_mtime_ns
    digest = hashlib.sha256((saved_run.out / FINAL).read_bytes()).hexdigest()
    result = train(saved_run.recipe, saved_run.out, "--resume")
    assert result.exit_code == 0, result.output
    assert f"run {str(saved_run.out)!r} is already complete (1 epoch); nothing written" in " ".join(result.stdout.split())
    assert hashlib.sha256((saved_run.out / FINAL).read_bytes()).hexdigest() == digest
    assert (saved_run.out / FINAL).stat().st_mtime_ns == stamp and snapshot(saved_run.out) == before
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2")  # a longer schedule runs
    assert result.exit_code == 0, result.output
    assert "already complete" not in result.stdout
    assert torch.load(saved_run.out / LAST, weights_only=True)["epoch"] == 2


def test_a_resume_onto_another_val_split_says_the_evaluations_from_then_on_score_it(saved_run):
    """data.val changes no weight, so a resume may change it; it was taken in silence, and metrics.jsonl and frs
    report then mixed AP of two splits with nothing to say so."""
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2", "--set", 'data.val="train"')
    assert result.exit_code == 0, result.output
    assert ("--resume: data.val changes from \"val\" to \"train\" (recorded in recipe.json): the evaluations from "
            "here on score the 'train' split, those metrics.jsonl holds from before the 'val' split") in \
        warnings_of(result)
    assert json.loads((saved_run.out / "recipe.json").read_text())["data"]["val"] == "train"


def test_the_run_records_the_frs_version_it_started_under_and_a_resume_by_another_keeps_it(saved_run, monkeypatch):
    """recipe.json and the model file name the frs that wrote them; a resume under another frs keeps the version the
    run started under and adds its own (a run's results may depend on the frs that made them)."""
    import frs_cli

    started = f"frs {frs_cli.__version__}"
    assert json.loads((saved_run.out / "recipe.json").read_text())["created_by"] == started
    assert torch.load(saved_run.out / FINAL, weights_only=True)["created_by"] == started
    monkeypatch.setattr(frs_cli, "__version__", "9.9.9")
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    recorded = json.loads((saved_run.out / "recipe.json").read_text())
    assert (recorded["created_by"], recorded["resumed_by"]) == (started, "frs 9.9.9")
    assert torch.load(saved_run.out / FINAL, weights_only=True)["created_by"] == "frs 9.9.9"
    assert "created_by" not in warnings_of(result)  # not a setting: no change named


def test_distill_resume_of_a_finished_run_says_it_is_complete_and_writes_nothing(recipe_path, small_cache, tmp_path):
    out = tmp_path / "run"
    args = ["distill", "--pipeline", recipe_path, "--out", out, "--cache", small_cache, *SMALL]
    assert run(*args).exit_code == 0
    before = snapshot(out)
    stamps = {name: (out / name).stat().st_mtime_ns for name in (FINAL, "adapters.pt")}
    result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert f"run {str(out)!r} is already complete (1 epoch); nothing written" in " ".join(result.stdout.split())
    assert snapshot(out) == before
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps


# --- what --resume may change ------------------------------------------------------------------------------

def _state_beyond_the_schedule(t):
    state = torch.load(t.out / LAST, weights_only=True)
    state["epoch"], state["epoch_step"] = 1, 1  # saved one step into epoch 2
    torch.save(state, t.out / LAST)
    return []


def _truncated_state(t):
    (t.out / LAST).write_bytes((t.out / LAST).read_bytes()[:1000])
    return []


def _no_recipe(t):
    (t.out / "recipe.json").unlink()
    return []


def _state_of_another_model(t):  # recipe.json agrees with the command, the state does not
    (t.out / FINAL).unlink()  # a run that has not finished (a finished one is left as it is, nothing loaded)
    doc = json.loads((t.out / "recipe.json").read_text())
    doc["student"].update(arch="fcos_tiny_fpn", anchor_size=0)
    (t.out / "recipe.json").write_text(json.dumps(doc))
    return ["--set", "student.arch=fcos_tiny_fpn", "--set", "student.anchor_size=0"]


def _train_run_resumed_by_distill(t):
    return []


def _no_job_recorded(t):  # a recipe.json from before the job was recorded
    doc = json.loads((t.out / "recipe.json").read_text())
    del doc["job"]
    (t.out / "recipe.json").write_text(json.dumps(doc))
    return []


RESUME = {  # case -> (command, how to prepare the run directory, the message or fragments of it)
    "lr_changed": ("train", lambda t: ["--set", "train.lr=0.5"],
                   ("started with another recipe: train.lr = 0.01, now 0.5 (a resume may change only train.epochs, "
                    "train.workers, train.worker_hold, train.log_every, train.eval_every, train.checkpoint_every, "
                    "train.cuda_graphs, train.channels_last, data.val; resume with the recipe "
                    "it started with, or start a new run in another --out)")),
    "another_architecture": ("train", lambda t: ["--set", "student.arch=fcos_tiny_fpn", "--set", "student.anchor_size=0"],
                             ('started with another recipe: student.arch = "retinanet_tiny_fpn", now "fcos_tiny_fpn"; '
                              "student.anchor_size = 16, now 0 (a resume may change only")),
    "batch_size_and_lr_steps_changed": ("train", lambda t: ["--set", "train.batch_size=2", "--set", "train.lr_steps=[2]"],
                                        "train.batch_size = 4, now 2; train.lr_steps = [1], now [2] ("),
    "other_data": ("train", lambda t: ["--set", "data.root=/elsewhere"], 'data.root = "'),
    "state_beyond_the_schedule": ("train", _state_beyond_the_schedule,
                                  ("--resume: the saved state is at epoch 2, iteration 1, beyond the 1 epoch this "
                                   "run asks for (ask for at least 2 epochs)")),
    "truncated_state": ("train", _truncated_state,
                        ("is not a readable training state: expected a torch checkpoint (a zip archive written by "
                         "torch.save), got a damaged or truncated zip archive (the file is damaged; delete ")),
    "no_recipe_beside_the_state": ("train", _no_recipe,
                                   ("--resume: expected the recipe the run started with at '{out}/recipe.json', "
                                    "found none (put back its recipe.json, or start a new run in another --out)")),
    "state_of_another_model": ("train", _state_of_another_model,
                               ("--resume: the state in '{out}/last.pt' does not fit this run's model (Error(s) in "
                                "loading state_dict for ")),
    "train_run_resumed_by_distill": ("distill", _train_run_resumed_by_distill,
                                     ("--resume: --out '{out}' holds a run of frs train --role student (recipe.json "
                                      'records job "train student"), not of frs distill (continue it with frs train '
                                      "--role student --resume, or give frs distill another --out)")),
    "train_run_without_a_recorded_job_resumed_by_distill": (
        "distill", _no_job_recorded,
        ("--resume: --out '{out}' holds a run of frs train (recipe.json has no teacher_source), not of frs distill")),
    "student_run_resumed_as_the_teacher": ("train", lambda t: ["--role", "teacher"],
                                           ("holds a run of frs train --role student (recipe.json records job "
                                            '"train student"), not of frs train --role teacher')),
}


@pytest.mark.parametrize("case", list(RESUME))
def test_a_refused_resume_is_one_line_and_changes_nothing(case, saved_run, small_cache):
    command, prepare, message = RESUME[case]
    args = prepare(saved_run)
    before = snapshot(saved_run.out)
    source = ["--cache", small_cache] if command == "distill" else ["--role", "student"]
    result = run(command, "--pipeline", saved_run.recipe, "--out", saved_run.out, "--resume", *SMALL, *source, *args)
    line = error_line(result)
    assert message.format(out=saved_run.out) in line, line
    assert snapshot(saved_run.out) == before  # recipe.json, last.pt, model_final.pt, metrics.jsonl as they were


def test_the_refused_change_hint_resuming_with_the_started_recipe_works(saved_run):
    error_line(train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.lr=0.5"))
    result = train(saved_run.recipe, saved_run.out, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((saved_run.out / "recipe.json").read_text())["train"]["lr"] == 0.01


def test_a_resume_that_extends_the_schedule_records_it_in_the_recipe(saved_run):
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2", "--set", "train.log_every=5",
                   "--set", "train.worker_hold=0")
    assert result.exit_code == 0, result.output
    said = warnings_of(result)
    assert "--resume: train.epochs changes from 1 to 2 (recorded in recipe.json)" in said
    assert "--resume: train.log_every changes from 1 to 5 (recorded in recipe.json)" in said
    assert "--resume: train.worker_hold changes from 6 to 0 (recorded in recipe.json)" in said
    assert f"resumed from {saved_run.out / LAST} at epoch 2, iteration 0" in result.stderr.splitlines()
    recorded = json.loads((saved_run.out / "recipe.json").read_text())["train"]
    assert (recorded["epochs"], recorded["log_every"], recorded["worker_hold"], recorded["lr"]) == (2, 5, 0, 0.01)
    assert torch.load(saved_run.out / LAST, weights_only=True)["epoch"] == 2



def test_a_resume_with_another_number_of_processes_names_both_counts(saved_run):
    """The saved state records how many processes took each step: a resume with another count (under torchrun or
    not) said only "37 iterations per epoch, this run has 75 (batch size, world size or dataset changed)"."""
    state = torch.load(saved_run.out / LAST, weights_only=True)
    assert state["world_size"] == 1  # recorded by the run
    state["world_size"] = 2  # as a two-process run records it (its epoch holds half the iterations; kept here)
    torch.save(state, saved_run.out / LAST)
    line = error_line(train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2"))
    assert ("--resume: the run started with 2 processes of 4 images a step each (2 iterations per epoch), this run "
            "has 1 process (2 iterations per epoch): its schedule and data order follow the processes (resume it with "
            "2 processes (torchrun --nproc-per-node 2, or as many across hosts))") in line, line


def test_a_resume_onto_annotations_changed_in_place_says_so_once_and_records_them(tmp_path, synth_root, teacher_ckpt):
    """The same data.root, its training annotations edited (or the set regenerated) between the save and the resume:
    one warning naming both digests, the run continues and recipe.json records the new digest (before: nothing
    told; the run went on over other images). An unchanged file says nothing."""
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    recipe = write_recipe(tmp_path / "recipe.toml", data, str(teacher_ckpt))
    out = tmp_path / "run"
    assert train(recipe, out).exit_code == 0
    digest = json.loads((out / "recipe.json").read_text())["paths"]["train_annotations"]
    ann = data / "annotations" / "instances_val.json"  # SMALL trains on the val split
    assert digest == "sha256:" + hashlib.sha256(ann.read_bytes()).hexdigest()
    result = train(recipe, out, "--resume", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert "annotation file" not in warnings_of(result)
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["bbox"][2] += 1.0  # one box one pixel wider
    ann.write_text(json.dumps(coco))
    result = train(recipe, out, "--resume", "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    now = "sha256:" + hashlib.sha256(ann.read_bytes()).hexdigest()
    said = warnings_of(result)
    assert said.count("annotation file") == 1
    assert (f"--resume: the training split's annotation file {ann} is not the one the run started with "
            f"({digest[:19]} then, {now[:19]} now: changed in place); the run continues on it as it is now (recorded "
            "in recipe.json)") in said
    assert json.loads((out / "recipe.json").read_text())["paths"]["train_annotations"] == now
    assert torch.load(out / LAST, weights_only=True)["epoch"] == 3


def test_an_online_resume_onto_a_teacher_file_changed_in_place_says_so_once_and_records_it(tmp_path, synth_root,
                                                                                           teacher_ckpt):
    """distill --online, its teacher.weights file overwritten between the save and the resume (a teacher retrained
    into the same path): one warning naming the file and both identities, the run continues and recipe.json records
    the new one (before: nothing told, and the rest of the run distilled from another teacher). An unchanged file
    says nothing."""
    teacher = tmp_path / "teacher.pt"
    shutil.copy(teacher_ckpt, teacher)
    recipe = write_recipe(tmp_path / "recipe.toml", synth_root, str(teacher))
    out = tmp_path / "run"

    def distill(*extra):
        return run("distill", "--pipeline", recipe, "--online", "--out", out, *SMALL, *extra)

    assert distill().exit_code == 0
    then = json.loads((out / "recipe.json").read_text())["paths"]["teacher"]
    assert then == "file:" + hashlib.sha256(teacher.read_bytes()).hexdigest()[:16]
    result = distill("--resume", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert "teacher's weights file" not in warnings_of(result)
    ckpt = torch.load(teacher, weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key] += 0.5  # the teacher changed
    torch.save(ckpt, teacher)
    result = distill("--resume", "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    now = "file:" + hashlib.sha256(teacher.read_bytes()).hexdigest()[:16]
    said = warnings_of(result)
    assert said.count("teacher's weights file") == 1
    assert (f"--resume: the teacher's weights file {str(teacher)!r} is not the one the run started with ({then} then, "
            f"{now} now: changed in place); the rest of the run distills from it as it is now (recorded in "
            "recipe.json)") in said
    assert json.loads((out / "recipe.json").read_text())["paths"]["teacher"] == now
    assert torch.load(out / LAST, weights_only=True)["epoch"] == 3


def test_a_run_folder_removed_mid_run_stops_the_run_in_one_line_and_is_not_made_again(recipe_path, tmp_path,
                                                                                     monkeypatch):
    """``rm -rf`` of the run folder while the run trains: the next save stops the run with one line, exit 1, and
    no folder is made again (before: exit 0, and a folder holding last.pt and model_final.pt alone, without the
    recipe and metrics a resume and a report need, looked finished)."""
    from frs_cli.train import hooks

    out = tmp_path / "run"
    step = hooks.MetricsHook.after_step

    def after_step(self, trainer):
        step(self, trainer)
        if trainer.last.iteration == 1:
            shutil.rmtree(out)

    monkeypatch.setattr(hooks.MetricsHook, "after_step", after_step)
    line = error_line(train(recipe_path, out, "--set", "train.epochs=2"))
    assert line == (f"error: --out {str(out)!r}: the run folder was removed or replaced while the run went on (its "
                    "recipe.json and metrics.jsonl with it); stopping without saving into it (start the run again in "
                    "a new --out)")
    assert not out.exists()


def test_a_resume_past_a_finished_runs_end_keeps_its_final_files_under_their_epochs_name(saved_run):
    """A finished one-epoch run resumed with ``train.epochs=2``: its model_final.pt is kept as model_epoch1.pt
    (same bytes) with one warning, and model_final.pt is written again at the new end (before: the old file stood
    as the final model until the longer run ended, and an extension stopped early left it looking current)."""
    before = (saved_run.out / FINAL).read_bytes()
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert ("--resume: the run had finished after 1 epoch and now goes on: its model_final.pt is kept as "
            "model_epoch1.pt, and written again when the run ends") in warnings_of(result)
    assert (saved_run.out / "model_epoch1.pt").read_bytes() == before
    assert (saved_run.out / FINAL).read_bytes() != before
    assert torch.load(saved_run.out / FINAL, weights_only=True)["arch"] == "retinanet_tiny_fpn"
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2")  # complete: nothing moves
    assert result.exit_code == 0 and "had finished" not in warnings_of(result)
    assert sorted(p.name for p in saved_run.out.glob("model_*.pt")) == ["model_epoch1.pt", "model_final.pt"]


def test_a_finished_run_copied_without_its_files_times_is_still_finished(saved_run, synth_root):
    """``cp -r`` (or an archive) gives last.pt a later time than model_final.pt: whether the run finished is judged
    by content, so a resume still says "already complete" and writes nothing, a longer resume still keeps the
    model as model_epoch1.pt, and eval of last.pt still points to model_final.pt (before: by the files' times,
    the finished model was silently overwritten)."""
    later = (saved_run.out / FINAL).stat().st_mtime + 60
    os.utime(saved_run.out / LAST, (later, later))
    before = snapshot(saved_run.out)
    times = {p.name: p.stat().st_mtime_ns for p in saved_run.out.iterdir()}
    result = train(saved_run.recipe, saved_run.out, "--resume")
    assert result.exit_code == 0 and "is already complete (1 epoch); nothing written" in " ".join(result.stdout.split())
    assert snapshot(saved_run.out) == before and {p.name: p.stat().st_mtime_ns for p in saved_run.out.iterdir()} == times
    line = error_line(run("eval", "--checkpoint", saved_run.out / LAST, "--data", synth_root, "--device", "cpu"))
    assert line.endswith(f"(use {saved_run.out / FINAL})")
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert (saved_run.out / "model_epoch1.pt").read_bytes() == before[FINAL]


def test_a_distill_resumed_past_its_end_keeps_the_model_and_the_adapters(recipe_path, small_cache, tmp_path):
    out = tmp_path / "run"
    distill = ("distill", "--pipeline", recipe_path, "--cache", small_cache, "--out", out, *SMALL)
    assert run(*distill).exit_code == 0
    adapters = (out / "adapters.pt").read_bytes()
    result = run(*distill, "--resume", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert ("its model_final.pt and adapters.pt are kept as model_epoch1.pt and adapters_epoch1.pt, and written "
            "again when the run ends") in warnings_of(result)
    assert (out / "adapters_epoch1.pt").read_bytes() == adapters and (out / "adapters.pt").is_file()


def test_a_run_recorded_by_an_older_frs_resumes_under_its_own_recipe_or_names_the_set_that_keeps_it(saved_run):
    """recipe.json as a frs of 2026-12-02 wrote it: ``nms_thresh`` written out as the arch's 0.5 (today 0 stands
    for it) and no ``train.group_by_canvas`` (it batched mixed canvases). The nms value is no change; the
    canvas batching is, and the line names the --set that resumes the run as it began (before: both were listed
    as another recipe, and the hint was to resume with the recipe the user had given)."""
    path = saved_run.out / "recipe.json"
    stored = json.loads(path.read_text())
    assert stored["student"]["nms_thresh"] == 0.0
    stored["student"]["nms_thresh"] = 0.5
    del stored["train"]["group_by_canvas"]
    path.write_text(json.dumps(stored))
    line = error_line(train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2"))
    assert line == (f"error: --resume: the run in '{saved_run.out}' started with another recipe: train.group_by_canvas = "
                    "false, now true (the run began under an older frs, before train.group_by_canvas existed; --set "
                    "train.group_by_canvas=false resumes it as it began)")
    result = train(saved_run.recipe, saved_run.out, "--resume", "--set", "train.epochs=2", "--set",
                   "train.group_by_canvas=false")
    assert result.exit_code == 0, result.output
    assert "nms_thresh" not in warnings_of(result)
    assert torch.load(saved_run.out / LAST, weights_only=True)["epoch"] == 2


def test_the_truncated_state_hint_delete_it_and_run_again_starts_the_run_over(saved_run):
    (saved_run.out / FINAL).unlink()  # a run that has not finished yet
    _truncated_state(saved_run)
    line = error_line(train(saved_run.recipe, saved_run.out, "--resume"))
    assert line.endswith(f"(the file is damaged; delete {saved_run.out / LAST} and run the same command again to "
                         "start the run from the beginning)")
    (saved_run.out / LAST).unlink()
    result = train(saved_run.recipe, saved_run.out, "--resume")
    assert result.exit_code == 0, result.output
    assert "holds a run without a saved state last.pt (it stopped before its first checkpoint, or the file was " \
           "removed)" in warnings_of(result)
    assert torch.load(saved_run.out / LAST, weights_only=True)["epoch"] == 1


def test_a_training_state_of_an_earlier_frs_holding_numpy_objects_still_resumes(saved_run):
    import numpy as np

    state = torch.load(saved_run.out / LAST, weights_only=True)
    assert isinstance(state["rng"]["numpy"][1], torch.Tensor)  # stored as a tensor now: weights_only reads it
    state["rng"]["numpy"] = np.random.RandomState(7).get_state()  # how earlier versions stored it
    torch.save(state, saved_run.out / LAST)
    assert any(n.startswith("numpy.") for n in torch.serialization.get_unsafe_globals_in_checkpoint(saved_run.out / LAST))
    (saved_run.out / FINAL).unlink()  # not finished: the resume restores the state (and writes the model file)
    result = train(saved_run.recipe, saved_run.out, "--resume")
    assert result.exit_code == 0, result.output
    assert np.random.get_state()[1][:4].tolist() == np.random.RandomState(7).get_state()[1][:4].tolist()


# --- a run that failed before its first saved state starts again --------------------------------------------

def _metrics_iterations(out) -> list[int]:
    return [json.loads(x)["iter"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"iter"' in x]


def test_a_run_killed_in_its_first_epoch_starts_again_with_resume(recipe_path, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "frs_cli", "train", "--pipeline", str(recipe_path), "--role", "student", "--out",
           str(out), *SMALL, "--set", "train.batch_size=1"]  # 8 iterations in epoch 1
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count('"iter"') >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "train finished before it was killed"
    assert files(out) == ["metrics.jsonl", "recipe.json"]  # no saved state
    result = train(recipe_path, out, "--set", "train.batch_size=1", "--resume")
    assert result.exit_code == 0, result.output
    assert "holds a run without a saved state last.pt (it stopped before its first checkpoint, or the file was " \
           "removed); starting it again from the beginning, with a new metrics.jsonl" in warnings_of(result)
    assert _metrics_iterations(out) == list(range(8))  # the killed attempt's lines are gone
    assert files(out) == ["last.pt", "metrics.jsonl", "model_final.pt", "recipe.json"]


def _ctrl_c_twice_at(monkeypatch, iteration: int, objective="GTObjective") -> None:
    """Two SIGINTs to this process inside the forward pass of ``iteration``: the second stops at once."""
    from frs_cli.train import objectives

    cls = getattr(objectives, objective)
    forward = cls.forward

    def interrupted(self, batch, step):
        if step == iteration:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, batch, step)

    monkeypatch.setattr(cls, "forward", interrupted)


def test_ctrl_c_twice_in_the_first_epoch_says_nothing_was_saved_and_the_same_command_starts_over(
        recipe_path, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _ctrl_c_twice_at(monkeypatch, 1)
    line = error_line(train(recipe_path, out), code=130)
    assert line == ("interrupted: stopped at once at epoch 1, iteration 1, without saving; no state was saved yet "
                    "(run the same command again to start the run from the beginning)")
    assert files(out) == ["metrics.jsonl", "recipe.json"]
    monkeypatch.undo()
    result = train(recipe_path, out)
    assert result.exit_code == 0, result.output
    assert files(out) == ["last.pt", "metrics.jsonl", "model_final.pt", "recipe.json"]


def test_a_full_disk_at_the_model_file_says_so_in_plain_words_and_promises_no_earlier_file(recipe_path, tmp_path,
                                                                                            monkeypatch):
    """torch's zip writer stopping on a full disk raises a RuntimeError naming a line of its C++ source: the line
    says what happened instead, and does not say "the previous file is kept" of a file that never was (before:
    "writing failed ([enforce fail at inline_container.cc:672] . unexpected pos …) (the previous file is kept; …)")."""
    save = torch.save

    def full_at_the_model(obj, f, *a, **k):
        if "arch" in obj:  # the model file, after the state
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1216 vs 1104")
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_at_the_model)
    out = tmp_path / "run"
    line = error_line(train(recipe_path, out))
    assert line.startswith(f"error: {out / FINAL}: writing failed (torch's archive writer stopped part way; ")
    assert line.endswith("MB free on its disk) (free space, then run again with --resume)")
    assert "enforce" not in line and "previous file" not in line
    assert files(out) == ["last.pt", "metrics.jsonl", "recipe.json"]
    monkeypatch.setattr(torch, "save", save)
    assert train(recipe_path, out, "--resume").exit_code == 0
    assert torch.load(out / FINAL, weights_only=True)["arch"] == "retinanet_tiny_fpn"


def test_a_full_disk_while_logging_a_step_is_one_line_and_the_hint_run_again_with_resume_works(recipe_path, tmp_path,
                                                                                              monkeypatch):
    """metrics.jsonl's append failing on a full disk in epoch 2: one line naming the file, exit 1 (before: Python's
    OSError with a traceback); after freeing space, --resume finishes the run from epoch 1's state, its log cut
    back to that state and written on, every step once."""
    import errno

    from frs_cli.train import metrics_log

    class FullAfter:
        def __init__(self, file, lines):
            self.file, self.lines = file, lines

        def write(self, text):
            self.lines -= 1
            if self.lines < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(text)

        def flush(self):
            self.file.flush()

        def close(self):
            self.file.close()

    made = metrics_log.MetricsLog.__init__

    def full_in_epoch_2(self, out_dir, tensorboard=False):
        made(self, out_dir, tensorboard)
        self.file = FullAfter(self.file, lines=3)  # 2 steps and the eval-less epoch 1, then full

    monkeypatch.setattr(metrics_log.MetricsLog, "__init__", full_in_epoch_2)
    out = tmp_path / "run"
    line = error_line(train(recipe_path, out, "--set", "train.epochs=2"))
    assert line == (f"error: {out / 'metrics.jsonl'}: the disk is full (no space left on device) (free space, then "
                    "run again with --resume)")
    assert torch.load(out / LAST, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(metrics_log.MetricsLog, "__init__", made)
    assert train(recipe_path, out, "--set", "train.epochs=2", "--resume").exit_code == 0
    iters = [json.loads(x)["iter"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"iter"' in x]
    assert iters == sorted(set(iters)) and len(iters) == 4


def test_ctrl_c_twice_after_a_saved_state_names_it(recipe_path, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _ctrl_c_twice_at(monkeypatch, 2)  # the first step of epoch 2
    line = error_line(train(recipe_path, out, "--set", "train.epochs=2"), code=130)
    assert line == (f"interrupted: stopped at once at epoch 2, iteration 0, without saving; the last saved state (the "
                    f"end of epoch 1) is in {out / LAST} (run the same command with --resume to continue from it)")
    assert torch.load(out / LAST, weights_only=True)["epoch"] == 1


def test_a_full_disk_at_the_first_save_is_one_line_and_the_hint_run_again_with_resume_works(
        recipe_path, tmp_path, monkeypatch):
    if not pathlib.Path("/dev/full").exists():
        pytest.skip("needs /dev/full to make writes fail as on a full disk")
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: save(obj, "/dev/full", *a, **k))
    out = tmp_path / "run"
    line = error_line(train(recipe_path, out))
    assert line.startswith(f"error: {out / LAST}: writing failed (") and "MB free on its disk)" in line
    assert line.endswith("free space, then run again with --resume)")
    assert files(out) == ["metrics.jsonl", "recipe.json"]  # no temporary file
    monkeypatch.setattr(torch, "save", save)  # space freed
    result = train(recipe_path, out, "--resume")
    assert result.exit_code == 0, result.output
    assert files(out) == ["last.pt", "metrics.jsonl", "model_final.pt", "recipe.json"]


def test_a_non_finite_loss_in_the_first_epoch_and_the_hint_lower_the_learning_rate_works(recipe_path, tmp_path):
    out = tmp_path / "run"
    line = error_line(train(recipe_path, out, "--set", "train.lr=1e12"))
    assert line.startswith("error: train: non-finite loss at epoch 1, iteration 1: classification=nan")
    assert line.endswith("(lower the learning rate or check the data)")
    assert files(out) == ["metrics.jsonl", "recipe.json"]
    result = train(recipe_path, out, "--set", "train.lr=0.01")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "recipe.json").read_text())["train"]["lr"] == 0.01


def test_an_image_missing_is_one_line_before_the_run_starts(recipe_path, synth_root, tmp_path):
    """A val file gone: one line naming it and the count, before any epoch (it used to stop the run when the last
    epoch was evaluated); no run directory, so the same command starts afresh once the file is back."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    gone = sorted((root / "val").iterdir())[5]
    gone.unlink()
    out = tmp_path / "run"
    line = error_line(train(recipe_path, out, "--set", f"data.root={root}", "--set", "train.workers=1"))
    assert line == (f"error: image: expected a file at '{gone}', but it does not exist (1 of the 8 image files of "
                    f"'{root / 'annotations' / 'instances_val.json'}' is missing)")
    assert not out.exists()


# --- distill ----------------------------------------------------------------------------------------------

def _signal_in_distill(monkeypatch, signum: int = signal.SIGINT) -> None:
    """``signum`` to this process inside the FRS objective's forward pass of step 1 (the state is then saved after
    iteration 2); ``monkeypatch.undo()`` or a new patch ends it."""
    from frs_cli.train import objectives

    forward = objectives.FRSObjective.forward

    def interrupted(self, batch, step):
        if step == 1:  # unhandled, SIGTERM would end the test session itself
            assert signum == signal.SIGINT or signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), signum)
        return forward(self, batch, step)

    monkeypatch.setattr(objectives.FRSObjective, "forward", interrupted)

def test_ctrl_c_in_distill_saves_the_state_at_the_step_boundary(recipe_path, small_cache, tmp_path, monkeypatch):
    _signal_in_distill(monkeypatch)
    out = tmp_path / "run"
    result = run("distill", "--pipeline", recipe_path, "--cache", small_cache, "--out", out, *SMALL)
    line = error_line(result, code=130)
    assert line == (f"interrupted: stopped at epoch 1, iteration 2; state saved to {out / LAST} (run the same command "
                    "with --resume to continue)")
    state = torch.load(out / LAST, weights_only=True)
    assert (state["epoch"], state["epoch_step"]) == (0, 2) and "adapters" in state["modules"]
    assert files(out) == ["last.pt", "metrics.jsonl", "recipe.json"]


def test_distill_resumed_from_another_cache_is_refused(saved_run, cache_path, tmp_path):
    doc = json.loads((saved_run.out / "recipe.json").read_text())
    (saved_run.out / "recipe.json").write_text(json.dumps({**doc, "teacher_source": str(tmp_path / "old.zarr"),
                                                           "job": "distill cache"}))
    before = snapshot(saved_run.out)
    result = run("distill", "--pipeline", saved_run.recipe, "--cache", cache_path, "--out", saved_run.out, "--resume",
                 *SMALL)
    assert f'teacher_source = "{tmp_path / "old.zarr"}", now "{cache_path}"' in error_line(result)
    assert snapshot(saved_run.out) == before


# --- eval: files that are not model files, masks that are not scores ----------------------------------------

def test_eval_of_a_training_state_names_it_and_the_hint_model_final_works(saved_run, synth_root):
    line = error_line(run("eval", "--checkpoint", saved_run.out / LAST, "--data", synth_root, "--device", "cpu"))
    assert line == (f"error: checkpoint '{saved_run.out / LAST}': expected a model file (keys 'arch', 'model'), got a "
                    "training state (what --resume continues from, saved after 1 epoch) "
                    f"(use {saved_run.out / FINAL})")
    result = run("eval", "--checkpoint", saved_run.out / FINAL, "--data", synth_root, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "retinanet_tiny_fpn (model_final.pt)" in result.stdout


def _torch_file_of_an_object(t):
    import argparse

    path = t.tmp / "namespace.pt"
    torch.save(argparse.Namespace(lr=0.1), path)
    return path


def _truncated_model_file(t):
    path = t.tmp / "model_final.pt"
    path.write_bytes((t.run / FINAL).read_bytes()[:2000])
    return path


def _state_of_an_unfinished_run(t):
    (t.run / FINAL).unlink()
    return t.run / LAST


def _state_of_a_stopped_extension(t):
    """A finished run resumed with more epochs and stopped one iteration into them by a frs without the rename
    (its model_final.pt older than the state)."""
    state = torch.load(t.run / LAST, weights_only=True)
    torch.save({**state, "epoch_step": 1}, t.run / LAST)
    old = (t.run / LAST).stat().st_mtime - 60
    os.utime(t.run / FINAL, (old, old))
    return t.run / LAST


NOT_TORCH = "expected a torch checkpoint (a zip archive written by torch.save)"
NOT_A_MODEL = {  # case -> (the file given to --checkpoint, what the line says after "checkpoint '<file>': ")
    "recipe_toml": (lambda t: t.recipe, f"{NOT_TORCH}, got text beginning 'name = \"tiny\"'"),
    "empty_file": (lambda t: _touch(t.tmp / "empty.pt"), f"{NOT_TORCH}, got an empty file"),
    "truncated_model_file": (_truncated_model_file, f"{NOT_TORCH}, got a damaged or truncated zip archive"),
    "python_objects": (_torch_file_of_an_object,
                       ("expected tensors and plain containers only, got Python objects frs does not load "
                        "(argparse.Namespace)")),
    "a_plain_tensor": (lambda t: _save(torch.zeros(2), t.tmp / "t.pt"),
                       "expected an frs model file (keys 'arch', 'model'), got Tensor"),
    "state_of_an_unfinished_run": (_state_of_an_unfinished_run,
                                   ("expected a model file (keys 'arch', 'model'), got a training state (what "
                                    "--resume continues from, saved after 1 epoch) (the run has not finished: its "
                                    "model_final.pt is written when train/distill --resume ends)")),
    "state_of_a_stopped_extension": (_state_of_a_stopped_extension,
                                     ("expected a model file (keys 'arch', 'model'), got a training state (what "
                                      "--resume continues from, saved after 1 epoch and 1 iteration) (the run has not "
                                      "finished: its model_final.pt is written when train/distill --resume ends)")),
    "a_state_dict": (lambda t: _save(torch.load(t.run / FINAL, weights_only=True)["model"], t.tmp / "sd.pt"),
                     None),  # the line checked below: the hint to score it through a recipe
    "an_mmdetection_checkpoint": (lambda t: _save({"meta": {"epoch": 24}, "state_dict": {"w": torch.zeros(1)}},
                                                  t.tmp / "mm.pth"), None),
    "missing": (lambda t: t.tmp / "nothing.pt", None),
}


def _touch(path):
    path.write_bytes(b"")
    return path


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", list(NOT_A_MODEL))
def test_eval_of_a_file_that_is_not_a_model_file_says_what_it_is_in_one_plain_line(case, saved_run, synth_root,
                                                                                    tmp_path):
    make, what = NOT_A_MODEL[case]
    path = make(SimpleNamespace(tmp=tmp_path, recipe=saved_run.recipe, run=saved_run.out))
    line = error_line(run("eval", "--checkpoint", path, "--data", synth_root, "--device", "cpu"))
    if case == "a_state_dict":
        assert line.startswith(f"error: checkpoint '{path}': expected an frs model file (keys 'arch', 'model'), got "
                               "keys ['backbone.")
        assert line.endswith("(a file of weights alone: frs eval --pipeline RECIPE --set teacher.weights=FILE scores "
                             "it as the recipe's teacher builds it)")
    elif case == "an_mmdetection_checkpoint":
        assert line == (f"error: checkpoint '{path}': expected an frs model file (keys 'arch', 'model'), got keys "
                        f"['meta', 'state_dict'] (an mmdetection checkpoint: frs convert mmdet {path} --arch ARCH "
                        "--out FILE.pt makes a model file of it)")
    elif what is None:
        assert line == f"error: checkpoint: expected a file at '{path}', but it does not exist"
    else:
        assert line == f"error: checkpoint '{path}': {what}"
    assert "weights_only" not in line and "Weights only" not in line


def test_mask_statistics_of_nan_masks_is_one_line_and_the_hint_verify_lists_the_view(cache_path, tmp_path):
    copy = tmp_path / "c.zarr"
    shutil.copytree(cache_path, copy)
    mask = zarr.open_group(str(copy), mode="r+")["buckets/64x64/P4/mask"]
    row = mask[2]
    row[1, 1] = float("nan")
    mask[2] = row
    line = error_line(run("eval", "--cache", copy))
    # the reader checks each view's stored checksum before the statistics see its values
    assert line.startswith(f"error: cache '{copy}': image 2 orig (bucket 64x64, row 2): P4/mask does not match its "
                           f"stored checksum (frs cache verify {copy} lists the damage")
    result = run("cache", "verify", copy)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "image 2 orig (bucket 64x64, row 2): P4/mask checksum mismatch"


def test_a_resume_takes_the_same_cache_however_it_is_spelled_and_refuses_another(recipe_path, small_cache, tmp_path,
                                                                                 monkeypatch):
    """recipe.json records what each path named (``paths``): a resume giving the cache relative with a trailing
    slash, absolute from another folder, or as its HDF5 export continues, as does one without teacher.weights (a
    cached run's teacher is the cache's); a cache of other views is refused."""
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(small_cache, tmp_path)
    assert run("distill", "--pipeline", recipe_path, "--cache", relative, "--out", "run", *SMALL).exit_code == 0
    assert json.loads((out / "recipe.json").read_text())["paths"]["teacher_source"].startswith('{"autocast"')
    h5 = tmp_path / "cache.h5"
    assert run("cache", "export", small_cache, h5).exit_code == 0
    (tmp_path / "elsewhere").mkdir()
    for epochs, (cache, cwd) in enumerate([(relative + "/", tmp_path), (small_cache, tmp_path / "elsewhere"),
                                           (h5, tmp_path)], start=2):
        monkeypatch.chdir(cwd)
        result = run("distill", "--pipeline", recipe_path, "--cache", cache, "--out", out, *SMALL, "--resume",
                     "--set", f"train.epochs={epochs}")
        assert result.exit_code == 0, (cache, result.output)
        assert "teacher_source changes" not in result.stderr  # the same source: no change to record
        # the closing line counts the iterations this call ran (its time and rate are theirs) of the run's
        assert f": 2 of its {2 * epochs} iterations in " in result.stdout, result.stdout
    # a cached run's teacher is the cache's: teacher.weights (what teacher-cache read) does not pin it
    result = run("distill", "--pipeline", recipe_path, "--cache", h5, "--out", out, *SMALL, "--resume",
                 "--set", "train.epochs=5", "--set", 'teacher.weights=""')
    assert result.exit_code == 0, result.output
    other = tmp_path / "other.zarr"
    shutil.copytree(small_cache, other)
    zarr.open_group(str(other), mode="r+").attrs["views"] = ["orig"]
    line = error_line(run("distill", "--pipeline", recipe_path, "--cache", other, "--out", out, *SMALL, "--resume",
                          "--set", "train.epochs=6"))
    assert f"--resume: --cache '{other}' (the run started with '{h5}') holds another cache than the run started " \
           "with: its views are [\"orig\"], was [\"orig\", \"hflip\"]" in line  # as the last resume spelled it


def test_a_resume_onto_another_cache_at_the_same_path_is_refused_naming_what_differs(recipe_path, small_cache,
                                                                                     tmp_path):
    """The run's cache path now holds another cache: written again for another teacher, or in another dtype.
    Before, the same spelling passed as the same cache: the resume trained on the other targets, exit 0, and
    rewrote recipe.json with the new cache's identity."""
    cache, out = tmp_path / "c.zarr", tmp_path / "run"
    shutil.copytree(small_cache, cache)
    assert run("distill", "--pipeline", recipe_path, "--cache", cache, "--out", out, *SMALL).exit_code == 0
    recorded = (out / "recipe.json").read_bytes()
    root = zarr.open_group(str(cache), mode="r+")
    attrs = dict(root.attrs)
    for key, part, value, said in (
            ("fingerprints", "teacher", "file:0123456789abcdef",
             f'teacher fingerprint is "file:0123456789abcdef", was "{attrs["fingerprints"]["teacher"]}"'),
            ("storage", "dtype", "int8", 'feature dtype is "int8", was "float16"'),
            ("teacher", "autocast", "bfloat16", 'teacher precision is "bfloat16", was null')):  # rewritten on a GPU
        root.attrs[key] = {**attrs[key], part: value}
        result = run("distill", "--pipeline", recipe_path, "--cache", cache, "--out", out, *SMALL, "--resume", "--set",
                     "train.epochs=2")
        line = error_line(result)
        assert f"--resume: --cache '{cache}' holds another cache than the run started with: its {said}" in line
        assert "a cache is read as it was written" not in result.stderr  # no warning before the refusal
        assert (out / "recipe.json").read_bytes() == recorded
        root.attrs[key] = attrs[key]
    result = run("distill", "--pipeline", recipe_path, "--cache", cache, "--out", out, *SMALL, "--resume", "--set",
                 "train.epochs=2")
    assert result.exit_code == 0, result.output  # the cache it started with, put back
    recorded = json.loads((out / "recipe.json").read_text())  # as a run recorded before the precision was compared
    identity = json.loads(recorded["paths"]["teacher_source"])
    del identity["autocast"]
    recorded["paths"]["teacher_source"] = json.dumps(identity, sort_keys=True)
    (out / "recipe.json").write_text(json.dumps(recorded))
    result = run("distill", "--pipeline", recipe_path, "--cache", cache, "--out", out, *SMALL, "--resume", "--set",
                 "train.epochs=3")
    assert result.exit_code == 0, result.output  # a part the run did not record is not compared


def test_a_resume_may_change_how_the_step_is_launched_but_not_what_it_computes(tmp_path):
    """``resume_changes``: the keys that only change how a step is launched or laid out (``distill.cuda_graphs``,
    ``distill.teacher_beside``, ``train.cuda_graphs``, ``train.channels_last``) are not refused, and are returned
    as changes (``record_resume`` warns of them); a weight of the objective is refused, naming both values."""
    from frs_cli.config import Recipe
    from frs_cli.errors import ConfigError
    from frs_cli.train.rundir import RECIPE, resume_changes

    stored = {**Recipe().to_dict(), "teacher_source": "cache.zarr", "job": "distill cache"}  # as distill records it
    stored["distill"]["beta"] = 0.02  # a resolved recipe holds the family's weight (Recipe() leaves it None)
    (tmp_path / RECIPE).write_text(json.dumps(stored), encoding="utf-8")
    asked = json.loads(json.dumps(stored))
    for table, key in (("distill", "cuda_graphs"), ("distill", "teacher_beside"), ("train", "cuda_graphs"),
                       ("train", "channels_last")):
        asked[table][key] = not asked[table][key]
    assert resume_changes(tmp_path, asked, "distill cache") == {
        "distill.cuda_graphs": (True, False), "distill.teacher_beside": (True, False),
        "train.cuda_graphs": (True, False), "train.channels_last": (False, True)}
    asked["distill"]["beta"] = 0.5
    with pytest.raises(ConfigError, match=r"started with another recipe: distill.beta = 0.02, now 0.5"):
        resume_changes(tmp_path, asked, "distill cache")


def test_mask_statistics_leave_a_mean_over_no_positions_undefined_not_zero(cache_path, tmp_path, monkeypatch):
    """With no position inside a GT box (views without objects, made so by giving every image no boxes), the mean S
    inside GT is undefined: null in --metrics and "–" in the table, as COCO's undefined metrics are; the means
    that have positions stay numbers."""
    from frs_cli.eval import mask_stats

    monkeypatch.setattr(mask_stats, "apply_to_boxes", lambda boxes, geom: boxes[:0])
    result = run("eval", "--cache", cache_path, "--metrics", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "stats.json").read_text())["levels"]
    assert [s["mean_inside"] for s in levels] == [None] * 5
    assert all(0.0 < s["mean_outside"] < 1.0 and s["outside_mass"] == 1.0 for s in levels)
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ P")]
    assert len(rows) == 5 and all(row.split("│")[4].strip() == "–" for row in rows), rows
    assert all(row.split("│")[6].strip() == "100.0%" for row in rows), rows


def test_a_refused_resume_shows_the_values_as_written_not_as_json_escapes(tmp_path):
    """``data.root = "données/été"`` in the refusal, as the user wrote it (before: "donn\\u00e9es/\\u00e9t\\u00e9")."""
    from frs_cli.errors import ConfigError
    from frs_cli.train.rundir import JOB, resume_changes

    (tmp_path / "recipe.json").write_text(json.dumps({"data": {"root": "données/été"}, JOB: "train student"}))
    with pytest.raises(ConfigError) as refused:
        resume_changes(tmp_path, {"data": {"root": "base_data"}, JOB: "train student"}, "train student")
    assert 'data.root = "données/été", now "base_data"' in str(refused.value)


def test_sigterm_in_distill_saves_the_state_at_the_step_boundary_and_exits_143(recipe_path, small_cache, tmp_path,
                                                                               monkeypatch):
    """SIGTERM (kill, timeout, docker stop, a scheduler's cancel) is a stop request as Ctrl-C is: the step in flight
    finishes, the state is saved, and the command exits 128 + 15 as a shell reports a process SIGTERM ended (before:
    the default action ended the process at once, with nothing saved since the last checkpoint and no message)."""
    from frs_cli import errors

    _signal_in_distill(monkeypatch, signal.SIGTERM)
    monkeypatch.setattr(errors, "stop_signal", 0)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    result = run("distill", "--pipeline", recipe_path, "--cache", small_cache, "--out", out, *SMALL)
    line = error_line(result, code=143)
    assert line == (f"interrupted: stopped at epoch 1, iteration 2; state saved to {out / LAST} (run the same command "
                    "with --resume to continue)")
    assert "terminated (SIGTERM): stopping after this step" in result.stderr
    state = torch.load(out / LAST, weights_only=True)
    assert (state["epoch"], state["epoch_step"]) == (0, 2)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the run's alone
    assert not (tmp_path / ".run.lock").exists()  # released as on Ctrl-C: no stale lock for the resume to break


@pytest.mark.parametrize(("sets", "label"), [([], "student + FRS"),
                                             (["distill.alpha=0", "distill.beta=0"], "student (alpha = beta = 0)"),
                                             (["distill.mask=\"gt\""], "student + GT-box masks")])
def test_distills_metrics_row_names_what_it_distilled_with(recipe_path, small_cache, tmp_path, sets, label):
    """The val table's row: "student + FRS" only when the FRS masks weigh something (before: also with both weights
    0, a plain student, and with GT-box masks, a baseline)."""
    args = ["distill", "--pipeline", recipe_path, "--cache", small_cache, "--out", tmp_path / "run", "--set",
            "data.train=val", "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    result = run(*args)
    assert result.exit_code == 0, result.output
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith("\u2502 student")]
    assert len(rows) == 1 and rows[0].startswith(f"\u2502 {label} "), result.stdout


def test_a_resume_drops_the_metrics_a_killed_attempt_wrote_after_its_last_saved_state(recipe_path, small_cache,
                                                                                       tmp_path, monkeypatch):
    """A run killed (kill -9) some steps after its last saved state has logged those steps; the resume runs them
    again. metrics.jsonl then held them twice, nothing telling the attempts apart (RELIABILITY's "Not covered").
    Now a resume first cuts metrics.jsonl back to its state: every step once, as in a run never stopped."""

    args = ["distill", "--pipeline", recipe_path, "--cache", small_cache, *SMALL, "--set", "train.log_every=1",
            "--set", "train.epochs=2"]
    straight = tmp_path / "straight"
    assert run(*args, "--out", straight).exit_code == 0
    _signal_in_distill(monkeypatch)
    out = tmp_path / "run"
    error_line(run(*args, "--out", out), code=130)  # state saved after iteration 2 (iters 0 and 1 logged)
    monkeypatch.undo()
    metrics = out / "metrics.jsonl"
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iter"] for r in logged] == [0, 1]
    with metrics.open("a") as f:  # what an attempt killed after two more steps and an evaluation left
        f.write(json.dumps({**logged[-1], "iter": 2}) + "\n" + json.dumps({**logged[-1], "iter": 3}) + "\n")
        f.write(json.dumps({"epoch": 1, "eval": {"AP": 0.5}}) + "\n" + '{"epoch": 1, "it')
    result = run(*args, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in steps] == [r["iter"] for r in reference] == [0, 1, 2, 3]
    assert steps[:2] == logged and not any("eval" in r for r in steps)


@pytest.mark.parametrize("key", ["train.channels_last", "train.cuda_graphs", "distill.teacher_beside"])
def test_a_resume_may_change_how_the_step_is_laid_out_and_says_what_that_costs(recipe_path, small_cache, tmp_path,
                                                                                monkeypatch, key):
    """train.channels_last, train.cuda_graphs, distill.cuda_graphs and distill.teacher_beside change how the step
    runs, not the model: a resume may change them, and warns that the rest of the run then sums in another order
    (before: silently, although channels-last changes the numbers in their last bits)."""
    _signal_in_distill(monkeypatch)
    out = tmp_path / "run"
    args = ["distill", "--pipeline", recipe_path, "--cache", small_cache, "--out", out, *SMALL]
    error_line(run(*args), code=130)
    monkeypatch.undo()
    was = json.loads((out / "recipe.json").read_text())
    table, name = key.split(".")
    result = run(*args, "--resume", "--set", f"{key}={json.dumps(not was[table][name])}")
    assert result.exit_code == 0, result.output
    assert (f"--resume: {key} changes from {json.dumps(was[table][name])} to {json.dumps(not was[table][name])} "
            "(recorded in recipe.json): the same model, its steps summed in another order, so the rest of the run "
            "differs in rounding from the run never stopped") in warnings_of(result)
    assert json.loads((out / "recipe.json").read_text())[table][name] is (not was[table][name])


def _sleep_leaving_stop_to_parent(ready):
    from frs_cli.signals import leave_stop_to_parent

    leave_stop_to_parent(0)
    ready.set()
    time.sleep(120)


def test_a_worker_ignores_sigterm_from_others_and_ends_on_its_parents():
    """``leave_stop_to_parent`` (loader workers, cache writers): a SIGTERM sent to the whole job (here by another
    process) is left to the parent; the parent's own (multiprocessing's ``terminate``, at shutdown and interpreter
    exit) still ends the worker at once. Ignored outright, that one left the parent waiting for ever (the cache's
    writers did, until this test's case was added)."""
    import multiprocessing
    import subprocess

    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_sleep_leaving_stop_to_parent, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(60)
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # from a process other than the parent
        worker.join(2)
        assert worker.is_alive()
        started = time.time()
        worker.terminate()
        worker.join(30)
        assert worker.exitcode == -signal.SIGTERM and time.time() - started < 10
    finally:
        if worker.is_alive():
            worker.kill()


def test_teacher_cache_stopped_before_it_made_the_cache_says_so(recipe_path, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) while the teacher's weights download, before the cache exists: "nothing was written", no
    --resume hint (before: "the views written so far are kept in OUT", of a cache that did not exist)."""
    from frs_cli.cache import writer

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_teacher_cache", stopped)
    out = tmp_path / "c.zarr"
    line = error_line(run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu"), code=130)
    assert line == "interrupted: teacher-cache stopped before it made the cache; nothing was written"
    out.mkdir()
    line = error_line(run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu"), code=130)
    assert line.startswith(f"interrupted: teacher-cache stopped; the views written so far are kept in {out}")
