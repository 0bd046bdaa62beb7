"""Where a cache can live: exported to one HDF5 file, or at an fsspec URL; training reads every store alike."""

import json
import os

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from frs_cli.cache.backend import HDF5Backend, ZarrBackend, open_backend
from frs_cli.cache.reader import TeacherCache
from frs_cli.cache.verify import verify_cache
from frs_cli.cache.writer import write_teacher_cache
from frs_cli.cli.app import app
from frs_cli.config import load_recipe
from frs_cli.dist import setup
from frs_cli.train.checkpoint import FINAL
from frs_cli.train.run import distill_student

runner = CliRunner()


@pytest.fixture(scope="module")
def h5_path(cache_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("h5") / "cache.h5"
    result = runner.invoke(app, ["cache", "export", cache_path, str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 48 views (32 arrays" in result.stdout  # index/file_bytes among them
    return out


def _same_cache(a, b, written_apart: bool = False) -> None:
    """Same root attributes, groups and arrays (names, shapes, dtypes, chunks, values).

    ``written_apart``: two runs of the writer; their ``created`` times differ, nothing else may."""
    skip = {"created"} if written_apart else set()
    assert {k: v for k, v in a.attrs.items() if k not in skip} == {k: v for k, v in b.attrs.items() if k not in skip}
    assert a.groups() == b.groups()
    left, right = dict(a.walk()), dict(b.walk())
    assert sorted(left) == sorted(right)
    for name, x in left.items():
        y = right[name]
        assert (x.shape, x.dtype, tuple(x.chunks or x.shape)) == (y.shape, y.dtype, tuple(y.chunks or y.shape)), name
        np.testing.assert_array_equal(x[...], y[...], err_msg=name)


def test_the_cache_formats_reading_example_runs_with_plain_zarr_on_a_cache(cache_path):
    """docs/cache-format.md opens with how to read a view with zarr alone; run as written (its path replaced), it
    gives the reader's numbers (before: ``root["index/row"][k]``, a 0-d array, was refused by zarr as a selection)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "cache-format.md").read_text(encoding="utf-8")
    example = doc.split("```python\n", 1)[1].split("```", 1)[0].replace('"runs/cache.zarr"', repr(cache_path))
    names: dict = {}
    exec(example, names)  # noqa: S102 (the documentation's own example, run as a reader would)
    view = TeacherCache(cache_path).read(0)
    np.testing.assert_array_equal(names["p3"], view.features[0].numpy())
    np.testing.assert_array_equal(names["s3"], view.masks[0].numpy())


def test_a_cache_whose_root_metadata_is_cut_is_named_damaged_not_an_array(cache_path, tmp_path):
    """The root zarr.json cut mid-JSON (before: "found something else: a Zarr array")."""
    import shutil

    copy = tmp_path / "c.zarr"
    shutil.copytree(cache_path, copy)
    meta = copy / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:60])
    for args in (["cache", "info", copy], ["cache", "verify", copy], ["eval", "--cache", copy]):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.stderr.strip() == (f"error: cache '{copy}': expected an frs teacher cache, found something else: "
                                         f"a folder whose zarr.json is not readable Zarr metadata (damaged: {meta})")


def test_export_writes_the_same_layout_to_one_hdf5_file(cache_path, h5_path):
    import h5py

    zarr_side, h5_side = open_backend(cache_path), open_backend(str(h5_path))
    assert isinstance(zarr_side, ZarrBackend) and isinstance(h5_side, HDF5Backend)
    _same_cache(zarr_side, h5_side)
    with h5py.File(h5_path, "r") as f:  # plain h5py sees the layout: attributes as JSON text
        assert json.loads(f.attrs["format"]) == "frs-teacher-cache"
        assert f["buckets/64x64/P3/features"].chunks == (1, 64, 8, 8)
    assert [p.name for p in h5_path.parent.iterdir()] == ["cache.h5"]  # no temporary file left behind
    assert verify_cache(str(h5_path)).ok


def test_export_refuses_an_unfinished_cache_and_a_non_h5_target(cache_path, tmp_path):
    import shutil

    copy = tmp_path / "c.zarr"
    shutil.copytree(cache_path, copy)
    zarr.open_group(str(copy), mode="r+").attrs["state"] = "writing"
    for args, message in (([str(copy), str(tmp_path / "a.h5")], "is incomplete"),
                          ([cache_path, str(tmp_path / "a.zarr")], "expected a local .h5 or .hdf5 file name")):
        result = runner.invoke(app, ["cache", "export", *args])
        assert result.exit_code == 1 and message in result.stderr, result.output
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "a.zarr").exists()


def test_export_to_a_disk_without_room_is_refused_before_the_verification(cache_path, h5_path, tmp_path, monkeypatch):
    """The file holds every array uncompressed: their bytes, within the HDF5 file's own overhead; a disk with less free
    is refused in one line naming both sizes before the verification reads the cache, and nothing is written."""
    from frs_cli.cache import export
    from frs_cli.files import size_text

    need = sum(int(a.nbytes) for _, a in open_backend(cache_path).walk())
    assert need <= h5_path.stat().st_size < need + 200_000
    calls = []
    monkeypatch.setattr(export, "free_bytes", lambda path: need - 1)
    monkeypatch.setattr(export, "verify_cache", lambda *a, **k: calls.append(a))
    out = tmp_path / "a.h5"
    result = runner.invoke(app, ["cache", "export", cache_path, str(out)])
    assert result.exit_code == 1 and calls == [] and not out.exists(), result.output
    # one byte short: both would read "1.2 MB", so the line gives the bytes (as teacher-cache's does)
    assert size_text(need) == size_text(need - 1)
    assert result.stderr.strip() == (f"error: cache export: '{out}' needs about {need:,} bytes, the disk there has "
                                     f"{need - 1:,} bytes free (free space or export elsewhere)")


def test_export_to_a_file_system_of_no_size_is_refused_as_unwritable_not_as_full(cache_path, tmp_path):
    """``/proc`` reports 0 bytes of 0: no disk, so its "0 B free" is no reason; the write's own refusal is."""
    from frs_cli.files import free_bytes

    assert free_bytes("/proc/frs_export.h5") is None and free_bytes(tmp_path / "a" / "b.h5") > 0
    result = runner.invoke(app, ["cache", "export", cache_path, "/proc/frs_export.h5"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.stderr.strip()
    assert line == ("error: cache export OUT '/proc/frs_export.h5': no file can be made there (write to a folder on a "
                    "disk)"), line  # named as every command names its output (was the bare path)


def test_reading_a_view_from_hdf5_gives_the_zarr_numbers(cache_path, h5_path):
    z, h = TeacherCache(cache_path), TeacherCache(str(h5_path))
    for k in (0, 17, 47):
        a, b = z.read(k), h.read(k)
        for x, y in zip(a.features + a.masks, b.features + b.masks, strict=True):
            assert x.dtype == y.dtype == torch.float16 and torch.equal(x, y)
    for name, t in z.head_state_dict().items():
        assert torch.equal(t, h.head_state_dict()[name])
    assert h.nbytes_stored()["views"] > 0
    # the whole: the file's size, as cache export reports it (before: the datasets alone, 18 % less on a small cache)
    assert h.nbytes_stored()["total"] == os.path.getsize(h5_path) > h.nbytes_stored()["views"]


def test_distill_from_hdf5_ends_with_the_weights_distill_from_zarr_gives(recipe_path, cache_path, h5_path, tmp_path):
    r = load_recipe(recipe_path)
    distill_student(r, tmp_path / "zarr", cache=cache_path, ctx=setup("cpu"), evaluate=False)
    r_h5 = load_recipe(recipe_path, ["cache.preload_mb=0"])  # read view by view through h5py
    distill_student(r_h5, tmp_path / "h5", cache=str(h5_path), ctx=setup("cpu"), evaluate=False)
    a = torch.load(tmp_path / "zarr" / FINAL, weights_only=True)["model"]
    b = torch.load(tmp_path / "h5" / FINAL, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_teacher_cache_refuses_to_write_hdf5_directly(recipe_path, tmp_path):
    result = runner.invoke(app, ["teacher-cache", "--pipeline", recipe_path, "--out", str(tmp_path / "c.h5")])
    assert result.exit_code == 1 and "frs cache export" in result.stderr
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_cache_written_and_read_through_a_url_equals_the_local_one(scheme, cache_path, synth_root, teacher_ckpt,
                                                                   tmp_path):
    pytest.importorskip("fsspec", reason="URL stores need fsspec (pip install 'frs[remote]')")
    from conftest import write_recipe

    url = f"file://{tmp_path}/url.zarr" if scheme == "file" else f"memory://{tmp_path.name}/url.zarr"
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    s = write_teacher_cache(r, url, ctx=setup("cpu"))
    assert (s.views_written, s.complete) == (48, True)
    _same_cache(open_backend(cache_path), open_backend(url), written_apart=True)
    assert verify_cache(url).ok
    again = write_teacher_cache(r, url, ctx=setup("cpu"), resume=True)  # found, verified, nothing to write
    assert (again.views_written, again.views_rejected, again.complete) == (0, 0, True)
    if scheme == "file":
        assert (tmp_path / "url.zarr" / "buckets" / "64x64" / "done" / "c.0").is_file()
        result = runner.invoke(app, ["cache", "info", url])
        assert result.exit_code == 0 and "complete (48/48 views written)" in result.stdout
    else:
        import fsspec

        fsspec.filesystem("memory").rm(f"/{tmp_path.name}", recursive=True)


def test_a_url_whose_scheme_needs_a_missing_package_is_one_line_in_every_command(tmp_path, recipe_path, monkeypatch):
    """A scheme whose fsspec package is not installed (s3:// without s3fs, gcs:// without gcsfs; here a registered
    scheme whose module does not exist): one line naming the URL and what fsspec says to install, in the commands
    that take a cache URL (before: fsspec's ImportError as a traceback)."""
    import fsspec
    from conftest import assert_one_line_error

    fsspec.register_implementation("frsnosuch", "frs_no_such_module.FileSystem", clobber=True,
                                   errtxt="Install frs-no-such to access frsnosuch://")  # this process only
    url = "frsnosuch://bucket/c.zarr"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for args in (["cache", "info", url], ["cache", "verify", url], ["eval", "--cache", url],
                 ["teacher-cache", "--pipeline", str(recipe_path), "--out", url, "--device", "cpu"]):
        result = runner.invoke(app, args)
        assert_one_line_error(result, f"cache {url!r}: frsnosuch:// needs a package that is not installed",
                              "Install frs-no-such to access frsnosuch://")
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing written locally in its place


def test_a_url_of_a_scheme_fsspec_does_not_know_is_one_line_in_every_command(tmp_path, recipe_path, monkeypatch):
    """A URL whose scheme no fsspec filesystem serves (a typo): one line naming it and what is expected, in the
    commands that take a cache URL (before: fsspec's "Protocol not known" ValueError as a traceback)."""
    from conftest import assert_one_line_error

    url = "frsunknown://bucket/c.zarr"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for args in (["cache", "info", url], ["cache", "verify", url], ["eval", "--cache", url],
                 ["cache", "export", url, str(tmp_path / "c.h5")], ["visualize", "--cache", url, "--out", "v.png"],
                 ["teacher-cache", "--pipeline", str(recipe_path), "--out", url, "--device", "cpu"]):
        result = runner.invoke(app, args)
        assert_one_line_error(result, f"cache {url!r}: expected a local path or a URL of a scheme fsspec knows "
                                      "(file://, s3://, gs://, https://, ...), got frsunknown://")
    assert list((tmp_path / "cwd").iterdir()) == [] and not (tmp_path / "c.h5").exists()


def test_a_cache_another_live_job_is_writing_is_named_as_such_not_sent_to_resume(tmp_path, cache_path):
    """export, verify and distill on a cache whose writer still runs (its lock beside it names a live process):
    the line names that process and says to wait (before: 'its writer did not finish, run --resume', a resume the
    live job's lock then refuses). Without a live lock the --resume advice stands."""
    import shutil

    from conftest import assert_one_line_error

    from frs_cli.lock import holder_record, lock_path

    out = tmp_path / "c.zarr"
    shutil.copytree(cache_path, out)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["state"] = "writing"
    bucket = group.attrs["buckets"][0]["name"]
    done = group[f"buckets/{bucket}/done"]
    done[0] = False
    lock_path(out).write_text(json.dumps(holder_record("frs teacher-cache --out c.zarr")))
    result = runner.invoke(app, ["cache", "export", str(out), str(tmp_path / "c.h5")])
    assert_one_line_error(result, "is incomplete, still being written by pid", "frs teacher-cache --out c.zarr",
                          "(wait for that job to finish)")
    result = runner.invoke(app, ["cache", "verify", str(out)])
    assert result.exit_code == 1 and "still being written by pid" in result.output and "--resume" not in result.output
    result = runner.invoke(app, ["cache", "verify", f"file://{out}"])  # a file:// URL is locked as its path
    assert result.exit_code == 1 and "still being written by pid" in result.output and "--resume" not in result.output
    lock_path(out).unlink()
    result = runner.invoke(app, ["cache", "export", str(out), str(tmp_path / "c.h5")])
    assert_one_line_error(result, "is incomplete (its writer did not finish)", "--resume")
    result = runner.invoke(app, ["cache", "verify", str(out)])
    assert result.exit_code == 1 and "--resume finishes it" in result.output
    assert not (tmp_path / "c.h5").exists()


def test_a_cache_whose_dataset_moved_says_so_and_points_at_data(cache_path, synth_root, tmp_path):
    """visualize and eval --cache read the cached split where the cache was written from; once that folder is gone
    the line says so and names --data (before: only that an annotation file does not exist)."""
    import shutil

    moved = tmp_path / "c.zarr"
    shutil.copytree(cache_path, moved)
    group = zarr.open_group(str(moved), mode="r+")
    gone = tmp_path / "gone" / "annotations" / "instances_train.json"
    group.attrs["dataset"] = {**dict(group.attrs["dataset"]), "annotation_file": str(gone)}
    expected = (f"error: cache '{moved}': expected its dataset's annotation file at '{gone}', where it was written "
                f"from, but it does not exist (point --data at the dataset's folder where it is now)")
    for args in (["visualize", "--cache", str(moved), "--out", str(tmp_path / "m.png")], ["eval", "--cache", str(moved)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and result.stderr.strip() == expected, result.output
    assert not (tmp_path / "m.png").exists()
    result = runner.invoke(app, ["eval", "--cache", str(moved), "--data", str(synth_root)])
    assert result.exit_code == 0, result.output


def test_cache_info_gives_the_codec_the_features_are_stored_with_and_what_the_attributes_say(recipe_path, tmp_path):
    """``cache info`` reads the compressor off the features arrays: a zstd cache says zstd; its HDF5 export, whose
    arrays are uncompressed and whose attributes are the Zarr cache's (a resumed distill sees the same recipe), says
    none, and what its attributes say (before: zstd alone); so do attributes edited to another name."""
    import h5py

    def storage_row(path) -> str:
        result = runner.invoke(app, ["cache", "info", str(path)])
        assert result.exit_code == 0, result.output
        return next(" ".join(line.strip("│ ").split()) for line in result.stdout.splitlines() if "storage" in line)

    out, h5 = tmp_path / "z.zarr", tmp_path / "z.h5"
    result = runner.invoke(app, ["teacher-cache", "--pipeline", str(recipe_path), "--out", str(out), "--device", "cpu",
                                 "--set", 'cache.codec="zstd"'])
    assert result.exit_code == 0, result.output
    assert storage_row(out) == "storage │ float16 features, float16 masks, codec zstd"
    assert runner.invoke(app, ["cache", "export", str(out), str(h5)]).exit_code == 0
    with h5py.File(h5, "r") as f:
        assert json.loads(f.attrs["storage"])["codec"] == "zstd" and f["buckets/64x64/P3/features"].compression is None
    assert storage_row(h5) == "storage │ float16 features, float16 masks, codec none (its attributes say zstd)"
    assert TeacherCache(str(h5)).read(5).features[0].equal(TeacherCache(str(out)).read(5).features[0])
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["storage"] = {**group.attrs["storage"], "codec": "none"}
    assert storage_row(out) == "storage │ float16 features, float16 masks, codec zstd (its attributes say none)"
