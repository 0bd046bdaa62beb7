"""The fused FRS terms (``frs_cli.fused_losses``) against the PyTorch form, on the CPU through Triton's interpreter.

The kernels are Triton's; on CUDA they replace ``losses._head_term`` and ``_feature_term``. Here they run under
``TRITON_INTERPRET=1`` (set before Triton is imported, hence a child process) on CPU tensors: contiguous and
channels-last, float32 and bfloat16, levels down to 1x1 and channel counts that are no multiple of the block.
``tests/test_gpu.py`` compares them on the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from frs_cli import fused_losses, losses

    torch.manual_seed(0)
    grids = [(9, 13), (5, 7), (3, 4), (1, 1)]
    rows = []
    for channels, dtype, layout in [(20, torch.float32, "nchw"), (40, torch.float32, "nhwc"),
                                    (33, torch.bfloat16, "nchw"), (72, torch.bfloat16, "nhwc")]:
        def levels(scale, kind=dtype, grad=False):
            out = []
            for h, w in grids:
                x = (torch.randn(2, channels, h, w) * scale).to(kind)
                if layout == "nhwc":
                    x = x.to(memory_format=torch.channels_last)
                out.append(x.requires_grad_(grad))
            return out
        masks = [torch.rand(2, h, w) for h, w in grids]
        weights = losses.position_weights(masks)
        for name, fused, plain, teacher_kind in [("head", fused_losses.head_term, losses._head_term, dtype),
                                                 ("feature", fused_losses.feature_term, losses._feature_term,
                                                  torch.float16)]:
            student, teacher = levels(3.0, grad=True), levels(3.0, kind=teacher_kind)
            g = torch.tensor(0.7)
            want = plain(student, teacher, weights)
            want.backward(g)
            want_grads = [x.grad.clone() for x in student]
            for x in student:
                x.grad = None
            got = fused(student, teacher, weights)
            got.backward(g)
            grads = [x.grad for x in student]
            # the largest difference in steps of the student's dtype at the level's largest gradient
            ulps = max(float((a.float() - b.float()).abs().max() / (b.float().abs().max() * torch.finfo(dtype).eps))
                       for a, b in zip(grads, want_grads))
            rows.append({"term": name, "channels": channels, "dtype": str(dtype), "layout": layout,
                         "got": float(got), "want": float(want), "ulps": ulps,
                         "layouts": [a.stride() == x.stride() for a, x in zip(grads, student)],
                         "dtypes": [str(a.dtype) for a in grads]})
    json.dump(rows, sys.stdout)
""")


@pytest.fixture(scope="module")
def rows():
    env = {**os.environ, "TRITON_INTERPRET": "1", "FRS_FUSED_LOSSES": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_fused_terms_equal_the_pytorch_form_in_value_and_gradient(rows):
    assert len(rows) == 8 and {r["term"] for r in rows} == {"head", "feature"}
    for r in rows:
        assert r["got"] == pytest.approx(r["want"], rel=2e-6), r
        assert r["ulps"] <= 2.0, r
        assert all(r["layouts"]) and set(r["dtypes"]) == {r["dtype"]}, r


def test_the_fused_terms_are_used_on_cuda_tensors_only_and_can_be_turned_off(monkeypatch):
    import torch

    from frs_cli import fused_losses

    x = torch.zeros(1, 2, 3, 3)
    assert not fused_losses.usable(x, x)  # CPU tensors: the PyTorch form
    monkeypatch.setattr(fused_losses, "ENABLED", False)
    assert not fused_losses.usable(x, x)
    env = {**os.environ, "FRS_FUSED_LOSSES": "0"}
    off = subprocess.run([sys.executable, "-c", "from frs_cli import fused_losses; print(fused_losses.ENABLED)"],
                         check=False, env=env, capture_output=True, text=True, timeout=120)
    assert off.stdout.strip() == "False"
