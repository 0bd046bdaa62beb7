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
