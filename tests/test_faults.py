"""Faults and bad input end to end: each fails with exit code 1, one line on stderr, no traceback, and leaves
nothing half-written marked complete; what can be resumed is resumed to the uninterrupted result."""

import errno

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from frs_cli.cache.reader import TeacherCache
from frs_cli.cli.app import app
from frs_cli.errors import CacheFormatError

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments) -> None:
    """Exit code 1, exactly one ``error:`` line on stderr holding every fragment (a progress bar may precede
    it), and no traceback."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def _arrays(path):
    root = zarr.open_group(str(path), mode="r")
    out = {}

    def walk(group, prefix):
        for name, arr in group.arrays():
            out[prefix + name] = arr[...]
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(root, "")
    return out


def test_disk_full_mid_write_is_one_line_and_resume_completes_the_cache(monkeypatch, recipe_path, cache_path,
                                                                          tmp_path):
    original = zarr.storage.LocalStore.set
    feature_writes = []

    async def full_after_100_feature_chunks(self, key, value):
        if "/features/c." in key:
            feature_writes.append(key)
            if len(feature_writes) > 100:  # 240 in all (48 views x 5 levels)
                raise OSError(errno.ENOSPC, "No space left on device", f"{self.root}/{key}")
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_after_100_feature_chunks)
    out = tmp_path / "full.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu")
    assert_one_line_error(result, f"cache {out}: the disk is full (no space left on device) at {out}/buckets/",
                          "--resume")
    partial = TeacherCache(str(out), require_complete=False)
    assert partial.attrs["state"] == "writing" and 0 < partial.done().sum() < 48
    with pytest.raises(CacheFormatError, match="incomplete"):
        TeacherCache(str(out))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)  # space freed
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    ref, got = _arrays(cache_path), _arrays(out)
    assert set(ref) == set(got)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory, synth_root):
    """The small teacher after 2 epochs of GT training on the 24 train images (a few seconds on CPU)."""
    from conftest import write_recipe

    from frs_cli.config import load_recipe
    from frs_cli.train.dist import setup
    from frs_cli.train.run import train_detector

    d = tmp_path_factory.mktemp("trained")
    r = load_recipe(write_recipe(d / "r.toml", synth_root), ["teacher_train.epochs=2", "teacher_train.lr=0.02",
                                                              "teacher_train.lr_steps=[2]", "teacher_train.hflip_prob=0.0"])
    return train_detector(r, "teacher", d / "run", ctx=setup("cpu"), evaluate=False).model_file


def test_teacher_check_refuses_a_randomly_initialised_teacher_and_writes_nothing(recipe_path, tmp_path):
    out = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--check-teacher", 8)
    assert_one_line_error(result, "the teacher scores AP 0.0000 on the first 8 val images, below the minimum 0.0100",
                          "is it the trained teacher (weights fingerprint ", "nothing was cached")
    assert not out.exists()


def test_teacher_check_passes_the_trained_teacher_and_records_its_score(synth_root, trained_teacher, tmp_path):
    from conftest import write_recipe

    # a 2-epoch teacher is barely trained: scored on 8 of the images it trained on, its AP is about 0.01
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(trained_teacher),
                          extra="check_teacher_images = 8\nmin_teacher_map = 0.005\n")
    out = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe, "--out", out, "--device", "cpu", "--set", "data.val=train")
    assert result.exit_code == 0, result.output
    assert "teacher check: AP 0.0" in result.stdout and "on the first 8 train images (minimum 0.0050)" in result.stdout
    check = TeacherCache(str(out)).teacher["check"]
    assert check["images"] == 8 and check["split"] == "train" and check["min_AP"] == 0.005
    assert check["AP"] >= 0.005 and 0.0 < check["AP50"] <= 1.0
