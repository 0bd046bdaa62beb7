"""torchrun on CPU (gloo): two processes split teacher-cache and train with DDP."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from conftest import write_recipe

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def _torchrun(*args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "frs_cli", *map(str, args), "--device", "cpu"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)


def _arrays(group, prefix=""):
    for name, arr in group.arrays():
        yield prefix + name, arr
    for name, sub in group.groups():
        yield from _arrays(sub, prefix + name + "/")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_two_process_teacher_cache_equals_one_process_and_ddp_distill_runs(cache_path, synth_root, teacher_ckpt,
                                                                          tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    out = tmp_path / "c2.zarr"
    r = _torchrun("teacher-cache", "--pipeline", recipe, "--out", out, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 48 of 48 views" in r.stdout
    one = dict(_arrays(zarr.open_group(cache_path, mode="r")))
    two = dict(_arrays(zarr.open_group(str(out), mode="r")))
    assert set(one) == set(two)
    worst = 0.0
    for name in one:
        a, b = one[name][...], two[name][...]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.dtype.kind == "f":
            worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
            # one process per core (1 thread each) vs 2 threads: fp32 sums in another order, fp16 ulps apart
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=2e-3, atol=1e-3,
                                       err_msg=name)
        elif not name.endswith("crc"):
            np.testing.assert_array_equal(a, b, err_msg=name)
    print(f"two-process vs one-process cache: max abs difference {worst:.3g}")
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"

    r = _torchrun("distill", "--pipeline", recipe, "--cache", out, "--out", tmp_path / "run", "--no-eval",
                  "--set", "train.epochs=2", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    # 24 images over 2 processes, batch 4 per process -> 3 iterations per epoch
    assert state["iters_per_epoch"] == 3 and state["epoch"] == 2
    assert (tmp_path / "run" / "model_final.pt").is_file()
