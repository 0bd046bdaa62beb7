"""Command-line options and paths no command can use: one error line, exit 1, before any work, nothing written.

Covers ``--device``, ``frs eval``'s numbers, a directory where a file is expected (to read or to write),
``frs report``'s inputs, and help texts that must show what their source says.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error
from typer.testing import CliRunner

from frs_cli import dist
from frs_cli.cli.app import app
from frs_cli.errors import ConfigError

runner = CliRunner()


def run(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def gpus(monkeypatch, count: int) -> list:
    """Pretend this machine has ``count`` GPUs; the returned list records each ``torch.cuda.set_device``."""
    chosen: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


# --- --device ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["gpu", "tpu", "GPU", "cuda:", "cuda:x", "cpu:0", ""])
def test_an_unknown_device_is_one_line_and_train_creates_no_run(tmp_path, recipe_path, device):
    result = run("train", "--pipeline", recipe_path, "--out", tmp_path / "run", "--device", device)
    assert_one_line_error(result, "--device: expected cpu, cuda or cuda:N, got", repr(device))
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_cuda_device_is_one_line_in_train_and_eval(tmp_path, recipe_path, teacher_ckpt, synth_root,
                                                                  monkeypatch):
    no_cuda(monkeypatch)
    result = run("train", "--pipeline", recipe_path, "--out", tmp_path / "run", "--device", "cuda")
    assert_one_line_error(result, "--device cuda: no CUDA device is available", "use --device cpu")
    assert not (tmp_path / "run").exists()
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cuda:0",
                 "--metrics", tmp_path / "m.json")
    assert_one_line_error(result, "--device cuda:0: no CUDA device is available")
    assert not (tmp_path / "m.json").exists()


def test_cuda_n_uses_gpu_n_and_an_index_out_of_range_is_one_line(tmp_path, recipe_path, monkeypatch):
    chosen = gpus(monkeypatch, 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert dist.setup("cuda:1").device == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]
    assert dist.setup("cuda").device == torch.device("cuda", 0)
    result = run("train", "--pipeline", recipe_path, "--out", tmp_path / "run", "--device", "cuda:2")
    assert_one_line_error(result, "--device cuda:2: expected a GPU index below 2", "got 2")
    assert not (tmp_path / "run").exists()


def test_under_torchrun_local_rank_picks_the_gpu_and_cuda_n_is_refused(monkeypatch):
    chosen = gpus(monkeypatch, 2)
    monkeypatch.setattr(dist.torch_dist, "is_initialized", lambda: True)  # no process group is joined here
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = dist.setup("cuda")
    assert ctx.device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)] and ctx.local_rank == 1
    assert dist.setup(None).device == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="under torchrun, where each process uses GPU LOCAL_RANK"):
        dist.setup("cuda:0")
    assert dist.setup("cpu").device == torch.device("cpu")


# --- frs eval's numbers -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "fragment"), [
    (["--batch-size", "0"], "eval --batch-size: expected an integer >= 1, got 0"),
    (["--batch-size", "-2"], "eval --batch-size: expected an integer >= 1, got -2"),
    (["--workers", "-1"], "eval --workers: expected an integer >= 0, got -1"),
], ids=["batch_size_zero", "batch_size_negative", "workers_negative"])
def test_eval_checkpoint_numbers_are_checked_before_the_model_is_loaded(tmp_path, teacher_ckpt, synth_root, args,
                                                                         fragment):
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu",
                 "--metrics", tmp_path / "m.json", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--max-views", "-3"], "eval --max-views: expected an integer >= 1, got -3"),
    (["--max-views", "0"], "eval --max-views: expected an integer >= 1, got 0"),
    (["--high", "nan"], "eval --high: expected a finite number in [0, 1], got nan"),
    (["--high", "2"], "eval --high: expected a finite number in [0, 1], got 2.0"),
    (["--high", "-0.1"], "eval --high: expected a finite number in [0, 1], got -0.1"),
], ids=["max_views_negative", "max_views_zero", "high_nan", "high_above_one", "high_negative"])
def test_eval_cache_numbers_are_checked_before_the_cache_is_read(tmp_path, cache_path, args, fragment):
    result = run("eval", "--cache", cache_path, "--metrics", tmp_path / "m.json", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "m.json").exists()


# --- a directory where a file is expected -----------------------------------------------------------------

def test_a_directory_given_as_a_file_to_read_is_named_as_a_directory(tmp_path, synth_root, cache_path):
    folder = tmp_path / "somedir"
    folder.mkdir()
    result = run("train", "-p", folder, "--out", tmp_path / "run")
    assert_one_line_error(result, f"recipe: expected a TOML file, but '{folder}' is a directory")
    assert not (tmp_path / "run").exists()
    for given in (folder, cache_path):
        result = run("eval", "--checkpoint", given, "--data", synth_root, "--device", "cpu")
        assert_one_line_error(result, f"checkpoint: expected a file at '{given}', but it is a directory")
    result = run("eval", "--detections", folder, "--data", synth_root)
    assert_one_line_error(result, f"expected a JSON file at '{folder}', but it is a directory")
    result = run("convert", "mmdet", folder, "--arch", "retinanet_resnet50_fpn_mmdet", "--out", tmp_path / "x.pt")
    assert_one_line_error(result, f"mmdet checkpoint: expected a file at '{folder}', but it is a directory")
    result = run("export", "--onnx", folder, tmp_path / "x.onnx")
    assert_one_line_error(result, f"export --onnx: expected a model file at '{folder}', but it is a directory")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.onnx").exists()


def test_a_symlink_to_nothing_is_named_as_such(tmp_path, synth_root):
    """``pipelines/demo.toml`` links to ``../frs_cli/recipes/demo.toml``: a copy of the folder alone keeps a link to
    nothing, which ``ls`` lists; the line names the link and its target (before: "does not exist")."""
    (tmp_path / "pipelines").mkdir()
    link = tmp_path / "pipelines" / "demo.toml"
    link.symlink_to("../frs_cli/recipes/demo.toml")
    result = run("train", "-p", link, "--out", tmp_path / "run")
    assert_one_line_error(result, f"recipe: expected a TOML file, but '{link}' is a symbolic link to "
                                  "'../frs_cli/recipes/demo.toml', which does not exist")
    result = run("eval", "--checkpoint", link, "--data", synth_root, "--device", "cpu")
    assert_one_line_error(result, f"checkpoint: expected a file at '{link}', but it is a symbolic link to "
                                  "'../frs_cli/recipes/demo.toml', which does not exist")
    assert not (tmp_path / "run").exists()


def _output_cases(tmp_path, teacher_ckpt, cache_path, synth_root) -> dict:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"iter": 0, "loss": 1.0}\n', encoding="utf-8")
    return {  # option named in the line -> the command, its output directory last
        "visualize --out": ["visualize", "--cache", cache_path, "--out", tmp_path / "out.png"],
        "report --out": ["report", run_dir, "--out", tmp_path / "report.png"],
        "export OUT": ["export", "--onnx", teacher_ckpt, tmp_path / "x.onnx"],
        "eval --metrics": ["eval", "--cache", cache_path, "--metrics", tmp_path / "m.json"],
        "eval --detections-out": ["eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu",
                                  "--detections-out", tmp_path / "dets.json"],
        "cache export OUT": ["cache", "export", cache_path, tmp_path / "c.h5"],
        "convert mmdet --out": ["convert", "mmdet", teacher_ckpt, "--arch", "retinanet_resnet50_fpn_mmdet",
                                "--out", tmp_path / "conv.pt"],
    }


@pytest.mark.parametrize("option", ["visualize --out", "report --out", "export OUT", "eval --metrics",
                                    "eval --detections-out", "cache export OUT", "convert mmdet --out"])
def test_a_directory_given_as_the_output_file_is_refused_up_front(tmp_path, teacher_ckpt, cache_path, synth_root,
                                                                  option, monkeypatch):
    args = _output_cases(tmp_path, teacher_ckpt, cache_path, synth_root)[option]
    target = args[-1]
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(*args)
    assert_one_line_error(result, f"{option}: expected a file path, got the directory '{target}'")
    assert ".tmp" not in result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file beside it


@pytest.mark.parametrize("option", ["visualize --out", "report --out"])
def test_a_picture_named_other_than_png_is_refused_up_front(tmp_path, teacher_ckpt, cache_path, synth_root, option):
    """They write PNG: a .jpg name would hold PNG bytes (before: written so)."""
    args = _output_cases(tmp_path, teacher_ckpt, cache_path, synth_root)[option]
    target = args[-1].with_suffix(".jpg")
    result = run(*args[:-1], target)
    assert_one_line_error(result, f"{option}: expected a .png file (the format written), got '{target}'")
    assert not target.exists()
    assert run(*args[:-1], args[-1].with_suffix(".PNG")).exit_code == 0


def test_the_atomic_writer_refuses_a_directory_before_writing(tmp_path):
    from frs_cli.files import write_json

    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="expected a file path, got the directory '.*d'"):
        write_json(tmp_path / "d", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and not any((tmp_path / "d").iterdir())


# --- frs report -------------------------------------------------------------------------------------------

def test_report_of_a_model_file_is_one_line(teacher_ckpt):
    result = run("report", teacher_ckpt)
    assert_one_line_error(result, f"got '{teacher_ckpt}', a file that is not text", "--out folder")


def test_report_refuses_an_unknown_metric_before_reading_the_runs(tmp_path):
    result = run("report", tmp_path / "no_such_run", "--metric", "APx", "--out", tmp_path / "r.png")
    assert_one_line_error(result, "report --metric: expected one of AP, AP50, AP75, APs, APm, APl, got 'APx'")
    assert not (tmp_path / "r.png").exists()


# --- help texts -------------------------------------------------------------------------------------------

def help_text(*command) -> str:
    result = run(*command, "--help", env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_help_shows_square_brackets_the_verbose_option_and_which_export_path_is_read():
    assert "pip install 'frs[faster-eval]'" in help_text("eval")
    export = help_text("export")
    assert "pip install 'frs[onnx]'" in export
    assert "INPUT: the trained model file (model_final.pt) to read" in export
    assert "OUTPUT: the ONNX file to write" in export
    for command in (["eval"], ["train"], ["export"], ["convert", "mmdet"], ["teacher-cache"]):
        assert "--verbose -v <bool> Also print informational notes" in help_text(*command), command
    assert "cpu, cuda or cuda:N" in help_text("train")


def test_export_onnx_to_a_name_of_another_format_is_refused_up_front(tmp_path, teacher_ckpt):
    """export writes ONNX: a .txt name would hold ONNX bytes (before: written so, exit 0)."""
    target = tmp_path / "x5.txt"
    result = run("export", "--onnx", teacher_ckpt, target)
    assert_one_line_error(result, f"export OUT: expected a .onnx file (the format written), got '{target}'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["s3://bucket/x.h5", "file:///tmp/x.h5"])
def test_cache_export_to_a_url_is_refused_and_writes_nothing_locally(tmp_path, cache_path, out, monkeypatch):
    """OUT is a local file: a URL is one line (before: 's3://bucket/x.h5' became the local folder 's3:/bucket',
    written there, and the command said it exported to s3:/bucket/x.h5)."""
    monkeypatch.chdir(tmp_path)
    result = run("cache", "export", cache_path, out)
    assert_one_line_error(result, f"cache export: expected a local .h5 or .hdf5 file name for OUT, got {out!r}")
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_that_is_not_utf8_text_is_one_line(tmp_path, teacher_ckpt):
    """A model file given to --pipeline by mistake, or a recipe in another encoding: one line naming the file and
    the first byte that is not UTF-8 (before: a UnicodeDecodeError traceback)."""
    result = run("train", "--pipeline", teacher_ckpt, "--out", tmp_path / "run", "--device", "cpu")
    assert_one_line_error(result, f"recipe {str(teacher_ckpt)!r}: expected a UTF-8 TOML text file")
    assert not (tmp_path / "run").exists()
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    result = run("recipe", "show", latin)
    assert_one_line_error(result, f"recipe {str(latin)!r}: expected a UTF-8 TOML text file", "byte 11: b'\\xe9'")


def test_an_output_whose_folder_cannot_be_made_is_one_line_with_a_hint_that_fits(tmp_path, teacher_ckpt, cache_path,
                                                                                 synth_root, monkeypatch):
    """Every output written through ``atomic_path`` (eval's files, cache export; export and convert write through it
    too) and ``data synth``:
    a folder that may not be made is one line saying so, with no free-space advice (before: a PermissionError
    traceback). The denial is simulated (the tests may run as root, who may write anywhere)."""
    import errno
    import os
    from pathlib import Path

    denied = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(denied)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(denied))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    cases = {
        "eval --metrics": ["eval", "--cache", cache_path, "--metrics", denied / "s" / "m.json"],
        "cache export": ["cache", "export", cache_path, denied / "s" / "c.h5"],
        "eval --detections-out": ["eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu",
                                  "--detections-out", denied / "s" / "d.json"],
        "data synth": ["data", "synth", denied / "d", "--train", "2", "--val", "1"],
    }
    for name, args in cases.items():
        result = run(*args)
        line = assert_one_line_error(result, f"no permission to write there at {denied}",
                                     "(write to a folder you may write to)")
        assert "free space" not in line, (name, line)
    assert not denied.exists()


def test_an_output_on_a_read_only_disk_is_one_line_saying_so_without_free_space_or_resume_advice(
        tmp_path, recipe_path, cache_path, monkeypatch):
    """A folder on a file system mounted read-only (EROFS, simulated: the tests may run as root) for teacher-cache's
    cache, demo's folder, cache export and data synth: one line naming the read-only disk, with advice that fits
    (before: teacher-cache advised freeing space and --resume, demo printed a traceback)."""
    import errno
    import os

    disk = tmp_path / "ro"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # pathlib's mkdir and os.makedirs both come here
        if str(path).startswith(str(disk)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    cases = {
        "teacher-cache": ["teacher-cache", "-p", recipe_path, "--out", disk / "c.zarr", "--device", "cpu"],
        "demo": ["demo", "--out", disk / "demo", "--train-images", "2", "--val-images", "1"],
        "cache export": ["cache", "export", cache_path, disk / "s" / "c.h5"],
        "data synth": ["data", "synth", disk / "d", "--train", "2", "--val", "1"],
    }
    for name, args in cases.items():
        line = assert_one_line_error(run(*args), "the disk there is read-only", "(write to a folder on a writable disk)")
        assert "free space" not in line and "--resume" not in line, (name, line)
        assert ".partial" not in line, (name, line)  # synth's hidden folder is none the user gave
    assert not disk.exists()


@pytest.mark.parametrize("mode,option", [("detections", ["--detections-out", "x.json"]), ("detections", ["--high", "0.3"]),
                                         ("cache", ["--backend", "faster"]), ("cache", ["--split", "train"]),
                                         ("checkpoint", ["--max-views", "3"]), ("detections", ["--workers", "0"])])
def test_an_eval_option_its_mode_does_not_read_is_refused_not_ignored(tmp_path, teacher_ckpt, cache_path, synth_root,
                                                                       mode, option, monkeypatch):
    """Each option is read by some of --checkpoint, --detections and --cache: given with another, one line naming
    both (before: ignored with exit 0, e.g. no file at --detections-out)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.json").write_text("[]", encoding="utf-8")
    given = {"checkpoint": ["--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu"],
             "detections": ["--detections", tmp_path / "d.json", "--data", synth_root],
             "cache": ["--cache", cache_path]}[mode]
    result = run("eval", *given, *option)
    assert_one_line_error(result, f"eval {option[0]}: expected it with --", f"got it with --{mode}, which does not read it")
    assert not (tmp_path / "x.json").exists()
    assert run("eval", *given).exit_code == 0  # the same call without it runs


def test_a_plain_pickle_given_as_a_model_is_one_line_without_torchs_warning(tmp_path, synth_root):
    """A pickle file that is no torch checkpoint (``pickle.dump``): convert, with or without --allow-pickle, and
    eval say so in one line, with nothing of torch's own before it. Before: torch's two-line UserWarning about the
    pickle protocol; convert's line cut mid-word; convert without --allow-pickle advising --allow-pickle, which then
    ended in torch's "Invalid magic number". A legacy (pre-zip) torch file, also a pickle, still reads."""
    import pickle

    pkl = tmp_path / "p.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    plain = "got a plain Python pickle (pickle.dump, not torch.save)"
    convert = ["convert", "mmdet", pkl, "--arch", "retinanet_resnet50_fpn_mmdet", "--out", tmp_path / "x.pt"]
    for args in (convert, [*convert, "--allow-pickle"], ["eval", "--checkpoint", pkl, "--data", synth_root,
                                                         "--device", "cpu"]):
        result = run(*args)
        line = assert_one_line_error(result, f"{str(pkl)!r}", plain)
        assert result.stderr.strip() == line, result.stderr  # the error line alone
        assert "allow-pickle" not in line and "magic" not in line
    assert not (tmp_path / "x.pt").exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    from frs_cli.models.torchfile import load_torch_file

    assert torch.equal(load_torch_file(legacy)["w"], torch.ones(2))


def test_the_teacher_checks_settings_are_refused_naming_the_option_or_key_and_a_percent_ap_is_read_back(tmp_path,
                                                                                                      synth_root):
    """--check-teacher -1 names the option; cache.min_teacher_map names its key alone (one message named both
    keys and both values), and an AP typed in percent, as the tables print it, is given back as the fraction."""
    from conftest import write_recipe

    recipe = write_recipe(tmp_path / "r.toml", synth_root)
    out = tmp_path / "c.zarr"
    line = assert_one_line_error(run("teacher-cache", "-p", recipe, "--out", out, "--device", "cpu",
                                     "--check-teacher", "-1"))
    assert line == "error: teacher-cache --check-teacher: expected an integer >= 0, got -1"
    line = assert_one_line_error(run("teacher-cache", "-p", recipe, "--out", out, "--device", "cpu",
                                     "--set", "cache.min_teacher_map=30"))
    assert line == ("error: recipe key 'cache.min_teacher_map': expected a COCO AP as a fraction in [0, 1], got 30.0 "
                    "(from --set cache.min_teacher_map=30; 30 AP is 0.3)")
    line = assert_one_line_error(run("teacher-cache", "-p", recipe, "--out", out, "--device", "cpu",
                                     "--set", "cache.check_teacher_images=-2"))
    assert line.startswith("error: recipe key 'cache.check_teacher_images': expected an integer >= 0, got -2")
    assert not out.exists()


def test_eval_of_a_split_of_no_images_is_one_line_naming_the_split_and_its_file(tmp_path, synth_root, teacher_ckpt):
    """A val file listing no images: one line naming the split and the file, before any model runs (before:
    an empty progress bar, then ``CocoEvaluator.evaluate: expected at least one processed image``)."""
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    ann = data / "annotations" / "instances_val.json"
    ann.write_text(json.dumps({**json.loads(ann.read_text()), "images": [], "annotations": []}))
    (tmp_path / "d.json").write_text("[]", encoding="utf-8")
    for given in (["--checkpoint", teacher_ckpt, "--device", "cpu"], ["--detections", tmp_path / "d.json"]):
        result = run("eval", *given, "--data", data)
        line = assert_one_line_error(result)
        assert result.stderr.strip() == line  # no progress bar before it
        assert line == f"error: eval --split val: expected at least one image to evaluate on, got none in {ann}"


def test_eval_of_a_model_with_no_label_for_a_category_of_the_data_is_one_line_before_predicting(tmp_path, synth_root,
                                                                                              teacher_ckpt):
    """A dataset with objects of a category the model has no label for cannot be scored: one error line naming the
    category, before any image is predicted (before: the warning about other categories, then the evaluator's
    error). A category listed with no objects (or crowd ones only) has no AP in COCO's evaluation: the split is
    scored as without it, with the warning about other categories (before this fix: refused as well)."""
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    ann = data / "annotations" / "instances_val.json"
    doc = json.loads(ann.read_text())
    metrics = tmp_path / "m.json"
    assert run("eval", "--checkpoint", teacher_ckpt, "--data", data, "--device", "cpu", "--metrics", metrics).exit_code == 0
    scored = json.loads(metrics.read_text())
    doc["categories"].append({"id": 6, "name": "hex", "supercategory": "shape"})
    crowd = {**doc["annotations"][0], "id": 10**6, "category_id": 6, "iscrowd": 1}
    ann.write_text(json.dumps({**doc, "annotations": doc["annotations"] + [crowd]}))
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", data, "--device", "cpu", "--metrics", metrics)
    assert result.exit_code == 0, result.output
    assert "id 6 ('hex') is no category of the model" in result.stderr and "error" not in result.stderr
    assert json.loads(metrics.read_text()) == scored
    doc["annotations"].append({**crowd, "iscrowd": 0})
    ann.write_text(json.dumps(doc))
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", data, "--device", "cpu")
    line = assert_one_line_error(result)
    assert result.stderr.strip() == line  # no warning before it, no progress
    assert line == (f"error: eval: {str(teacher_ckpt)!r} has no label for categories [6] of {str(ann)!r}, so their objects cannot be "
                    "scored (id 6 ('hex') is no category of the model; is --data the dataset it was trained for?)")


@pytest.mark.parametrize("args, named", [
    (("visualize", "--cache", "c.zarr", "--image-id", "abc"), ("--image-id",)),
    (("visualize", "--cache", "c.zarr", "--vmax", "abc"), ("--vmax",)),
    (("cache", "foo"), ("foo",))])
def test_a_command_line_that_does_not_parse_is_the_parsers_usage_error_with_exit_code_2(args, named):
    """As README says: the parser refuses it before frs runs (exit code 2, its usage box naming the option or
    command); frs's own refusals are one line and exit code 1."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output and all(n in result.output for n in named), result.output


def test_data_synth_refuses_a_file_or_a_folder_with_files_naming_it_quoted(tmp_path):
    """``data synth --out``: a file, or a folder that holds files, is one line naming the path in quotes (a path with
    spaces reads as one), and nothing is written there."""
    spaced = tmp_path / "my data"
    spaced.mkdir()
    (spaced / "keep.txt").write_text("x")
    result = run("data", "synth", spaced, "--train", "2", "--val", "1")
    assert_one_line_error(result, f"expected a missing or empty directory, got non-empty {str(spaced)!r}")
    assert [p.name for p in spaced.iterdir()] == ["keep.txt"]
    result = run("data", "synth", spaced / "keep.txt", "--train", "2", "--val", "1")
    assert_one_line_error(result, f"expected a directory, got a file at {str(spaced / 'keep.txt')!r}")
    assert (spaced / "keep.txt").read_text() == "x"


def test_a_path_starting_with_a_tilde_is_the_homes_in_options_and_recipes(tmp_path, monkeypatch, synth_root):
    """``~`` reaches frs unexpanded after ``--opt=`` or in quotes, and always inside a recipe or a --set: frs reads it
    as the home folder, as a shell would (before: a folder literally named ``~`` was made in the current one, and
    ``data.root = "~/data"`` was not found)."""
    import shutil

    from frs_cli.config import load_recipe

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    result = run("data", "synth", "~/made", "--train", "2", "--val", "1", "--size", "64")
    assert result.exit_code == 0, result.output
    assert (home / "made" / "annotations" / "instances_train.json").is_file() and not (tmp_path / "~").exists()
    shutil.copytree(synth_root, home / "data")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[data]\nroot = "~/data"\n[teacher]\nweights = "~/t.pt"\n')
    r = load_recipe(recipe, ["student.weights=~/s.pt"])
    assert (r.data.root, r.teacher.weights, r.student.weights) == (str(home / "data"), str(home / "t.pt"),
                                                                  str(home / "s.pt"))
    assert r.data.annotation_file("train").is_file()
    result = run("report", "~/nothing-here")  # several paths (a list) are expanded too: the message names the home's
    assert result.exit_code == 1 and str(home / "nothing-here") in result.stderr, result.stderr
